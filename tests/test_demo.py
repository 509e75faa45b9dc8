"""`xdc demo` end to end at a tiny size, and the decoded-clip cache it trains from."""

from __future__ import annotations

import json
from pathlib import Path
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

REPO = Path(__file__).resolve().parents[1]

CFG = DataConfig(frames=4, fps=8.0, short_side=32, crop=28, eval_clips=2, num_workers=0)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_videos")
    return read_manifest(synthetic.generate(out, num_classes=2, videos_per_class=2, seed=3,
                                            seconds=1.0, progress=False))


def test_cache_serves_what_decoding_gives(videos, tmp_path):
    summary = cache.build_cache(videos, CFG, tmp_path / "cache", progress=False)
    assert summary["cached"] == len(videos) and not summary["failed"]
    starts = [0.0, 0.25, 0.625, 0.875]  # on the 1/fps grid; the last two run past the end
    for row in videos:
        decoded = decode_clips(row["path"], starts, CFG)
        cached = cache.cached_clips(tmp_path / "cache", row["path"], starts, CFG)
        for d, c in zip(decoded, cached):
            np.testing.assert_array_equal(d.video, c.video)
            assert d.start == c.start
            assert np.abs(d.audio - c.audio).max() < 1e-3
    # A clip longer than the video (12 frames of a 1-s video at 8 fps) loops, as decoding does.
    long = replace(CFG, frames=12)
    cache.build_cache(videos[:1], long, tmp_path / "long", progress=False)
    decoded = decode_clips(videos[0]["path"], [0.0], long)[0]
    np.testing.assert_array_equal(decoded.video, cache.cached_clips(tmp_path / "long", videos[0]["path"],
                                                                    [0.0], long)[0].video)
    np.testing.assert_array_equal(decoded.video[8:], decoded.video[:4])
    # Another frame rate or size is not in the cache: decode as usual.
    assert cache.cached_clips(tmp_path / "cache", videos[0]["path"], [0.0], replace(CFG, fps=4.0)) is None
    assert cache.cached_clips(tmp_path / "cache", tmp_path / "other.mp4", [0.0], CFG) is None
    # Building again with the same settings reuses the cache.
    assert cache.build_cache(videos, CFG, tmp_path / "cache", progress=False)["reused"]


def test_cache_never_serves_a_rewritten_file(tmp_path):
    manifest = synthetic.generate(tmp_path / "a", num_classes=2, videos_per_class=1, seed=1,
                                  seconds=1.0, progress=False)
    rows = read_manifest(manifest)
    cache.build_cache(rows, CFG, tmp_path / "cache", progress=False)
    old = cache.cached_clips(tmp_path / "cache", rows[0]["path"], [0.0], CFG)[0].video
    # Same paths, other content (e.g. the demo regenerating its data with another seed).
    synthetic.generate(tmp_path / "a", num_classes=2, videos_per_class=1, seed=2, seconds=1.0,
                       progress=False)
    assert cache.cached_clips(tmp_path / "cache", rows[0]["path"], [0.0], CFG) is None
    assert not cache.build_cache(rows, CFG, tmp_path / "cache", progress=False)["reused"]
    new = cache.cached_clips(tmp_path / "cache", rows[0]["path"], [0.0], CFG)[0].video
    np.testing.assert_array_equal(new, decode_clips(rows[0]["path"], [0.0], CFG)[0].video)
    assert not np.array_equal(new, old)
    # A file that cannot be decoded is recorded, named, and does not force a rebuild next time.
    (tmp_path / "a" / "videos" / "broken.mp4").write_bytes(b"not a video")
    broken = dict(rows[0], path=str(tmp_path / "a" / "videos" / "broken.mp4"))
    summary = cache.build_cache(rows + [broken], CFG, tmp_path / "cache", progress=False)
    assert list(summary["failed"]) == [broken["path"]] and summary["cached"] == 2
    assert cache.build_cache(rows + [broken], CFG, tmp_path / "cache", progress=False)["reused"]


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
        {"settings": cache._settings(CFG), "videos": {}, "failed": {}}))
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


def test_bad_demo_settings_give_a_clear_message(tmp_path, capsys):
    assert xdc_main(["demo", "--out", str(tmp_path), "pretrain.model.width=0"]) == 2
    assert "model.width=0 is out of range" in capsys.readouterr().err
    assert xdc_main(["demo", "--out", str(tmp_path), "synthetic.colour=red"]) == 2
    assert "unknown synthetic key(s) ['colour']" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="num_classes must be in"):
        xdc_main(["demo", "--out", str(tmp_path), "synthetic.num_classes=1"])
    assert not (tmp_path / "data" / "videos").exists()  # refused before writing anything


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
    # Other settings into the same folder: refused, rather than mixing old runs with new ones.
    with pytest.raises(SystemExit, match="holds a demo run with other settings"):
        xdc_main(argv + ["pretrain.optim.lr=0.02"])


def test_avdigits_renders_a_real_recording_into_a_real_video(shared_fsdd, tmp_path):
    """benchmarks/avdigits.py: a spoken digit (FSDD wav) + a handwritten digit -> decodable mp4."""
    import sys

    from sklearn.datasets import load_digits

    from xdc.data.encode import write_video
    from xdc.data.scan import probe_file

    sys.path.insert(0, str(REPO / "benchmarks"))
    import avdigits

    samples, rate = avdigits.read_wav(shared_fsdd / "3_george_0.wav")
    assert rate == 8000 and 0.1 < samples.size / rate < 1.5 and np.abs(samples).max() > 0.05
    audio = avdigits.fit_audio(samples, rate)  # 1 s
    assert audio.size == rate and np.isclose(np.abs(audio).sum(), np.abs(samples[:rate]).sum(), rtol=0.05)
    digits = load_digits()
    frames = avdigits.render_digit(digits.images[3], np.random.default_rng(0), 8, 32)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    assert frames.mean() > 5 and (frames.max(axis=(1, 2, 3)) > 150).all()  # the digit is on every frame
    row = probe_file(write_video(tmp_path / "digit.mp4", frames, 8.0, audio, rate))
    assert row["status"] == "ok" and row["has_audio"] and not row["audio_silent"]
    assert row["num_frames"] == 8 and row["audio_rate"] == 8000


def test_avdigits_table_calls_a_win_only_beyond_the_seed_spread():
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import avdigits

    def run(method, seed, video, audio):
        top1 = {f"{mode}_{m}": {"top1_video": v} for mode in ("linear", "fc")
                for m, v in (("video", video), ("audio", audio))}
        return {"method": method, "seed": seed, "seconds": 10.0, **top1}

    results = [run("xdc", 0, 0.60, 0.50), run("xdc", 1, 0.64, 0.40),
               run("sdc", 0, 0.20, 0.45), run("sdc", 1, 0.24, 0.47)]
    table = avdigits.aggregate(results)
    assert np.allclose(table["xdc"]["linear_video"], (0.62, np.std([0.60, 0.64], ddof=1)))
    video = avdigits.beats(table, "xdc", "sdc", "linear_video")
    audio = avdigits.beats(table, "xdc", "sdc", "linear_audio")
    assert video["wins"] and np.isclose(video["margin"], 0.40)
    assert not audio["wins"]  # margin -0.01: behind, and within the spread
    one_seed = avdigits.aggregate(results[::2])
    assert not avdigits.beats(one_seed, "xdc", "sdc", "linear_video")["wins"]  # no spread, no claim
    text = avdigits.markdown(one_seed, {}, "header")
    assert "| xdc | 0.600 | 0.500 |" in text and "±" not in text
