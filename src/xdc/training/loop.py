"""One readable training loop for pretraining: both encoders, their heads, one optimizer.

`PretrainModel` holds the two encoders and the current iteration's classification heads, so DDP
wraps one module (one backward, one gradient all-reduce). `train_one_epoch` and
`validation_loss` are the only places a batch goes through the network; both report the loss of
every head (`epoch_losses`), since a mean over heads hides a head that learns nothing. The losses
add up on the device (`MetricMeter`) and are summed over ranks once per `LOG_EVERY` steps, when
training also stops at the first non-finite loss (`NonFiniteLossError`).
"""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from xdc import distributed as dist_utils
from xdc.checkpoint import CheckpointError, load_checkpoint, load_error_reason
from xdc.data.datasets import SkipCounter
from xdc.errors import XdcError
from xdc.methods import HeadSpec, head_losses, reduce_heads
from xdc.models import (
    ClassificationHead,
    audio_encoder,
    autocast,
    flat_clips,
    to_device,
    video_encoder,
)
from xdc.progress import progress
from xdc.training.meter import MetricMeter, Totals
from xdc.training.schedule import sgd_step

# Steps between two reductions of the running losses over ranks (the bar, TensorBoard's
# train/loss and the non-finite check); every epoch's last steps are reduced at its end.
LOG_EVERY = 10


class NonFiniteLossError(XdcError):
    """A training loss stopped being a finite number: the run diverged, or an input holds inf/NaN."""


class NoValidationVideosError(XdcError):
    """None of the held-out videos could be decoded: the validation loss is undefined."""


class PretrainModel(nn.Module):
    """Video and audio encoders plus one head per `HeadSpec`; forward gives logits per head."""

    def __init__(self, video_encoder: nn.Module, audio_encoder: nn.Module):
        super().__init__()
        self.video_encoder = video_encoder
        self.audio_encoder = audio_encoder
        self.heads = nn.ModuleDict()
        self.head_specs: list[HeadSpec] = []

    def reset_heads(self, specs: list[HeadSpec], state: dict | None = None) -> None:
        """Fresh heads: a new clustering's ids mean nothing to the old heads. With `state` (a
        checkpoint's heads), those, built without drawing a random number: a resumed run's
        random streams go on from the checkpoint's."""
        device = next(self.video_encoder.parameters()).device
        encoders = {"video": self.video_encoder, "audio": self.audio_encoder}
        self.head_specs = list(specs)

        def heads() -> nn.ModuleDict:
            return nn.ModuleDict({s.name: ClassificationHead(encoders[s.encoder].feature_dim, s.num_classes)
                                  for s in specs})
        if state is None:
            self.heads = heads().to(device)
            return
        with torch.device("meta"):  # no initialisation, no random draws
            self.heads = heads().to_empty(device=device)
        self.heads.load_state_dict(state)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {"video": self.video_encoder(video), "audio": self.audio_encoder(audio)}
        return {s.name: self.heads[s.name](features[s.encoder]) for s in self.head_specs}


def batch_to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Video clips and log-mels of a batch B×N×clip as (B·N)×clip, and each clip's row index, on
    `device`. N = 1 for train batches and for the centre-clip validation set."""
    clips_per_item = batch["video"].shape[1]
    return (to_device(flat_clips(batch["video"], "video"), device),
            to_device(flat_clips(batch["audio"], "audio"), device),
            to_device(torch.as_tensor(batch["index"]).repeat_interleave(clips_per_item), device))


def targets_for(labels: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: values[index] for name, values in labels.items()}


def batch_losses(model: nn.Module, batch: dict, labels: dict[str, torch.Tensor], specs: list[HeadSpec],
                 device: torch.device, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each head's loss on a batch (in `specs` order), and the batch's row indices."""
    video, audio, index = batch_to_device(batch, device)
    with autocast(device, amp):
        logits = model(video, audio)
    return head_losses(logits, targets_for(labels, index), specs), index


def has_data(batch: dict) -> bool:
    return "video" in batch and len(batch["index"]) > 0


@functools.cache
def _host_group(world):
    """A gloo group beside NCCL's for the flags the host branches on: their all-reduce never waits
    for the GPU (None: the default group is gloo already). Cached per process group `world`."""
    return None if torch.distributed.get_backend() == "gloo" else torch.distributed.new_group(backend="gloo")


def all_ranks_have_data(batch: dict) -> bool:
    """Whether this batch, and every other rank's current batch, holds at least one sample: DDP
    steps only when every rank does. The one exchange per step, a CPU flag (`_host_group`)."""
    mine = has_data(batch)
    if not dist_utils.is_distributed():
        return mine
    flag = torch.tensor([float(mine)])
    torch.distributed.all_reduce(flag, group=_host_group(torch.distributed.group.WORLD))
    return int(flag.item()) == dist_utils.world_size()


def loss_meter(specs: list[HeadSpec], device: torch.device) -> MetricMeter:
    """Per-head loss sums (weighted by clips) and the samples skipped."""
    return MetricMeter({"heads": (len(specs),)}, counts=("skipped",), device=device)


def epoch_losses(totals: Totals, specs: list[HeadSpec], reduction: str) -> dict:
    """{"loss": the reduced loss, "heads": {name: loss}, "clips", "skipped"}, over all ranks."""
    per_head = totals.mean("heads")
    return {"loss": float(reduce_heads(per_head, reduction)),
            "heads": {s.name: float(v) for s, v in zip(specs, per_head)},
            "clips": int(totals.weights["heads"]), "skipped": int(totals.counts["skipped"])}


