"""Clip transforms on tensors: crops and flips on uint8 T×H×W×C (cheap), then float C×T×H×W.

Randomness comes from torch's global generator, which DataLoader seeds differently in each
worker (a numpy generator copied into forked workers would give every worker the same crops).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import DataConfig


def as_tensor(video) -> torch.Tensor:
    """T×H×W×C uint8 numpy array or tensor -> tensor (no copy when possible)."""
    if isinstance(video, np.ndarray):
        video = torch.from_numpy(np.ascontiguousarray(video))
    if video.ndim != 4 or video.dtype != torch.uint8:
        raise ValueError(f"expected a T×H×W×C uint8 clip, got {tuple(video.shape)} {video.dtype}")
    return video


def _check_size(video: torch.Tensor, size: int) -> None:
    height, width = video.shape[1:3]
    if height < size or width < size:
        raise ValueError(f"crop {size} is larger than the clip ({height}×{width})")


def random_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """The same random size×size window in every frame."""
    _check_size(video, size)
    height, width = video.shape[1:3]
    top = int(torch.randint(0, height - size + 1, ()))
    left = int(torch.randint(0, width - size + 1, ()))
    return video[:, top:top + size, left:left + size]


def center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    _check_size(video, size)
    height, width = video.shape[1:3]
    top, left = (height - size) // 2, (width - size) // 2
    return video[:, top:top + size, left:left + size]


def random_flip(video: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror every frame left-right with probability p."""
    return video.flip(2) if float(torch.rand(())) < p else video


def to_float_cthw(video: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 T×H×W×C -> float32 C×T×H×W in [0, 1], then (x - mean) / std per channel."""
    out = video.permute(3, 0, 1, 2).to(torch.float32).div_(255.0)
    mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1, 1)
    return out.sub_(mean).div_(std).contiguous()


VIDEO_NORMS = ("dataset", "per_clip")  # data.video_norm: what `normalise` does


def normalise(video: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    """uint8 T×H×W×C -> float32 C×T×H×W: the dataset's mean and std per channel, then with
    `video_norm=per_clip` each channel's own mean and std over the clip too (invariance to the
    clip's brightness and contrast, as `audio_norm=per_spectrogram` gives the log-mels loudness
    invariance)."""
    clip = to_float_cthw(video, cfg.video_mean, cfg.video_std)
    if cfg.video_norm == "per_clip":
        mean = clip.mean(dim=(1, 2, 3), keepdim=True)
        clip = (clip - mean) / clip.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return clip


def train_video_transform(video, cfg: DataConfig) -> torch.Tensor:
    """Random crop, random horizontal flip (cfg.flip), normalise."""
    clip = random_crop(as_tensor(video), cfg.crop)
    if cfg.flip:
        clip = random_flip(clip)
    return normalise(clip, cfg)


def eval_video_transform(video, cfg: DataConfig) -> torch.Tensor:
    """Centre crop, normalise."""
    return normalise(center_crop(as_tensor(video), cfg.crop), cfg)
