"""Two CPU processes under torchrun (gloo) through a full iteration: same pseudo-labels on both."""

from __future__ import annotations

import json
import os
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
    # Each rank records digests of the labels and of the model it holds after clustering.
    summary = json.loads((out / "summary.json").read_text())
    digests = [record["digests"] for record in summary["iterations"]]
    assert len(digests) == 2
    for ranks in digests:
        assert len(ranks) == 2 and ranks[0] == ranks[1]
    # Re-clustered after training, and training (DDP) changed the model on both ranks alike.
    assert digests[0][0]["labels"] != digests[1][0]["labels"]
    assert digests[0][0]["weights"] != digests[1][0]["weights"]
    assert [r["epochs"] for r in summary["iterations"]] == [1, 1]
    assert [r["train_clips"] for r in summary["iterations"]] == [16, 16]  # 8 per rank, summed
    labels = np.load(out / "iterations" / "01" / "labels_audio.npy")
    assert labels.shape == (8,) and labels.min() >= 0
    assert not list(out.glob("checkpoints/.*.tmp"))  # only rank 0 wrote, atomically


def test_multi_node_restarts_on_the_shared_store_are_warned(monkeypatch, capsys):
    from xdc.distributed import warn_shared_store

    # What torchrun's agent puts in a worker's environment (2 nodes, --max-restarts 1).
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "1")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    warn_shared_store()
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in capsys.readouterr().err
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # what that variable gives
    warn_shared_store()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "1")  # one node: the restart counts cannot differ
    warn_shared_store()
    assert capsys.readouterr().err == ""
