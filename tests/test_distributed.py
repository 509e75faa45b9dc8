"""xdc.distributed and pretraining under torch.distributed: two CPU processes under torchrun (gloo)
through a full iteration hold the same pseudo-labels; loops with collectives inside
(xdc.clustering.recompute_batchnorms) end on every rank (spawned gloo ranks, under a timeout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
from conftest import TINY, free_port


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


# ------------------------------------------------------------- loops with collectives inside

class CollectiveInForward(torch.nn.Module):
    """What a SyncBatchNorm layer does in each training forward on GPUs, on the CPU: a collective
    (SyncBatchNorm itself runs on CUDA only). A rank running fewer forwards leaves the others
    waiting in it."""

    def __init__(self):
        super().__init__()
        self.forwards = 0

    def forward(self, x):
        if self.training:
            torch_dist.all_reduce(x.detach().sum().reshape(1))
            self.forwards += 1
        return x


def clip_items(indices, broken, seed):
    """Dataset items as AudioVideoClips gives them: decoded clips, or a skip with its reason."""
    g = torch.Generator().manual_seed(seed)
    return [{"index": i, "skipped": "decode error: truncated file"} if i in broken else
            {"index": i, "video": torch.rand(1, 3, 2, 8, 8, generator=g)} for i in indices]


# Per rank (3 ranks): its items (shards of unequal length) and those that fail to decode.
# Batches of 2: rank 0 has 4 decoded batches, rank 1 three (its 2nd batch failed whole),
# rank 2 two (a shorter shard, and one batch failed whole).
SHARDS = {0: (range(8), set()), 1: (range(8, 16), {10, 11, 14}), 2: (range(16, 21), {18, 19})}


def _recompute_rank(rank, world, init, out_dir):
    from datetime import timedelta

    from xdc.clustering import NoFeaturesError, recompute_batchnorms
    from xdc.data.datasets import collate_clips

    torch.set_num_threads(1)
    # A collective that waits longer than this raises: a hang ends here, not at pytest's timeout.
    torch_dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                                  timeout=timedelta(seconds=60))
    try:
        for case, all_broken_rank in (("unequal", None), ("rank 2 broken", 2)):
            torch.manual_seed(0)
            synced = CollectiveInForward()
            encoder = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 1), torch.nn.BatchNorm3d(4), synced)
            indices, broken = SHARDS[rank]
            items = clip_items(indices, set(indices) if rank == all_broken_rank else broken, seed=rank)
            loader = [collate_clips(items[i:i + 2]) for i in range(0, len(items), 2)]
            try:
                used = recompute_batchnorms({"video": encoder}, loader, "cpu", max_batches=10)
            except NoFeaturesError as err:
                used = str(err)
            bn = encoder[1]
            np.save(out_dir / f"{case} stats{rank}.npy", torch.stack([bn.running_mean, bn.running_var]).numpy())
            (out_dir / f"{case} rank{rank}.json").write_text(json.dumps({"used": used, "forwards": synced.forwards}))
    finally:
        torch_dist.destroy_process_group()


def run_ranks(fn, world, args, timeout=120.0):
    """Start `world` ranks (spawned processes) of `fn(rank, world, *args)`; fail, and kill them,
    when they have not all ended after `timeout` seconds."""
    import time

    import torch.multiprocessing as mp

    context = mp.start_processes(fn, args=(world, *args), nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"ranks still running after {timeout:.0f} s: a hang")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


@pytest.mark.slow  # three spawned ranks import torch and xdc: ~20-40 s on 2 busy cores
def test_batchnorm_recompute_ends_on_every_rank_with_unequal_shards(tmp_path):
    run_ranks(_recompute_rank, 3, (f"file://{tmp_path / 'rendezvous'}", tmp_path))
    ranks = [json.loads((tmp_path / f"unequal rank{r}.json").read_text()) for r in range(3)]
    # As many forwards on every rank as the rank with the fewest decoded batches has (2).
    assert [(r["used"], r["forwards"]) for r in ranks] == [(2, 2)] * 3
    stats = [np.load(tmp_path / f"unequal stats{r}.npy") for r in range(3)]
    assert all(np.array_equal(stats[0], s) for s in stats) and np.abs(stats[0][0]).max() > 0
    # A rank with nothing decodable: every rank stops at once, none waits for it.
    ranks = [json.loads((tmp_path / f"rank 2 broken rank{r}.json").read_text()) for r in range(3)]
    assert all(r["forwards"] == 0 and "no video could be decoded" in r["used"] for r in ranks)
    assert "5 skipped" in ranks[2]["used"] and "0 skipped on rank 0; all 3 ranks stop" in ranks[0]["used"]
