"""Write real media files with PyAV: H.264 video (+ AAC audio) in MP4.

Used by the synthetic data generators, the benchmarks and the tests, which make their own files
rather than download any.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path: str | Path, frames: np.ndarray, fps: float, audio: np.ndarray | None = None,
                sample_rate: int = 16000, gop_seconds: float = 0.5, crf: int = 23,
                audio_codec: str = "aac") -> Path:
    """Encode `frames` (T×H×W×3 uint8, RGB) and optional mono `audio` (float in [-1, 1]).

    H and W must be even (yuv420p). A keyframe every `gop_seconds` keeps seeking cheap.
    """
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be T×H×W×3 uint8, got {frames.shape} {frames.dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=rate)
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        # mbtree off: with it, x264 (CRF) gave different frames for the same input when the CPU
        # was busy (up to 158 of 2000 small videos between two runs); generated data must be the
        # same for the same seed.
        vstream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0",
                           "g": str(max(1, round(fps * gop_seconds))), "bf": "0"}
        astream = None
        if audio is not None:
            astream = container.add_stream(audio_codec, rate=sample_rate)
            astream.layout = "mono"
        for image in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None:
            samples = np.clip(np.asarray(audio, dtype=np.float32), -1, 1).reshape(1, -1)
            chunk = 1024
            for start in range(0, samples.shape[1], chunk):
                piece = np.ascontiguousarray(samples[:, start:start + chunk])
                aframe = av.AudioFrame.from_ndarray(piece, format="flt", layout="mono")
                aframe.sample_rate = sample_rate
                aframe.pts = start
                for packet in astream.encode(aframe):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)
    return path
