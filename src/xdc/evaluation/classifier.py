"""A new classifier on an encoder, and its training: on clips through the encoder (`full`: all of
it trains; `fc`: the encoder frozen) or on cached clip features (`linear`).

Both loops have the shape of pretraining's (`training.loop.train_one_epoch`): epochs of
`optim.epoch_size` samples (`EpochSampler`), SGD with momentum and weight decay, warmup then step
decay (`training.schedule`), skipped samples counted with `SkipCounter`, and a non-finite loss
stops the training with one line (`Diverged`). Every clip of a video is a sample labelled with its
video's class.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
from torch import nn

from xdc.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from xdc.config import FinetuneConfig, OptimConfig
from xdc.data.datasets import EpochSampler, SkipCounter, clip_loader
from xdc.errors import XdcError
from xdc.evaluation.feature_cache import eval_features
from xdc.evaluation.labelled import FinetuneError
from xdc.evaluation.scores import accuracy
from xdc.models import ClassificationHead, autocast, encode
from xdc.progress import progress
from xdc.training.schedule import make_scheduler, sgd_step, steps_per_epoch


class Diverged(XdcError):
    """The training loss became infinite or NaN: the lr is too large for these features."""


def check_finite(loss: float, epoch: int, step: int) -> None:
    if not math.isfinite(loss):
        raise Diverged(f"training loss {loss} at epoch {epoch + 1}, step {step + 1}")


class Classifier(nn.Module):
    """Encoder + a new linear layer. `frozen`: the encoder stays in eval mode without gradients."""

    def __init__(self, encoder: nn.Module, num_classes: int, frozen: bool):
        super().__init__()
        self.encoder, self.frozen = encoder, frozen
        self.fc = ClassificationHead(encoder.feature_dim, num_classes)
        if frozen:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # BatchNorm statistics of the pretrained encoder stay as they are
        return self

    def forward(self, clips: torch.Tensor, modality: str, device: torch.device, amp: bool) -> torch.Tensor:
        """Logits B×N×C of a clip batch B×N×clip."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = encode(self.encoder, clips, modality, device, amp)
        with autocast(device, amp):
            return self.fc(features.flatten(0, 1)).view(*features.shape[:2], -1)

    def trained_state(self) -> dict:
        """What training changed: the classifier, and the encoder unless frozen."""
        return self.fc.state_dict() if self.frozen else self.state_dict()

    def load_trained_state(self, state: dict) -> None:
        (self.fc if self.frozen else self).load_state_dict(state)


