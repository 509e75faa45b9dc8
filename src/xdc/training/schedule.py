"""The pretraining learning-rate schedule (the paper's Table 1) and early stopping on the validation loss.

The schedule is a multiplier of the base lr, stepped once per SGD step:
- warmup (Goyal et al.): for the first `warmup_epochs` epochs the lr grows linearly, step by step,
  from lr / warmup_steps to lr;
- then step decay: × gamma every `step_epochs` epochs, counted from the end of warmup (counted from
  epoch 0, Table 2's 10/10/30 would decay the moment warmup ends and never train at the base lr);
- `total_epochs` bounds the training of one iteration (the loop stops there).

The position is kept in epochs, not steps: steps per epoch depend on the number of ranks, so a
run resumed on another world size rebuilds the step from the epochs done (`make_scheduler`'s
`first_epoch`) and follows the same lr curve per epoch. Checkpoints are written at epoch ends only.

The base lr (`effective_lr`): `optim.batch_size` is per rank; with `lr_scaling=linear` the lr is
scaled by global batch / `reference_batch` (Goyal et al.), with `none` it is `optim.lr` as given.
"""

from __future__ import annotations

import math

import torch

from xdc.config import OptimConfig


def lr_factor(step: int, steps_per_epoch: int, warmup_epochs: int, step_epochs: int,
              gamma: float) -> float:
    """Multiplier of the base lr at SGD step `step` (0-based) of one training run."""
    warmup_steps = warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    epochs_after_warmup = (step - warmup_steps) // steps_per_epoch
    return gamma ** (epochs_after_warmup // step_epochs)


def steps_per_epoch(cfg: OptimConfig, world_size: int = 1) -> int:
    """SGD steps in one epoch of `epoch_size` clips split over ranks (last partial batch kept)."""
    return max(1, math.ceil(math.ceil(cfg.epoch_size / world_size) / cfg.batch_size))


def global_batch(cfg: OptimConfig, world_size: int = 1) -> int:
    return cfg.batch_size * world_size


def effective_lr(cfg: OptimConfig, world_size: int = 1) -> float:
    """The base lr the schedule multiplies: `lr`, or with lr_scaling=linear lr × global batch /
    reference_batch (Goyal et al.)."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * global_batch(cfg, world_size) / cfg.reference_batch
    return cfg.lr


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps: int, first_epoch: int = 0,
                   base_lr: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped after every SGD step, starting at epoch `first_epoch` (`steps` = steps
    per epoch on this world size): what a resumed run rebuilds instead of loading a step count.
    `base_lr` (when given) replaces the lr a loaded optimizer state carries."""
    if base_lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] = base_lr

    def factor(step: int) -> float:
        return lr_factor(step + first_epoch * steps, steps, cfg.warmup_epochs, cfg.step_epochs, cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def sgd_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """One optimisation step and one step of the per-step lr schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()


class EarlyStopping:
    """Stop after `patience` consecutive epochs whose validation loss rose over the previous one."""

    def __init__(self, patience: int = 3):
        self.patience = patience
        self.previous: float | None = None
        self.rises = 0
        self.history: list[float] = []

    def step(self, val_loss: float) -> bool:
        """Record one epoch's validation loss; True when training should stop."""
        if self.previous is not None and val_loss > self.previous:
            self.rises += 1
        else:
            self.rises = 0
        self.previous = val_loss
        self.history.append(float(val_loss))
        return self.rises >= self.patience

    @property
    def should_stop(self) -> bool:
        return self.rises >= self.patience

    def state_dict(self) -> dict:
        return {"patience": self.patience, "previous": self.previous, "rises": self.rises,
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.patience = int(state["patience"])
        self.previous = state["previous"]
        self.rises = int(state["rises"])
        self.history = [float(v) for v in state["history"]]
