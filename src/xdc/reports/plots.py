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
    figure.savefig(path, dpi=100)
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
    axes.legend(fontsize="small", ncol=2)
    return figure


def feature_map(features: np.ndarray, labels: list[str] | None, title: str):
    """The rows of `features` projected on their first two principal components (scikit-learn's
    PCA), one colour per label when there are labels."""
    from sklearn.decomposition import PCA

    plt = _pyplot()
    points = PCA(n_components=2, random_state=0).fit_transform(np.asarray(features, np.float32))
    figure, axes = plt.subplots(figsize=(4.2, 3.6))
    if labels is None:
        axes.scatter(points[:, 0], points[:, 1], s=12)
    else:
        for name in sorted(set(labels)):
            mine = np.array([label == name for label in labels])
            axes.scatter(points[mine, 0], points[mine, 1], s=12, label=str(name))
        axes.legend(fontsize="x-small", markerscale=0.8)
    axes.set_title(title, fontsize="medium")
    axes.set_xticks([])
    axes.set_yticks([])
    return figure
