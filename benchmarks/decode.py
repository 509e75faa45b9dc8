"""Clip-loading speed and memory: the project's decoder against a naive loader, on real clips.

    python benchmarks/decode.py --json out.json [--decodes 2000] [--windows 200]

Loaders timed in turns on the same random windows of clips >= 10 s (train mode: one random
`frames`-at-`fps` clip + its audio per call):
- naive: open the file, decode from its start up to the window's end, convert every decoded
  frame to RGB, pick the window's frames by timestamp (what a first loader usually does);
- naive_minimal (for honesty): the same, converting only the window's frames;
- decode / prepared_decode: `xdc.data.decode.decode_clips` (seek to the keyframe before the
  window, convert only kept frames) on the originals / on `xdc prepare` copies;
- dataset / prepared_dataset: `AudioVideoClips` train items (decode + log-mel + crop/flip), the
  project's loader as training uses it: `clips_per_s` and `prepared_clips_per_s`;
- sharded_decode / sharded_dataset: the same prepared copies packed by `xdc prepare --shards`,
  each item read by offset from its tar shard: `sharded_clips_per_s`, and `shards_vs_prepared`
  (sharded / prepared train items per second; target >= 0.9);
- eval_dataset: eval items, `eval_clips` uniformly spaced clips per video from one decode pass;
  eval_video_only: the same without the audio (`with_audio=False`, video-only fine-tuning).
`prepare_seconds` is the one-time cost of `xdc prepare` on the clips. `rss_growth_mb` is the
resident-memory growth of this process over `--decodes` train items after a warm-up (leaks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import av
import numpy as np
import torch
from tqdm import tqdm

from xdc.config import DataConfig
from xdc.data.datasets import AudioVideoClips
from xdc.data.decode import decode_clips
from xdc.data.manifest import read_manifest, write_manifest
from xdc.data.prepare import prepare_manifest, prepare_shards
from xdc.data.scan import scan_paths
from xdc.data.transcode import PrepareOptions

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VIDEOS = REPO.parent / "shared" / "data" / "videos"
WARMUP_DECODES = 50


def rss_mb() -> float:
    """Resident set size of this process now (Linux /proc), in MiB."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def naive_clip(path: str, start: float, cfg: DataConfig, convert_all: bool = True):
    """Decode from the file's start to the window's end (no seeking); pick frames by timestamp."""
    targets = start + np.arange(cfg.frames) / cfg.fps
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # same threading as the project's decoder
        stream.codec_context.thread_count = 2
        recent: list[tuple[float, object]] = []  # (time, frame or RGB array), bounded
        for frame in container.decode(stream):
            image = frame.to_ndarray(format="rgb24") if convert_all else frame
            recent = recent[-4 * cfg.frames * 8:] + [(frame.time or 0.0, image)]
            if (frame.time or 0.0) > targets[-1]:
                break
        times = np.array([t for t, _ in recent])
        chosen = [recent[max(0, int(np.searchsorted(times, t, side="right")) - 1)][1] for t in targets]
        if not convert_all:
            w, h = chosen[0].width, chosen[0].height
            scale = cfg.short_side / min(w, h)
            chosen = [f.to_ndarray(width=round(w * scale), height=round(h * scale), format="rgb24")
                      for f in chosen]
        audio = None
        if container.streams.audio:
            container.seek(0)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=cfg.sample_rate)
            pieces, audio_end = [], start + cfg.clip_seconds / 2 + cfg.audio_window_seconds / 2
            for frame in container.decode(container.streams.audio[0]):
                pieces += [out.to_ndarray().ravel() for out in resampler.resample(frame)]
                if (frame.time or 0.0) > audio_end:
                    break
            audio = np.concatenate(pieces) if pieces else None
    return chosen, audio


