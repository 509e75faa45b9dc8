"""Two CPU processes under torchrun (gloo) through a full iteration: same pseudo-labels on both."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from xdc.config import resolve_config

TINY = resolve_config("tiny_cpu", "pretrain")  # the packaged file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_hold_the_same_pseudo_labels(av_manifest, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               "-m", "xdc.pretrain", "--config", str(TINY), "--data", str(av_manifest),
               "--out", str(out), "--method", "xdc", "iterations=2", "optim.epoch_size=16",
               "optim.total_epochs=1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    # Each rank prints digests of the labels and of the model it holds after clustering.
    digests = re.findall(r"rank (\d) iteration (\d+) labels ([0-9a-f]{16}) weights ([0-9a-f]{16})", log)
    by_iteration: dict[str, dict[str, tuple[str, str]]] = {}
    for rank, iteration, labels, weights in digests:
        by_iteration.setdefault(iteration, {})[rank] = (labels, weights)
    assert set(by_iteration) == {"0", "1"}
    for ranks in by_iteration.values():
        assert set(ranks) == {"0", "1"} and ranks["0"] == ranks["1"]
    # Re-clustered after training, and training (DDP) changed the model on both ranks alike.
    assert by_iteration["0"]["0"][0] != by_iteration["1"]["0"][0]
    assert by_iteration["0"]["0"][1] != by_iteration["1"]["0"][1]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["epochs"] for r in summary["iterations"]] == [1, 1]
    assert "16 clips" in log  # 8 per rank, summed over both
    labels = np.load(out / "iterations" / "01" / "labels_audio.npy")
    assert labels.shape == (8,) and labels.min() >= 0
    assert not list(out.glob("checkpoints/.*.tmp"))  # only rank 0 wrote, atomically
