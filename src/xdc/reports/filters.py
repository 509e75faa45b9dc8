"""`xdc filters CKPT [CKPT2] -o filters.png`: pictures of the video encoder's conv1 filters.

R(2+1)D factorises conv1 into a spatial conv (`stem.0`, 1×7×7 on RGB) and a temporal conv that
follows it (`stem.3`, 3×1×1 over the spatial conv's channels): the first is drawn as RGB tiles,
the second as one small (input channel × time) heat map per output filter. R3D's conv1
(`stem.0`, 3×7×7) is drawn as one strip of RGB frames per filter. Two checkpoints are drawn
side by side, as in the paper's Figure 1.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from xdc.errors import XdcError
from xdc.models.weights import WeightsError, read_state_dict


def stem_filters(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """`{"arch": ..., "spatial"/"temporal"}` for R(2+1)D or `{"arch": ..., "kernels"}` for R3D."""
    first = state_dict.get("stem.0.weight")
    if first is None or first.ndim != 5:
        raise WeightsError("no video stem (stem.0.weight, 5-D) in these weights: is it a video encoder?")
    first = first.float().numpy()
    second = state_dict.get("stem.3.weight")
    if first.shape[2] == 1 and second is not None and second.ndim == 5 and second.shape[3:] == (1, 1):
        return {"arch": "r2plus1d", "spatial": first[:, :, 0], "temporal": second.float().numpy()[:, :, :, 0, 0]}
    return {"arch": "r3d", "kernels": first}


def _normalise(x: np.ndarray) -> np.ndarray:
    """Each filter scaled to [0, 1] around zero, so that mid-grey means 0 (the usual way)."""
    axes = tuple(range(1, x.ndim))
    scale = np.abs(x).max(axis=axes, keepdims=True) + 1e-8
    return 0.5 + 0.5 * x / scale


def _tile(images: np.ndarray, columns: int, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """N×H×W×C images into one grid picture with gutters of `fill` (NaN shows as blank)."""
    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), fill, np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = image
    return grid


def filter_pictures(filters: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray, str | None]]:
    """(title, picture, colormap) for each panel of one checkpoint."""
    if filters["arch"] == "r2plus1d":
        spatial = _normalise(filters["spatial"]).transpose(0, 2, 3, 1)  # N×7×7×3
        temporal = filters["temporal"]  # out × in × time
        # Each output filter as an (input channel × time) map, transposed to time rows so the
        # tiles are wide and short: time runs downwards.
        maps = _normalise(temporal).transpose(0, 2, 1)[..., None]
        return [(f"spatial conv1 ({spatial.shape[0]} × 3×{spatial.shape[1]}×{spatial.shape[2]})",
                 _tile(spatial, columns=int(math.ceil(math.sqrt(len(spatial))))), None),
                (f"temporal conv1 ({temporal.shape[0]} × {temporal.shape[1]} ch × {temporal.shape[2]} t)",
                 _tile(maps, columns=4, fill=np.nan)[..., 0], "RdBu_r")]
    kernels = _normalise(filters["kernels"])  # N×3×T×7×7
    n, _, t, h, w = kernels.shape
    strips = kernels.transpose(0, 2, 3, 4, 1)  # N×T×H×W×3
    strips = np.concatenate([np.concatenate([strip[i] for i in range(t)], axis=1)[None] for strip in strips])
    return [(f"conv1 3-D kernels ({n} × 3×{t}×{h}×{w}; frames left to right)",
             _tile(strips, columns=4, pad=2), None)]


def draw_filters(checkpoints: list[str | Path], out: str | Path, titles: list[str] | None = None) -> Path:
    """One column of panels per checkpoint, side by side; written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = titles or [Path(c).name for c in checkpoints]
    panels = [filter_pictures(stem_filters(read_state_dict(c, "video"))) for c in checkpoints]
    rows = max(len(p) for p in panels)
    # Each row as tall as its tallest picture needs at 6 inches wide (no large blank bands).
    heights = [max(0.6 + 6 * pic.shape[0] / pic.shape[1] for _, pic, _ in (p[row] for p in panels if row < len(p)))
               for row in range(rows)]
    fig, axes = plt.subplots(rows, len(panels), figsize=(6 * len(panels), sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for col, (title, column) in enumerate(zip(titles, panels)):
        for row in range(rows):
            ax = axes[row][col]
            ax.axis("off")
            if row < len(column):
                name, picture, cmap = column[row]
                ax.imshow(picture, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(f"{title}\n{name}" if row == 0 else name, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="one or two checkpoints: ours, an exported or a torchvision state dict")
    parser.add_argument("-o", "--out", default="filters.png", metavar="OUT", help="output PNG")
    parser.add_argument("--titles", nargs="+", metavar="TITLE", help="a title per checkpoint (default: file names)")


def run(args: argparse.Namespace) -> int:
    if len(args.checkpoints) > 2:
        raise XdcError("give one or two checkpoints")
    out = draw_filters(args.checkpoints, args.out, args.titles)
    print(f"wrote {out}")
    return 0
