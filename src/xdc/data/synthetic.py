"""Built-in synthetic audio-visual data: real MP4 files with K classes shared by both modalities.

Each class has a visual pattern (a shape and a motion) and a sound pattern (a pitch contour, a
register and a timbre), with variation inside the class (size, speed, phase, position, pitch).
On top, each modality gets its own strong nuisance that carries no class information:

- video: background colour and brightness (covers most pixels, so random features see it first);
- audio: loudness and background noise (level and colour).

Nuisances are drawn independently of the class and of each other, so clustering one modality
alone is drawn to its nuisance, while the other modality's clusters know nothing of it: the
situation where cross-modal pseudo-labels (XDC) should beat single-modality ones (SDC).

Class labels go to `labels.csv`, never into the pretraining manifest; `labeled_manifest` derives
an evaluation manifest from the two.
"""

from __future__ import annotations

import colorsys
import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from xdc.data.encode import write_video

SHAPES = ("disk", "square", "triangle", "cross", "ring", "bar", "diamond", "saltire")
MOTIONS = ("horizontal", "vertical", "circle", "diagonal", "zoom", "blink")
CONTOURS = ("steady", "rise", "fall", "vibrato", "updown", "trill")
TIMBRES = ("sine", "odd", "saw", "bright")
MAX_CLASSES = len(SHAPES) * len(MOTIONS)

# Relative amplitudes of harmonics 1, 2, 3, ... for each timbre.
HARMONICS = {
    "sine": (1.0,),
    "odd": (1.0, 0.0, 0.45, 0.0, 0.25, 0.0, 0.15),
    "saw": (1.0, 0.5, 0.33, 0.25, 0.2, 0.17),
    "bright": (0.35, 1.0, 0.2, 0.8, 0.15, 0.6),
}


@dataclass(frozen=True)
class ClassPattern:
    """What makes a class: shared by all its videos, seen in both modalities."""

    shape: str
    motion: str
    contour: str
    timbre: str
    pitch_hz: float  # register: base pitch of the class

    @property
    def name(self) -> str:
        return f"{self.shape}-{self.motion}/{self.contour}-{self.timbre}"


@dataclass(frozen=True)
class Nuisance:
    """Per-video factors with no class information, one set per modality."""

    background_rgb: tuple[float, float, float]  # video: colour in [0, 1]
    brightness: float  # video: scales the background
    gain_db: float  # audio: loudness of the sound
    noise_db: float  # audio: level of the background noise (dBFS)
    noise_colour: str  # audio: "white", "brown", "hum" or "band"
    noise_hz: float  # audio: base frequency of "hum" (mains or a whine), centre of "band"


