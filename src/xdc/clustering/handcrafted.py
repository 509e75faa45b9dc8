"""Hand-crafted features for iteration 0 (no network), in the same format as `extract_features`.

The paper (supplementary A) notes that clustering hand-crafted features first (e.g. iDT, audio
spectrograms) cut the number of clustering iterations in its small-scale experiments, and that its
authors did not pursue it: such features are costly to extract at scale and may bias what is
learned. These are cheap descriptors computed from the dataset items themselves, not iDT:
- audio: per mel band, the mean and std of the log-mel over time, plus the mean absolute
  temporal delta (how fast each band changes): 3 × n_mels values;
- video, `layout` (default): the time-averaged frame pooled to 8×8 per colour channel (layout and
  colour), plus the mean absolute frame difference pooled to a 4×4 grid (where things move):
  192 + 16 values;
- video, `hog` (`cluster.video_descriptor`): ONE global histogram of gradient orientations (18
  unsigned bins, the orientation binning of Dalal & Triggs' HOG, without its cells and blocks) of
  the grey frames over the whole frame, at full and half resolution, once weighted by the
  gradient's magnitude (shape) and once also by how much the pixel changes to the next frame (the
  shape of what moves): 2 scales × 2 × 18 values, averaged over the frames. No trajectories,
  optical flow, HOF/MBH or Fisher vectors: not iDT. Unlike `layout`, they
  depend neither on where an object is nor on the background's colour, which layout clusters
  follow when objects are small (avdigits --hard: NMI of the first video clusters with the
  digit 0.17 against 0.06).
The N clips of a video are averaged, as for encoder features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xdc.models import MODALITIES, flat_clips

from .features import Features, run_extraction

ORIENTATIONS = 18  # the hog video descriptor: unsigned orientation bins of 10 degrees
HOG_SCALES = (1, 2)  # ... computed at full and half resolution (strokes of two widths)
HOG_MIN_SIZE = 6  # frames at least this wide: the half-resolution frame has interior pixels


def audio_descriptor(clips: torch.Tensor) -> torch.Tensor:
    """B×N×1×M×F log-mels -> B×3M: per band mean, std and mean |delta| over time, clip-averaged."""
    b, n = clips.shape[:2]
    x = flat_clips(clips, "audio").float().squeeze(1)  # (B·N)×M×F, shape checked
    delta = (x[..., 1:] - x[..., :-1]).abs().mean(-1) if x.shape[-1] > 1 else torch.zeros_like(x[..., 0])
    return torch.cat([x.mean(-1), x.std(-1, unbiased=False), delta], dim=-1).view(b, n, -1).mean(dim=1)


def _orientation_histogram(grey: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """M×H×W frames -> M×ORIENTATIONS: the frame's unsigned gradient-orientation histogram (votes
    of magnitude × weight), L2-normalised (all zeros where nothing votes)."""
    gx = grey[:, 1:-1, 2:] - grey[:, 1:-1, :-2]  # central differences, interior pixels
    gy = grey[:, 2:, 1:-1] - grey[:, :-2, 1:-1]
    votes = (gx.square() + gy.square()).sqrt() * weight[:, 1:-1, 1:-1]
    angle = torch.atan2(gy, gx).remainder(torch.pi)  # unsigned: an edge and its reverse alike
    bins = (angle * (ORIENTATIONS / torch.pi)).long().clamp_(max=ORIENTATIONS - 1)
    histogram = votes.new_zeros(len(grey), ORIENTATIONS).scatter_add_(1, bins.flatten(1), votes.flatten(1))
    return F.normalize(histogram, dim=1)


def video_hog_descriptor(clips: torch.Tensor) -> torch.Tensor:
    """B×N×C×T×H×W clips -> B×(2·2·ORIENTATIONS): at full and half resolution, the HOG of the
    frames and of their moving pixels, averaged over frames and clips."""
    x = flat_clips(clips, "video").float()  # (B·N)×C×T×H×W, shape checked
    b, n = clips.shape[:2]
    t, h, w = x.shape[-3:]
    if min(h, w) < HOG_MIN_SIZE:
        raise ValueError(f"the hog video descriptor needs frames of at least {HOG_MIN_SIZE} pixels a side, "
                         f"got {h}×{w}")
    grey = x.mean(dim=1)  # (B·N)×T×H×W
    motion = (grey[:, 1:] - grey[:, :-1]).abs() if t > 1 else torch.zeros_like(grey)
    motion = torch.cat([motion, motion[:, -1:]], dim=1) if t > 1 else motion  # frame j: its change to j+1
    parts = []
    for scale in HOG_SCALES:
        g, m = (F.avg_pool2d(grey, scale), F.avg_pool2d(motion, scale)) if scale > 1 else (grey, motion)
        g, m = g.flatten(0, 1), m.flatten(0, 1)  # (B·N·T)×h×w
        parts += [_orientation_histogram(g, torch.ones_like(g)), _orientation_histogram(g, m)]
    return torch.cat(parts, dim=1).view(b, n, t, -1).mean(dim=(1, 2))


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


VIDEO_DESCRIPTORS = {"layout": video_descriptor, "hog": video_hog_descriptor}


def descriptor_sizes(n_mels: int, video_descriptor: str = "layout") -> dict[str, int]:
    """Length of each descriptor: video `layout` 3 colours × 8×8 + a 4×4 motion grid, or `hog`
    2 × 2 scales × ORIENTATIONS; audio 3 × n_mels."""
    video = {"layout": 3 * 8 * 8 + 4 * 4, "hog": 2 * len(HOG_SCALES) * ORIENTATIONS}[video_descriptor]
    return {"video": video, "audio": 3 * n_mels}


def handcrafted_features(loader, num_items: int, out_dir: str | Path, keys=MODALITIES,
                         indices: np.ndarray | None = None, key: str | None = None,
                         video_descriptor: str = "layout") -> Features:
    """Hand-crafted descriptors of every item the loader yields (eval or train mode batches:
    both carry the clip axis); `video_descriptor`: layout | hog (the module docstring)."""
    descriptors = {"video": VIDEO_DESCRIPTORS[video_descriptor], "audio": audio_descriptor}
    unknown = set(keys) - set(descriptors)
    if unknown:
        raise ValueError(f"no hand-crafted descriptor for {sorted(unknown)}; known: {sorted(descriptors)}")
    with torch.no_grad():
        return run_extraction({key: descriptors[key] for key in keys}, loader, num_items, out_dir,
                              indices, desc="hand-crafted features", key=key)
