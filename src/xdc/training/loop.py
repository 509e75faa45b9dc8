"""One readable training loop for pretraining: both encoders, their heads, one optimizer.

`PretrainModel` holds the two encoders and the current iteration's classification heads, so DDP
wraps one module (one backward, one gradient all-reduce). `train_one_epoch` and
`validation_loss` are the only places a batch goes through the network; both report the loss of
every head (`HeadLosses`), since a mean over heads hides a head that learns nothing.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from xdc import distributed as dist_utils
from xdc.checkpoint import CheckpointError, load_checkpoint, load_error_reason
from xdc.data.datasets import SkipCounter
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
from xdc.training.schedule import sgd_step


class PretrainModel(nn.Module):
    """Video and audio encoders plus one head per `HeadSpec`; forward gives logits per head."""

    def __init__(self, video_encoder: nn.Module, audio_encoder: nn.Module):
        super().__init__()
        self.video_encoder = video_encoder
        self.audio_encoder = audio_encoder
        self.heads = nn.ModuleDict()
        self.head_specs: list[HeadSpec] = []

    def reset_heads(self, specs: list[HeadSpec]) -> None:
        """Fresh heads: a new clustering's ids mean nothing to the old heads."""
        device = next(self.video_encoder.parameters()).device
        encoders = {"video": self.video_encoder, "audio": self.audio_encoder}
        self.head_specs = list(specs)
        self.heads = nn.ModuleDict({
            s.name: ClassificationHead(encoders[s.encoder].feature_dim, s.num_classes).to(device)
            for s in specs
        })

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


def all_ranks_have_data(batch: dict) -> bool:
    """Whether this batch, and every other rank's current batch, holds at least one sample."""
    mine = has_data(batch)
    if not dist_utils.is_distributed():
        return mine
    return int(dist_utils.all_reduce_sum(torch.tensor([float(mine)]))) == dist_utils.world_size()


class HeadLosses:
    """Per-head loss sums over the clips of an epoch, averaged over every rank's clips at the end."""

    def __init__(self, specs: list[HeadSpec], reduction: str):
        self.specs, self.reduction = specs, reduction
        self.sums = torch.zeros(len(specs), dtype=torch.float64)
        self.clips = 0

    def add(self, losses: torch.Tensor, clips: int) -> None:
        self.sums += losses.detach().double().cpu() * clips
        self.clips += clips

    def result(self, skipped: int) -> dict:
        """{"loss": the reduced loss, "heads": {name: loss}, "clips", "skipped"}, over all ranks."""
        totals = dist_utils.all_reduce_sum(torch.cat([self.sums, torch.tensor([self.clips, skipped],
                                                                              dtype=torch.float64)]))
        clips = int(totals[-2])
        per_head = totals[:-2] / max(clips, 1)
        return {"loss": float(reduce_heads(per_head, self.reduction)),
                "heads": {s.name: float(v) for s, v in zip(self.specs, per_head)},
                "clips": clips, "skipped": int(totals[-1])}


def train_one_epoch(model: nn.Module, specs: list[HeadSpec], loader, labels: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, scheduler, device: torch.device, amp: bool,
                    reduction: str = "mean", description: str = "epoch", on_step=None) -> dict:
    """One epoch of SGD on the pseudo-labels. `model` may be DDP-wrapped.

    Returns `HeadLosses.result` (training loss, per head and reduced, over ranks; clips seen and
    skipped), the fraction of this rank's time spent waiting for data, and this rank's skip
    summary. `on_step(step_in_epoch, loss)` is called after every step (TensorBoard logging).
    """
    model.train()
    meter = HeadLosses(specs, reduction)
    skips = SkipCounter()
    wait = 0.0
    start = last = time.perf_counter()
    bar = progress(loader, desc=description, leave=False, disable=not dist_utils.is_main(),
               dynamic_ncols=True)
    for step, batch in enumerate(bar):
        wait += time.perf_counter() - last
        skips.add(batch)
        if not all_ranks_have_data(batch):
            # A batch whose every sample failed to decode (on any rank): no step anywhere, since
            # DDP's gradient all-reduce needs every rank. The lr schedule still moves on.
            scheduler.step()
            last = time.perf_counter()
            continue
        losses, index = batch_losses(model, batch, labels, specs, device, amp)
        loss = reduce_heads(losses, reduction)
        sgd_step(loss, optimizer, scheduler)
        meter.add(losses, len(index))  # one host sync per step, for the bar and TensorBoard
        loss_value = float(loss.detach())
        if on_step is not None:
            on_step(step, loss_value)
        bar.set_postfix(loss=f"{loss_value:.3f}")
        last = time.perf_counter()
    total = time.perf_counter() - start
    return meter.result(skips.total) | {"skip_summary": skips.summary() if skips.total else "",
                                        "data_wait": wait / total if total > 0 else 0.0}


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running stats) over ranks: each rank's last
    forwards updated its own copy, and evaluation, features and checkpoints need one."""
    if dist_utils.world_size() == 1:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            buffer.copy_(dist_utils.all_reduce_sum(buffer) / dist_utils.world_size())


def weights_digest(module: nn.Module) -> str:
    """Short hash of every parameter and buffer: equal on all ranks when they hold the same model."""
    digest = hashlib.sha1()
    for name, value in module.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def validation_loss(model: nn.Module, specs: list[HeadSpec], loader, labels: dict[str, torch.Tensor],
                    device: torch.device, amp: bool, reduction: str = "mean") -> dict:
    """Cross-entropy of the held-out videos' pseudo-labels (eval mode, one centre clip each),
    per head and reduced, averaged over every rank's share (`HeadLosses.result`)."""
    model.eval()
    meter = HeadLosses(specs, reduction)
    skips = SkipCounter()
    for batch in loader:
        skips.add(batch)
        if not has_data(batch):
            continue
        losses, index = batch_losses(model, batch, labels, specs, device, amp)
        meter.add(losses, len(index))
    result = meter.result(skips.total)
    if result["clips"] == 0:
        raise RuntimeError("no validation sample could be decoded: the validation loss is undefined")
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
    model = PretrainModel(video_encoder(cfg.model.video_arch, cfg.model.width), audio_encoder(cfg.model.width))
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
