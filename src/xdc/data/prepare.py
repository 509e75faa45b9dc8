"""`xdc prepare MANIFEST --out DIR`: re-encode a dataset into training-friendly copies.

What large video pipelines do once before training, so that every clip read afterwards is cheap:
- short side resized (default 128 px, aspect kept, even sizes for yuv420p): less to decode;
- rotation metadata applied to the pixels, so the copies have rotation 0;
- H.264 with a keyframe every ~0.5 s and no B-frames: a seek lands at most 0.5 s before any
  window, and frames decode in order;
- audio resampled to 16 kHz mono AAC (videos without audio stay without).
Frame timestamps are kept (variable frame rate survives) unless `--fps N` resamples them.

Each copy is written to a temporary name and renamed when complete; copies that already exist
and probe fine are reused, so an interrupted run resumes. A file that fails to re-encode becomes
a `skip` row with the reason; the batch goes on.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm import tqdm

from xdc.data.manifest import read_manifest, write_manifest
from xdc.data.manifest_csv import ManifestError
from xdc.data.scan import clockwise_rotation, probe_file
from xdc.data.shards import SHARD_PATTERN, ShardWriter, parse_size
from xdc.errors import XdcError

TIME_BASE = Fraction(1, 90000)  # output video timestamps (the MPEG clock: exact for common rates)


@dataclass(frozen=True)
class PrepareOptions:
    short_side: int = 128
    keyframe_seconds: float = 0.5
    sample_rate: int = 16000
    fps: float | None = None  # None keeps the source timestamps
    crf: int = 23
    preset: str = "veryfast"


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side `short_side`, aspect kept, both even."""
    scale = short_side / min(width, height)
    def even(x: float) -> int:
        return max(2, int(round(x / 2)) * 2)
    return even(width * scale), even(height * scale)


def output_path(source: Path, root: Path, out_dir: Path) -> Path:
    """Mirror the source's place under `root`; non-MP4 names keep their extension (a.avi.mp4)
    so that a.avi and a.mkv in one folder do not collide. Paths are normalised first (`a/../b`
    is `b`), so the copy lands under `out_dir`; a source outside `root` raises ManifestError."""
    source, root = Path(os.path.abspath(source)), Path(os.path.abspath(root))
    if not source.is_relative_to(root):
        raise ManifestError(f"{source} is not under {root}: its copy would land outside --out")
    relative = source.relative_to(root)
    name = relative.name if relative.suffix.lower() == ".mp4" else relative.name + ".mp4"
    return out_dir / relative.parent / name


