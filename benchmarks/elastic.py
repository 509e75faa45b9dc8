"""Two torchrun agents on one machine: a 2-node job over localhost (c10d rendezvous, gloo).

    python benchmarks/elastic.py OUT_DIR        # (benchmarks/elastic_check.sh runs this)

The scenarios tests/test_multinode.py runs, here so that they need only what the package installs
(no pytest): `one_agent_run`, 2 ranks under one agent (the reference); `start_agents`, the same
run as a 2-node job; `elastic_run`, that job with `--max-restarts 1` whose second worker is
SIGKILLed inside an epoch: torchrun relaunches it, and the relaunched `xdc pretrain --out RUN`
continues from RUN/checkpoints/last.pt. Run as a script, on 8 small generated clips, it compares
the final pseudo-labels with the reference's and prints
    elastic: resumed after kill, labels equal: yes
(or what differed), exiting non-zero when it did not resume or the labels differ.
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
import torch

from xdc.config import resolve_config

TINY = resolve_config("tiny_cpu", "pretrain")  # the packaged file
# Epochs of 4 steps per rank; a dead peer fails the collectives at once, the timeout is a backstop.
SETTINGS = ["--method", "xdc", "iterations=2", "optim.epoch_size=16", "optim.batch_size=2",
            "optim.total_epochs=2", "optim.early_stop=false", "dist.timeout_minutes=2"]
SRC = Path(__file__).resolve().parents[1] / "src"  # a checkout's code before an installed one
# TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1: the workers get their own store. With the agent's store
# shared, each agent names a restart by its own restart count, which differs between agents when
# one restarts for a failure and the other for the new rendezvous: the relaunched ranks then read
# the dead ones' addresses (pytorch/pytorch#135712). docs/SCALE.md says the same.
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1",
           PYTHONPATH=os.pathsep.join(filter(None, [str(SRC) if SRC.is_dir() else "", os.environ.get("PYTHONPATH")])))
TIMEOUT = 240  # seconds for one run


class ScenarioFailed(RuntimeError):
    """A run of the scenario failed (the message carries the end of its logs)."""


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
    """Both agents' exit, and their logs; ScenarioFailed (with the logs' tails) on failure."""
    deadline = time.monotonic() + TIMEOUT
    try:
        for agent in agents:
            agent.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    text = "\n".join((logs / f"agent{node}.log").read_text() for node in range(len(agents)))
    if not all(agent.returncode == 0 for agent in agents):
        raise ScenarioFailed(f"agents failed:\n{text[-6000:]}")
    return text


def one_agent_run(manifest: Path, out: Path) -> str:
    """The reference: 2 ranks under a single agent."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *pretrain_args(manifest, out)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if done.returncode != 0:
        raise ScenarioFailed((done.stdout + done.stderr)[-6000:])
    return done.stdout + done.stderr


def worker_of(agent: subprocess.Popen) -> int:
    """The pid of the agent's (one) xdc.pretrain worker, a child process of the agent."""
    for child in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split():
        if b"xdc.pretrain" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise ScenarioFailed(f"agent {agent.pid} has no xdc.pretrain worker")


def position(last: Path) -> tuple[int, int] | None:
    try:
        state = torch.load(last, weights_only=True)
    except (FileNotFoundError, EOFError, RuntimeError):
        return None
    return int(state["iteration"]), int(state["epoch"])


def elastic_run(manifest: Path, out: Path, logs: Path) -> tuple[tuple[int, int], str]:
    """2 agents with --max-restarts 1; once epoch 1 of iteration 0 is checkpointed, SIGKILL the
    second agent's worker inside epoch 2. Returns (the checkpoint at the kill, the logs)."""
    logs.mkdir(parents=True, exist_ok=True)
    agents = start_agents(manifest, out, logs, max_restarts=1)
    last = out / "checkpoints" / "last.pt"
    deadline = time.monotonic() + TIMEOUT
    killed_at = None
    while killed_at is None and time.monotonic() < deadline and all(a.poll() is None for a in agents):
        if last.exists() and position(last) == (0, 1):
            # At once: on an idle machine epoch 2 of this tiny run ends within a fraction of a second.
            os.kill(worker_of(agents[1]), signal.SIGKILL)
            time.sleep(1.0)  # rank 0 fails at its next collective: no checkpoint is written after this
            killed_at = position(last)  # where the relaunch must continue
        time.sleep(0.05)
    text = wait(agents, logs)
    if killed_at is None:
        raise ScenarioFailed(f"never saw the checkpoint of epoch 1:\n{text[-6000:]}")
    return killed_at, text


def final_labels(run: Path) -> dict[str, np.ndarray]:
    return {m: np.load(run / "iterations" / "01" / f"labels_{m}.npy") for m in ("video", "audio")}


def digests(run: Path) -> list[list[dict]]:
    return [record["digests"] for record in json.loads((run / "summary.json").read_text())["iterations"]]


def main(out: Path) -> int:
    """The elastic scenario on 8 generated clips (2 classes)."""
    from xdc.data.synthetic import generate

    out.mkdir(parents=True, exist_ok=True)
    manifest = generate(out / "clips", num_classes=2, videos_per_class=4, size=64, progress=False)
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
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/elastic.py OUT_DIR")
    sys.exit(main(Path(sys.argv[1])))
