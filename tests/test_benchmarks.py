"""benchmarks/avdigits.py: its real-media rendering and its result table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_avdigits_renders_a_real_recording_into_a_real_video(shared_fsdd, tmp_path):
    """benchmarks/avdigits.py: a spoken digit (FSDD wav) + a handwritten digit -> decodable mp4."""
    from sklearn.datasets import load_digits

    from xdc.data.encode import write_video
    from xdc.data.scan import probe_file

    sys.path.insert(0, str(BENCHMARKS))
    import avdigits

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


def test_avdigits_table_calls_a_win_only_beyond_the_seed_spread():
    sys.path.insert(0, str(BENCHMARKS))
    import avdigits

    def run(method, seed, video, audio):
        top1 = {f"{mode}_{m}": {"top1_video": v} for mode in ("linear", "fc")
                for m, v in (("video", video), ("audio", audio))}
        return {"method": method, "seed": seed, "seconds": 10.0, **top1}

    results = [run("xdc", 0, 0.60, 0.50), run("xdc", 1, 0.64, 0.40),
               run("sdc", 0, 0.20, 0.45), run("sdc", 1, 0.24, 0.47)]
    table = avdigits.aggregate(results)
    assert np.allclose(table["xdc"]["linear_video"], (0.62, np.std([0.60, 0.64], ddof=1)))
    video = avdigits.beats(table, "xdc", "sdc", "linear_video")
    audio = avdigits.beats(table, "xdc", "sdc", "linear_audio")
    assert video["wins"] and np.isclose(video["margin"], 0.40)
    assert not audio["wins"]  # margin -0.01: behind, and within the spread
    one_seed = avdigits.aggregate(results[::2])
    assert not avdigits.beats(one_seed, "xdc", "sdc", "linear_video")["wins"]  # no spread, no claim
    text = avdigits.markdown(one_seed, {}, "header")
    assert "| xdc | 0.600 | 0.500 |" in text and "±" not in text


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
