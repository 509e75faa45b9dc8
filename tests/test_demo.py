"""`xdc demo` end to end at a tiny size, and the decoded-clip cache it trains from."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from xdc.cli import main as xdc_main
from xdc.config import DataConfig
from xdc.data import cache, synthetic
from xdc.data.datasets import AudioVideoClips
from xdc.data.decode import decode_clips
from xdc.data.manifest import read_manifest
from xdc.demo import probe_split

CFG = DataConfig(frames=4, fps=8.0, short_side=32, crop=28, eval_clips=2, num_workers=0)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_videos")
    return read_manifest(synthetic.generate(out, num_classes=2, videos_per_class=2, seed=3,
                                            seconds=1.0, progress=False))


def test_cache_serves_what_decoding_gives(videos, tmp_path):
    summary = cache.build_cache(videos, CFG, tmp_path / "cache", progress=False)
    assert summary["cached"] == len(videos) and not summary["failed"]
    starts = [0.0, 0.25, 0.625, 0.875]  # on the 1/fps grid; the last runs past the end (loop)
    for row in videos:
        decoded = decode_clips(row["path"], starts, CFG)
        cached = cache.cached_clips(tmp_path / "cache", row["path"], starts, CFG)
        for d, c in zip(decoded, cached):
            np.testing.assert_array_equal(d.video, c.video)
            assert d.start == c.start
            assert np.abs(d.audio - c.audio).max() < 1e-3
    # Another frame rate or size is not in the cache: decode as usual.
    assert cache.cached_clips(tmp_path / "cache", videos[0]["path"], [0.0], replace(CFG, fps=4.0)) is None
    assert cache.cached_clips(tmp_path / "cache", tmp_path / "other.mp4", [0.0], CFG) is None
    # Building again with the same settings reuses the cache.
    assert cache.build_cache(videos, CFG, tmp_path / "cache", progress=False)["reused"]


def test_dataset_reads_through_the_cache(videos, tmp_path):
    cache.build_cache(videos, CFG, tmp_path / "cache", progress=False)
    plain = AudioVideoClips(videos, CFG, mode="eval")
    cached = AudioVideoClips(videos, replace(CFG, cache_dir=str(tmp_path / "cache")), mode="eval")
    a, b = plain[1], cached[1]
    assert a.keys() == b.keys()
    torch.testing.assert_close(a["video"], b["video"])
    assert (a["audio"] - b["audio"]).abs().mean() < 0.05
    # A file missing from the cache is decoded (not skipped, not an error).
    (tmp_path / "cache" / "index.json").write_text(json.dumps(
        {"settings": cache._settings(CFG), "videos": {}}))
    cache._OPEN.clear()
    item = AudioVideoClips(videos, replace(CFG, cache_dir=str(tmp_path / "cache")), mode="eval")[1]
    torch.testing.assert_close(item["video"], a["video"])


def test_probe_split_is_stratified_and_disjoint():
    rows = [{"path": f"v{i}.mp4", "label": "ab"[i % 2]} for i in range(20)]
    parts = probe_split(rows, 0.2, 0.2, seed=0)
    paths = [r["path"] for part in parts.values() for r in part]
    assert sorted(paths) == sorted(r["path"] for r in rows)  # a partition
    for part in parts.values():
        assert {r["label"] for r in part} == {"a", "b"}
    assert len(parts["test"]) == 4 and len(parts["val"]) == 4
    with pytest.raises(SystemExit, match="too few"):
        probe_split(rows[:4], 0.3, 0.3, seed=0)


TINY = ["synthetic.num_classes=2", "synthetic.videos_per_class=5", "synthetic.seconds=1.0",
        "synthetic.size=24", "pretrain.iterations=2", "pretrain.data.frames=4", "pretrain.data.short_side=24",
        "pretrain.data.crop=20", "pretrain.model.width=4", "pretrain.optim.epoch_size=16",
        "pretrain.optim.batch_size=8", "pretrain.cluster.k_video=3", "pretrain.cluster.k_audio=3",
        "pretrain.cluster.k_joint=3", "pretrain.optim.val_fraction=0.2", "finetune.optim.epoch_size=40",
        "finetune.optim.total_epochs=1", "finetune.optim.step_epochs=1", "pretrain.device=cpu",
        "finetune.device=cpu", "probe.val_fraction=0.2", "probe.test_fraction=0.2"]


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--out", str(out), "--methods", "scratch,sdc,xdc", *TINY]
    assert xdc_main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["scratch", "sdc", "xdc"]
    assert results["data"]["videos"] == 10 and results["data"]["probe"] == {"train": 6, "val": 2, "test": 2}
    for method, entry in results["methods"].items():
        for modality in ("video", "audio"):
            probe = entry["probe"][modality]
            assert 0.0 <= probe["top1_video"] <= 1.0 and probe["best_lr"] > 0
        if method == "scratch":
            assert "clusters" not in entry
            continue
        for modality in ("video", "audio"):
            clusters = entry["clusters"][modality]
            assert clusters["num_clusters"] == 3 and 0 <= clusters["empty_clusters"] < 3
            assert 0.5 <= clusters["purity"] <= 1.0  # 2 balanced classes: purity is at least 1/2
            assert 0.0 <= clusters["nmi_nuisance"] <= 1.0
        assert [r["iteration"] for r in entry["iterations"]] == [0, 1]
    diff = results["comparisons"]["xdc_minus_sdc"]["video"]
    assert diff == pytest.approx(results["methods"]["xdc"]["probe"]["video"]["top1_video"]
                                 - results["methods"]["sdc"]["probe"]["video"]["top1_video"], abs=1e-4)
    page = (out / "report.html").read_text()
    for text in ("scratch", "sdc", "xdc", "video acc", "filters.png", "clusters/xdc/index.html"):
        assert text in page
    assert (out / "filters.png").stat().st_size > 1000 and (out / "clusters" / "xdc" / "index.html").is_file()
    assert "video acc" in printed and "xdc_minus_sdc" in printed
    # The pretraining manifest never held the labels.
    assert all(row["label"] is None for row in read_manifest(out / "data" / "manifest.csv"))

    # Run again into the same folder: everything is reused, and the numbers are the same.
    assert xdc_main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["methods"]["xdc"]["probe"] == results["methods"]["xdc"]["probe"]
    assert "reusing the finished run" in capsys.readouterr().out