def reencode(source: str | Path, target: str | Path, options: PrepareOptions = PrepareOptions()) -> Path:
    """Write the training copy of `source` to `target` (through a temporary file)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    rotation = display_rotation(source)
    try:
        with av.open(str(source)) as src, av.open(str(partial), mode="w", format="mp4") as dst:
            _transcode(src, dst, options, rotation)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def display_rotation(path: str | Path) -> int:
    """Clockwise degrees that show the video upright (the manifest's `rotation`), read from the
    first decoded frame: the output size depends on it and must be fixed before any muxing."""
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            return clockwise_rotation(frame)
    raise ValueError("no video frame decoded")


def _transcode(src, dst, options: PrepareOptions, rotation: int) -> None:
    if not src.streams.video:
        raise ValueError("no video stream")
    vin = src.streams.video[0]
    vin.thread_type = "AUTO"  # frame + slice threads: decoding is most of the cost
    ain = src.streams.audio[0] if src.streams.audio else None
    origin = _origin_seconds(src)

    source_fps = float(vin.average_rate or vin.guessed_rate or 25)
    out_fps = options.fps or source_fps
    vout = dst.add_stream("libx264", rate=Fraction(out_fps).limit_denominator(1001))
    vout.codec_context.time_base = TIME_BASE
    vout.pix_fmt = "yuv420p"
    vout.options = {"crf": str(options.crf), "preset": options.preset, "bf": "0",
                    "g": str(max(1, round(out_fps * options.keyframe_seconds)))}
    aout = resampler = None
    if ain is not None:
        aout = dst.add_stream("aac", rate=options.sample_rate)
        aout.layout = "mono"
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=options.sample_rate)

    video = _VideoWriter(dst, vout, options, rotation, origin, vin.codec_context.width,
                         vin.codec_context.height, source_fps)
    audio = _AudioWriter(dst, aout, resampler, origin, options.sample_rate) if aout else None
    streams = [vin] + ([ain] if ain is not None else [])
    for packet in src.demux(streams):
        try:
            frames = packet.decode()
        except av.error.InvalidDataError:
            continue  # a damaged packet: keep going, the next keyframe resyncs the decoder
        for frame in frames:
            if packet.stream is vin:
                video.add(frame)
            elif audio is not None:
                audio.add(frame)
    video.close()
    if audio is not None:
        audio.close()
    if video.frames_written == 0:
        raise ValueError("no video frame decoded")


def _origin_seconds(src) -> float:
    """Common time zero of all streams (the container's start), so audio stays aligned."""
    return src.start_time / av.time_base if src.start_time is not None else 0.0


class _VideoWriter:
    """Resize, rotate upright and encode frames; with a target fps, pick frames by timestamp."""

    def __init__(self, dst, stream, options: PrepareOptions, rotation: int, origin: float,
                 width: int, height: int, source_fps: float):
        self.dst, self.stream, self.options, self.origin = dst, stream, options, origin
        self.source_step = 1.0 / source_fps  # for the rare frame without any timestamp
        self.turns = -(rotation // 90) % 4  # np.rot90 turns counter-clockwise; rotation is clockwise
        # The size must be set before anything is muxed (audio may come first), so take it from
        # the stream header rather than from the first decoded frame.
        if not (width and height):
            raise ValueError("video stream has no frame size")
        shown_w, shown_h = (height, width) if self.turns % 2 else (width, height)
        out_w, out_h = output_size(shown_w, shown_h, options.short_side)
        stream.width, stream.height = out_w, out_h
        self.size = (out_h, out_w) if self.turns % 2 else (out_w, out_h)  # before rotating
        self.frames_written = 0
        self.last_time = -1.0
        self.pending: tuple[float, np.ndarray] | None = None  # fps mode: the frame shown until the next
        self.first_tick = self.next_tick = 0.0
        self.clock = BestEffortClock()

    def add(self, frame: av.VideoFrame) -> None:
        stamp = self.clock.timestamp(frame)
        if stamp is None:
            seconds = self.last_time + self.source_step
        else:
            seconds = float(stamp * frame.time_base) - self.origin
        if seconds <= self.last_time:  # duplicate or out-of-order timestamp: MP4 needs increasing
            return
        self.last_time = seconds
        image = self._upright(frame)
        if self.options.fps is None:
            self._encode(image, seconds)
        else:
            if self.pending is None:
                self.first_tick = self.next_tick = seconds
            self._resample_until(seconds)
            self.pending = (seconds, image)

    def _upright(self, frame: av.VideoFrame) -> np.ndarray:
        image = frame.to_ndarray(width=self.size[0], height=self.size[1], format="rgb24",
                                 interpolation="AREA")
        return np.ascontiguousarray(np.rot90(image, self.turns)) if self.turns else image

    def _resample_until(self, seconds: float) -> None:
        """Show the pending frame at every output tick before `seconds` (repeats or drops)."""
        if self.pending is None:
            return
        image = self.pending[1]
        while self.next_tick < seconds - 1e-9:
            self._encode(image, self.next_tick)
            self.next_tick = self.first_tick + self.frames_written / self.options.fps

    def _encode(self, image: np.ndarray, seconds: float) -> None:
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(round(seconds / TIME_BASE))
        frame.time_base = TIME_BASE
        for packet in self.stream.encode(frame):
            self.dst.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        if self.options.fps is not None and self.pending is not None:
            self._resample_until(self.pending[0] + 1.0 / self.options.fps)
        for packet in self.stream.encode(None):
            self.dst.mux(packet)


class BestEffortClock:
    """FFmpeg's best-effort timestamp (PyAV does not expose it): use a frame's pts unless pts
    have gone backwards more often than dts. AVI has no pts, so an Xvid file with packed
    B-frames gets pts that jump back and forth while its dts count frames in display order."""

    def __init__(self):
        self.faulty_pts = self.faulty_dts = 0
        self.last_pts = self.last_dts = None

    def timestamp(self, frame) -> int | None:
        pts, dts = frame.pts, frame.dts
        if pts is not None and self.last_pts is not None and pts <= self.last_pts:
            self.faulty_pts += 1
        if dts is not None and self.last_dts is not None and dts <= self.last_dts:
            self.faulty_dts += 1
        self.last_pts = pts if pts is not None else self.last_pts
        self.last_dts = dts if dts is not None else self.last_dts
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        return dts


class _AudioWriter:
    """Resample to mono at `rate` and encode; timestamps counted in samples from the first frame."""

    def __init__(self, dst, stream, resampler, origin: float, rate: int):
        self.dst, self.stream, self.resampler, self.origin, self.rate = dst, stream, resampler, origin, rate
        self.next_pts: int | None = None

    def add(self, frame: av.AudioFrame | None) -> None:
        if frame is not None and self.next_pts is None:
            start = (frame.time or 0.0) - self.origin
            self.next_pts = int(round(start * self.rate))
        for out in self.resampler.resample(frame):
            samples = out.to_ndarray()
            if self.next_pts is not None and self.next_pts < 0:  # audio before time zero: trim it
                cut = min(-self.next_pts, samples.shape[1])
                samples, self.next_pts = samples[:, cut:], self.next_pts + cut
                if samples.shape[1] == 0:
                    continue
            fresh = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="mono")
            fresh.sample_rate = self.rate
            fresh.pts = self.next_pts or 0
            fresh.time_base = Fraction(1, self.rate)
            self.next_pts = (self.next_pts or 0) + samples.shape[1]
            for packet in self.stream.encode(fresh):
                self.dst.mux(packet)

    def close(self) -> None:
        self.add(None)  # flush the resampler
        for packet in self.stream.encode(None):
            self.dst.mux(packet)


def prepare_row(job: tuple[dict[str, Any], str, PrepareOptions]) -> tuple[dict[str, Any], str]:
    """Re-encode one manifest row; returns the new row and what happened (done/reused/failed)."""
    row, target, options = job
    target_path = Path(target)
    if target_path.exists():
        reused = probe_file(target_path, label=row.get("label"))
        if reused["status"] == "ok":
            return reused, "reused"
    try:
        reencode(row["path"], target_path, options)
    except Exception as err:  # one bad file must not stop the batch
        text = getattr(err, "strerror", None) or str(err) or type(err).__name__
        failed = {**row, "status": "skip", "reason": f"re-encode failed: {text}"}
        return failed, "failed"
    return probe_file(target_path, label=row.get("label")), "done"


def prepare_manifest(manifest: str | Path, out_dir: str | Path, new_manifest: str | Path | None = None,
                     options: PrepareOptions = PrepareOptions(), workers: int = 1,
                     progress: bool = True, drop_missing: bool = False) -> dict[str, Any]:
    """Re-encode every `ok` row of `manifest` under `out_dir`; `skip` rows are carried over.

    Returns a summary: counts, seconds, files/s, and the new manifest's path.
    """
    out_dir = Path(out_dir)
    new_manifest = Path(new_manifest) if new_manifest else out_dir / "manifest.csv"
    rows = read_manifest(manifest, drop_missing=drop_missing)
    ok_rows = [row for row in rows if row["status"] == "ok"]
    root = Path(os.path.commonpath([os.path.abspath(Path(r["path"]).parent) for r in ok_rows])) if ok_rows else out_dir
    jobs = [(row, str(output_path(Path(row["path"]), root, out_dir)), options) for row in ok_rows]
    targets = [job[1] for job in jobs]
    if len(set(targets)) != len(targets):
        raise ManifestError(f"{manifest}: two rows map to the same output file (duplicate paths?)")

    started = time.perf_counter()
    bar = dict(total=len(jobs), desc="prepare", unit="file", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        results = [prepare_row(job) for job in tqdm(jobs, **bar)]
    else:
        context = multiprocessing.get_context("spawn")  # the parent may hold threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results = list(tqdm(pool.map(prepare_row, jobs), **bar))
    seconds = time.perf_counter() - started

    prepared = iter(results)
    # A copy keeps its source's id: labels of the originals match it (manifest column `id`).
    new_rows = [{**next(prepared)[0], "id": row.get("id")} if row["status"] == "ok" else row for row in rows]
    write_manifest(new_rows, new_manifest)
    outcomes = Counter(outcome for _, outcome in results)
    return {"manifest": str(new_manifest), "files": len(jobs), "seconds": seconds,
            "files_per_s": len(jobs) / seconds if seconds > 0 else 0.0,
            "done": outcomes["done"], "reused": outcomes["reused"], "failed": outcomes["failed"],
            "carried_skips": len(rows) - len(ok_rows),
            "failures": [(row["path"], row["reason"]) for row, outcome in results if outcome == "failed"]}


# ------------------------------------------------------------------------- --shards

def _encode_sample(job: tuple[dict[str, Any], str, PrepareOptions]) -> tuple[dict[str, Any], str]:
    """prepare_row for a shard: the row keeps the source's path and id (the shard says where the
    bytes are)."""
    row, target, options = job
    new_row, outcome = prepare_row(job)
    return {**new_row, "path": row["path"], "label": row.get("label"), "id": row.get("id")}, outcome


def _finished_shards(shard_dir: Path) -> dict[str, dict[str, Any]]:
    """Rows of the shards a previous run completed (tar and index both written), by source path;
    what a killed run left half-written is removed."""
    done: dict[str, dict[str, Any]] = {}
    for stale in shard_dir.glob("*.partial"):
        stale.unlink()
    for tar in sorted(shard_dir.glob("shard-*.tar")):
        index = tar.with_suffix(".csv")
        if not index.is_file():  # killed between the tar's rename and its index: redo it
            tar.unlink()
            continue
        for row in read_manifest(index, check_files="none"):
            done[row["path"]] = row
    return done


def prepare_shards(manifest: str | Path, out_dir: str | Path, new_manifest: str | Path | None = None,
                   options: PrepareOptions = PrepareOptions(), workers: int = 1, shard_size: int = 2**30,
                   progress: bool = True, drop_missing: bool = False) -> dict[str, Any]:
    """Re-encode every `ok` row (as `prepare_manifest`) into tar shards `OUT/shards/shard-NNNNNN.tar`
    of about `shard_size` bytes (`<key>.mp4` + `<key>.json` per sample, key = the row's index in
    the input manifest), and write a manifest whose rows point into them (docs/DESIGN.md).

    Resumable: each finished shard has an index `shard-NNNNNN.csv` (its rows, skips included);
    a rerun keeps the finished shards and encodes only the rows none of them holds.
    """
    out_dir = Path(out_dir)
    new_manifest = Path(new_manifest) if new_manifest else out_dir / "manifest.csv"
    shard_dir, work = out_dir / "shards", out_dir / ".work"
    shard_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    rows = read_manifest(manifest, drop_missing=drop_missing)
    done = _finished_shards(shard_dir)
    previous = len(done)
    numbers = [int(p.stem.split("-")[1]) for p in shard_dir.glob("shard-*.tar")]
    jobs = [(row, str(work / f"{i:09d}.mp4"), options) for i, row in enumerate(rows)
            if row["status"] == "ok" and row["path"] not in done]

    started = time.perf_counter()
    bar = dict(total=len(jobs), desc="prepare --shards", unit="file", disable=not progress)
    outcomes: Counter[str] = Counter()
    failures = []
    shard, shard_rows, number = None, [], max(numbers, default=-1) + 1

    def close_shard() -> None:
        nonlocal shard, shard_rows, number
        tar = shard.close()
        write_manifest(shard_rows, tar.with_suffix(".csv"))  # after the tar: an index means a whole shard
        done.update((row["path"], row) for row in shard_rows)
        shard, shard_rows, number = None, [], number + 1

    def results():
        if workers <= 1 or len(jobs) <= 1:
            yield from map(_encode_sample, jobs)
            return
        context = multiprocessing.get_context("spawn")  # the parent may hold threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            yield from pool.map(_encode_sample, jobs)

    try:
        for job, (row, outcome) in zip(jobs, tqdm(results(), **bar)):
            outcomes[outcome] += 1
            if shard is None:
                shard = ShardWriter(shard_dir / SHARD_PATTERN.format(number))
            if outcome == "failed":
                failures.append((row["path"], row["reason"]))
            else:
                target = Path(job[1])
                key = target.stem
                offset, size = shard.add(key, target, {**row, "key": key})
                row.update(shard=str(shard.path), offset=offset, size=size)
                target.unlink()
            shard_rows.append(row)
            if shard.bytes_written >= shard_size:
                close_shard()
        if shard is not None:
            close_shard()
    except BaseException:
        if shard is not None:
            shard.abort()
        raise
    seconds = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)

    # Input order; skip rows of the input carried over as they are.
    write_manifest([done[row["path"]] if row["status"] == "ok" else row for row in rows], new_manifest)
    ok = sum(1 for row in done.values() if row["status"] == "ok")
    return {"manifest": str(new_manifest), "files": len(jobs), "seconds": seconds,
            "files_per_s": len(jobs) / seconds if seconds > 0 else 0.0,
            "done": outcomes["done"] + outcomes["reused"], "reused": previous,
            "failed": outcomes["failed"], "carried_skips": sum(1 for row in rows if row["status"] != "ok"),
            "failures": failures, "shards": len(list(shard_dir.glob("shard-*.tar"))), "samples": ok}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="manifest CSV from `xdc scan`")
    parser.add_argument("--out", required=True, help="folder for the re-encoded copies")
    # `-o` has always named the new manifest here; `--out-manifest` says so in the shared vocabulary.
    parser.add_argument("--out-manifest", "-o", "--output", dest="output", default=None, metavar="CSV",
                        help="new manifest (default: OUT/manifest.csv)")
    parser.add_argument("--short-side", type=int, default=128, help="pixels of the copies' shorter side")
    parser.add_argument("--keyframe-seconds", type=float, default=0.5, help="a keyframe every this many seconds")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio rate of the copies (mono)")
    parser.add_argument("--fps", type=_parse_fps, default="none",
                        help="'none' keeps source timestamps, or a frame rate")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="parallel encoders")
    parser.add_argument("--shards", action="store_true",
                        help="pack the copies into tar shards (WebDataset layout) under OUT/shards")
    parser.add_argument("--shard-size", type=_parse_size, default="1GB", help="bytes per shard (default 1GB)")
    parser.add_argument("--drop-missing", action="store_true",
                        help="make rows whose file is gone skip rows instead of stopping")


