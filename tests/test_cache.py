"""The decoded-clip cache (xdc.data.cache): what it serves equals what decoding gives."""

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
from xdc.data.manifest import read_manifest

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
