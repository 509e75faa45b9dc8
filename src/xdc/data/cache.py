"""Decoded-clip cache: decode every video once, serve every later window from memory-mapped arrays.

For small datasets that are read many times (the demo runs six methods over the same videos,
the avdigits benchmark 21 runs), decoding dominates the budget. `build_cache` decodes each video
once, through `decode.decode_clip`, at the data config's frame rate, short side and sample rate,
and stores
- `frames.u8`: every video's frames on the `1 / fps` time grid, uint8 RGB, concatenated;
- `audio.f32`: every video's mono audio at `sample_rate`, with a margin for audio windows longer
  than the clip, concatenated;
- `index.json`: the settings and, per video, where its frames and samples lie.

With `data.cache_dir` set, `AudioVideoClips` asks `cached_clips` before decoding, so training,
feature extraction and fine-tuning use the cache; a file not in the cache, or a config that asks
for other settings (fps, size, rate, streams), is decoded as usual. The decoder knows nothing of
the cache: this module reads files through it.

Same answers as decoding, up to the time grid: a window's start is rounded down to a multiple of
`1 / fps` (exact when the video's own frame rate is `fps`, as for prepared or generated videos).
Windows past the last frame hold it; videos shorter than a clip loop or pad (`cfg.short_video`),
as in decoding.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xdc.data.decode import Clip, DecodeError, decode_clip, media_duration
from xdc.files import atomic_file, write_text_atomic
from xdc.progress import progress as progress_bar

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import DataConfig

INDEX = "index.json"
SETTINGS = ("fps", "short_side", "sample_rate", "video_stream", "audio_stream")
_OPEN: dict[str, "ClipCache"] = {}  # per process: cache folder -> opened cache


AUDIO_TAIL = 0.25  # seconds kept past the last frame: audio streams often run a little longer


def _margin(cfg: DataConfig) -> float:
    """Seconds of audio kept before the first and after the last frame."""
    return max(0.0, (cfg.audio_window_seconds - cfg.clip_seconds) / 2) + AUDIO_TAIL


def _settings(cfg: DataConfig) -> dict:
    return {key: getattr(cfg, key) for key in SETTINGS} | {"audio_margin": _margin(cfg)}


def _key(path) -> str:
    return str(Path(path).resolve())


def _stamp(path) -> list[int]:
    """Size and modification time: a file rewritten since it was cached is decoded again."""
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


def _is_current(index: dict, rows: list[dict], cfg: DataConfig) -> bool:
    if index["settings"] != _settings(cfg):
        return False
    for row in rows:
        key = _key(row["path"])
        entry = index["videos"].get(key) or index["failed"].get(key)
        if entry is None or not os.path.exists(row["path"]) or entry["stamp"] != _stamp(row["path"]):
            return False
    return True


def build_cache(rows: list[dict], cfg: DataConfig, cache_dir: str | Path, progress: bool = True) -> dict:
    """Decode the `ok` rows once into `cache_dir` (reused when it already holds them with the
    same settings); returns a summary with counts and failures (named, not dropped silently)."""
    cache_dir = Path(cache_dir)
    wanted = [r for r in rows if r.get("status") == "ok"]
    index_path = cache_dir / INDEX
    if index_path.is_file():
        if _is_current(json.loads(index_path.read_text()), wanted, cfg):
            return {"cached": len(wanted), "failed": {}, "reused": True}
        index_path.unlink()  # from here until the new index is written, there is no cache
    cache_dir.mkdir(parents=True, exist_ok=True)
    margin = _margin(cfg)
    videos, failed = {}, {}
    frame_offset = audio_offset = 0
    with atomic_file(cache_dir / "frames.u8") as frames_out, atomic_file(cache_dir / "audio.f32") as audio_out:
        for row in progress_bar(wanted, desc="decode once (cache)", unit="video", disable=not progress):
            try:
                duration = row.get("duration") or media_duration(row["path"], cfg)
                num = max(1, math.ceil(duration * cfg.fps - 1e-6))  # grid times j / fps < duration
                stamp = _stamp(row["path"])
                whole = replace(cfg, frames=num, audio_seconds=num / cfg.fps + 2 * margin, short_video="pad")
                clip = decode_clip(row["path"], 0.0, whole, with_audio=bool(row.get("has_audio")))
            except (DecodeError, OSError, ValueError) as err:
                failed[_key(row["path"])] = {"stamp": _stamp(row["path"]) if os.path.exists(row["path"])
                                             else None, "reason": str(err)}
                continue
            video = np.ascontiguousarray(clip.video, dtype=np.uint8)
            frames_out.write(video.tobytes())
            entry = {"stamp": stamp, "frame_offset": frame_offset, "frames": num, "height": video.shape[1],
                     "width": video.shape[2], "audio_offset": None, "samples": 0}
            frame_offset += video.size
            if clip.audio is not None:
                audio = np.ascontiguousarray(clip.audio, dtype=np.float32)
                audio_out.write(audio.tobytes())
                entry.update(audio_offset=audio_offset, samples=int(audio.size))
                audio_offset += audio.size
            videos[_key(row["path"])] = entry
    # Written last: a half-built cache has no index.
    write_text_atomic(index_path, json.dumps({"settings": _settings(cfg), "videos": videos, "failed": failed}))
    _OPEN.pop(str(cache_dir), None)
    if failed and progress:
        print(f"cache: {len(failed)} of {len(wanted)} videos could not be decoded; they are decoded "
              f"(and skipped) as usual when read, e.g. {next(iter(failed))}: "
              f"{next(iter(failed.values()))['reason']}")
    return {"cached": len(videos), "failed": failed, "reused": False}


class ClipCache:
    """An opened cache: memory maps (shared between processes by the OS page cache) + index."""

    def __init__(self, cache_dir: str | Path):
        cache_dir = Path(cache_dir)
        index = json.loads((cache_dir / INDEX).read_text())
        self.settings, self.videos = index["settings"], index["videos"]
        self.frames = self._map(cache_dir / "frames.u8", np.uint8)
        self.audio = self._map(cache_dir / "audio.f32", np.float32)

    @staticmethod
    def _map(path: Path, dtype) -> np.ndarray:
        if path.stat().st_size == 0:
            return np.zeros(0, dtype)
        return np.memmap(path, dtype=dtype, mode="r")

    def matches(self, cfg: DataConfig) -> bool:
        return self.settings == _settings(cfg)

    def clips(self, path, starts, cfg: DataConfig, with_audio: bool = True) -> list[Clip] | None:
        entry = self.videos.get(_key(path))
        if entry is None or not os.path.exists(path) or entry["stamp"] != _stamp(path):
            return None  # not cached, or rewritten since: decode the file itself
        num, h, w = entry["frames"], entry["height"], entry["width"]
        video = self.frames[entry["frame_offset"]:entry["frame_offset"] + num * h * w * 3]
        video = video.reshape(num, h, w, 3)
        out = []
        for start in starts:
            first = int(math.floor(max(0.0, float(start)) * cfg.fps + 1e-6))
            start = first / cfg.fps  # video and audio both start on the grid, so they stay aligned
            grid = first + np.arange(cfg.frames)
            # As decode: a video shorter than the clip loops (or pads); a window that runs past
            # the end of a longer video holds the last frame.
            looped = cfg.short_video == "loop" and num < cfg.frames
            grid = grid % num if looped else np.minimum(grid, num - 1)
            audio = None
            if with_audio and entry["audio_offset"] is not None:
                audio = self._audio_window(entry, start, cfg)
            out.append(Clip(np.array(video[grid]), audio, start))
        return out

    def _audio_window(self, entry: dict, start: float, cfg: DataConfig) -> np.ndarray:
        """The `audio_window_seconds` centred on the clip; zeros where the cache has no samples."""
        rate = cfg.sample_rate
        length = int(round(cfg.audio_window_seconds * rate))
        samples = self.audio[entry["audio_offset"]:entry["audio_offset"] + entry["samples"]]
        centre = start + cfg.clip_seconds / 2
        offset = int(round((centre - cfg.audio_window_seconds / 2 + self.settings["audio_margin"]) * rate))
        window = np.zeros(length, np.float32)
        lo, hi = max(offset, 0), min(offset + length, samples.size)
        if hi > lo:
            window[lo - offset:hi - offset] = samples[lo:hi]
        return window


def open_cache(cache_dir: str | Path) -> ClipCache | None:
    """The cache in `cache_dir`, opened once per process; None when the folder holds none."""
    key = str(Path(cache_dir))
    if key not in _OPEN:
        if not (Path(cache_dir) / INDEX).is_file():
            return None
        _OPEN[key] = ClipCache(cache_dir)
    return _OPEN[key]


def cached_clips(cache_dir: str | Path, path, starts, cfg: DataConfig,
                 with_audio: bool = True) -> list[Clip] | None:
    """Windows of `path` from the cache, or None (decode as usual) when the cache cannot answer."""
    cache = open_cache(cache_dir)
    if cache is None or not cache.matches(cfg):
        return None
    return cache.clips(path, starts, cfg, with_audio)