def check_finite(meter: MetricMeter, recent: Totals, specs: list[HeadSpec], description: str, lr: float) -> None:
    """NonFiniteLossError naming the first step and head whose loss was not finite, when the
    interval's losses (`recent`, reduced over ranks) are not all finite."""
    if torch.isfinite(recent.sums["heads"]).all():
        return
    step, head = meter.first_nonfinite_update("heads")
    raise NonFiniteLossError(
        f"{description}, SGD step {step + 1}: the training loss of head {specs[head].name} is not a finite "
        f"number (lr {lr:g}); the run stopped, its last checkpoint is from before this epoch: start a new "
        f"run (another --out) with a lower optim.lr, or check the input files (inf or NaN in the clips)")


def train_one_epoch(model: nn.Module, specs: list[HeadSpec], loader, labels: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, scheduler, device: torch.device, amp: bool,
                    reduction: str = "mean", description: str = "epoch",
                    on_log: Callable[[int, float, float], None] | None = None, first_step: int = 0) -> dict:
    """One epoch of SGD on the pseudo-labels. `model` may be DDP-wrapped.

    Every `LOG_EVERY` steps and at the end the latest losses are reduced over ranks: checked
    (`check_finite`), shown on the bar and given to `on_log(global step, loss, lr)` (steps
    counted from `first_step`). Returns `epoch_losses` (training loss, per head and reduced, over
    ranks; clips seen and skipped), the SGD `steps` taken, the fraction of this rank's time spent
    waiting for data and this rank's skip summary.
    """
    model.train()
    meter, skips = loss_meter(specs, device), SkipCounter()
    bar = progress(loader, desc=description, leave=False, disable=not dist_utils.is_main(), dynamic_ncols=True)

    def log() -> None:
        recent = meter.reduce(recent=True)
        check_finite(meter, recent, specs, description, optimizer.param_groups[0]["lr"])
        loss = epoch_losses(recent, specs, reduction)["loss"]
        bar.set_postfix(loss=f"{loss:.3f}")
        if on_log is not None:
            on_log(first_step + meter.updates, loss, optimizer.param_groups[0]["lr"])

    for batch in meter.timed(bar):
        meter.count(skipped=skips.add(batch))
        if not all_ranks_have_data(batch):
            # A batch whose every sample failed to decode (on any rank): no step anywhere, since
            # DDP's gradient all-reduce needs every rank. The lr schedule still moves on.
            scheduler.step()
            continue
        losses, index = batch_losses(model, batch, labels, specs, device, amp)
        sgd_step(reduce_heads(losses, reduction), optimizer, scheduler)
        meter.update(len(index), heads=losses)
        if meter.updates % LOG_EVERY == 0:
            log()
    if meter.updates % LOG_EVERY:
        log()
    return epoch_losses(meter.reduce(), specs, reduction) | {
        "steps": meter.updates, "data_wait": meter.data_wait,
        "skip_summary": skips.summary() if skips.total else ""}


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running stats) over ranks: each rank's last
    forwards updated its own copy, and evaluation, features and checkpoints need one."""
    if dist_utils.world_size() == 1:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            buffer.copy_(dist_utils.all_reduce_sum(buffer) / dist_utils.world_size())


@torch.no_grad()
def validation_loss(model: nn.Module, specs: list[HeadSpec], loader, labels: dict[str, torch.Tensor],
                    device: torch.device, amp: bool, reduction: str = "mean") -> dict:
    """Cross-entropy of the held-out videos' pseudo-labels (eval mode, one centre clip each),
    per head and reduced, averaged over every rank's share (`epoch_losses`)."""
    model.eval()
    meter, skips = loss_meter(specs, device), SkipCounter()
    for batch in loader:
        meter.count(skipped=skips.add(batch))
        if not has_data(batch):
            continue
        losses, index = batch_losses(model, batch, labels, specs, device, amp)
        meter.update(len(index), heads=losses)
    result = epoch_losses(meter.reduce(), specs, reduction)
    if result["clips"] == 0:  # on every rank alike: the count is over all ranks
        raise NoValidationVideosError(
            f"no held-out video could be decoded for the validation loss ({skips.summary()}): re-encode or "
            f"remove the broken files, or set optim.early_stop=false (then no validation pass runs)")
    return result


def load_encoders(model, state: dict, path: str | Path) -> None:
    """Both encoders from a pretraining checkpoint; CheckpointError when `path` holds others."""
    try:
        model.video_encoder.load_state_dict(state["video_encoder"])
        model.audio_encoder.load_state_dict(state["audio_encoder"])
    except (KeyError, TypeError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"{path} does not hold encoders of this config (model.video_arch, model.width): "
                              f"{load_error_reason(err)}") from err


def build_pretrain_model(cfg, device: torch.device) -> PretrainModel:
    """Both encoders of a PretrainConfig (`init_from`: a checkpoint's), the same initial weights
    on every rank; then each rank its own random streams (DDP broadcasts rank 0's new heads)."""
    torch.manual_seed(cfg.seed)
    model = PretrainModel(video_encoder(cfg.model.video_arch, cfg.model.width, cfg.model.video_input),
                          audio_encoder(cfg.model.width))
    seed = cfg.seed * 1000 + dist_utils.rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if cfg.model.sync_bn and dist_utils.is_distributed():
        if device.type != "cuda":  # torch's SyncBatchNorm runs on GPUs only
            print("model.sync_bn ignored on CPU: each rank keeps its own BatchNorm statistics",
                  file=sys.stderr, flush=True)
        else:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.init_from:
        load_encoders(model, load_checkpoint(cfg.init_from), cfg.init_from)
    model.to(device)
    if device.type == "cuda":
        model.video_encoder.to(memory_format=torch.channels_last_3d)
    return model
