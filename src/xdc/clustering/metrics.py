"""Cluster quality against true labels, and cluster-size summaries.

Items with a negative cluster or true label (not clustered / unlabelled) are left out.
"""

from __future__ import annotations

import numpy as np

# scipy / scikit-learn are imported where used: importing them costs seconds, and every
# torchrun rank imports this package.


def _valid_pairs(labels, true_labels) -> tuple[np.ndarray, np.ndarray]:
    labels, true_labels = np.asarray(labels, np.int64), np.asarray(true_labels, np.int64)
    if labels.shape != true_labels.shape:
        raise ValueError(f"label arrays differ in shape: {labels.shape} vs {true_labels.shape}")
    keep = (labels >= 0) & (true_labels >= 0)
    if not keep.any():
        raise ValueError("no item has both a cluster label and a true label")
    return labels[keep], true_labels[keep]


def _contingency(labels: np.ndarray, true_labels: np.ndarray) -> np.ndarray:
    """counts[c, y]: items of cluster c with true label y."""
    counts = np.zeros((labels.max() + 1, true_labels.max() + 1), np.int64)
    np.add.at(counts, (labels, true_labels), 1)
    return counts


def nmi(labels, true_labels) -> float:
    """Normalised mutual information (arithmetic mean normalisation, as scikit-learn)."""
    from sklearn.metrics import normalized_mutual_info_score

    labels, true_labels = _valid_pairs(labels, true_labels)
    return float(normalized_mutual_info_score(true_labels, labels))


def ari(labels, true_labels) -> float:
    from sklearn.metrics import adjusted_rand_score

    labels, true_labels = _valid_pairs(labels, true_labels)
    return float(adjusted_rand_score(true_labels, labels))


def purity(labels, true_labels) -> float:
    """Share of items whose cluster's most frequent true label is their own."""
    labels, true_labels = _valid_pairs(labels, true_labels)
    return float(_contingency(labels, true_labels).max(axis=1).sum() / len(labels))


def hungarian_accuracy(labels, true_labels) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes (linear_sum_assignment)."""
    from scipy.optimize import linear_sum_assignment

    labels, true_labels = _valid_pairs(labels, true_labels)
    counts = _contingency(labels, true_labels)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(labels))


def cluster_sizes_summary(labels, k: int) -> dict:
    """{num_clusters: k, empty_clusters, min, median, max} over all k clusters' sizes."""
    labels = np.asarray(labels, np.int64)
    labels = labels[labels >= 0]
    if len(labels) and labels.max() >= k:
        raise ValueError(f"cluster label {labels.max()} out of range for k={k}")
    sizes = np.bincount(labels, minlength=k)
    return {"num_clusters": int(k), "empty_clusters": int((sizes == 0).sum()), "min": int(sizes.min()),
            "median": float(np.median(sizes)), "max": int(sizes.max())}


def per_cluster_purity(labels, true_labels, class_names, top: int = 5) -> list[dict]:
    """Non-empty clusters ranked by purity (the paper's Tables 6-7): one row per cluster,
    {rank, cluster, size, purity, top: [(class name, share of the cluster), ...]}."""
    labels, true_labels = _valid_pairs(labels, true_labels)
    if true_labels.max() >= len(class_names):
        raise ValueError(f"true label {true_labels.max()} has no name ({len(class_names)} class names)")
    counts = _contingency(labels, true_labels)
    sizes = counts.sum(axis=1)
    rows = []
    for cluster in np.flatnonzero(sizes):
        shares = counts[cluster] / sizes[cluster]
        best = [int(c) for c in np.argsort(-shares, kind="stable")[:top] if counts[cluster, c] > 0]
        rows.append({"cluster": int(cluster), "size": int(sizes[cluster]), "purity": float(shares.max()),
                     "top": [(str(class_names[c]), float(shares[c])) for c in best]})
    rows.sort(key=lambda row: (-row["purity"], -row["size"], row["cluster"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def cluster_stats(labels: np.ndarray, k: int, previous: np.ndarray | None, truth: np.ndarray | None,
                  kmeans_empty: int | None = None) -> dict:
    """Per-modality summary: sizes, empty clusters (as k-means left them, before any
    reassignment), NMI with the previous iteration's labels and, with true labels, purity/NMI."""
    sizes = cluster_sizes_summary(labels, k)
    stats = {"num_clusters": int(k),
             "empty_clusters": sizes["empty_clusters"] if kmeans_empty is None else int(kmeans_empty),
             "empty_after_reassignment": sizes["empty_clusters"],
             "unlabelled": int((labels < 0).sum()),
             "sizes": {key: sizes[key] for key in ("min", "median", "max")},
             "nmi_prev": None if previous is None else nmi(labels, previous)}
    if truth is not None:
        stats["purity"] = purity(labels, truth)
        stats["nmi"] = nmi(labels, truth)
    return stats


def label_entropy(labels: np.ndarray) -> float:
    """Entropy (nats) of the label distribution (-1 = unlabelled, left out): the cross-entropy of a
    head that has learned only the cluster sizes. Chance for a classifier is this, not ln k, when
    the clusters are unbalanced."""
    counts = np.bincount(np.asarray(labels)[np.asarray(labels) >= 0])
    p = counts[counts > 0] / max(counts.sum(), 1)
    return float(-(p * np.log(p)).sum())
