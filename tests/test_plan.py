"""What a run says before and after it works: settings fitted to the data (k, epoch size), the
plan's batch / steps / lr line and its warning, and the closing summary's verdict per head."""

from __future__ import annotations

import pytest

from xdc.config import ConfigError, FinetuneConfig, load_config
from xdc.training.monitor import batch_warning, heads_not_learning, pretrain_plan_facts, print_closing_summary
from xdc.training.sizes import fit_to_data


def test_cpu_preset_fits_a_small_folder():
    cfg = load_config("cpu")
    assert (cfg.cluster.k_video, cfg.optim.epoch_size, cfg.optim.epoch_passes) == ("auto", 2000, 1)
    fitted, notes = fit_to_data(cfg, 10)
    assert (fitted.cluster.k_video, fitted.cluster.k_audio, fitted.cluster.k_joint) == (2, 2, 2)
    assert fitted.optim.epoch_size == 10  # a pass over 10 videos, not 2000 clips
    assert len(notes) == 2 and "clamp(round(videos / 39), 2, the paper's 64/128/128)" in notes[0]
    assert fit_to_data(fitted, 10) == (fitted, [])  # numbers stay numbers: a relaunch records the same config
    # Plenty of videos: one cluster per 39 up to the paper's k, and the configured epoch size.
    many, _ = fit_to_data(cfg, 3000)
    assert (many.cluster.k_video, many.cluster.k_audio, many.optim.epoch_size) == (64, 77, 2000)
    kinetics, _ = fit_to_data(cfg, 240_000)
    assert (kinetics.cluster.k_video, kinetics.cluster.k_audio, kinetics.cluster.k_joint) == (64, 128, 128)


def test_paper_presets_keep_their_numbers():
    cfg = load_config("dc_kinetics")
    assert fit_to_data(cfg, 8) == (cfg, [])
    assert (cfg.cluster.k_video, cfg.cluster.k_audio, cfg.optim.epoch_passes) == (64, 128, 0)


@pytest.mark.parametrize(("override", "words"), [("cluster.k_video=lots", "cluster.k_video='lots'"),
                                                  ("cluster.k_audio=1", "cluster.k_audio=1"),
                                                  ("optim.epoch_passes=-1", "optim.epoch_passes=-1")])
def test_fitted_settings_are_validated(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config("cpu", [override])


def test_finetune_refuses_epoch_passes():
    with pytest.raises(ConfigError, match=r"optim.epoch_passes=2 is out of range: expected 0 \(pretraining only\)"):
        load_config("cpu", ["optim.epoch_passes=2"], schema=FinetuneConfig)


def test_plan_states_global_batch_steps_and_lr():
    cfg = load_config("dc_kinetics")  # bs 32 per rank, lr 0.01 for reference_batch 256
    facts = pretrain_plan_facts(cfg, 1000, world_size=8)
    assert "8 rank(s) × batch 32 = global batch 256, 3907 SGD step(s) per epoch; lr 0.01 " \
           "(optim.lr 0.01, lr_scaling none, reference_batch 256)" in facts
    assert batch_warning(cfg.optim, 8) is None and batch_warning(cfg.optim, 4) is None  # within 2×
    one = batch_warning(cfg.optim, 1)
    assert one.startswith("warning: global batch 32 (1 rank(s) × 32) is 8× below optim.reference_batch 256")
    assert "optim.lr_scaling=linear (lr 0.00125 here)" in one and "set optim.lr and optim.reference_batch" in one
    assert "\n" not in one
    assert "is 8× above optim.reference_batch 256" in batch_warning(cfg.optim, 64)
    # With the linear rule the lr follows the batch: said in the plan, no warning.
    linear = load_config("dc_kinetics", ["optim.lr_scaling=linear"])
    assert batch_warning(linear.optim, 64) is None
    assert "global batch 2048, 489 SGD step(s) per epoch; lr 0.08 " in pretrain_plan_facts(linear, 1000, 64)[2]


def test_cpu_presets_do_not_warn_on_one_process():
    for name in ("cpu", "tiny_cpu", "dc_kinetics_32frames"):
        cfg = load_config(name)
        assert batch_warning(cfg.optim, 8 if name.startswith("dc_") else 1) is None, name


def summary_with(heads: dict[str, tuple[float, float]]) -> dict:
    """A one-iteration summary whose heads have these (val loss, labels' entropy)."""
    stats = {"empty_clusters": 0, "num_clusters": 4}
    return {"method": "xdc", "iterations": [{
        "iteration": 0, "epochs": 3, "train_loss": 1.0, "val_loss": 1.0, "video": stats, "audio": stats,
        "heads": {name: {"train_loss": 0.1, "val_loss": val, "chance": 1.386, "prior_entropy": entropy}
                  for name, (val, entropy) in heads.items()}}]}


def test_closing_summary_tells_overfit_from_chance(tmp_path, capsys):
    summary = summary_with({"video_to_audio": (1.27, 1.28), "audio_to_video": (6.45, 1.28), "learned": (0.5, 1.28)})
    assert heads_not_learning(summary) == {"at chance": ["video_to_audio"], "overfit": ["audio_to_video"]}
    print_closing_summary(summary, tmp_path, 1.0, "cpu")
    out = capsys.readouterr().out
    assert "heads that never left chance (val loss within 5% of their labels' entropy): video_to_audio\n" in out
    assert "heads that overfit (val loss more than 5% above their labels' entropy, never below it): " \
           "audio_to_video\n" in out
    # A head that went below chance in some iteration learned something: in neither list.
    later = summary_with({"audio_to_video": (0.9, 1.28)})["iterations"][0] | {"iteration": 1}
    assert heads_not_learning({"iterations": [*summary["iterations"], later]})["overfit"] == []
