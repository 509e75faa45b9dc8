"""The dataset asks the decoded-clip cache before decoding; the decoder knows nothing of it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from xdc.config import DataConfig
from xdc.data import cache
from xdc.data.datasets import AudioVideoClips
from xdc.data.manifest import empty_row

# 4-s clips at 16 fps (conftest.make_clip), read at 8 fps: every frame of the 1/8-s grid exists.
CFG = DataConfig(frames=4, fps=8.0, short_side=48, crop=40, eval_clips=3, num_workers=0)


@pytest.fixture
def rows(clip_factory):
    out = []
    for k in range(2):
        row = empty_row(clip_factory(f"clip{k}.mp4", seconds=4.0, seed=k))
        row.update(status="ok", duration=4.0, has_audio=True)
        out.append(row)
    return out


def with_cache(rows, tmp_path, cfg=CFG):
    cache.build_cache(rows, cfg, tmp_path / "cache", progress=False)
    return replace(cfg, cache_dir=str(tmp_path / "cache"))


def test_items_from_the_cache_are_the_items_of_decoding(rows, tmp_path):
    cached_cfg = with_cache(rows, tmp_path)
    for with_audio in (True, False):
        plain = AudioVideoClips(rows, CFG, mode="eval", require_audio=False, with_audio=with_audio)
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
    assert AudioVideoClips(rows, CFG, mode="eval", clips_per_video=1)[0]["start"].tolist() == [1.7]
    assert AudioVideoClips(rows, cached_cfg, mode="eval", clips_per_video=1)[0]["start"].tolist() == [1.625]
    torch.manual_seed(0)
    starts = [float(AudioVideoClips(rows, cached_cfg)[0]["start"]) * CFG.fps for _ in range(4)]
    assert starts == [round(s) for s in starts], "train items come from the cache too"
    # Settings the cache was not built with (another frame size), or a file it does not hold:
    # decoded from the file.
    other_size = replace(cached_cfg, short_side=56)
    assert AudioVideoClips(rows, other_size, mode="eval", clips_per_video=1)[0]["start"].tolist() == [1.7]
    cache.build_cache(rows[1:], CFG, tmp_path / "partial", progress=False)
    partial = replace(CFG, cache_dir=str(tmp_path / "partial"))
    starts = [AudioVideoClips(rows, partial, mode="eval", clips_per_video=1)[i]["start"].tolist() for i in (0, 1)]
    assert starts == [[1.7], [1.625]]
