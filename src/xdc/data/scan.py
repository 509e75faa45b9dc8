"""`xdc scan PATH... -o manifest.csv`: probe media files with PyAV into a manifest.

Every media file gets a row: `ok` when its first video frame decodes, else `skip` with a reason
(zero bytes, unreadable, no video stream, no decodable video frame). One demux pass per file
finds what container headers may lack (duration of a WebM without one, frame count, data that
ends early in a truncated file) and decodes the first ~60 s of audio to flag digital silence.

`rotation` is the clockwise rotation, in degrees, that displays the picture upright (like
ffprobe's `rotate` tag; PyAV's `frame.rotation` is its negative); `width`/`height` are the
displayed (rotated) size.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import av
import numpy as np
from xdc.progress import progress as progress_bar

from xdc.data.manifest import empty_row, write_manifest
from xdc.errors import XdcError

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".3g2", ".ts", ".mts", ".m2ts", ".ogv", ".vob", ".asf",
                    ".divx", ".f4v", ".mxf", ".y4m"}
AUDIO_EXTENSIONS = {".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma",
                    ".aiff", ".aif"}
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS

SILENCE_CHECK_SECONDS = 60.0  # audio decoded to decide silence; bounded so long files stay cheap
SILENCE_PEAK = 1e-4  # peak |sample| (full scale 1.0) below this counts as digital silence
# Video data ending this much before the declared duration marks a truncated file.
TRUNCATION_TOLERANCE = 0.1  # fraction of the declared duration
TRUNCATION_MIN_SECONDS = 0.5


class ScanError(XdcError, ValueError):
    """A path given to `xdc scan` does not exist or a list file is unreadable."""


def is_media(path: Path) -> bool:
    return path.suffix.lower() in MEDIA_EXTENSIONS


def collect_files(paths: Iterable[str | Path]) -> tuple[list[Path], int]:
    """Media files under `paths` (folders walked recursively, `.txt` files read as lists of
    paths relative to the list's folder) and the number of non-media files ignored.

    A file named directly (or in a list) is probed whatever its extension; a listed path that
    does not exist is kept, so its row records `not found`.
    """
    files: list[Path] = []
    ignored = 0
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    candidate = Path(root) / name
                    if is_media(candidate):
                        files.append(candidate)
                    else:
                        ignored += 1
        elif path.suffix.lower() == ".txt":
            if not path.is_file():
                raise ScanError(f"list file not found: {path}")
            listed = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            entries = [path.parent / line for line in listed if line and not line.startswith("#")]
            dir_entries = [entry for entry in entries if entry.is_dir()]
            more, more_ignored = collect_files(dir_entries) if dir_entries else ([], 0)
            files += [entry for entry in entries if not entry.is_dir()] + more
            ignored += more_ignored
        elif path.exists():
            files.append(path)
        else:
            raise ScanError(f"path not found: {path}")
    # Same file reached twice (e.g. a folder and a list): probe it once.
    unique = list(dict.fromkeys(Path(os.path.abspath(f)) for f in files))
    return unique, ignored


def _error_text(err: BaseException) -> str:
    """FFmpeg's message without the file name PyAV appends; for what PyAV itself trips on in a
    damaged header (text that is not UTF-8, a stream without a codec), a sentence saying so."""
    if isinstance(err, UnicodeDecodeError):
        return "damaged header (its text fields are not valid UTF-8)"
    if not isinstance(err, (OSError, av.error.FFmpegError)):
        return f"damaged or unsupported file (PyAV could not read it: {type(err).__name__})"
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return str(text).split(": '")[0].strip()


def _peak(frame: av.AudioFrame) -> float:
    """Peak |sample| of an audio frame on a 0..1 scale, whatever its sample format."""
    samples = frame.to_ndarray()
    if samples.size == 0:
        return 0.0
    if samples.dtype == np.uint8:  # unsigned 8-bit PCM is centred on 128
        return float(np.abs(samples.astype(np.int16) - 128).max()) / 128.0
    if np.issubdtype(samples.dtype, np.integer):
        return float(np.abs(samples.astype(np.int64)).max()) / float(np.iinfo(samples.dtype).max)
    return float(np.nan_to_num(np.abs(samples)).max())


def clockwise_rotation(frame: av.VideoFrame) -> int:
    """The manifest's `rotation` of a decoded frame: clockwise degrees in [0, 360)."""
    return int(round(-(frame.rotation or 0))) % 360


def _packet_end(packet: av.Packet) -> float | None:
    if packet.pts is None or packet.time_base is None:
        return None
    return float((packet.pts + (packet.duration or 0)) * packet.time_base)


def probe_file(path: str | Path, label: str | None = None) -> dict[str, Any]:
    """One manifest row for `path`. Never raises: problems become `status=skip` with a reason."""
    path = Path(path)
    row = empty_row(path)
    row["label"] = label
    try:
        if not path.exists():
            return {**row, "status": "skip", "reason": "not found"}
        if path.stat().st_size == 0:
            return {**row, "status": "skip", "reason": "zero bytes"}
        try:
            container = av.open(str(path))
        except Exception as err:  # not a media container, corrupt header, permission denied...
            return {**row, "status": "skip", "reason": f"unreadable: {_error_text(err)}"}
        with container:
            return _probe_container(container, row)
    except Exception as err:  # a probe must never take the whole scan down
        return {**row, "status": "skip", "reason": f"probe failed: {_error_text(err)}"}


def _probe_container(container: av.container.InputContainer, row: dict[str, Any]) -> dict[str, Any]:
    video = container.streams.video[0] if container.streams.video else None
    audio = container.streams.audio[0] if container.streams.audio else None
    notes = []
    # A stream whose codec FFmpeg cannot name (a damaged header, or a codec this build lacks) has no
    # codec context: nothing in it can be decoded.
    if audio is not None and audio.codec_context is None:
        audio = None
        notes.append("audio not decodable: unknown codec (damaged header?)")
    if audio is not None:
        row.update(has_audio=True, audio_rate=audio.codec_context.sample_rate or audio.rate,
                   audio_channels=audio.codec_context.channels)
    else:
        row["has_audio"] = False
    if video is None:
        return {**row, "status": "skip", "reason": "no video stream"}
    if video.codec_context is None:
        return {**row, "status": "skip", "reason": "no decodable video frame: unknown video codec (damaged header, "
                                                   "or a codec this FFmpeg lacks)"}

    row["video_codec"] = video.codec_context.name
    streams = [video] + ([audio] if audio is not None else [])
    first_frame = None
    video_end = None
    video_packets = 0
    audio_peak = None
    audio_error = None
    demux_error = None
    try:
        for packet in container.demux(streams):
            if packet.stream is video:
                if packet.size == 0:  # the flush packet PyAV yields at end of stream
                    continue
                video_packets += 1
                end = _packet_end(packet)
                if end is not None:
                    video_end = end if video_end is None else max(video_end, end)
                if first_frame is None:
                    first_frame = _decode_first(packet)
            elif audio_error is None and _wants_audio(packet):
                try:
                    for frame in packet.decode():
                        audio_peak = max(audio_peak or 0.0, _peak(frame))
                except Exception as err:
                    audio_error = _error_text(err)
    except Exception as err:  # corrupt data mid-file: keep what was read before it
        demux_error = _error_text(err)
    if first_frame is None:
        first_frame = _flush_first(video)
    if first_frame is None:
        reason = "no decodable video frame"
        return {**row, "status": "skip", "reason": reason + (f" ({demux_error})" if demux_error else "")}

    rotation = clockwise_rotation(first_frame)
    width, height = first_frame.width, first_frame.height
    if rotation in (90, 270):
        width, height = height, width
    declared = _declared_duration(container, video)
    duration = declared if declared is not None else video_end
    fps = _frame_rate(video)
    row.update(rotation=rotation, width=width, height=height, fps=fps)
    # The video stream's own declared length, not the container's: a short video with longer audio
    # (a 1-frame clip over a 2-s sound) is complete.
    expected = _stream_duration(video) or declared
    if expected is not None and video_end is not None and \
            video_end < expected - max(TRUNCATION_MIN_SECONDS, TRUNCATION_TOLERANCE * expected):
        # Only the data that is there can be loaded: report the shorter duration.
        notes.append(f"truncated: video data ends at {video_end:.2f} s of {expected:.2f} s")
        duration = video_end
    if demux_error:
        notes.append(f"read error after {video_end or 0:.2f} s: {demux_error}")
    if audio is not None:
        if audio_peak is None:  # the stream exists but nothing in it decodes
            row["has_audio"] = False
            notes.append(f"audio not decodable{f': {audio_error}' if audio_error else ''}")
        else:
            row["audio_silent"] = audio_peak < SILENCE_PEAK
    num_frames = video_packets or video.frames or None
    if num_frames is None and duration and fps:
        num_frames = int(round(duration * fps))
    row.update(duration=duration, num_frames=num_frames, reason="; ".join(notes) or None)
    return row


def _decode_first(packet: av.Packet) -> av.VideoFrame | None:
    try:
        frames = packet.decode()
    except Exception:  # a damaged packet: the next keyframe may still decode
        return None
    return frames[0] if frames else None


def _flush_first(video: av.video.stream.VideoStream) -> av.VideoFrame | None:
    """Frames a decoder still holds at end of stream (frame threading delays output)."""
    try:
        frames = video.codec_context.decode(None)
    except Exception:
        return None
    return frames[0] if frames else None


def _wants_audio(packet: av.Packet) -> bool:
    if packet.size == 0:
        return False
    start = None if packet.pts is None else float(packet.pts * packet.time_base)
    return start is None or start < SILENCE_CHECK_SECONDS


def _declared_duration(container, video) -> float | None:
    """Container duration, else the video stream's; None when the headers have neither."""
    if container.duration:
        return container.duration / av.time_base
    return _stream_duration(video)


def _stream_duration(stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def _frame_rate(video) -> float | None:
    for rate in (video.average_rate, video.guessed_rate, video.base_rate):
        if rate:
            return float(rate)
    return None


def _probe_job(job: tuple[Path, str | None]) -> dict[str, Any]:
    return probe_file(*job)


def scan_paths(paths: Iterable[str | Path], workers: int = 1, labels_from_dirs: bool = False,
               progress: bool = True) -> list[dict[str, Any]]:
    """Probe every media file under `paths`; rows come back in file order."""
    rows, _ = scan_with_counts(paths, workers, labels_from_dirs, progress)
    return rows


def scan_with_counts(paths: Iterable[str | Path], workers: int = 1, labels_from_dirs: bool = False,
                     progress: bool = True) -> tuple[list[dict[str, Any]], int]:
    """`scan_paths` plus the number of non-media files that were ignored."""
    files, ignored = collect_files(paths)
    jobs = [(f, f.parent.name if labels_from_dirs else None) for f in files]
    bar = dict(total=len(jobs), desc="scan", unit="file", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        rows = [probe_file(*job) for job in progress_bar(jobs, **bar)]
    else:
        # spawn: the parent may hold threads (torch, tqdm) that make fork unsafe
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            rows = list(progress_bar(pool.map(_probe_job, jobs, chunksize=4), **bar))
    for row, file_id in zip(rows, file_ids(files)):
        row["id"] = file_id
    return rows, ignored


def file_ids(files: list[Path]) -> list[str]:
    """Each file's path relative to the folder that holds them all (`a/x.mp4`): what names a video
    whatever copy of the tree is scanned or prepared later (manifest column `id`)."""
    if not files:
        return []
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return [f.relative_to(root).as_posix() for f in files]


def summarize(rows: list[dict[str, Any]], ignored: int = 0) -> str:
    """Counts by status and by kind of reason (the text before ':')."""
    statuses = Counter(row["status"] for row in rows)
    reasons = Counter((row["status"], (row["reason"] or "").split(":")[0])
                      for row in rows if row["reason"])
    lines = [f"{len(rows)} media file(s): " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))]
    ok = [row for row in rows if row["status"] == "ok"]
    if ok:
        with_audio = sum(1 for row in ok if row["has_audio"])
        silent = sum(1 for row in ok if row["has_audio"] and row["audio_silent"])
        lines.append(f"  ok: {with_audio} with audio ({silent} silent), {len(ok) - with_audio} without")
    for (status, reason), n in sorted(reasons.items()):
        lines.append(f"  {status}: {n} {reason}")
    lines.append(f"  ignored {ignored} non-media file(s)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="media files, folders (walked recursively) or .txt lists of paths")
    parser.add_argument("-o", "--out", "--output", dest="output", required=True, help="manifest CSV to write")
    parser.add_argument("--labels-from-dirs", action="store_true",
                        help="label each file with its parent folder's name")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="parallel probe processes")


def run(args: argparse.Namespace) -> int:
    rows, ignored = scan_with_counts(args.paths, args.workers, args.labels_from_dirs)
    write_manifest(rows, args.output)
    print(summarize(rows, ignored))
    print(f"wrote {args.output}")
    return 0
