"""`xdc prepare MANIFEST --out DIR`: re-encode a dataset into training-friendly copies.

What large video pipelines do once before training, so that every clip read afterwards is cheap
(`xdc.data.transcode`: short side 128, rotation applied, a keyframe every 0.5 s and no B-frames,
16 kHz mono audio). The copies mirror the sources' places under DIR, or with `--shards` are packed
into tar shards under DIR/shards (`xdc.data.shards`).

One prepare per DIR at a time (`xdc.locks`). DIR records the copies' settings (`prepare.json`,
`xdc.stamps`): a rerun with the same settings resumes (copies that exist and probe fine are
reused, finished shards kept) and one with other settings is refused. A file that fails to
re-encode becomes a `skip` row with the reason and the batch goes on; a full disk is never the
video's fault: it stops the run (`DiskFullError` naming the path), keeping what was done.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from xdc.data.manifest import read_manifest, write_manifest
from xdc.data.manifest_csv import ManifestError
from xdc.data.scan import probe_file
from xdc.data.shards import SHARD_PATTERN, ShardWriter, parse_size
from xdc.data.transcode import PrepareOptions, reencode
from xdc.errors import XdcError
from xdc.files import DiskFullError, disk_full_names, holds_files
from xdc.locks import LOCK_NAME, folder_lock
from xdc.progress import progress as progress_bar
from xdc.stamps import SettingsMismatch, check_stamp, write_stamp

SETTINGS_FILE = "prepare.json"  # in DIR: the settings its copies were made with
DISK_FULL_REMEDY = "free some space and run the same command again (what is done is kept and reused)"


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


@contextmanager
def prepare_folder(out_dir: Path, options: PrepareOptions) -> Iterator[None]:
    """Hold `out_dir` for one prepare, and check the settings its copies were made with: the same
    (or an empty folder) go on, others raise SettingsMismatch (copies of other settings are never
    reused), and so does a folder of files without the record (their settings are unknown)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(out_dir, "prepare folder"):
        stamp, settings = out_dir / SETTINGS_FILE, asdict(options)
        remedy = f"choose another --out, or delete {out_dir} to re-encode with these settings"
        if not check_stamp(stamp, settings, remedy=remedy):
            if holds_files(out_dir, besides=(LOCK_NAME,)):  # the stamp is written before any copy
                raise SettingsMismatch(f"{out_dir} holds files but no {SETTINGS_FILE}, the record of the settings "
                                       f"`xdc prepare` made its copies with: {remedy}")
            with disk_full_names(stamp, DISK_FULL_REMEDY):
                write_stamp(stamp, settings)
        yield


def prepare_row(job: tuple[dict[str, Any], str, PrepareOptions]) -> tuple[dict[str, Any], str]:
    """Re-encode one manifest row; returns the new row and what happened (done/reused/failed).
    A full disk raises DiskFullError (never a `skip` row: the video is fine)."""
    row, target, options = job
    target_path = Path(target)
    if target_path.exists():
        reused = probe_file(target_path, label=row.get("label"))
        if reused["status"] == "ok":
            return reused, "reused"
    try:
        with disk_full_names(target_path, DISK_FULL_REMEDY):
            reencode(row["path"], target_path, options)
    except DiskFullError:
        raise
    except Exception as err:  # one bad file must not stop the batch
        text = getattr(err, "strerror", None) or str(err) or type(err).__name__
        failed = {**row, "status": "skip", "reason": f"re-encode failed: {text}"}
        return failed, "failed"
    return probe_file(target_path, label=row.get("label")), "done"


