"""xdc.data.datasets, the loader side of scale: num_workers auto, the sampler over given items;
xdc.pretrain's validation pass only where it decides something."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xdc.cli import main as xdc_main
from xdc.config import ConfigError, load_config
from xdc.data.datasets import EpochSampler, resolve_num_workers


def test_num_workers_auto(monkeypatch):
    assert load_config("dc_kinetics").data.num_workers == "auto"  # the default
    assert load_config("tiny_cpu").data.num_workers == 0  # packaged CPU configs keep their value
    assert load_config("tiny_cpu", ["data.num_workers=auto"]).data.num_workers == "auto"
    for bad in ("many", "-1"):
        with pytest.raises(ConfigError, match="num_workers"):
            load_config("tiny_cpu", [f"data.num_workers={bad}"])
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_num_workers("auto") == 3 and resolve_num_workers(2) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert resolve_num_workers("auto") == 0


def test_sampler_draws_from_items_like_a_subset():
    """Drawing dataset indices from `items` gives what a Subset over them gave, and a sampler
    kept across iterations takes new items."""
    items = np.array([3, 5, 8, 13, 21, 34])
    direct = EpochSampler(len(items), 10, seed=4, rank=0, world_size=1, items=items)
    plain = EpochSampler(len(items), 10, seed=4, rank=0, world_size=1)
    for epoch in (0, 1):
        direct.set_epoch(epoch)
        plain.set_epoch(epoch)
        assert list(direct) == items[list(plain)].tolist()
    weights = np.array([0.0, 1.0])
    direct.set_items(2, weights, np.array([7, 9]))
    assert set(direct) == {9}
    with pytest.raises(ValueError, match="items has 3 entries"):
        direct.set_items(2, None, np.array([1, 2, 3]))


def test_no_validation_pass_without_early_stopping(av_manifest, tmp_path, capsys):
    out = tmp_path / "run"
    assert xdc_main(["pretrain", "--config", "tiny_cpu", "--data", str(av_manifest), "--out", str(out),
                     "optim.early_stop=false", "optim.epoch_size=16", "optim.total_epochs=1", "iterations=1"]) == 0
    record = json.loads((out / "summary.json").read_text())["iterations"][0]
    assert record["val_loss"] is None and not record["stopped_early"]
    assert all(head["val_loss"] is None and head["train_loss"] > 0 for head in record["heads"].values())
    text = capsys.readouterr().out
    assert "val loss n/a" in text and "val n/a" in text


def test_val_max_videos_runs_and_is_validated(av_manifest, tmp_path):
    """4 held-out videos capped to 1: the capped path runs; the setting is range-checked."""
    out = tmp_path / "run"
    assert xdc_main(["pretrain", "--config", "tiny_cpu", "--data", str(av_manifest), "--out", str(out),
                     "optim.val_max_videos=1", "optim.val_fraction=0.5", "optim.epoch_size=16",
                     "optim.total_epochs=1", "iterations=1"]) == 0
    record = json.loads((out / "summary.json").read_text())["iterations"][0]
    assert record["val_loss"] is not None
    with pytest.raises(ConfigError, match="val_max_videos"):
        load_config("tiny_cpu", ["optim.val_max_videos=0"])
