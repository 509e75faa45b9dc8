"""The training copy of one video (`reencode`): what `xdc prepare` writes for every row.

- short side resized (default 128 px, aspect kept, even sizes for yuv420p): less to decode;
- rotation metadata applied to the pixels, so the copies have rotation 0;
- H.264 with a keyframe every ~0.5 s and no B-frames: a seek lands at most 0.5 s before any
  window, and frames decode in order;
- audio resampled to 16 kHz mono AAC (videos without audio stay without).
Frame timestamps are kept (variable frame rate survives) unless `fps` resamples them. The copy is
written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from xdc.data.scan import clockwise_rotation

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
