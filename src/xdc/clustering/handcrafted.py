"""Hand-crafted features for iteration 0 (no network), in the same format as `extract_features`.

The seed notes that clustering hand-crafted features first (e.g. spectrogram statistics, iDT)
cuts the number of clustering iterations needed. These are cheap stand-ins computed from the
dataset items themselves:
- audio: per mel band, the mean and std of the log-mel over time, plus the mean absolute
  temporal delta (how fast each band changes): 3 × n_mels values;
- video: the time-averaged frame pooled to 8×8 per colour channel (layout and colour), plus the
  mean absolute frame difference pooled to a 4×4 grid (where things move): 192 + 16 values.
The N clips of a video are averaged, as for encoder features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xdc.models import MODALITIES, flat_clips

from .features import Features, run_extraction


def audio_descriptor(clips: torch.Tensor) -> torch.Tensor:
    """B×N×1×M×F log-mels -> B×3M: per band mean, std and mean |delta| over time, clip-averaged."""
    b, n = clips.shape[:2]
    x = flat_clips(clips, "audio").float().squeeze(1)  # (B·N)×M×F, shape checked
    delta = (x[..., 1:] - x[..., :-1]).abs().mean(-1) if x.shape[-1] > 1 else torch.zeros_like(x[..., 0])
    return torch.cat([x.mean(-1), x.std(-1, unbiased=False), delta], dim=-1).view(b, n, -1).mean(dim=1)


def video_descriptor(clips: torch.Tensor) -> torch.Tensor:
    """B×N×C×T×H×W clips -> B×(C·64 + 16): 8×8 mean frame (colour) + 4×4 motion grid, clip-averaged."""
    x = flat_clips(clips, "video").float()  # (B·N)×C×T×H×W, shape checked
    b, n = clips.shape[:2]
    t, h, w = x.shape[-3:]
    colour = F.adaptive_avg_pool2d(x.mean(dim=2), 8).flatten(1)
    if t > 1:
        motion = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(1, 2))  # (B·N)×H×W
    else:
        motion = x.new_zeros(b * n, h, w)
    motion = F.adaptive_avg_pool2d(motion.unsqueeze(1), 4).flatten(1)
    return torch.cat([colour, motion], dim=1).view(b, n, -1).mean(dim=1)


DESCRIPTORS = {"video": video_descriptor, "audio": audio_descriptor}


def descriptor_sizes(n_mels: int) -> dict[str, int]:
    """Length of each descriptor: video 3 colours × 8×8 + a 4×4 motion grid, audio 3 × n_mels."""
    return {"video": 3 * 8 * 8 + 4 * 4, "audio": 3 * n_mels}


def handcrafted_features(loader, num_items: int, out_dir: str | Path, keys=MODALITIES,
                         indices: np.ndarray | None = None, key: str | None = None) -> Features:
    """Hand-crafted descriptors of every item the loader yields (eval or train mode batches:
    both carry the clip axis)."""
    unknown = set(keys) - set(DESCRIPTORS)
    if unknown:
        raise ValueError(f"no hand-crafted descriptor for {sorted(unknown)}; known: {sorted(DESCRIPTORS)}")
    with torch.no_grad():
        return run_extraction({key: DESCRIPTORS[key] for key in keys}, loader, num_items, out_dir,
                              indices, desc="hand-crafted features", key=key)
