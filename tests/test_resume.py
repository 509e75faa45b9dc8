"""Kill a real `xdc pretrain` process with SIGKILL mid-epoch, then `--resume` it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from xdc.config import resolve_config

TINY = resolve_config("tiny_cpu", "pretrain")  # the packaged file
# Epochs of 8 steps (batch 4), so there is time to land the kill inside one.
SETTINGS = ["iterations=2", "optim.epoch_size=32", "optim.batch_size=4", "optim.total_epochs=2",
            "optim.early_stop=false"]


def read_checkpoint(path: Path) -> dict | None:
    try:
        return torch.load(path, weights_only=True)
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(av_manifest, tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "xdc.pretrain", "--config", str(TINY), "--data", str(av_manifest),
               "--out", str(out), *SETTINGS]
    log = open(tmp_path / "first.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    killed_at = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            state = read_checkpoint(last) if last.exists() else None
            # After the first epoch of iteration 0, the second epoch is running: kill inside it.
            if state is not None and state["iteration"] == 0 and state["epoch"] == 1:
                time.sleep(0.3)
                killed_at = read_checkpoint(last)
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        process.wait(timeout=60)
        log.close()
    first_log = (tmp_path / "first.log").read_text()
    assert killed_at is not None, f"never saw a mid-run checkpoint:\n{first_log[-3000:]}"
    assert process.returncode == -signal.SIGKILL
    assert killed_at["epoch"] == 1 and "labels" in killed_at  # the kill landed inside epoch 2
    assert "iteration 0 epoch 2/2" not in first_log

    resumed = subprocess.run([sys.executable, "-m", "xdc.pretrain", "--resume", str(out)], env=env,
                             capture_output=True, text=True, timeout=240)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-4000:]
    assert "resumed" in text and "at iteration 0, epoch 1" in text
    assert "iteration 0 epoch 1/2" not in text  # epoch 1 was not redone
    assert "iteration 0 epoch 2/2" in text and "iteration 1 epoch 2/2" in text
    # The labels of iteration 0 are the checkpoint's, not a re-clustering.
    for key, values in killed_at["labels"].items():
        np.testing.assert_array_equal(np.load(out / "iterations" / "00" / f"labels_{key}.npy"),
                                      values.numpy())
    summary = json.loads((out / "summary.json").read_text())
    assert [r["epochs"] for r in summary["iterations"]] == [2, 2]
    final = read_checkpoint(last)
    assert (final["iteration"], final["epoch"]) == (2, 0)  # the run is complete
    # The scheduler went on from the checkpoint's step count: 2 iterations × 2 epochs × 8 steps.
    assert final["global_step"] == 2 * 2 * 8
    final = read_checkpoint(out / "checkpoints" / "iteration_01.pt")

    # Exactly as far as a run that was never interrupted (same crops, order, momentum, lr).
    from xdc.cli import main as xdc_main

    reference = tmp_path / "reference"
    assert xdc_main(["pretrain", "--config", str(TINY), "--data", str(av_manifest), "--out",
                     str(reference), *SETTINGS]) == 0
    expected = read_checkpoint(reference / "checkpoints" / "iteration_01.pt")
    for part in ("video_encoder", "audio_encoder", "heads"):
        for name, value in expected[part].items():
            torch.testing.assert_close(final[part][name], value, rtol=1e-4, atol=1e-5, msg=name)
