"""xdc.data.cache, the decoded-clip cache: what it serves equals what decoding gives, and the
dataset asks it before decoding (the decoder knows nothing of it)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from xdc.config import DataConfig
from xdc.data import cache, synthetic
from xdc.data.datasets import AudioVideoClips
from xdc.data.decode import decode_clips
from xdc.data.manifest import empty_row, read_manifest

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


# 4-s clips at 16 fps (conftest.make_clip), read at 8 fps: every frame of the 1/8-s grid exists.
DATASET_CFG = DataConfig(frames=4, fps=8.0, short_side=48, crop=40, eval_clips=3, num_workers=0)


@pytest.fixture
def rows(clip_factory):
    out = []
    for k in range(2):
        row = empty_row(clip_factory(f"clip{k}.mp4", seconds=4.0, seed=k))
        row.update(status="ok", duration=4.0, has_audio=True)
        out.append(row)
    return out


def with_cache(rows, tmp_path, cfg=DATASET_CFG):
    cache.build_cache(rows, cfg, tmp_path / "cache", progress=False)
    return replace(cfg, cache_dir=str(tmp_path / "cache"))


def test_items_from_the_cache_are_the_items_of_decoding(rows, tmp_path):
    cached_cfg = with_cache(rows, tmp_path)
    for with_audio in (True, False):
        plain = AudioVideoClips(rows, DATASET_CFG, mode="eval", require_audio=False, with_audio=with_audio)
        cached = AudioVideoClips(rows, cached_cfg, mode="eval", require_audio=False, with_audio=with_audio)
        for i in range(len(rows)):
            a, b = plain[i], cached[i]
            assert a.keys() == b.keys()
            assert a["start"].tolist() == b["start"].tolist() == [0.0, 1.75, 3.5]  # on the 1/8-s grid
            assert torch.equal(a["video"], b["video"])
            if with_audio:  # the cache cuts the window from one long decode: equal up to resampling
                assert (a["audio"] - b["audio"]).abs().mean() < 0.05


def test_the_dataset_asks_the_cache_first(rows, tmp_path):
    # A manifest duration a little short of the file's puts the centre clip off the grid: the
    # decoder starts at 1.7 s, the cache on the grid step before it, so the start says who answered.
    rows = [dict(r, duration=3.9) for r in rows]
    cached_cfg = with_cache(rows, tmp_path)
    assert AudioVideoClips(rows, DATASET_CFG, mode="eval", clips_per_video=1)[0]["start"].tolist() == [1.7]
    assert AudioVideoClips(rows, cached_cfg, mode="eval", clips_per_video=1)[0]["start"].tolist() == [1.625]
    torch.manual_seed(0)
    starts = [float(AudioVideoClips(rows, cached_cfg)[0]["start"]) * DATASET_CFG.fps for _ in range(4)]
    assert starts == [round(s) for s in starts], "train items come from the cache too"
    # Settings the cache was not built with (another frame size), or a file it does not hold:
    # decoded from the file.
    other_size = replace(cached_cfg, short_side=56)
    assert AudioVideoClips(rows, other_size, mode="eval", clips_per_video=1)[0]["start"].tolist() == [1.7]
    cache.build_cache(rows[1:], DATASET_CFG, tmp_path / "partial", progress=False)
    partial = replace(DATASET_CFG, cache_dir=str(tmp_path / "partial"))
    starts = [AudioVideoClips(rows, partial, mode="eval", clips_per_video=1)[i]["start"].tolist() for i in (0, 1)]
    assert starts == [[1.7], [1.625]]