def class_patterns(num_classes: int) -> list[ClassPattern]:
    """K distinct (shape, motion) and (contour, timbre, register) patterns."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    patterns = []
    for c in range(num_classes):
        # (c mod n, c div n) is unique per class; shifting the second factor by the row keeps
        # every pair distinct while making neighbouring classes differ in both factors.
        row = c // len(SHAPES)
        sound_row = c // len(CONTOURS)
        patterns.append(ClassPattern(
            shape=SHAPES[c % len(SHAPES)],
            motion=MOTIONS[(c % len(SHAPES) + row) % len(MOTIONS)],
            contour=CONTOURS[c % len(CONTOURS)],
            timbre=TIMBRES[(c + sound_row) % len(TIMBRES)],
            pitch_hz=float(220.0 * 2 ** (2.0 * c / num_classes)),  # two octaves shared out
        ))
    return patterns


BRIGHTNESS = (0.15, 0.7)  # background value; white shapes stay visible on all of them
NOISE_DB = (-40.0, -10.0)  # background noise level, dBFS
NOISE_COLOURS = ("white", "brown", "hum", "band")


def sample_nuisance(rng: np.random.Generator) -> Nuisance:
    hue, saturation = rng.uniform(0, 1), rng.uniform(0.3, 1.0)
    rgb = colorsys.hsv_to_rgb(hue, saturation, 1.0)
    return Nuisance(
        background_rgb=tuple(float(v) for v in rgb),
        brightness=float(rng.uniform(*BRIGHTNESS)),
        gain_db=float(rng.uniform(-20.0, 0.0)),
        noise_db=float(rng.uniform(*NOISE_DB)),
        noise_colour=str(rng.choice(NOISE_COLOURS)),
        noise_hz=float(rng.choice([50.0, 60.0]) if rng.random() < 0.3 else 2 ** rng.uniform(8, 12.5)),
    )


def nuisance_codes(label_row: dict) -> tuple[int, int]:
    """A labels.csv row's nuisances as discrete codes, to measure what clusters follow:
    video = coarse hue (6) x brightness half (2); audio = noise colour (4) x noise level third (3)."""
    rgb = np.asarray(json.loads(label_row["background_rgb"]))
    hue = int(np.argmax(rgb)) * 2 + int(np.sort(rgb)[1] > 0.5)
    bright = int(float(label_row["brightness"]) > sum(BRIGHTNESS) / 2)
    level = min(2, int(3 * (float(label_row["noise_db"]) - NOISE_DB[0]) / (NOISE_DB[1] - NOISE_DB[0])))
    return hue * 2 + bright, NOISE_COLOURS.index(label_row["noise_colour"]) * 3 + level


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "disk":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8 * r
    if shape == "triangle":  # apex up (image y grows downwards)
        return (dy <= 0.7 * r) & (ax <= 0.6 * (dy + r))
    if shape == "cross":
        return ((ax <= 0.3 * r) & (ay <= r)) | ((ay <= 0.3 * r) & (ax <= r))
    if shape == "ring":
        d2 = dx ** 2 + dy ** 2
        return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
    if shape == "bar":
        return (ax <= r) & (ay <= 0.3 * r)
    if shape == "diamond":
        return ax + ay <= r
    if shape == "saltire":
        return (np.abs(ax - ay) <= 0.35 * r) & (np.maximum(ax, ay) <= 0.85 * r)
    raise ValueError(f"unknown shape {shape!r}")


def render_frames(pattern: ClassPattern, nuisance: Nuisance, rng: np.random.Generator,
                  num_frames: int, fps: float, size: int) -> np.ndarray:
    """T×size×size×3 uint8: a white moving shape over the nuisance background."""
    period = rng.uniform(0.8, 1.2)  # seconds; one period fits in a 1-s clip
    phase = rng.uniform(0, 2 * np.pi)
    radius = size * rng.uniform(0.14, 0.2)
    amplitude = size * rng.uniform(0.2, 0.28)
    centre = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    background = np.asarray(nuisance.background_rgb, np.float32) * nuisance.brightness * 255
    frames = np.empty((num_frames, size, size, 3), np.float32)
    for t in range(num_frames):
        angle = 2 * np.pi * t / (fps * period) + phase
        x, y, r, visible = centre[0], centre[1], radius, 1.0
        if pattern.motion == "horizontal":
            x = x + amplitude * np.sin(angle)
        elif pattern.motion == "vertical":
            y = y + amplitude * np.sin(angle)
        elif pattern.motion == "circle":
            x, y = x + amplitude * np.cos(angle), y + amplitude * np.sin(angle)
        elif pattern.motion == "diagonal":
            x, y = x + amplitude * np.sin(angle), y + amplitude * np.sin(angle)
        elif pattern.motion == "zoom":
            r = radius * (1.0 + 0.6 * np.sin(angle))
        elif pattern.motion == "blink":
            visible = 1.0 if np.sin(angle) >= 0 else 0.15
        frames[t] = background
        mask = _shape_mask(pattern.shape, xx - x, yy - y, r)
        frames[t][mask] = visible * 235 + (1 - visible) * background
    frames += rng.normal(0, 3.0, frames.shape)  # sensor noise
    return np.clip(frames, 0, 255).astype(np.uint8)


def _contour(name: str, t: np.ndarray, period: float) -> np.ndarray:
    """Pitch multiplier over time."""
    frac = (t / period) % 1.0
    if name == "steady":
        return np.ones_like(t)
    if name == "rise":
        return 2 ** (0.7 * frac)
    if name == "fall":
        return 2 ** (0.7 * (1 - frac))
    if name == "vibrato":
        return 2 ** (0.08 * np.sin(2 * np.pi * 6 * t))
    if name == "updown":
        return 2 ** (0.8 * (1 - np.abs(2 * frac - 1)))
    if name == "trill":
        return np.where(frac < 0.5, 1.0, 1.5)
    raise ValueError(f"unknown contour {name!r}")


def render_audio(pattern: ClassPattern, nuisance: Nuisance, rng: np.random.Generator,
                 seconds: float, sample_rate: int) -> np.ndarray:
    """Mono float32 in [-1, 1]: the class's tone pattern at the nuisance's loudness, plus noise."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    period = rng.uniform(0.4, 0.6)
    pitch = pattern.pitch_hz * 2 ** rng.uniform(-0.1, 0.1)  # within-class register jitter
    freq = pitch * _contour(pattern.contour, t + rng.uniform(0, period), period)
    phase = 2 * np.pi * np.cumsum(freq) / sample_rate
    tone = np.zeros(n)
    for h, amp in enumerate(HARMONICS[pattern.timbre], start=1):
        if amp > 0:
            tone += amp * np.sin(h * phase) * (h * freq < sample_rate / 2)  # no aliasing
    tone /= np.abs(tone).max() + 1e-9
    # Notes of 80% of the contour period, so onsets are audible; edges smoothed over 10 ms (no clicks).
    gate = ((t / period) % 1.0 < 0.8).astype(np.float64)
    gate = np.convolve(gate, np.hanning(int(0.01 * sample_rate)) / (0.005 * sample_rate), "same")
    signal = 0.5 * 10 ** (nuisance.gain_db / 20) * tone * np.clip(gate, 0, 1)
    noise = rng.standard_normal(n)
    if nuisance.noise_colour == "brown":
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(200) / 200, "same")  # keep it stationary
    elif nuisance.noise_colour == "hum":
        noise = sum(np.sin(2 * np.pi * nuisance.noise_hz * h * t) / h for h in (1, 2, 3)) + 0.3 * noise
    elif nuisance.noise_colour == "band":  # half an octave of noise around noise_hz
        spectrum = np.fft.rfft(noise)
        freqs = np.fft.rfftfreq(n, 1 / sample_rate)
        spectrum[np.abs(np.log2(np.maximum(freqs, 1) / nuisance.noise_hz)) > 0.25] = 0
        noise = np.fft.irfft(spectrum, n)
    noise *= 10 ** (nuisance.noise_db / 20) / (noise.std() + 1e-9)
    return np.clip(signal + noise, -1, 1).astype(np.float32)


