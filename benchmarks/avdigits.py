"""Audio-visual digits: does XDC learn what the paper says it learns, on real recordings?

    python benchmarks/avdigits.py [--quick] [--hard] [--seeds 0 1 2] [--jobs 2] [--out runs/avdigits]
    python benchmarks/avdigits.py --hard --methods scratch,rand,sdc,xdc --seeds 0 \
        [--first-features random] [--video-arch r3d_18] [--set cluster.pca_dim=32 ...]

On 2 CPU cores (docs/RESULTS.md): 59 min for 7 methods x 3 seeds (an older run), `--quick` 6.5 min
(one seed); `--hard` 5-9 min per method and seed, two side by side.

`--hard`: the digit is small (about half the frame high) and drifts over a cluttered background
of random brightness (ink lighter or darker than it); videos last 1.6 s and the spoken word sits
at a random time in them, so a 1-s clip may cut it; the soundtrack carries noise whose level,
colour and hum depend on the speaker (a nuisance, and an unseen one for the test speaker).

Data: every spoken digit of ../shared/data/fsdd (4 speakers, real recordings, 8 kHz) becomes a
short video whose soundtrack is the recording and whose frames show a real handwritten digit of
the same class (scikit-learn's bundled `load_digits`, 8x8 scans) moving or zooming. Written as
real MP4 files (H.264 + AAC), then fed through the project's own commands:

    xdc scan -> xdc pretrain (Scratch, RAND, SDC, MDC, CDC, XDC, Superv) ->
    xdc finetune (linear, fc, knn, retrieval: --probes) on a speaker-disjoint split -> xdc clusters

Split (speaker-disjoint): pretraining and probe training on george + jackson, validation (lr
choice) on lucas, test on nicolas; handwritten images are split the same way, so no test image or
voice is seen before testing. Superv pretrains on the true labels of the pretraining speakers only.

Each (seed, method) is one piece of the experiment runner (xdc.experiments.runner), which runs
these commands, reuses finished pieces, and makes the table: mean ± std over seeds beside chance
and the test set's majority class, and XDC minus each method paired by seed with a 95% t-interval.
Output: `OUT/results.json` (every piece's numbers, the means, the comparisons), `OUT/table.md`
(the table as printed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import wave
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from xdc.config import dotlist
from xdc.errors import XdcError
from xdc.experiments import runner
from xdc.experiments.summary import PROBES
from xdc.methods import METHODS as PRETRAINING_METHODS
from xdc.models.video import VIDEO_ARCHS
from xdc.stamps import check_stamp, write_stamp

REPO = Path(__file__).resolve().parents[1]
FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
SPLITS = {"train": ("george", "jackson"), "val": ("lucas",), "test": ("nicolas",)}
IMAGE_SHARE = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}  # of each class's images
FILE_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)\.wav$")


# ------------------------------------------------------------------------------------- rendering

def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a PCM-16 wav."""
    with wave.open(str(path)) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * w.getsampwidth()}-bit")
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        channels = w.getnchannels()
        rate = w.getframerate()
    return samples.reshape(-1, channels).mean(axis=1), rate


def fit_audio(samples: np.ndarray, num_samples: int) -> np.ndarray:
    """Centre the recording in `num_samples`: zero padding around it, or its centre if longer."""
    out = np.zeros(num_samples, np.float32)
    if samples.size >= num_samples:
        start = (samples.size - num_samples) // 2
        return samples[start:start + num_samples].copy()
    start = (num_samples - samples.size) // 2
    out[start:start + samples.size] = samples
    return out


