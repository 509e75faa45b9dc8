"""Shared test fixtures and helpers: the real files in ../shared, small media files the tests make,
the tiny pretraining settings, a finished tiny run, and running `xdc` in this process or a child."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from xdc.config import resolve_config

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SHARED_VIDEOS = SHARED / "videos"
SHARED_FSDD = SHARED / "fsdd" / "recordings"

torch.set_num_threads(1)  # CI has 2 cores; DataLoader workers and torchrun ranks share them

TINY = str(resolve_config("tiny_cpu", "pretrain"))  # the packaged file
# tiny_cpu made smaller still: one run takes seconds on a loaded 2-core machine.
SMALL = ["iterations=2", "optim.total_epochs=1", "optim.warmup_epochs=0", "optim.epoch_size=8",
         "optim.batch_size=4", "data.short_side=32", "data.crop=32", "model.width=4"]


def free_port() -> int:
    """A TCP port free on localhost now: a torch.distributed rendezvous's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    """The environment for a child `python -m xdc...`: this checkout's code."""
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


MOUNT_REFUSED = 97  # on_a_small_disk's exit status when the tmpfs cannot be mounted


def on_a_small_disk(disk: Path, size: str, script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Shell `script` run with a private tmpfs of `size` mounted at `disk`: a real full disk for the
    full-disk tests (unshare(1) gives a mount namespace without root); skipped where not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a private tmpfs")
    disk.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["unshare", "-rm", "sh", "-c",
                           f"mount -t tmpfs -o size={size} tmpfs {disk} || exit {MOUNT_REFUSED}\n{script}"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=timeout)
    if done.returncode == MOUNT_REFUSED:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    return done


def cli(capsys, *argv) -> tuple[int, str]:
    """`xdc ARGV` in this process: (exit code, stderr)."""
    from xdc.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_user_error(rc: int, err: str, command: str, *words: str) -> str:
    """Exit code 2, no traceback, and the last stderr line is `xdc COMMAND: ...` naming `words`
    (progress bars and warnings may come before it)."""
    assert rc == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"xdc {command}: "), err
    for word in words:
        assert word in line, line
    return line


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    if not SHARED_VIDEOS.is_dir():
        pytest.skip(f"real test clips not found at {SHARED_VIDEOS} (../shared/data/videos)")
    return SHARED_VIDEOS


@pytest.fixture(scope="session")
def shared_fsdd() -> Path:
    if not SHARED_FSDD.is_dir():
        pytest.skip(f"spoken-digit recordings not found at {SHARED_FSDD} (../shared/data/fsdd)")
    return SHARED_FSDD


def make_clip(path: Path, seconds: float = 2.0, fps: float = 16.0, size: tuple[int, int] = (64, 48),
              sample_rate: int = 16000, audio: bool = True, seed: int = 0, tone_hz: float = 440.0) -> Path:
    """A small real MP4 (H.264 + AAC): a moving square on a coloured background and a tone."""
    from xdc.data.encode import write_video

    rng = np.random.default_rng(seed)
    n = max(1, round(seconds * fps))
    w, h = size
    frames = np.empty((n, h, w, 3), np.uint8)
    frames[:] = rng.integers(0, 255, 3, dtype=np.uint8)
    for t in range(n):
        x = (t * 3) % (w - 8)
        frames[t, h // 3:h // 3 + 8, x:x + 8] = 255
    wave = None
    if audio:
        time = np.arange(int(seconds * sample_rate)) / sample_rate
        wave = 0.3 * np.sin(2 * np.pi * tone_hz * time) + 0.01 * rng.standard_normal(time.size)
    return write_video(path, frames, fps, wave, sample_rate)


@pytest.fixture
def clip_factory(tmp_path):
    """Call with a file name (and make_clip's keywords) to get a fresh real clip in tmp_path."""
    def factory(name: str = "clip.mp4", **kwargs) -> Path:
        return make_clip(tmp_path / name, **kwargs)
    return factory


def make_av_manifest(folder: Path, per_class: int = 4, seconds: float = 2.0) -> Path:
    """A small labelled manifest of real clips: class `low` (300 Hz tone) and `high` (1500 Hz),
    each clip with its own background colour, probed by the real `xdc scan` code."""
    from xdc.data.manifest import write_manifest
    from xdc.data.scan import scan_paths

    for c, (name, tone) in enumerate((("low", 300.0), ("high", 1500.0))):
        for i in range(per_class):
            make_clip(folder / name / f"{name}_{i}.mp4", seconds=seconds, seed=10 * c + i, tone_hz=tone)
    return write_manifest(scan_paths([folder], labels_from_dirs=True, progress=False),
                          folder / "manifest.csv")


@pytest.fixture(scope="session")
def av_manifest(tmp_path_factory) -> Path:
    """Session-wide manifest of 8 labelled real clips with audio (see make_av_manifest)."""
    return make_av_manifest(tmp_path_factory.mktemp("av_clips"))


LABELLED_CLASSES = {"red_low": ((200, 30, 30), 300.0), "green_mid": ((30, 200, 30), 900.0),
                    "blue_high": ((30, 30, 200), 2400.0)}


def make_labelled_clip(path, colour, tone, seed, seconds=1.0, fps=8.0, sample_rate=16000):
    """A clip of one colour with a moving white square, and a tone: a class anyone can tell."""
    from xdc.data.encode import write_video

    rng = np.random.default_rng(seed)
    frames = np.empty((int(seconds * fps), 48, 64, 3), np.uint8)
    frames[:] = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
    for t in range(len(frames)):  # a moving white square, as make_clip
        x = (t * 5 + int(rng.integers(0, 20))) % 56
        frames[t, 16:24, x:x + 8] = 255
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * tone * (1 + 0.02 * rng.standard_normal()) * time)
    return write_video(path, frames, fps, wave + 0.01 * rng.standard_normal(time.size), sample_rate)