def sample_windows(rows: list[dict], count: int, cfg: DataConfig, seed: int = 0) -> list[tuple[int, float]]:
    """(row index, start) pairs: a random video and a random start in it, as train mode draws."""
    rng = np.random.default_rng(seed)
    windows = []
    for i in rng.integers(0, len(rows), count):
        span = max(0.0, rows[i]["duration"] - cfg.clip_seconds)
        windows.append((int(i), float(rng.uniform(0, span))))
    return windows


def _item_clips(item: dict) -> int:
    if "skipped" in item:
        raise RuntimeError(f"benchmark clip skipped: {item['skipped']}")
    return item["video"].shape[0]  # the clip axis: 1 for train items


def interleaved_rates(loaders: dict, windows: list[tuple[int, float]]) -> dict[str, float]:
    """Clips per second of each loader over the same windows, taken in turns (the loader order
    rotating per window) so that load from other processes hits every loader alike."""
    seconds = dict.fromkeys(loaders, 0.0)
    clips = dict.fromkeys(loaders, 0)
    names = list(loaders)
    for i, (row, start) in enumerate(windows):
        for name in names[i % len(names):] + names[:i % len(names)]:
            began = time.perf_counter()
            clips[name] += loaders[name](row, start)
            seconds[name] += time.perf_counter() - began
    return {name: clips[name] / seconds[name] for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--videos", default=str(DEFAULT_VIDEOS), help="folder of real clips")
    parser.add_argument("--min-seconds", type=float, default=10.0, help="use clips at least this long")
    parser.add_argument("--decodes", type=int, default=2000, help="loader items for rss_growth_mb")
    parser.add_argument("--windows", type=int, default=200, help="windows timed per loader")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes for the one-time `xdc prepare`")
    args = parser.parse_args(argv)
    if not Path(args.videos).is_dir():
        print(f"no clips at {args.videos}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # as in a DataLoader worker
    torch.manual_seed(0)
    cfg = DataConfig()

    rows = [r for r in scan_paths([args.videos], workers=args.workers, progress=False)
            if r["status"] == "ok" and (r["duration"] or 0) >= args.min_seconds]
    if not rows:
        print(f"no ok clips of >= {args.min_seconds} s under {args.videos}", file=sys.stderr)
        return 2
    print(f"{len(rows)} clips >= {args.min_seconds} s: " + ", ".join(Path(r['path']).name for r in rows))

    with tempfile.TemporaryDirectory() as scratch:
        # One-time cost of `xdc prepare` on these clips.
        source = write_manifest(rows, Path(scratch) / "source.csv")
        options = PrepareOptions(short_side=cfg.short_side, sample_rate=cfg.sample_rate)
        summary = prepare_manifest(source, Path(scratch) / "prepared", None, options,
                                   workers=args.workers, progress=False)
        print(f"xdc prepare: {summary['files']} files in {summary['seconds']:.1f} s "
              f"({summary['files_per_s']:.2f} files/s, {args.workers} workers)")
        prepared_rows = read_manifest(summary["manifest"])  # same order as `rows`
        if any(r["status"] != "ok" for r in prepared_rows):
            raise RuntimeError(f"prepare failed: {summary['failures']}")

        train = AudioVideoClips(rows, cfg, mode="train", require_audio=False)
        evaluate = AudioVideoClips(rows, cfg, mode="eval", require_audio=False)
        evaluate_video = AudioVideoClips(rows, cfg, mode="eval", require_audio=False, with_audio=False)
        train_prepared = AudioVideoClips(prepared_rows, cfg, mode="train", require_audio=False)
        sharded = prepare_shards(source, Path(scratch) / "sharded", None, options, workers=args.workers,
                                 progress=False)
        sharded_rows = read_manifest(sharded["manifest"])  # same order as `rows`
        train_sharded = AudioVideoClips(sharded_rows, cfg, mode="train", require_audio=False)
        loaders = {
            "naive": lambda i, s: (naive_clip(rows[i]["path"], s, cfg), 1)[1],
            "naive_minimal": lambda i, s: (naive_clip(rows[i]["path"], s, cfg, convert_all=False), 1)[1],
            "decode": lambda i, s: len(decode_clips(rows[i]["path"], [s], cfg)),
            "prepared_decode": lambda i, s: len(decode_clips(prepared_rows[i]["path"], [s], cfg)),
            # The dataset draws its own random start (same distribution as the windows).
            "dataset": lambda i, s: _item_clips(train[i]),
            "prepared_dataset": lambda i, s: _item_clips(train_prepared[i]),
            "sharded_decode": lambda i, s: len(decode_clips(sharded_rows.source(i), [s], cfg)),
            "sharded_dataset": lambda i, s: _item_clips(train_sharded[i]),
        }
        windows = sample_windows(rows, args.windows, cfg)
        rates = interleaved_rates(loaders, windows)
        # Eval mode: eval_clips uniformly spaced clips per video from one decode pass.
        eval_windows = windows[:max(len(rows), args.windows // cfg.eval_clips)]
        rates.update(interleaved_rates({"eval_dataset": lambda i, s: _item_clips(evaluate[i]),
                                        "eval_video_only": lambda i, s: _item_clips(evaluate_video[i])},
                                       eval_windows))
        for name, rate in rates.items():
            print(f"{name:>18}: {rate:7.1f} clips/s")

        # Memory: many items in one process, as a DataLoader worker reads them.
        order = np.random.default_rng(1).integers(0, len(train), args.decodes + WARMUP_DECODES)
        for index in order[:WARMUP_DECODES]:
            train[int(index)]
        before = rss_mb()
        for index in tqdm(order[WARMUP_DECODES:], desc="rss", unit="clip"):
            train[int(index)]
        growth = rss_mb() - before
        print(f"rss growth over {args.decodes} items: {growth:.1f} MiB (from {before:.0f} MiB)")

    naive = rates["naive"]
    result = {
        "clips_per_s": rates["dataset"],
        "naive_clips_per_s": naive,
        "speedup_vs_naive": rates["dataset"] / naive,
        "prepared_clips_per_s": rates["prepared_dataset"],
        "speedup_prepared_vs_naive": rates["prepared_dataset"] / naive,
        "prepare_seconds": summary["seconds"],
        "sharded_clips_per_s": rates["sharded_dataset"],
        "shards_vs_prepared": rates["sharded_dataset"] / rates["prepared_dataset"],
        "sharded_decode_clips_per_s": rates["sharded_decode"],
        "prepare_shards_seconds": sharded["seconds"],
        "eval_clips_per_s": rates["eval_dataset"],
        "speedup_eval_vs_naive": rates["eval_dataset"] / naive,
        "eval_video_only_clips_per_s": rates["eval_video_only"],
        "speedup_video_only_vs_eval": rates["eval_video_only"] / rates["eval_dataset"],
        "decode_clips_per_s": rates["decode"],
        "prepared_decode_clips_per_s": rates["prepared_decode"],
        "naive_minimal_clips_per_s": rates["naive_minimal"],
        "speedup_vs_naive_minimal": rates["dataset"] / rates["naive_minimal"],
        "speedup_prepared_vs_naive_minimal": rates["prepared_dataset"] / rates["naive_minimal"],
        "rss_growth_mb": growth,
        "decodes": args.decodes,
        "config": {"clips": [Path(r["path"]).name for r in rows], "min_seconds": args.min_seconds,
                   "windows": len(windows), "eval_windows": len(eval_windows),
                   "prepare_files": summary["files"], "prepare_workers": args.workers,
                   "data": {k: v for k, v in asdict(cfg).items()
                            if k in ("frames", "fps", "short_side", "crop", "sample_rate", "n_mels",
                                     "eval_clips")},
                   "pyav": av.__version__, "cpus": os.cpu_count()},
    }
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: round(v, 2) for k, v in result.items() if isinstance(v, float)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
