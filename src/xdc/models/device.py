"""Running the encoders on a device: bf16 autocast, input placement, and `encode`, the one way a
clip batch goes through an encoder.

Clip batches always carry a clip axis (docs/DESIGN.md, "Dataset item"): video B×N×C×T×H×W,
audio B×N×1×M×F, with N = 1 for training items. `encode` folds the clip axis into the batch for
the encoder and unfolds it again on the way out.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

MODALITIES = ("video", "audio")  # one encoder each
# Dimensions of one clip as an encoder takes it (a batch adds one, the clip axis another):
# video C×T×H×W, audio 1×M×F.
CLIP_NDIM = {"video": 4, "audio": 3}


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; nothing on CPU (bf16 there is slow, not faster)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` on `device`, copied without blocking on CUDA (the loaders pin memory there). A batch of
    video clips (5-D: B×C×T×H×W) goes channels_last_3d on CUDA, cuDNN's fastest 3-D layout."""
    x = x.to(device, non_blocking=device.type == "cuda")
    if device.type == "cuda" and x.dim() == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def flat_clips(clips: torch.Tensor, modality: str) -> torch.Tensor:
    """B×N×clip -> (B·N)×clip, checking the shape against the batch contract."""
    if modality not in CLIP_NDIM:
        raise ValueError(f"no encoder input named {modality!r}: expected one of {', '.join(CLIP_NDIM)}")
    if clips.dim() != CLIP_NDIM[modality] + 2:
        raise ValueError(f"{modality} batch has shape {tuple(clips.shape)}: expected B×N×clip with a "
                         f"clip of {CLIP_NDIM[modality]} dims (docs/DESIGN.md, Dataset item)")
    return clips.flatten(0, 1)


def encode(encoder: nn.Module, clips: torch.Tensor, modality: str, device: torch.device,
           amp: bool = True) -> torch.Tensor:
    """Features B×N×D (float32, on `device`) of a clip batch B×N×clip. Gradients flow unless the
    caller turns them off; the encoder's train/eval mode is the caller's business."""
    b, n = clips.shape[:2]
    with autocast(device, amp):
        out = encoder(to_device(flat_clips(clips, modality), device))
    return out.float().view(b, n, -1)
