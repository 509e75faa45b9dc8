"""Where a pretraining run is and continues from: `IterationState` (what a checkpoint holds besides
the encoders, config and summary) and `save_checkpoints`; the run folder taken by rank 0 (lock),
the same command launched again (`same_run`: a scheduler or `torchrun --max-restarts` relaunching
it), `--resume` (`resume_state`, falling back to the newest readable iteration checkpoint). The
contracts: docs/DESIGN.md, "Run folder" and "Checkpoint"."""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import yaml

from xdc import distributed as dist_utils
from xdc.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rank_rng_states,
    save_checkpoint,
)
from xdc.config import PretrainConfig, config_to_yaml
from xdc.data.manifest import Manifest, read_manifest
from xdc.errors import XdcError
from xdc.files import DiskFullError, is_disk_full
from xdc.methods import HeadSpec
from xdc.stamps import check_stamp
from xdc.training.run_folder import RunFolder, RunFolderError

# What a checkpoint must hold to resume from it; once an iteration's training started (`heads`), more.
RESUME_KEYS = ("video_encoder", "audio_encoder", "iteration", "epoch", "rng", "summary")
TRAINING_KEYS = ("labels", "heads", "head_specs", "optimizer", "early_stop")


@dataclass
class IterationState:
    """Where a run is within an iteration: at its start (no `labels`), clustered (`labels`), or
    trained for `epoch` epochs (also the heads', optimizer's and early stopping's states). The
    schedule's position is `epoch`, in units that do not depend on the number of ranks."""

    iteration: int = 0
    epoch: int = 0  # epochs done in `iteration`
    global_step: int = 0  # SGD steps so far, over all iterations (TensorBoard's axis)
    labels: dict[str, np.ndarray] | None = None  # label set -> class per video (-1: no features)
    heads: dict | None = None  # state dicts, once training started
    head_specs: list[HeadSpec] = field(default_factory=list)
    optimizer: dict | None = None
    early_stop: dict | None = None

    def next_iteration(self) -> IterationState:
        return IterationState(self.iteration + 1, global_step=self.global_step)

    def to_checkpoint(self) -> dict:
        """Tensors, numbers and plain containers only (weights_only loading)."""
        state = {"iteration": self.iteration, "epoch": self.epoch, "global_step": self.global_step}
        if self.labels is not None:
            state["labels"] = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in self.labels.items()}
        if self.heads is not None:
            state |= {"heads": self.heads, "optimizer": self.optimizer, "early_stop": self.early_stop,
                      "head_specs": [[s.encoder, s.target, s.num_classes, s.multilabel] for s in self.head_specs]}
        return state

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> IterationState:
        labels = checkpoint.get("labels")
        return cls(int(checkpoint["iteration"]), int(checkpoint["epoch"]), int(checkpoint.get("global_step", 0)),
                   None if labels is None else {k: v.numpy() for k, v in labels.items()}, checkpoint.get("heads"),
                   [HeadSpec(*spec) for spec in checkpoint.get("head_specs", [])],
                   checkpoint.get("optimizer"), checkpoint.get("early_stop"))


def save_checkpoints(run: RunFolder, model: torch.nn.Module, cfg: PretrainConfig, state: IterationState,
                     summary: list[dict], iteration_done: bool = False) -> None:
    """summary.json, then `last.pt`, where a relaunch continues. When the iteration is done, first
    `iteration_NN.pt` (its result), then `last.pt` as the start of the next iteration: the same
    random state, since nothing draws between the two. A collective: every rank calls it."""
    rng = rank_rng_states()
    saves = [(run.iteration_checkpoint(state.iteration), state)] if iteration_done else []
    saves.append((run.last, state.next_iteration() if iteration_done else state))
    if dist_utils.is_main():  # the other ranks' records lack the cluster statistics
        run.write_summary(cfg.method, summary)
        for path, position in saves:
            save_checkpoint({"video_encoder": model.video_encoder.state_dict(),
                             "audio_encoder": model.audio_encoder.state_dict(), **position.to_checkpoint(),
                             "summary": json.dumps(summary), "config": config_to_yaml(cfg), "rng": rng}, path)
    dist_utils.barrier()


