"""Two torchrun agents on one machine: a 2-node job over localhost (c10d rendezvous, gloo).

(a) it holds the same pseudo-labels and weights as 2 ranks under one agent; (b) with
`--max-restarts 1`, a worker SIGKILLed mid-epoch: the job relaunches itself, continues from the
last checkpoint (relaunch = resume) and ends with the labels of the uninterrupted run.

Also a script (benchmarks/elastic_check.sh): `python tests/test_multinode.py OUT` runs (b) outside
pytest and prints `elastic: resumed after kill, labels equal: yes` (or what differed).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from xdc.config import resolve_config

TINY = resolve_config("tiny_cpu", "pretrain")  # the packaged file
# Epochs of 4 steps per rank; a dead peer fails the collectives at once, the timeout is a backstop.
SETTINGS = ["--method", "xdc", "iterations=2", "optim.epoch_size=16", "optim.batch_size=2",
            "optim.total_epochs=2", "optim.early_stop=false", "dist.timeout_minutes=2"]
SRC = str(Path(__file__).resolve().parents[1] / "src")
# TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: the workers get their own store. With the agent's store
# shared, each agent names a restart by its own restart count, which differs between agents when
# one restarts for a failure and the other for the new rendezvous: the relaunched ranks then read
# the dead ones' addresses (pytorch/pytorch#135712). docs/SCALE.md says the same.
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
           PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))
TIMEOUT = 240  # seconds for one run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_args(manifest: Path, out: Path) -> list[str]:
    return ["-m", "xdc.pretrain", "--config", str(TINY), "--data", str(manifest), "--out", str(out), *SETTINGS]


def start_agents(manifest: Path, out: Path, logs: Path, max_restarts: int = 0) -> list[subprocess.Popen]:
    """Two torchrun agents, one worker each, meeting at a c10d rendezvous on 127.0.0.1."""
    port = free_port()
    agents = []
    for node in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "xdc-test",
                   "--rdzv_conf", f"is_host={int(node == 0)}", "--local_addr", "127.0.0.1",
                   "--max_restarts", str(max_restarts), "--monitor_interval", "0.5",
                   *pretrain_args(manifest, out)]
        log = open(logs / f"agent{node}.log", "w")
        agents.append(subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return agents


def wait(agents: list[subprocess.Popen], logs: Path) -> str:
    """Both agents' exit, and their logs; AssertionError (with the logs' tails) on failure."""
    deadline = time.monotonic() + TIMEOUT
    try:
        for agent in agents:
            agent.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    text = "\n".join((logs / f"agent{node}.log").read_text() for node in range(len(agents)))
    assert all(agent.returncode == 0 for agent in agents), f"agents failed:\n{text[-6000:]}"
    return text


def one_agent_run(manifest: Path, out: Path) -> str:
    """The reference: 2 ranks under a single agent."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *pretrain_args(manifest, out)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return done.stdout + done.stderr


def worker_of(agent: subprocess.Popen) -> int:
    """The pid of the agent's (one) xdc.pretrain worker, a child process of the agent."""
    for child in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
        if b"xdc.pretrain" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise AssertionError(f"agent {agent.pid} has no xdc.pretrain worker")


def position(last: Path) -> tuple[int, int] | None:
    try:
        state = torch.load(last, weights_only=True)
    except (FileNotFoundError, EOFError, RuntimeError):
        return None
    return int(state["iteration"]), int(state["epoch"])


def elastic_run(manifest: Path, out: Path, logs: Path) -> tuple[tuple[int, int], str]:
    """(b): 2 agents with --max-restarts 1; once epoch 1 of iteration 0 is checkpointed, SIGKILL
    the second agent's worker inside epoch 2. Returns (the checkpoint at the kill, the logs)."""
    logs.mkdir(parents=True, exist_ok=True)
    agents = start_agents(manifest, out, logs, max_restarts=1)
    last = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + TIMEOUT
    killed_at = None
    while killed_at is None and time.monotonic() < deadline and all(a.poll() is None for a in agents):
        if last.exists() and position(last) == (0, 1):
            time.sleep(0.3)
            killed_at = position(last)
            os.kill(worker_of(agents[1]), signal.SIGKILL)
        time.sleep(0.05)
    text = wait(agents, logs)
    assert killed_at is not None, f"never saw the checkpoint of epoch 1:\n{text[-6000:]}"
    return killed_at, text


