"""benchmarks/avdigits.py: its real-media rendering (plain and --hard: a small drifting digit over
clutter of random brightness, a word at a random time in speaker-dependent noise, deterministic),
its command line, and a tiny run of the whole path through the project's commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def avdigits():
    sys.path.insert(0, str(BENCHMARKS))
    import avdigits

    return avdigits


@pytest.fixture(scope="module")
def digit_image():
    from sklearn.datasets import load_digits

    return load_digits().images[3]


def test_avdigits_renders_a_real_recording_into_a_real_video(avdigits, shared_fsdd, tmp_path):
    """A spoken digit (FSDD wav) + a handwritten digit -> decodable mp4."""
    from sklearn.datasets import load_digits

    from xdc.data.encode import write_video
    from xdc.data.scan import probe_file

    samples, rate = avdigits.read_wav(shared_fsdd / "3_george_0.wav")
    assert rate == 8000 and 0.1 < samples.size / rate < 1.5 and np.abs(samples).max() > 0.05
    audio = avdigits.fit_audio(samples, rate)  # 1 s
    assert audio.size == rate and np.isclose(np.abs(audio).sum(), np.abs(samples[:rate]).sum(), rtol=0.05)
    digits = load_digits()
    frames = avdigits.render_digit(digits.images[3], np.random.default_rng(0), 8, 32)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    assert frames.mean() > 5 and (frames.max(axis=(1, 2, 3)) > 150).all()  # the digit is on every frame
    row = probe_file(write_video(tmp_path / "digit.mp4", frames, 8.0, audio, rate))
    assert row["status"] == "ok" and row["has_audio"] and not row["audio_silent"]
    assert row["num_frames"] == 8 and row["audio_rate"] == 8000


def test_hard_frames_are_deterministic_for_a_seed(avdigits, digit_image):
    a = avdigits.render_hard_digit(digit_image, np.random.default_rng(7), 13, 64)
    b = avdigits.render_hard_digit(digit_image, np.random.default_rng(7), 13, 64)
    c = avdigits.render_hard_digit(digit_image, np.random.default_rng(8), 13, 64)
    assert a.shape == (13, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_hard_digit_is_smaller_than_the_frame_and_drifts(avdigits, digit_image):
    # The digit alone: a blank 8x8 scan gives the background, the difference is the digit.
    moves = []
    for seed in range(5):
        with_digit = avdigits.render_hard_digit(digit_image, np.random.default_rng(seed), 13, 64)
        without = avdigits.render_hard_digit(np.zeros_like(digit_image), np.random.default_rng(seed), 13, 64)
        ink = np.abs(with_digit.astype(int) - without.astype(int))[..., 0] > 40  # T×H×W
        assert ink.any(axis=(1, 2)).all()  # on every frame
        rows, cols = np.flatnonzero(ink[0].any(1)), np.flatnonzero(ink[0].any(0))
        assert np.ptp(rows) + 1 <= 0.6 * 64 and np.ptp(cols) + 1 <= 0.6 * 64  # well inside the frame
        centres = [np.argwhere(frame).mean(axis=0) for frame in ink]
        moves.append(np.abs(centres[0] - centres[-1]).max())
    assert max(moves) > 8  # it drifts (from one random place to another)


def test_hard_background_brightness_and_clutter_vary(avdigits):
    backgrounds = [avdigits.hard_background(np.random.default_rng(seed), 64) for seed in range(20)]
    brightness = np.array([b for _, b in backgrounds])
    assert brightness.min() < 0.3 and brightness.max() > 0.7  # random brightness
    for image, level in backgrounds:
        assert image.shape == (64, 64) and 0 <= image.min() and image.max() <= 1
        assert (np.abs(image - level) > 0.08).mean() > 0.003  # clutter, not a flat field
    assert not np.allclose(backgrounds[0][0], backgrounds[1][0])


def test_hard_audio_places_the_word_at_random_times_in_speaker_noise(avdigits):
    rate = 8000
    word = np.sin(2 * np.pi * 440 * np.arange(int(0.4 * rate)) / rate).astype(np.float32) * 0.5
    george, nicolas = avdigits.speaker_noise("george"), avdigits.speaker_noise("nicolas")
    assert george == avdigits.speaker_noise("george") and george != nicolas
    outs = [avdigits.hard_audio(word, rate, int(1.6 * rate), george, np.random.default_rng(s)) for s in range(4)]
    again = avdigits.hard_audio(word, rate, int(1.6 * rate), george, np.random.default_rng(0))
    assert np.array_equal(outs[0], again)
    assert all(o.shape == (int(1.6 * rate),) and np.abs(o).max() <= 0.9 + 1e-6 for o in outs)
    # Where the word is: the loudest 0.4 s, found at different times in different videos.
    starts = []
    for o in outs:
        energy = np.convolve(o ** 2, np.ones(word.size), mode="valid")
        starts.append(int(np.argmax(energy)))
    assert max(starts) - min(starts) > 0.1 * rate
    silent_part = outs[0][np.r_[0:200, -200:0]]
    assert silent_part.std() > 0.01  # noise everywhere, not only under the word


def test_command_line_choices_come_from_their_owners(avdigits, capsys):
    from xdc.methods import METHODS
    from xdc.models.video import VIDEO_ARCHS

    assert avdigits.METHODS == ("scratch", *METHODS)
    args = avdigits.parse_args(["--methods", "scratch,xdc", "rand", "--video-arch", VIDEO_ARCHS[-1],
                                "--probes", "linear,knn", "--set", "cluster.pca_dim=8"])
    assert args.methods == ["scratch", "xdc", "rand"] and args.probes == ["linear", "knn"]
    assert args.extra == {"model.video_arch": VIDEO_ARCHS[-1], "cluster.pca_dim": "8"}
    for argv in (["--methods", "xdc,nope"], ["--video-arch", "vit"], ["--probes", "full"]):
        with pytest.raises(SystemExit):
            avdigits.parse_args(argv)
    assert "unknown ['nope']" in capsys.readouterr().err


TINY = {
    "seeds": [0],
    "data": {"seconds": 1.0, "fps": 8.0, "size": 32, "per_speaker_digit": 1},  # 40 videos, 20 to pretrain
    "pretrain": {"iterations": 2, "device": "cpu",
                 "data": {"frames": 4, "fps": 8.0, "short_side": 32, "crop": 24, "eval_clips": 1, "num_workers": 0},
                 "model": {"width": 4},
                 "cluster": {"k_video": 3, "k_audio": 3, "k_joint": 3, "first_features": "random"},
                 "optim": {"epoch_size": 16, "batch_size": 8, "warmup_epochs": 0, "step_epochs": 1,
                           "total_epochs": 1, "early_stop": False}},
    "superv": {},
    "finetune": {"device": "cpu", "fc_lrs": [0.1],
                 "optim": {"epoch_size": 20, "batch_size": 10, "warmup_epochs": 0, "step_epochs": 1,
                           "total_epochs": 1}},
    "fc": {},
}


@pytest.mark.slow  # about 20 processes
def test_a_tiny_avdigits_run_goes_through_the_commands(avdigits, shared_fsdd, tmp_path, capsys):
    """Two pieces side by side, each running `xdc pretrain / clusters / finetune` in fresh
    processes; the table as printed is table.md; a rerun reuses every piece."""
    out = tmp_path / "avq"
    args = avdigits.parse_args(["--methods", "scratch,xdc", "--probes", "linear,knn", "--jobs", "2", "--budget", "0", "1",
                                "--out", str(out)])
    assert avdigits.run(args, TINY, [0], out) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert [(r["seed"], r["method"]) for r in results["runs"]] == [(0, "scratch"), (0, "xdc")]
    assert results["chance"] == {"classes": 10, "test_videos": 10, "chance": 0.1, "majority": 0.1}
    xdc = results["runs"][1]
    assert set(xdc["probes"]) == {"linear", "knn"} and xdc["clusters"]["audio"]["num_clusters"] == 3
    assert [r["iteration"] for r in xdc["iterations"]] == [0, 1]
    # The commands a user would type, each piece's in its log; knn read the linear probe's features.
    log = (out / "seed0" / "xdc" / "log.txt").read_text()
    for command in ("$ xdc pretrain --config", "$ xdc clusters", "$ xdc finetune --checkpoint"):
        assert command in log
    assert "$ xdc finetune --scratch" in (out / "seed0" / "scratch" / "log.txt").read_text()
    assert (out / "seed0" / "xdc" / "knn_video" / "features.pt").is_file()
    assert (out / "table.md").read_text() in printed and "| chance (1/10)" in printed
    assert "XDC − SCRATCH" in printed
    # The budget curve: iteration 0's checkpoint probed in its own folder, the last one's is the probe.
    assert (out / "seed0" / "xdc" / "iteration00_linear_audio" / "results.json").is_file()
    assert xdc["budget"]["1"]["video"] == xdc["probes"]["linear"]["video"]
    assert [p["epochs"] for p in results["budget"]] == [1, 2] and "Budget curve" in printed

    written = {p: p.stat().st_mtime_ns for p in (out / "seed0").rglob("*") if p.is_file() and p.name != "piece.json"}
    assert avdigits.run(args, TINY, [0], out) == 0
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert json.loads((out / "results.json").read_text())["runs"][1]["probes"] == xdc["probes"]


@pytest.mark.slow  # its CPU steps: xdc prepare, k-means, a 2-rank torchrun (~1-3 min on 2 cores)
def test_gpu_check_runs_on_a_cpu_only_machine_and_says_what_it_skipped(tmp_path):
    """benchmarks/gpu_check.sh: every GPU step skipped with its reason, the others measured, each
    figure tagged with the item of issue 20 it checks."""
    import json
    import os
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run `bash benchmarks/gpu_check.sh OUT` for the real check")
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(tmp_path), "--quick"],
                          env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    figures = json.loads((tmp_path / "gpu_check.json").read_text())["figures"]
    assert all(f["item"] for f in figures.values())
    for name in ("train_step_cudnn_benchmark_off", "train_step_cudnn_benchmark_on", "feature_extraction",
                 "cuda_end_to_end"):
        assert figures[name]["skipped"] == "no CUDA device"
    assert figures["loader_from_shards"]["clips_per_s_from_shards_one_process"] > 0
    assert figures["kmeans"]["seconds_project"] > 0 and figures["kmeans"]["gpu_skipped"] == "no CUDA device"
    assert figures["rng_resume"]["restored_without_cuda"] and figures["two_ranks_cpu"]["ranks_agree"]