def same_run(run: RunFolder, cfg: PretrainConfig, rows: Manifest) -> bool:
    """Whether `run` already holds this run (same config, same usable rows): then launching it
    again continues it. False for a new folder; its config.yaml is the folder's settings stamp
    (`xdc.stamps`: SettingsMismatch naming what differs), its rows.csv must hold the same rows."""
    remedy = f"choose another --out, or continue it as it was with --resume {run.root}"
    if not check_stamp(run.config, yaml.safe_load(config_to_yaml(cfg)), remedy):
        return False
    if not run.rows.is_file() or read_manifest(run.rows, check_files="none").digest() != rows.digest():
        raise RunFolderError(f"{run.root} holds a run on other manifest rows than --data's: choose another "
                             f"--out, or continue it as it was with --resume {run.root}")
    return True


@contextmanager
def take_run_folder(run: RunFolder, cfg: PretrainConfig, rows: Manifest, resume: bool) -> Iterator[bool]:
    """Rank 0 holds the folder's lock for the whole run; every rank learns whether it got it and
    whether a run there is continued (yields that). A full disk ends the run with DiskFullError
    (checkpoints are atomic: the last one is whole)."""
    with ExitStack() as held:
        failure = None
        if dist_utils.is_main():
            try:
                held.enter_context(run.locked())
                resume = resume or same_run(run, cfg, rows)
                if not resume and run.last.exists():  # written since setup looked, by a run now ended
                    raise RunFolderError(f"{run.root} already holds a run: pass --resume {run.root} to continue it")
            except XdcError as err:
                failure = err
        # Every rank learns the outcome rather than waiting for rank 0 at a barrier.
        failed, resumed = dist_utils.all_reduce_sum(torch.tensor([float(failure is not None), float(resume)]))
        if failed.item():
            raise failure or RunFolderError(f"rank 0 could not take the run folder {run.root}")
        try:
            yield bool(resumed.item())
        except (OSError, RuntimeError) as err:
            if not is_disk_full(err):
                raise
            kept = (f"the last checkpoint {run.last} is intact: free some space, then continue with "
                    f"`xdc pretrain --resume {run.root}`") if run.last.is_file() \
                else "no checkpoint was written yet: free some space and start again"
            # save_checkpoint already says DiskFullError: quote what the OS (or torch) said instead
            cause = err.__cause__ if isinstance(err, DiskFullError) and err.__cause__ else err
            raise DiskFullError(f"the disk holding {run.root} is full ({str(cause).splitlines()[0][:120]}); "
                                f"{kept}") from err


def load_resume_checkpoint(path: Path) -> dict:
    """A checkpoint that loads safely and holds what resuming reads (CheckpointError otherwise)."""
    state = load_checkpoint(path)
    needed = RESUME_KEYS + (TRAINING_KEYS if isinstance(state, dict) and "heads" in state else ())
    missing = [key for key in needed if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a pretraining checkpoint: it has no {', '.join(missing)}")
    return state


def resume_state(run: RunFolder) -> dict | None:
    """The checkpoint a resumed run continues from: last.pt, or when that cannot be read, the
    newest readable iteration_NN.pt taken as the start of iteration NN + 1 (what last.pt holds once
    iteration NN's training has ended: its encoders, summary, random state; no labels), said on
    stderr. None when no checkpoint was written (a run killed before its first one)."""
    if not any(run.checkpoints.glob("*.pt")):
        return None
    try:
        return load_resume_checkpoint(run.last)
    except CheckpointError as err:
        problem = err
    for iteration, path in run.iteration_checkpoints():
        try:
            state = load_resume_checkpoint(path)
        except CheckpointError:
            continue
        if dist_utils.is_main():
            print(f"{problem}; resuming from {path.name} instead: iteration {iteration + 1} starts "
                  f"from its encoders", file=sys.stderr, flush=True)
        kept = ("video_encoder", "audio_encoder", "summary", "config", "rng", "global_step")
        return {**{key: state[key] for key in kept if key in state}, "iteration": iteration + 1, "epoch": 0}
    raise CheckpointError(f"{problem}; no readable iteration checkpoint to fall back on: start a new run "
                          f"(another --out)")
