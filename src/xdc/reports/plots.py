"""The report's pictures (matplotlib, written as PNG files next to the HTML that shows them):
accuracy per method with its spread over seeds, scores per iteration, a 2-D map of features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIGSIZE = (6.4, 3.6)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100, bbox_inches="tight")  # "tight" keeps a legend outside the axes
    _pyplot().close(figure)
    return path


def bar_plot(values: dict[str, dict[str, list[float]]], ylabel: str, title: str):
    """Grouped bars: per group (a method), per series (e.g. a modality) the mean of its values,
    with the spread (min to max) as an error bar when there are several (seeds)."""
    plt = _pyplot()
    groups = list(values)
    series = sorted({name for per_group in values.values() for name in per_group})
    figure, axes = plt.subplots(figsize=FIGSIZE)
    width = 0.8 / max(1, len(series))
    for j, name in enumerate(series):
        runs = [values[g].get(name, []) for g in groups]
        means = [np.mean(r) if r else np.nan for r in runs]
        spread = np.array([[m - min(r), max(r) - m] if len(r) > 1 else [0, 0] for m, r in zip(means, runs)]).T
        x = np.arange(len(groups)) + (j - (len(series) - 1) / 2) * width
        axes.bar(x, means, width, yerr=spread if spread.any() else None, capsize=3, label=name)
    axes.set_xticks(np.arange(len(groups)), groups)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.set_ylim(0, 1)
    if len(series) > 1:
        axes.legend(fontsize="small")
    return figure


def line_plot(curves: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str):
    """One line per curve of (x, y) points."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=FIGSIZE)
    for name, points in curves.items():
        x, y = zip(*points)
        axes.plot(x, y, marker="o", label=name)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines, not on them
    return figure


def feature_maps(panels: list[tuple[str, np.ndarray, list[str] | None]], columns: int):
    """One small map per panel (title, features, labels): the rows of `features` projected on
    their first two principal components (scikit-learn's PCA), one colour per label (the same
    colour for a label in every panel, one legend)."""
    from sklearn.decomposition import PCA

    plt = _pyplot()
    rows = -(-len(panels) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.3 * rows + 0.5), squeeze=False)
    names = sorted({label for _, _, labels in panels for label in (labels or [])})
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    for axes, (title, features, labels) in zip(grid.flat, panels):
        points = PCA(n_components=2, random_state=0).fit_transform(np.asarray(features, np.float32))
        colour = [colours[label] for label in labels] if labels else None
        axes.scatter(points[:, 0], points[:, 1], s=8, c=colour)
        axes.set_title(title, fontsize="small")
    for axes in grid.flat:
        axes.set_xticks([])
        axes.set_yticks([])
    for axes in list(grid.flat)[len(panels):]:
        axes.axis("off")
    if names:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[n], label=n) for n in names]
        # Below the panels (savefig's "tight" box takes it in), never on a panel.
        figure.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(names), 4),
                      fontsize="x-small")
    return figure
