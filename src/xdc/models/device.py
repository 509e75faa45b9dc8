"""Running the encoders on a device: bf16 autocast and input placement, one place for both."""

from __future__ import annotations

from contextlib import nullcontext

import torch


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; nothing on CPU (bf16 there is slow, not faster)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` on `device`, copied without blocking on CUDA (the loaders pin memory there). A batch of
    video clips (5-D: B×C×T×H×W) goes channels_last_3d on CUDA, cuDNN's fastest 3-D layout;
    batches with a clip axis must be flattened first."""
    x = x.to(device, non_blocking=device.type == "cuda")
    if device.type == "cuda" and x.dim() == 5:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x