@pytest.fixture(scope="session")
def labelled_manifests(tmp_path_factory) -> Path:
    """A folder with train.csv (4 videos per class of LABELLED_CLASSES) and test.csv (2 per class)
    of real MP4s, labels from their folders."""
    from xdc.data.manifest import write_manifest
    from xdc.data.scan import scan_paths

    root = tmp_path_factory.mktemp("labelled")
    for subset, count in (("train", 4), ("test", 2)):
        for label, (colour, tone) in LABELLED_CLASSES.items():
            for i in range(count):
                make_labelled_clip(root / subset / label / f"{i}.mp4", colour, tone,
                                   seed=100 * count + 10 * list(LABELLED_CLASSES).index(label) + i)
        write_manifest(scan_paths([root / subset], labels_from_dirs=True, progress=False),
                       root / f"{subset}.csv")
    return root


def broken_copy(av_manifest: Path, folder: Path, broken: int = 1) -> Path:
    """The manifest's rows with `broken` of the files overwritten by garbage after the scan."""
    from xdc.data.manifest import read_manifest, write_manifest

    rows = []
    for i, row in enumerate(read_manifest(av_manifest)):
        copy = folder / f"clip_{i}.mp4"
        shutil.copy(row["path"], copy)
        if i < broken:
            copy.write_bytes(b"not a video" * 100)
        rows.append(dict(row, path=str(copy)))
    return write_manifest(rows, folder / "manifest.csv")


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, av_manifest) -> Path:
    """A complete 2-iteration tiny run (pretrain() in this process). Read only: damage `run_copy`."""
    from xdc.config import load_config
    from xdc.data.manifest import read_manifest, usable_rows
    from xdc.pretrain import pretrain

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    rows, _ = usable_rows(read_manifest(av_manifest), require_audio=True)
    pretrain(load_config(TINY, SMALL), rows, run_dir)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of `finished_run` for this test to damage, as a RunFolder."""
    from xdc.training.run_folder import RunFolder

    shutil.copytree(finished_run, tmp_path / "run")
    return RunFolder(tmp_path / "run")
