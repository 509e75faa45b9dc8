"""xdc.distributed across nodes: two torchrun agents on one machine, a 2-node job over localhost
(c10d rendezvous, gloo).

(a) it holds the same pseudo-labels and weights as 2 ranks under one agent; (b) with
`--max-restarts 1`, a worker SIGKILLed mid-epoch: the job relaunches itself, continues from the
last checkpoint (relaunch = resume) and ends with the labels of the uninterrupted run. The
scenarios live in benchmarks/elastic.py, which benchmarks/elastic_check.sh runs without pytest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from elastic import (
    digests,
    elastic_run,
    final_labels,
    one_agent_run,
    start_agents,
    wait,
)


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
