"""Balanced assignments (`cluster.assign: sinkhorn`): every cluster gets about as many videos as
the others, as in SeLa (Asano et al., 2020) and SwAV's Sinkhorn-Knopp step.

Nearest-centroid assignment lets a few clusters take most videos when features are poor (a
randomly initialised encoder's are), and a head trained on such labels learns the cluster sizes.
Here the assignment is an optimal transport between the videos and the centroids with equal
cluster masses: Q_ij ∝ exp(cos(x_i, c_j) / epsilon), scaled alternately (Sinkhorn-Knopp) so that
each video's row sums to 1/N and each cluster's column to 1/k; each video then takes its largest
entry. Q is never held: a row scaling u (one number a video) and a column scaling v (one a
cluster) are kept, and each pass reads the rows in chunks, so memory stays that of the rows.
Under torch.distributed the column sums and N are all-reduced: every rank's shard is scaled as
one matrix would be, and the labels equal one process's.
"""

from __future__ import annotations

import numpy as np
import torch

from xdc import distributed as dist

# SwAV's 0.05 and 3 iterations give soft codes; the argmax of a soft plan is not balanced when a
# cluster's videos are all alike (cosines near 1), so sharper and longer (sizes within about ±50 %
# of N/k on a blob holding 70 % of the videos; tests/test_clustering.py). Each iteration reads
# every row once: at 8M rows per rank and k = 128, minutes on a CPU.
EPSILON = 0.01
ITERATIONS = 200
CHUNK = 65_536  # rows scored at a time


def _log_scores(rows, start: int, units: np.ndarray, epsilon: float) -> np.ndarray:
    """(cos - 1) / epsilon for rows[start:start + CHUNK] (float64, <= 0: exp() never overflows)."""
    chunk = np.asarray(rows[start:start + CHUNK], np.float64)
    return (chunk @ units.T - 1.0) / epsilon


def balanced_assign(rows, centroids: np.ndarray, epsilon: float = EPSILON,
                    iterations: int = ITERATIONS) -> np.ndarray:
    """Cluster index (int64) of each of this rank's `rows` (unit-length preprocessed features,
    anything sliceable with a length) under equal cluster masses over all ranks' rows."""
    k = len(centroids)
    units = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    n = float(dist.all_reduce_sum(torch.tensor([float(len(rows))], dtype=torch.float64)))
    log_v = np.zeros(k)  # log column scaling
    for _ in range(iterations):
        column = np.zeros(k)
        for start in range(0, len(rows), CHUNK):
            logits = _log_scores(rows, start, units, epsilon) + log_v
            # u_i = 1 / (N · Σ_j exp(s_ij + log v_j)): each row's mass 1/N ...
            log_u = -np.log(n) - np.logaddexp.reduce(logits, axis=1)
            column += np.exp(logits + log_u[:, None]).sum(axis=0)
        column = dist.all_reduce_sum(torch.from_numpy(column)).numpy()
        log_v -= np.log(np.maximum(column * k, 1e-300))  # ... then each cluster's mass 1/k
    labels = np.empty(len(rows), np.int64)
    for start in range(0, len(rows), CHUNK):
        labels[start:start + CHUNK] = (_log_scores(rows, start, units, epsilon) + log_v).argmax(axis=1)
    return labels