def final_labels(run: Path) -> dict[str, np.ndarray]:
    return {m: np.load(run / "iterations" / "01" / f"labels_{m}.npy") for m in ("video", "audio")}


def digests(run: Path) -> list[list[dict]]:
    return [record["digests"] for record in json.loads((run / "summary.json").read_text())["iterations"]]


@pytest.fixture(scope="module")
def reference_run(av_manifest, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_agent") / "run"
    one_agent_run(av_manifest, out)
    return out


@pytest.mark.slow
def test_two_agents_equal_one_agent_with_two_ranks(av_manifest, reference_run, tmp_path):
    out = tmp_path / "run"
    wait(start_agents(av_manifest, out, tmp_path), tmp_path)
    ranks = digests(out)
    assert len(ranks) == 2 and all(len(r) == 2 and r[0] == r[1] for r in ranks)  # the nodes agree
    assert ranks == digests(reference_run)  # labels and weights after each clustering
    for modality, labels in final_labels(reference_run).items():
        np.testing.assert_array_equal(final_labels(out)[modality], labels)


@pytest.mark.slow
def test_killed_worker_comes_back_by_itself_and_resumes(av_manifest, reference_run, tmp_path):
    out = tmp_path / "run"
    killed_at, text = elastic_run(av_manifest, out, tmp_path / "logs")
    assert killed_at == (0, 1)
    assert "at iteration 0, epoch 1" in text  # relaunched by torchrun, continued from last.pt
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in text  # set in ENV: no warning
    assert "iteration 0 epoch 1/2" in text and "iteration 1 epoch 2/2" in text
    assert [r["epochs"] for r in json.loads((out / "summary.json").read_text())["iterations"]] == [2, 2]
    for modality, labels in final_labels(reference_run).items():
        np.testing.assert_array_equal(final_labels(out)[modality], labels)
    # Exactly: same weights after re-clustering (states, lr and data order all came back).
    assert digests(out) == digests(reference_run)


@pytest.mark.slow
def test_a_two_rank_run_resumes_on_one(reference_run, tmp_path, capsys):
    import shutil

    from xdc.cli import main as xdc_main

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    # Back to the end of iteration 1's first epoch, as a crash there would leave last.pt.
    state = torch.load(out / "checkpoints" / "iteration_01.pt", weights_only=True)
    torch.save(state | {"epoch": 1}, out / "checkpoints" / "last.pt")
    assert xdc_main(["pretrain", "--resume", str(out)]) == 0
    printed = capsys.readouterr()
    assert "1 rank(s) × batch 2 = global batch 2" in printed.out
    assert "checkpoint was written by 2 rank(s)" in printed.err
    assert "at iteration 1, epoch 1" in printed.out and "iteration 1 epoch 2/2" in printed.out
    # The schedule went on from the epochs done: at the end of epoch 2 (warmup 1, step 1,
    # gamma 0.01) the lr is 0.01 × 0.01, on 8 steps an epoch here where the 2 ranks took 4.
    final = torch.load(out / "checkpoints" / "iteration_01.pt", weights_only=True)
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert final["global_step"] == state["global_step"] + 8


def main(out: Path) -> int:
    """benchmarks/elastic_check.sh: (b) outside pytest, on the tests' 8 generated clips."""
    from conftest import make_av_manifest  # this folder is on sys.path when run as a script

    out.mkdir(parents=True, exist_ok=True)
    manifest = make_av_manifest(out / "clips")
    print(f"reference: 2 ranks under one agent -> {out / 'reference'}", flush=True)
    one_agent_run(manifest, out / "reference")
    print(f"elastic: 2 agents, --max-restarts 1, a worker killed mid-epoch -> {out / 'elastic'}", flush=True)
    killed_at, text = elastic_run(manifest, out / "elastic", out / "logs")
    resumed = f"at iteration {killed_at[0]}, epoch {killed_at[1]}" in text
    expected, got = final_labels(out / "reference"), final_labels(out / "elastic")
    differ = [m for m in expected if not np.array_equal(expected[m], got[m])]
    print(f"killed a worker after the checkpoint of iteration {killed_at[0]}, epoch {killed_at[1]}; "
          f"logs in {out / 'logs'}")
    print(f"elastic: {'resumed after kill' if resumed else 'did not resume from the checkpoint'}, labels equal: "
          + ("yes" if not differ else f"no ({', '.join(differ)}: {expected} vs {got})"), flush=True)
    return 0 if resumed and not differ else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
