"""Frozen-encoder features, clip- and video-level accuracy, and the linear classifier on cached
features (`xdc finetune --mode linear`, the fast mode for small data).

Every evaluation goes through `clip_features`: N uniformly spaced clips per video (eval-mode
dataset, centre crop), the encoder's pooled features for each. A classifier's logits over those
clips give the clip-level accuracy; averaging their softmax per video gives the video-level one.
"""

from __future__ import annotations

import torch
from torch import nn

from xdc.config import OptimConfig
from xdc.data.datasets import EpochSampler, clip_loader
from xdc.models import ClassificationHead, encode
from xdc.progress import progress
from xdc.training.schedule import make_scheduler, sgd_step, steps_per_epoch


@torch.no_grad()
def clip_features(encoder: nn.Module, dataset, modality: str, device: torch.device, amp: bool,
                  videos_per_batch: int, num_workers: int = 0, desc: str = "features"):
    """(features V×N×D float32 on CPU, dataset indices V, skipped [(index, reason)]) of an
    eval-mode dataset; videos that could not be decoded are left out and listed."""
    encoder.eval()
    loader = clip_loader(dataset, batch_size=videos_per_batch, num_workers=num_workers,
                         pin_memory=device.type == "cuda")
    features, indices, skipped = [], [], []
    for batch in progress(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True):
        skipped.extend(batch.get("skipped", ()))
        if modality not in batch:  # every video of the batch failed to decode
            continue
        features.append(encode(encoder, batch[modality], modality, device, amp).cpu())
        indices.append(torch.as_tensor(batch["index"]))
    if not features:
        raise RuntimeError(f"{desc}: no video could be decoded ({len(skipped)} skipped, e.g. "
                           f"{skipped[0][1] if skipped else 'none'})")
    return torch.cat(features), torch.cat(indices), skipped


def top_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows of `scores` (V×C) whose label is among their k highest classes (all of
    them when there are fewer than k)."""
    top = scores.topk(min(k, scores.shape[-1]), -1).indices
    return float((top == labels.to(top.device)[:, None]).any(-1).float().mean())


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1_clip (each clip alone), top1_video and top5_video (softmax averaged over a video's
    clips) from logits V×N×C and labels V."""
    probs = logits.float().softmax(-1)
    labels = labels.to(probs.device)
    video = probs.mean(1)
    return {"top1_clip": float((probs.argmax(-1) == labels[:, None]).float().mean()),
            "top1_video": float((video.argmax(-1) == labels).float().mean()),
            "top5_video": top_k(video, labels, 5)}


def train_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, lr: float,
                 optim: OptimConfig, device: torch.device, seed: int = 0, writer=None,
                 desc: str = "linear") -> ClassificationHead:
    """A linear classifier on cached clip features (M×D), with the fine-tuning schedule: epochs of
    `epoch_size` samples, warmup then step decay, SGD with momentum and weight decay."""
    torch.manual_seed(seed)
    head = ClassificationHead(features.shape[1], num_classes).to(device)
    features, labels = features.to(device), labels.to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=optim.momentum,
                                weight_decay=optim.weight_decay)
    steps = steps_per_epoch(optim)
    scheduler = make_scheduler(optimizer, optim, steps)
    sampler = EpochSampler(len(features), optim.epoch_size, seed=seed, rank=0, world_size=1)
    step = 0
    for epoch in progress(range(optim.total_epochs), desc=desc, unit="epoch", leave=False):
        sampler.set_epoch(epoch)
        order = torch.as_tensor(list(sampler), device=device)
        total = 0.0
        for batch in order.split(optim.batch_size):
            loss = nn.functional.cross_entropy(head(features[batch]), labels[batch])
            sgd_step(loss, optimizer, scheduler)
            total += loss.item() * len(batch)
            step += 1
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
        if writer is not None:
            writer.add_scalar("train/epoch_loss", total / len(order), epoch)
    return head.cpu()