def render_digit(image: np.ndarray, rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """T×size×size×3 uint8: a handwritten 8x8 digit (values 0-16), upscaled, moving or zooming."""
    import torch
    import torch.nn.functional as F

    base = torch.from_numpy(image.astype(np.float32) / 16.0)[None, None]
    frames = np.zeros((num_frames, size, size), np.float32)
    motion = rng.choice(["move", "zoom"])
    scale0 = rng.uniform(0.45, 0.6) * size  # digit height in pixels
    start, end = rng.uniform(0.3, 0.7, 2) * size, rng.uniform(0.3, 0.7, 2) * size
    for t in range(num_frames):
        a = t / max(1, num_frames - 1)
        if motion == "move":
            scale, centre = scale0, (1 - a) * start + a * end
        else:
            scale, centre = scale0 * (0.7 + 0.6 * a), start
        side = max(2, int(round(scale)))
        digit = F.interpolate(base, size=(side, side), mode="bilinear", align_corners=False)[0, 0].numpy()
        top, left = int(round(centre[1] - side / 2)), int(round(centre[0] - side / 2))
        # Paste with clipping at the borders.
        y0, x0 = max(0, top), max(0, left)
        y1, x1 = min(size, top + side), min(size, left + side)
        if y1 > y0 and x1 > x0:
            frames[t, y0:y1, x0:x1] = digit[y0 - top:y1 - top, x0 - left:x1 - left]
    frames = frames * 235 + rng.normal(0, 4, frames.shape)
    return np.repeat(np.clip(frames, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def hard_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """size×size float in [0, 1]: a random brightness, a smooth texture and a few random bars
    (clutter), and that brightness."""
    import torch
    import torch.nn.functional as F

    brightness = float(rng.uniform(0.1, 0.9))
    coarse = torch.from_numpy(rng.normal(0.0, 1.0, (1, 1, 6, 6)).astype(np.float32))
    texture = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()
    background = brightness + 0.08 * texture
    for _ in range(int(rng.integers(2, 6))):  # clutter: bars of other brightness, either orientation
        long_side, short_side = int(rng.integers(size // 6, size // 2)), int(rng.integers(1, 4))
        h, w = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
        y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        background[y:y + h, x:x + w] = brightness + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.25)
    return np.clip(background, 0.0, 1.0), brightness


def render_hard_digit(image: np.ndarray, rng: np.random.Generator, num_frames: int, size: int) -> np.ndarray:
    """T×size×size×3 uint8 (--hard): a handwritten 8x8 digit about half the frame high,
    drifting in a straight line between two random places over a cluttered background of random
    brightness; its ink is lighter than a dark background, darker than a light one."""
    import torch
    import torch.nn.functional as F

    background, brightness = hard_background(rng, size)
    side = int(round(rng.uniform(0.42, 0.55) * size))
    alpha = F.interpolate(torch.from_numpy(image.astype(np.float32) / 16.0)[None, None], size=(side, side),
                          mode="bilinear", align_corners=False)[0, 0].numpy().clip(0, 1)
    ink = brightness + (1.0 if brightness < 0.5 else -1.0) * rng.uniform(0.45, 0.6)
    start, end = rng.uniform(0, size - side, 2), rng.uniform(0, size - side, 2)  # top-left corners
    frames = np.repeat(background[None], num_frames, axis=0)
    for t in range(num_frames):
        a = t / max(1, num_frames - 1)
        top, left = np.round((1 - a) * start + a * end).astype(int)
        patch = frames[t, top:top + side, left:left + side]
        frames[t, top:top + side, left:left + side] = patch * (1 - alpha) + ink * alpha
    frames = frames * 255 + rng.normal(0, 4, frames.shape)
    return np.repeat(np.clip(frames, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def speaker_noise(speaker: str, seed: int = 0) -> dict:
    """--hard: the noise of a speaker's recordings (deterministic from the name and the data
    seed): mean SNR, colour (spectral tilt) and mains-like hum frequency and share."""
    import zlib

    rng = np.random.default_rng([seed, zlib.crc32(speaker.encode())])
    return {"snr_db": float(rng.uniform(3.0, 10.0)), "tilt": float(rng.uniform(-1.0, 1.0)),
            "hum_hz": float(rng.uniform(60.0, 400.0)), "hum_share": float(rng.uniform(0.2, 0.6))}


def hard_audio(samples: np.ndarray, rate: int, num_samples: int, profile: dict,
               rng: np.random.Generator) -> np.ndarray:
    """--hard soundtrack: the word at a random time of the `num_samples` (not centred, so a
    shorter clip may cut it), in coloured noise + hum at the speaker's SNR (± 3 dB per video)."""
    out = np.zeros(num_samples, np.float32)
    if samples.size >= num_samples:
        word = fit_audio(samples, num_samples)
        out[:] = word
    else:
        start = int(rng.integers(0, num_samples - samples.size + 1))
        out[start:start + samples.size] = samples
        word = samples
    speech_rms = max(float(np.sqrt(np.mean(word.astype(np.float64) ** 2))), 1e-4)
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, num_samples))
    freqs = np.fft.rfftfreq(num_samples, 1.0 / rate)
    spectrum *= np.maximum(freqs, 20.0) ** (profile["tilt"] / 2)  # tilt -1: pink-ish, +1: blue-ish
    coloured = np.fft.irfft(spectrum, num_samples)
    t = np.arange(num_samples) / rate
    phase = rng.uniform(0, 2 * np.pi)
    hum = sum(np.sin(2 * np.pi * h * profile["hum_hz"] * t + h * phase) / h for h in (1, 2, 3))
    noise = (np.sqrt(1 - profile["hum_share"]) * coloured / coloured.std()
             + np.sqrt(profile["hum_share"]) * hum / hum.std())
    snr = profile["snr_db"] + rng.uniform(-3.0, 3.0)
    mixed = out + noise * speech_rms / 10 ** (snr / 20)
    return (mixed * 0.9 / max(np.abs(mixed).max(), 1e-6)).astype(np.float32)


def fsdd_recordings(folder: Path) -> list[dict]:
    """Every `{digit}_{speaker}_{index}.wav` of the split's speakers, sorted."""
    if not folder.is_dir():
        raise SystemExit(f"spoken-digit recordings not found at {folder} (../shared/data/fsdd)")
    speakers = {s: split for split, names in SPLITS.items() for s in names}
    items = []
    for path in sorted(folder.glob("*.wav")):
        match = FILE_NAME.match(path.name)
        if match and match.group(2) in speakers:
            items.append({"path": path, "digit": int(match.group(1)), "speaker": match.group(2),
                          "split": speakers[match.group(2)]})
    if not items:
        raise SystemExit(f"no FSDD recordings of speakers {sorted(speakers)} in {folder}")
    return items


def build_dataset(out: Path, seconds: float, fps: float, size: int, per_speaker_digit: int | None,
                  seed: int = 0, hard: bool = False) -> dict[str, Path]:
    """Write the videos and labelled manifests once (`xdc scan` probes them); reused when made
    with the same settings (the folder's stamp, dataset.json, written last). `hard`: see the
    module docstring (--hard)."""
    from sklearn.datasets import load_digits
    from tqdm import tqdm

    from xdc.data.encode import write_video

    stamp = out / "dataset.json"
    wanted = {"seconds": seconds, "fps": fps, "size": size, "per_speaker_digit": per_speaker_digit,
              "seed": seed, "hard": hard}
    manifests = {name: out / f"{name}.csv" for name in ("pretrain", "pretrain_labeled", *SPLITS)}
    if check_stamp(stamp, wanted, "choose another --data-dir (or delete it)"):
        return manifests
    rng = np.random.default_rng(seed)
    digits = load_digits()
    # Each class's images, shuffled once, then cut into disjoint train/val/test pools.
    pools = {}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == d))
        for split, (lo, hi) in IMAGE_SHARE.items():
            pools[split, d] = idx[int(lo * idx.size):int(hi * idx.size)]
    recordings = fsdd_recordings(FSDD)
    if per_speaker_digit is not None:  # --quick: the first recordings of each speaker and digit
        kept, seen = [], {}
        for item in recordings:
            key = (item["speaker"], item["digit"])
            seen[key] = seen.get(key, 0) + 1
            if seen[key] <= per_speaker_digit:
                kept.append(item)
        recordings = kept
    num_frames = int(round(seconds * fps))
    labels = []
    for i, item in enumerate(tqdm(recordings, desc="avdigits videos")):
        samples, rate = read_wav(item["path"])
        pool = pools[item["split"], item["digit"]]
        image = digits.images[pool[rng.integers(pool.size)]]
        num_samples = int(round(seconds * rate))
        if hard:
            frames = render_hard_digit(image, rng, num_frames, size)
            audio = hard_audio(samples, rate, num_samples, speaker_noise(item["speaker"], seed), rng)
        else:
            frames = render_digit(image, rng, num_frames, size)
            audio = fit_audio(samples, num_samples)
        name = f"videos/{i:05d}.mp4"  # the name carries neither digit nor speaker
        write_video(out / name, frames, fps, audio, rate)
        labels.append({"path": name, "label": str(item["digit"]), "speaker": item["speaker"],
                       "split": item["split"], "source": item["path"].name})
    runner.command("scan", str(out / "videos"), "-o", str(out / "scan.csv"), "--workers", "2")
    write_split_manifests(out, labels, manifests)
    write_stamp(stamp, wanted)
    return manifests


def write_split_manifests(out: Path, labels: list[dict], manifests: dict[str, Path]) -> None:
    """`manifests`: pretrain (no labels), pretrain_labeled (Superv, and the clusters' labels),
    train / val / test (labelled); and labels.json, every video's digit, speaker and split."""
    from xdc.data.manifest import read_manifest, write_manifest

    by_name = {Path(r["path"]).name: r for r in labels}
    rows = read_manifest(out / "scan.csv")
    bad = [r for r in rows if r["status"] != "ok" or not r["has_audio"]]
    if bad:
        raise SystemExit(f"{len(bad)} rendered videos failed the scan, e.g. {bad[0]['path']}: {bad[0]['reason']}")

    def write(name: str, split_names: tuple[str, ...], with_labels: bool) -> None:
        chosen = []
        for r in rows:
            meta = by_name[Path(r["path"]).name]
            if meta["split"] in split_names:
                chosen.append(dict(r, label=meta["label"] if with_labels else None))
        write_manifest(chosen, manifests[name])

    write("pretrain", ("train",), False)
    write("pretrain_labeled", ("train",), True)
    for split in SPLITS:
        write(split, (split,), True)
    with open(out / "labels.json", "w") as f:
        json.dump(labels, f)


# The settings. Levers named by the issue: hand-crafted first clusters, k, widths, clip length,
# epochs per iteration with early stopping on the validation loss (training to saturation).
FULL = {
    "seeds": [0, 1, 2],
    "data": {"seconds": 1.0, "fps": 8.0, "size": 32, "per_speaker_digit": None},
    "pretrain": {
        "iterations": 2, "device": "auto",
        "data": {"frames": 8, "fps": 8.0, "short_side": 32, "crop": 32, "eval_clips": 1,
                 "num_workers": 0, "flip": False},
        "model": {"video_arch": "r2plus1d_18", "width": 16},
        "cluster": {"k_video": 32, "k_audio": 32, "k_joint": 32, "first_features": "handcrafted",
                    "niter": 20, "max_points_per_centroid": 64},
        # reference_batch: the global batch the lr is set for (one process here): no batch warning
        "optim": {"epoch_size": 1000, "batch_size": 16, "reference_batch": 16, "lr": 0.01,
                  "warmup_epochs": 1, "step_epochs": 6, "total_epochs": 8, "early_stop": True, "patience": 2,
                  "val_fraction": 0.1},
    },
    "superv": {"optim": {"early_stop": False}},  # Table 2: Superv rows train without e-stop
    "finetune": {
        "fc_lrs": [0.01, 0.04, 0.1, 0.4], "device": "auto",  # linear: cheap, so 4 lrs
        "data": {"eval_clips": 1},
        "optim": {"epoch_size": 2000, "batch_size": 32, "warmup_epochs": 0, "step_epochs": 6,
                  "total_epochs": 8, "weight_decay": 1.0e-4, "early_stop": False},
    },
    # fc trains on augmented clips through the frozen encoder: costlier than linear, fewer lrs.
    "fc": {"fc_lrs": [0.04, 0.4], "optim": {"epoch_size": 1000, "total_epochs": 4, "step_epochs": 3}},
}
QUICK = {
    "seeds": [0],
    "data": {"per_speaker_digit": 20},  # 800 videos: 400 pretraining, 200 val, 200 test
    "pretrain": {"model": {"width": 8},
                 "cluster": {"k_video": 16, "k_audio": 16, "k_joint": 16},
                 "optim": {"epoch_size": 800, "batch_size": 16, "step_epochs": 3, "total_epochs": 4}},
    "finetune": {"optim": {"epoch_size": 1000, "total_epochs": 4, "step_epochs": 3}},
    # Two lrs: with 0.4 alone, fc on Scratch diverged to a constant prediction (measured).
    "fc": {"fc_lrs": [0.04, 0.4], "optim": {"epoch_size": 1000, "total_epochs": 2, "step_epochs": 2}},
}
# --hard (issue 14): a small drifting digit over clutter, 1.6-s videos cut into 1-s clips (8
# frames, 32x32 from a 64x64 render), speaker-varying noise. Pretraining: 2 iterations of up to 6
# epochs of 1000 clips, k = 32, hand-crafted start; 2 clips per video for clustering and probes.
HARD = {
    "data": {"seconds": 1.6, "size": 64, "hard": True},
    "pretrain": {"data": {"eval_clips": 2},
                 "cluster": {"clips_per_video": 2},
                 "optim": {"warmup_epochs": 1, "step_epochs": 4, "total_epochs": 6}},
    "finetune": {"data": {"eval_clips": 2}},
}
METHODS = ("scratch", *PRETRAINING_METHODS)  # Scratch: random encoders, no pretraining


def merge(base: dict, extra: dict) -> dict:
    return OmegaConf.to_container(OmegaConf.merge(base, extra))


def write_yaml(tree: dict, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def truth(data_dir: Path) -> runner.Truth:
    """Each video's digit, and its speaker as the nuisance of both modalities (the audio's noise
    follows the speaker; the video's does not: a control)."""
    labels = json.loads((data_dir / "labels.json").read_text())
    speakers = {Path(r["path"]).name: r["speaker"] for r in labels}
    return runner.Truth(classes={Path(r["path"]).name: r["label"] for r in labels},
                        nuisance={"video": speakers, "audio": speakers})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 800 videos, small budget (<= 15 min)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0 1 2; --quick: 0)")
    parser.add_argument("--hard", action="store_true",
                        help="small drifting digits over clutter, 1.6-s videos, speaker-varying noise")
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        help=f"a subset of {','.join(METHODS)} (spaces or commas)")
    parser.add_argument("--first-features", choices=("handcrafted", "random"),
                        help="iteration 0 clusters: hand-crafted features or random encoders (the paper)")
    parser.add_argument("--video-arch", choices=VIDEO_ARCHS, help="video encoder")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="pretraining config overrides, e.g. cluster.pca_dim=32 optim.total_epochs=12")
    parser.add_argument("--budget", type=int, nargs="+", default=[], metavar="ITERATION",
                        help="also probe these iterations' checkpoints (linear): the budget curve, XDC − each "
                             "method against the epochs trained (e.g. 0 1 3 5)")
    parser.add_argument("--probes", default="linear,fc,knn,retrieval",
                        help="probe modes among linear, fc, knn, retrieval (kNN: no training, DINO's "
                             "weighted votes; retrieval: recall@1 of test videos among training videos)")
    parser.add_argument("--data-dir", type=Path,
                        help="the rendered videos (default OUT/data); share one between runs of the same data")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/avdigits[_quick])")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="pieces side by side (default 2: one per core of a 2-core machine)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error("--jobs and --threads must be at least 1")
    if args.seeds and min(args.seeds) < 0:
        parser.error("--seeds: integers >= 0")
    args.methods = list(dict.fromkeys(m for text in args.methods for m in text.split(",") if m))
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {unknown}; choose among {','.join(METHODS)}")
    args.probes = list(dict.fromkeys(m for m in args.probes.split(",") if m))
    if not args.probes or set(args.probes) - set(PROBES):
        parser.error(f"--probes: among {','.join(PROBES)}")
    args.extra = {}  # pretraining overrides, from the flags and --set
    if args.first_features:
        args.extra["cluster.first_features"] = args.first_features
    if args.video_arch:
        args.extra["model.video_arch"] = args.video_arch
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        args.extra[key] = value
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = FULL
    if args.hard:
        settings = merge(settings, HARD)
    if args.quick:
        settings = merge(settings, QUICK)
    if args.extra:  # written into pretrain.yaml (and the finetune config's model section)
        settings = merge(settings, {"pretrain": OmegaConf.to_container(
            OmegaConf.from_dotlist([f"{k}={v}" for k, v in args.extra.items()]))})
    seeds = list(dict.fromkeys(args.seeds or settings["seeds"]))
    iterations = settings["pretrain"]["iterations"]
    if any(not 0 <= i < iterations for i in args.budget):
        print(f"avdigits: --budget takes iterations in 0..{iterations - 1} (pretraining runs {iterations})",
              file=sys.stderr)
        return 2
    out = args.out or REPO / "runs" / ("avdigits" + "_hard" * args.hard + "_quick" * args.quick)
    try:
        return run(args, settings, seeds, out)
    except XdcError as err:  # a user error (settings of an earlier run, a failed command): one line
        print(f"avdigits: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, settings: dict, seeds: list[int], out: Path) -> int:
    # Seeds and probes only add pieces: not part of the stamp.
    runner.claim(out, {k: v for k, v in settings.items() if k != "seeds"})
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by every `xdc` process
    started = time.perf_counter()

    d = settings["data"]
    data_dir = args.data_dir or out / "data"
    manifests = build_dataset(data_dir, d["seconds"], d["fps"], d["size"], d["per_speaker_digit"],
                              hard=d.get("hard", False))
    pretrain = merge(settings["pretrain"], {"data": {"cache_dir": str(data_dir / "cache")}})
    configs = {"pretrain": write_yaml(pretrain, out / "pretrain.yaml"),
               "finetune": write_yaml(merge({"data": pretrain["data"], "model": pretrain["model"]},
                                            settings["finetune"]), out / "finetune.yaml")}
    from xdc.config import load_config
    from xdc.data.cache import build_cache
    from xdc.data.manifest import read_manifest

    rows = [r for name in ("pretrain", "val", "test") for r in read_manifest(manifests[name])]
    build_cache(rows, load_config(configs["pretrain"]).data, data_dir / "cache")

    test_labels = list(read_manifest(manifests["test"]).text("label"))
    experiment = runner.Experiment(out, args.methods, seeds, args.probes, settings["pretrain"]["iterations"],
                                   truth(data_dir), test_labels, tuple(args.budget))
    steps = runner.Commands(configs, manifests, {"superv": dotlist(settings["superv"]), "fc": dotlist(settings["fc"])},
                            quiet=args.jobs > 1)
    results = {"settings": settings, **runner.run_experiment(experiment, steps, args.jobs)}
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = runner.machine()
    flags = "".join(f" {f}" for f, on in (("--hard", args.hard), ("--quick", args.quick)) if on)
    flags += "".join(f" {k}={v}" for k, v in args.extra.items())
    header = (f"avdigits{flags}: seeds {seeds}, {len(rows)} videos; {results['wall_seconds'] / 60:.1f} min wall "
              f"on {results['machine']} ({args.jobs} piece(s) at a time, {args.threads} torch thread(s) each); "
              f"video-level top-1 on the test speaker")
    runner.finish(out, results, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