def _parse_size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _parse_fps(text: str) -> float | None:
    if text.lower() in ("none", "", "source"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 or 'none', got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    options = PrepareOptions(short_side=args.short_side, keyframe_seconds=args.keyframe_seconds,
                             sample_rate=args.sample_rate, fps=args.fps)
    if options.short_side < 2 or options.keyframe_seconds <= 0 or options.sample_rate < 1000:
        raise XdcError("--short-side must be >= 2, --keyframe-seconds > 0, --sample-rate >= 1000")
    if args.shards:
        summary = prepare_shards(args.manifest, args.out, args.output, options, args.workers,
                                 shard_size=args.shard_size, drop_missing=args.drop_missing)
    else:
        summary = prepare_manifest(args.manifest, args.out, args.output, options, args.workers,
                                   drop_missing=args.drop_missing)
    print(f"prepared {summary['files']} file(s) in {summary['seconds']:.1f} s "
          f"({summary['files_per_s']:.2f} files/s): {summary['done']} encoded, "
          f"{summary['reused']} reused, {summary['failed']} failed; "
          f"{summary['carried_skips']} skip row(s) carried over")
    for path, reason in summary["failures"][:10]:
        print(f"  failed: {path}: {reason}")
    if args.shards:
        print(f"{summary['samples']} sample(s) in {summary['shards']} shard(s) under {Path(args.out) / 'shards'}")
    print(f"wrote {summary['manifest']}")
    return 0