def generate(out_dir: str | Path, num_classes: int = 6, videos_per_class: int = 30, seed: int = 0,
             seconds: float = 2.0, fps: float = 8.0, size: int = 32,
             sample_rate: int = 16000, progress: bool = True) -> Path:
    """Write `videos/*.mp4`, `labels.csv`, `classes.json` and `manifest.csv`; return the manifest.

    Deterministic from `seed`. File names and order carry no class information.
    """
    from xdc.progress import progress as progress_bar

    from xdc.data.manifest import write_manifest
    from xdc.data.scan import scan_paths

    if videos_per_class < 1:
        raise ValueError(f"videos_per_class must be >= 1, got {videos_per_class}")
    if size < 8 or size % 2:
        raise ValueError(f"size must be even and >= 8 (H.264 yuv420p), got {size}")
    patterns = class_patterns(num_classes)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), videos_per_class))
    num_frames = max(1, int(round(seconds * fps)))
    rows = []
    for i, label in enumerate(progress_bar(labels, desc="synthetic videos", disable=not progress)):
        video_rng = np.random.default_rng([seed, i])
        nuisance = sample_nuisance(video_rng)
        pattern = patterns[label]
        frames = render_frames(pattern, nuisance, video_rng, num_frames, fps, size)
        audio = render_audio(pattern, nuisance, video_rng, seconds, sample_rate)
        name = f"videos/v{i:05d}.mp4"
        write_video(out / name, frames, fps, audio, sample_rate)
        rows.append({"path": name, "label": int(label), "class_name": pattern.name,
                     **{k: json.dumps(v) if isinstance(v, tuple) else v
                        for k, v in asdict(nuisance).items()}})
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "classes.json").write_text(json.dumps(
        {"seed": seed, "seconds": seconds, "fps": fps, "size": size, "sample_rate": sample_rate,
         "classes": [asdict(p) | {"name": p.name} for p in patterns]}, indent=1))
    return write_manifest(scan_paths([out / "videos"], progress=progress), out / "manifest.csv")


def read_labels(labels_csv: str | Path) -> dict[str, dict]:
    """Rows of labels.csv keyed by resolved video path."""
    labels_csv = Path(labels_csv)
    with open(labels_csv, newline="") as f:
        return {str((labels_csv.parent / row["path"]).resolve()): row for row in csv.DictReader(f)}


def labeled_manifest(manifest: str | Path, labels_csv: str | Path, out: str | Path,
                     column: str = "class_name") -> Path:
    """An evaluation manifest: the pretraining manifest's rows with `label` taken from a column of
    labels.csv (the readable class name by default)."""
    from xdc.data.manifest import read_manifest, write_manifest

    labels = read_labels(labels_csv)
    rows = read_manifest(manifest)
    missing = [r["path"] for r in rows if str(Path(r["path"]).resolve()) not in labels]
    if missing:
        raise ValueError(f"{len(missing)} manifest rows have no label in {labels_csv}: {missing[:3]}")
    # Rows of a Manifest are built on demand: new dicts carry the labels.
    return write_manifest([dict(r, label=labels[str(Path(r["path"]).resolve())][column]) for r in rows], out)
