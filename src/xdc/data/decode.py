"""Decode clip windows (video frames + mono audio) from real media files with PyAV.

What makes it fast, in order of effect:
- seek: jump to the keyframe before the window and decode only up to its last frame, never from
  the file's start;
- convert little: frames are resized and converted to RGB (one swscale call, `reformat`) only
  when they are kept, never every decoded frame;
- several windows, one pass: `decode_clips` sorts the windows and decodes through them in one
  sweep, seeking forward only across gaps longer than `SEEK_GAP_SECONDS`;
- skip what nothing needs: non-reference frames (most B-frames) before the window are not
  decoded at all (`_decoded_frames`);
- frame threading with a few threads (several DataLoader workers already share the cores).

`path` is a file, or a `ShardMember` (a sample inside a tar shard, read by offset: xdc.data.shards).

Time: a clip `start` is in seconds from the first frame of the chosen video stream. Frame k of a
clip shows the last frame whose timestamp is <= start + k / cfg.fps (variable frame rate safe).
Audio is the window of `cfg.audio_window_seconds` centred on the video clip, mixed down to mono
and resampled to `cfg.sample_rate` by PyAV, cut by timestamps, zero-padded where the stream has
no samples (before its start, past its end).

Short videos: when a video is shorter than the clip, `cfg.short_video="loop"` repeats it from its
first frame, `"pad"` holds the last frame. A window that runs past the end of a longer video
(over-estimated duration) holds the last frame.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import av
import numpy as np

from xdc.data.audio import window_samples
from xdc.data.shards import ShardMember, open_member

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import DataConfig

SHORT_VIDEO = ("loop", "pad")  # data.short_video: a video shorter than the clip (module docstring)

SEEK_GAP_SECONDS = 3.0  # windows further apart than this are reached by a seek, not by decoding
SKIP_MARGIN_SECONDS = 0.25  # non-reference frames further than this before a target are not decoded
TIME_EPS = 1e-3  # timestamps are rounded to the stream's time base; 1 ms slack when comparing
DEFAULT_THREADS = 2  # decoder threads per process (DataLoader workers run several processes)


class DecodeError(RuntimeError):
    """A file (or a window of it) could not be decoded. `path` and `what` say which and why."""

    def __init__(self, path, what: str):
        super().__init__(f"{path}: {what}")
        self.path = str(path)
        self.what = what

    def __reduce__(self):  # picklable across DataLoader workers
        return type(self), (self.path, self.what)


@dataclass
class Clip:
    video: np.ndarray  # T×H×W×3 uint8 RGB, upright, short side = cfg.short_side
    audio: np.ndarray | None  # float32 mono samples at cfg.sample_rate; None: the file has no audio
    start: float  # seconds from the video stream's first frame


def open_container(path):
    """`av.open` of a file, or of a sample in a tar shard (`ShardMember`: PyAV reads and seeks a
    bounded view of the tar's bytes, which the container's reference keeps open); DecodeError when
    it is not media (zero bytes, text, unreadable...)."""
    try:
        return av.open(open_member(path) if isinstance(path, ShardMember) else str(path))
    except Exception as err:
        raise DecodeError(path, f"cannot open: {err}") from err


def decode_clip(path, start: float, cfg: DataConfig, with_audio: bool = True,
                threads: int = DEFAULT_THREADS) -> Clip:
    """One window starting at `start` seconds."""
    return decode_clips(path, [start], cfg, with_audio, threads)[0]


def decode_clips(path, starts, cfg: DataConfig, with_audio: bool = True,
                 threads: int = DEFAULT_THREADS) -> list[Clip]:
    """Several windows of one file, decoded in one pass; returned in the order of `starts`."""
    starts = [max(0.0, float(s)) for s in starts]
    if not starts:
        return []
    container = open_container(path)
    with container:
        try:
            return _decode(container, path, starts, cfg, with_audio, threads)
        except DecodeError:
            raise
        except Exception as err:  # FFmpeg errors mid-file, truncated data...
            raise DecodeError(path, f"decode failed: {type(err).__name__}: {err}") from err


def decode_audio_windows(path, starts, cfg: DataConfig) -> list[np.ndarray]:
    """Mono float32 windows of `cfg.audio_window_seconds` at `starts` (seconds from the audio
    stream's start) of a file that may have no video stream (ESC-50's wav files, say)."""
    container = open_container(path)
    with container:
        stream = _pick_stream(container.streams.audio, cfg.audio_stream, "audio", path)
        t0 = _stream_start(stream)
        try:
            return _read_audio(container, stream, [t0 + float(s) for s in starts], cfg, path)
        except Exception as err:
            raise DecodeError(path, f"audio decode failed: {type(err).__name__}: {err}") from err


def media_duration(path, cfg: DataConfig | None = None) -> float:
    """Seconds of the video stream: from the header, else by reading packet timestamps (no decode)."""
    stream_index = cfg.video_stream if cfg is not None else 0
    container = open_container(path)
    with container:
        stream = _pick_stream(container.streams.video, stream_index, "video", path)
        t0 = _stream_start(stream)
        if stream.duration:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / 1e6 - t0
        end = t0
        for packet in container.demux(stream):
            if packet.pts is not None:
                end = max(end, float((packet.pts + (packet.duration or 0)) * stream.time_base))
        return end - t0


# -- internals ---------------------------------------------------------------------------------

def _pick_stream(streams, index: int, kind: str, path):
    if len(streams) == 0:
        raise DecodeError(path, f"no {kind} stream")
    if index >= len(streams):
        raise DecodeError(path, f"{kind}_stream={index} asked for, the file has {len(streams)}")
    return streams[index]


def _stream_start(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _decode(container, path, starts, cfg: DataConfig, with_audio: bool, threads: int) -> list[Clip]:
    vstream = _pick_stream(container.streams.video, cfg.video_stream, "video", path)
    vstream.thread_type = "AUTO"  # frame + slice threading
    vstream.codec_context.thread_count = threads
    t0 = _stream_start(vstream)
    steps = np.arange(cfg.frames) / cfg.fps
    targets = np.concatenate([t0 + s + steps for s in starts])  # clip-major
    images = _read_frames(container, vstream, targets, cfg, path)
    videos = np.stack(images).reshape(len(starts), cfg.frames, *images[0].shape)

    audios = [None] * len(starts)
    if with_audio and len(container.streams.audio) > 0:
        astream = _pick_stream(container.streams.audio, cfg.audio_stream, "audio", path)
        half = cfg.audio_window_seconds / 2
        centres = [t0 + s + cfg.clip_seconds / 2 for s in starts]
        audios = _read_audio(container, astream, [c - half for c in centres], cfg, path)
    return [Clip(videos[i], audios[i], starts[i]) for i in range(len(starts))]


def _runs(times, gap: float) -> list[list[int]]:
    """Group the indices of `times` (sorted by time) into runs with no gap wider than `gap`."""
    order = np.argsort(times, kind="stable")
    runs = [[int(order[0])]]
    for prev, cur in zip(order[:-1], order[1:]):
        if times[cur] - times[prev] > gap:
            runs.append([])
        runs[-1].append(int(cur))
    return runs


def _seek(container, stream, seconds: float) -> None:
    # Backward: land on the keyframe at or before `seconds`, so the window's first frame decodes.
    offset = int(math.floor(seconds / stream.time_base))
    if stream.start_time is not None:
        offset = max(offset, stream.start_time)
    container.seek(offset, stream=stream, backward=True, any_frame=False)


def _read_frames(container, stream, targets: np.ndarray, cfg: DataConfig, path) -> list[np.ndarray]:
    """For each target time, the last frame shown at or before it, as an upright RGB array."""
    picked: list[np.ndarray | None] = [None] * len(targets)
    convert = _converter(cfg.short_side)
    ends = [_sweep(container, stream, targets, run, picked, convert, path)
            for run in _runs(targets, SEEK_GAP_SECONDS)]
    ends = [end for end in ends if end is not None]
    end_time = min(ends) if ends else None
    late = [t for t in targets[::cfg.frames] if end_time is not None and t >= end_time]
    if late:  # a whole window past the last frame: the duration given for this file was wrong
        t0 = _stream_start(stream)
        raise DecodeError(path, f"window at {late[0] - t0:.2f} s starts past the end of the video "
                                f"({end_time - t0:.2f} s)")
    overrun = [i for i, t in enumerate(targets) if end_time is not None and t >= end_time]
    first_time = _stream_start(stream)
    length = max(end_time - first_time, TIME_EPS) if end_time is not None else math.inf
    # Loop only a video shorter than a clip; a window that merely overshoots the end of a long
    # video (its duration was over-estimated) holds the last frame rather than jump to the start.
    if overrun and cfg.short_video == "loop" and length < cfg.clip_seconds:
        wrapped = targets.copy()
        wrapped[overrun] = first_time + np.mod(targets[overrun] - first_time, length)
        _sweep(container, stream, wrapped, sorted(overrun, key=lambda i: wrapped[i]), picked, convert, path)
    return picked


def _sweep(container, stream, targets, run: list[int], picked: list, convert, path):
    """Seek once and decode forward through the targets of one run (sorted by time).

    Fills `picked`; returns the time just after the last frame when the stream ended inside the
    run (the window ran past the end), else None.
    """
    step = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)
    position = 0  # next target of the run to fill
    next_target = lambda: targets[run[min(position, len(run) - 1)]]  # noqa: E731 (reads `position`)
    seek_time, bad_keyframe = targets[run[0]], math.inf
    while True:
        _seek(container, stream, seek_time)
        frames = _decoded_frames(container, stream, next_target)
        first = next(frames, None)
        # Some files flag frames as keyframes that do not decode on their own (the decoder marks
        # them corrupt: green garbage). Step back to the keyframe before, down to the start.
        if (first is None or not first.is_corrupt or first.time is None or first.time >= bad_keyframe
                or first.time <= _stream_start(stream) + TIME_EPS):
            break
        seek_time = bad_keyframe = first.time
        seek_time -= TIME_EPS
    prev = prev_image = None
    prev_time = None
    for frame in itertools.chain([first] if first is not None else [], frames):
        time = frame.time if frame.time is not None else (prev_time or 0.0) + step
        while position < len(run) and time > targets[run[position]] + TIME_EPS:
            # `prev` is the last frame at or before the target (or, when the seek landed past
            # the target, e.g. the stream starts late, the first frame we have).
            if prev is None:
                prev, prev_time = frame, time
            if prev_image is None:
                prev_image = convert(prev)
            picked[run[position]] = prev_image
            position += 1
        if position == len(run):
            return None
        if prev is not frame:
            prev, prev_image, prev_time = frame, None, time
    if prev is None:
        raise DecodeError(path, f"no video frame at or after {targets[run[0]]:.3f} s")
    # End of stream: the remaining targets are past the last frame; hold it (looping is decided
    # by the caller, which knows whether to wrap).
    image = convert(prev) if prev_image is None else prev_image
    for index in run[position:]:
        picked[index] = image
    return prev_time + step


def _decoded_frames(container, stream, next_target):
    """Decoded frames in display order, skipping non-reference frames well before `next_target()`.

    Nothing depends on a non-reference frame (B-frames, mostly), so one that is not shown in a
    clip need not be decoded at all: on typical H.264 files that is a third to half of the frames
    between the keyframe and the window. Within SKIP_MARGIN_SECONDS of a target every frame is
    decoded, since any of them may be "the last frame at or before" it.
    """
    codec = stream.codec_context
    for packet in container.demux(stream):
        if packet.pts is not None:
            early = next_target() - float(packet.pts * stream.time_base) > SKIP_MARGIN_SECONDS
            codec.skip_frame = "NONREF" if early else "DEFAULT"
        yield from packet.decode()


def _converter(short_side: int):
    """frame -> upright RGB array, short side `short_side`. The size is fixed by the first frame,
    so a resolution change mid-stream cannot give a clip frames of different shapes."""
    size = None

    def convert(frame) -> np.ndarray:
        nonlocal size
        if size is None:
            scale = short_side / min(frame.width, frame.height)
            size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
        return _to_rgb(frame, size)
    return convert


def _to_rgb(frame, size: tuple[int, int]) -> np.ndarray:
    """Resize to `size` (width, height) and convert to RGB in one swscale call; then rotate."""
    image = frame.reformat(width=size[0], height=size[1], format="rgb24",
                           interpolation="BILINEAR").to_ndarray()
    turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    if turns:
        # PyAV gives the display rotation counter-clockwise in degrees; rot90 turns the same way.
        image = np.ascontiguousarray(np.rot90(image, turns))
    return image


def _read_audio(container, stream, window_starts, cfg: DataConfig, path) -> list[np.ndarray]:
    """Mono float32 windows of `audio_window_seconds` starting at each of `window_starts`."""
    rate = cfg.sample_rate
    length = window_samples(cfg)
    window_starts = np.asarray(window_starts, dtype=np.float64)
    out = [np.zeros(length, np.float32) for _ in window_starts]
    for run in _runs(window_starts, SEEK_GAP_SECONDS + cfg.audio_window_seconds):
        first = window_starts[run[0]]
        last_end = max(window_starts[i] for i in run) + cfg.audio_window_seconds
        buffer_start, samples = _decode_audio_span(container, stream, first, last_end, rate)
        for i in run:
            # Copy the part of the window the decoded span covers; the rest stays zeros.
            offset = int(round((window_starts[i] - buffer_start) * rate))
            lo, hi = max(offset, 0), min(offset + length, samples.size)
            if hi > lo:
                out[i][lo - offset:hi - offset] = samples[lo:hi]
    return out


def _decode_audio_span(container, stream, start: float, end: float, rate: int):
    """(time of the first sample, mono samples at `rate`) covering [start, end] where possible."""
    _seek(container, stream, max(start, 0.0))
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    pieces: list[np.ndarray] = []
    first_time = None
    count = 0
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            if first_time is None:
                # The resampler keeps the input timeline: pts in 1/rate units from the first frame.
                first_time = float(out.pts / rate) if out.pts is not None else (frame.time or 0.0)
            pieces.append(out.to_ndarray().reshape(-1))
            count += pieces[-1].size
        if first_time is not None and first_time + count / rate >= end:
            break
    else:
        for out in resampler.resample(None):  # flush the few samples the filter holds back
            pieces.append(out.to_ndarray().reshape(-1))
    if first_time is None:
        return start, np.zeros(0, np.float32)
    return first_time, np.concatenate(pieces).astype(np.float32, copy=False)