def train_one_epoch(model: Classifier, loader, labels: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler,
                    modality: str, device: torch.device, amp: bool, epoch: int, description: str = "epoch",
                    on_step=None) -> dict:
    """One epoch of SGD on labelled clips. Returns the mean loss, clip top-1, the clips seen and
    skipped; `on_step(step_in_epoch, loss)` is called after every step (TensorBoard)."""
    model.train()
    skips = SkipCounter()
    loss_sum, correct, clips = 0.0, 0, 0
    bar = progress(loader, desc=description, leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        skips.add(batch)
        if modality not in batch:  # every sample of the batch failed to decode
            continue
        logits = model(batch[modality], modality, device, amp)
        target = labels[torch.as_tensor(batch["index"], device=device)].repeat_interleave(logits.shape[1])
        logits = logits.flatten(0, 1)
        loss = nn.functional.cross_entropy(logits.float(), target)
        loss_value = loss.item()
        check_finite(loss_value, epoch, step)
        sgd_step(loss, optimizer, scheduler)
        loss_sum += loss_value * len(target)
        correct += int((logits.argmax(-1) == target).sum())
        clips += len(target)
        if on_step is not None:
            on_step(step, loss_value)
        bar.set_postfix(loss=f"{loss_value:.3f}")
    if clips == 0:
        raise FinetuneError(f"epoch {epoch + 1}: no training clip could be decoded ({skips.summary()})")
    return {"loss": loss_sum / clips, "top1_clip": correct / clips, "clips": clips, "skipped": skips.total}


def train_classifier(model: Classifier, dataset, labels: torch.Tensor, cfg: FinetuneConfig, modality: str,
                     lr: float, folder: Path, device: torch.device, writer=None) -> None:
    """SGD on the labelled clips with the fine-tuning schedule; `folder/last.pt` after every
    epoch, so an interrupted lr resumes from its last finished epoch."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    steps = steps_per_epoch(o)
    scheduler = make_scheduler(optimizer, o, steps)
    first_epoch = 0
    if (folder / "last.pt").is_file():
        state = load_checkpoint(folder / "last.pt")
        model.load_trained_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        first_epoch = int(state["epoch"])
    sampler = EpochSampler(len(dataset), o.epoch_size, seed=cfg.seed, rank=0, world_size=1)
    loader = clip_loader(dataset, o.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                         pin_memory=device.type == "cuda")
    labels = labels.to(device)

    def log_step(epoch: int, step: int, loss: float) -> None:
        if writer is not None:
            writer.add_scalar("train/loss", loss, epoch * steps + step)
            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], epoch * steps + step)

    for epoch in range(first_epoch, o.total_epochs):
        sampler.set_epoch(epoch)
        train = train_one_epoch(model, loader, labels, optimizer, scheduler, modality, device, cfg.amp, epoch,
                                f"lr {lr:g} epoch {epoch + 1}/{o.total_epochs}", partial(log_step, epoch))
        if writer is not None:
            writer.add_scalar("train/epoch_loss", train["loss"], epoch)
            writer.add_scalar("train/epoch_top1_clip", train["top1_clip"], epoch)
            writer.add_scalar("train/skipped", train["skipped"], epoch)
        save_checkpoint({"model": model.trained_state(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "rng": rng_state()},
                        folder / "last.pt")


def clip_scores(encoder: nn.Module, fc: nn.Module, rows: list[dict], labels: torch.Tensor, cfg: FinetuneConfig,
                modality: str, device: torch.device, desc: str) -> tuple[dict, list]:
    """Clip- and video-level accuracy of encoder + fc on `rows` (eval clips), and the skips."""
    features, index, skipped = eval_features(encoder, rows, cfg, modality, device, desc)
    with torch.no_grad():
        logits = fc(features.to(next(fc.parameters()).device)).float().cpu()
    return {**accuracy(logits, labels[index]), "videos": len(index)}, skipped


def train_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, lr: float,
                 optim: OptimConfig, device: torch.device, seed: int = 0, writer=None,
                 desc: str = "linear") -> ClassificationHead:
    """A linear classifier on cached clip features (M×D), with the fine-tuning schedule."""
    torch.manual_seed(seed)
    head = ClassificationHead(features.shape[1], num_classes).to(device)
    features, labels = features.to(device), labels.to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=optim.momentum,
                                weight_decay=optim.weight_decay)
    steps = steps_per_epoch(optim)
    scheduler = make_scheduler(optimizer, optim, steps)
    sampler = EpochSampler(len(features), optim.epoch_size, seed=seed, rank=0, world_size=1)
    for epoch in progress(range(optim.total_epochs), desc=desc, unit="epoch", leave=False):
        sampler.set_epoch(epoch)
        order = torch.as_tensor(list(sampler), device=device)
        total = 0.0
        for step, batch in enumerate(order.split(optim.batch_size)):
            loss = nn.functional.cross_entropy(head(features[batch]), labels[batch])
            loss_value = loss.item()
            check_finite(loss_value, epoch, step)
            sgd_step(loss, optimizer, scheduler)
            total += loss_value * len(batch)
            if writer is not None:
                writer.add_scalar("train/loss", loss_value, epoch * steps + step + 1)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], epoch * steps + step + 1)
        if writer is not None:
            writer.add_scalar("train/epoch_loss", total / len(order), epoch)
    return head.cpu()
