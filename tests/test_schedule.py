"""xdc.training.schedule: the lr schedule of the paper's Table 1 and early stopping after 3
consecutive validation-loss rises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xdc.config import OptimConfig
from xdc.config import ConfigError, load_config
from xdc.training.schedule import EarlyStopping, effective_lr, lr_factor, make_scheduler, steps_per_epoch


def test_warmup_then_step_decay_per_table_2_kinetics():
    # we/se/te = 10/10/30, gamma 0.01, 100 steps per epoch.
    f = lambda epoch, step=0: lr_factor(epoch * 100 + step, 100, 10, 10, 0.01)  # noqa: E731
    assert f(0) == pytest.approx(1 / 1000)  # first step of warmup
    assert f(5) == pytest.approx(501 / 1000)  # linear, step by step
    assert f(9, 99) == pytest.approx(1.0)  # warmup reaches the base lr
    assert f(10) == f(19, 99) == 1.0  # se epochs at the base lr
    assert f(20) == pytest.approx(0.01) and f(29, 99) == pytest.approx(0.01)


def test_no_warmup_ig_last_iteration():
    f = lambda epoch: lr_factor(epoch * 7, 7, 0, 9, 0.01)  # noqa: E731  (0/9/30)
    assert [f(0), f(8), f(9), f(18), f(27)] == pytest.approx([1, 1, 0.01, 1e-4, 1e-6])


def test_scheduler_drives_sgd_lr_and_resumes_from_state():
    cfg = OptimConfig(lr=0.1, warmup_epochs=1, step_epochs=1, total_epochs=3, gamma=0.5, epoch_size=8,
                      batch_size=4)
    steps = steps_per_epoch(cfg)
    assert steps == 2
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, steps)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.05, 0.05])
    # A fresh scheduler loaded from the state continues where the first one stopped.
    opt2 = torch.optim.SGD([param], lr=cfg.lr)
    sched2 = make_scheduler(opt2, cfg, steps)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"]) == pytest.approx(0.025)


def lr_per_epoch(cfg: OptimConfig, world_size: int, epochs: range, optimizer_state=None) -> list[list[float]]:
    """The lr of every SGD step of `epochs` on `world_size` ranks, per epoch: a run (or a resumed
    one, starting at epochs.start with a loaded optimizer state) as pretrain builds it."""
    steps = steps_per_epoch(cfg, world_size)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr, momentum=0.9)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    sched = make_scheduler(opt, cfg, steps, epochs.start, base_lr=cfg.lr)
    curve = []
    for _ in epochs:
        curve.append([])
        for _ in range(steps):
            curve[-1].append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return curve


def test_resume_on_another_world_size_follows_the_same_lr_curve():
    cfg = OptimConfig(lr=0.1, warmup_epochs=2, step_epochs=1, total_epochs=5, gamma=0.5, epoch_size=64,
                      batch_size=4)
    assert steps_per_epoch(cfg, 4) == 4 and steps_per_epoch(cfg, 2) == 8
    four = lr_per_epoch(cfg, 4, range(5))  # started on 4 ranks...
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr, momentum=0.9)
    make_scheduler(opt, cfg, 4, first_epoch=3)  # ...its optimizer state after 3 epochs
    for first in (1, 3):  # resumed on 2 ranks mid-warmup, and after it
        two = lr_per_epoch(cfg, 2, range(first, 5), opt.state_dict())
        for epoch, (a, b) in enumerate(zip(four[first:], two), start=first):
            assert a[-1] == pytest.approx(b[-1]), epoch  # the same lr at the end of every epoch
            # Within an epoch: the same ramp, sampled at the steps of each world size.
            assert np.interp(np.arange(1, 9) / 8, np.arange(1, 5) / 4, a) == pytest.approx(b, abs=0.1 / 16)
    assert [epoch[0] for epoch in four[2:]] == pytest.approx([0.1, 0.05, 0.025])
    # The old way, a raw step count, puts the 2-rank run back in its warmup after 3 epochs.
    steps_done = 3 * steps_per_epoch(cfg, 4)
    assert cfg.lr * lr_factor(steps_done, steps_per_epoch(cfg, 2), 2, 1, 0.5) == pytest.approx(0.1 * 13 / 16)


def test_linear_lr_scaling_by_the_global_batch():
    cfg = OptimConfig(lr=0.1, batch_size=32, lr_scaling="linear", reference_batch=256)
    assert [effective_lr(cfg, w) for w in (1, 4, 8, 16)] == pytest.approx([0.0125, 0.05, 0.1, 0.2])
    assert effective_lr(OptimConfig(lr=0.1, batch_size=32), 8) == 0.1  # lr_scaling none: as given
    with pytest.raises(ConfigError, match="optim.lr_scaling"):
        load_config("tiny_cpu", ["optim.lr_scaling=sqrt"])
    with pytest.raises(ConfigError, match="dist.timeout_minutes"):
        load_config("tiny_cpu", ["dist.timeout_minutes=0"])


def test_steps_per_epoch_splits_epoch_size_over_ranks():
    cfg = OptimConfig(epoch_size=100, batch_size=8)
    assert steps_per_epoch(cfg, 1) == 13 and steps_per_epoch(cfg, 2) == 7


def test_early_stopping_after_three_consecutive_rises():
    stop = EarlyStopping(patience=3)
    losses = [5.0, 4.0, 4.5, 4.2, 4.3, 4.4, 4.6]  # rise, fall (reset), then three rises in a row
    decisions = [stop.step(v) for v in losses]
    assert decisions == [False, False, False, False, False, False, True]
    restored = EarlyStopping()
    partial = EarlyStopping(patience=3)
    for v in losses[:5]:
        partial.step(v)
    restored.load_state_dict(partial.state_dict())
    assert [restored.step(v) for v in losses[5:]] == [False, True]


def test_equal_loss_is_not_a_rise():
    stop = EarlyStopping(patience=2)
    assert [stop.step(v) for v in (1.0, 2.0, 2.0, 3.0, 4.0)] == [False, False, False, False, True]