def encode_all(fn: Callable, jobs: list, workers: int, desc: str, progress: bool) -> Iterator:
    """`fn(job)` for every job, in order, in `workers` processes; when the caller stops early (an
    error), jobs not started are cancelled."""
    bar = dict(total=len(jobs), desc=desc, unit="file", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        yield from progress_bar(map(fn, jobs), **bar)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:  # spawn: the parent may hold threads
        yield from progress_bar(pool.map(fn, jobs), **bar)
    finally:
        pool.shutdown(cancel_futures=True)


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

    with prepare_folder(out_dir, options):
        started = time.perf_counter()
        with closing(encode_all(prepare_row, jobs, workers, "prepare", progress)) as encoded:
            results = list(encoded)
        seconds = time.perf_counter() - started
        prepared = iter(results)
        # A copy keeps its source's id: labels of the originals match it (manifest column `id`).
        new_rows = [{**next(prepared)[0], "id": row.get("id")} if row["status"] == "ok" else row for row in rows]
        with disk_full_names(new_manifest, DISK_FULL_REMEDY):
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
    row = job[0]
    new_row, outcome = prepare_row(job)
    return {**new_row, "path": row["path"], "label": row.get("label"), "id": row.get("id")}, outcome


def _finished_shards(shard_dir: Path) -> dict[str, dict[str, Any]]:
    """Rows of the shards a previous run completed (tar and index both written), by source path;
    what a killed run left half-written is removed (the caller holds the folder's lock)."""
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
    rows = read_manifest(manifest, drop_missing=drop_missing)
    with prepare_folder(out_dir, options), disk_full_names(shard_dir, DISK_FULL_REMEDY):
        shard_dir.mkdir(exist_ok=True)
        work.mkdir(exist_ok=True)
        done = _finished_shards(shard_dir)
        previous = len(done)
        numbers = [int(p.stem.split("-")[1]) for p in shard_dir.glob("shard-*.tar")]
        jobs = [(row, str(work / f"{i:09d}.mp4"), options) for i, row in enumerate(rows)
                if row["status"] == "ok" and row["path"] not in done]
        started = time.perf_counter()
        outcomes, failures = _write_shards(jobs, done, shard_dir, max(numbers, default=-1) + 1, shard_size,
                                           workers, progress)
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


def _write_shards(jobs: list, done: dict[str, dict], shard_dir: Path, number: int, shard_size: int,
                  workers: int, progress: bool) -> tuple[Counter, list[tuple[str, str]]]:
    """Encode `jobs` and append them to shards numbered from `number`; each finished shard's rows
    go into `done`. Returns the outcomes' counts and the failures."""
    outcomes: Counter[str] = Counter()
    failures = []
    shard, shard_rows = None, []
    try:
        with closing(encode_all(_encode_sample, jobs, workers, "prepare --shards", progress)) as encoded:
            for job, (row, outcome) in zip(jobs, encoded):
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
                    _close_shard(shard, shard_rows, done)
                    shard, shard_rows, number = None, [], number + 1
        if shard is not None:
            _close_shard(shard, shard_rows, done)
    except BaseException:
        if shard is not None:
            shard.abort()
        raise
    return outcomes, failures


def _close_shard(shard: ShardWriter, rows: list[dict], done: dict[str, dict]) -> None:
    tar = shard.close()
    write_manifest(rows, tar.with_suffix(".csv"))  # after the tar: an index means a whole shard
    done.update((row["path"], row) for row in rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest CSV from `xdc scan`")
    parser.add_argument("-o", "--out", required=True,
                        help="folder for the re-encoded copies (or their shards), its manifest.csv and prepare.json")
    parser.add_argument("--out-manifest", metavar="CSV",
                        help="the new manifest elsewhere (default: OUT/manifest.csv)")
    parser.add_argument("--short-side", type=int, default=128, metavar="PIXELS",
                        help="pixels of the copies' shorter side")
    parser.add_argument("--keyframe-seconds", type=float, default=0.5, metavar="SECONDS",
                        help="a keyframe every this many seconds")
    parser.add_argument("--sample-rate", type=int, default=16000, metavar="HZ", help="audio rate of the copies (mono)")
    parser.add_argument("--fps", type=_parse_fps, default="none", metavar="FPS",
                        help="'none' keeps source timestamps, or a frame rate")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), metavar="N",
                        help="parallel encoders")
    parser.add_argument("--shards", action="store_true",
                        help="pack the copies into tar shards (WebDataset layout) under OUT/shards")
    parser.add_argument("--shard-size", type=_parse_size, default="1GB", metavar="SIZE", help="bytes per shard")
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
    if Path(args.out).suffix.lower() == ".csv":  # `-o new.csv` named the manifest before -o meant --out
        raise XdcError(f"-o/--out is the folder for the copies, not a manifest ({args.out}): give the new "
                       f"manifest with --out-manifest")
    if args.shards:
        summary = prepare_shards(args.manifest, args.out, args.out_manifest, options, args.workers,
                                 shard_size=args.shard_size, drop_missing=args.drop_missing)
    else:
        summary = prepare_manifest(args.manifest, args.out, args.out_manifest, options, args.workers,
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
