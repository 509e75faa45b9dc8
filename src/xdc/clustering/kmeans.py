"""k-means on faiss, DeepCluster style, kept apart from training.

The tricks, each named where it is done:
- PCA-whitening + L2 normalisation (`fit_pca`, `apply_preprocessing`): DeepCluster's feature conditioning; whitening
  stops a few high-variance directions from deciding every cluster, L2 puts features on a sphere
  where Euclidean k-means compares angles.
- k-means++ seeding on a small subsample (`kmeans_plus_plus`): faiss' default start (k random
  points) often puts two seeds in one true cluster and none in another, and Lloyd rarely escapes;
  greedy k-means++ on ~16 points per centroid costs far less than one k-means iteration.
- Training subsample (`max_points_per_centroid`): centroids are trained on at most k × that many
  points (faiss' own rule); then *every* point is assigned to its nearest centroid.
- Empty-cluster reassignment (`reassign_empty_clusters`): an empty cluster is a pseudo-class with
  no examples; DeepCluster splits a big cluster in two instead (used by SDC).
- Uniform-over-clusters sampling (`uniform_over_clusters_weights`): DeepCluster's sampler, so one
  giant cluster cannot dominate the classification loss (trivial solution).

Distributed (`cluster_features`): ranks hold shards of the features; a sample is gathered to rank
0, which fits PCA and centroids and broadcasts them; each rank assigns its own shard, chunk by
chunk; the labels are all-gathered so every rank holds the same full array. For a run on CUDA with
a faiss GPU build (docs/SCALE.md), centroid training and assignment run on each rank's own GPU
(`Indexes`), with the CPU as the fallback when the GPU runs out of memory.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import faiss
import numpy as np
import torch

from xdc import distributed as dist
from xdc.clustering.sinkhorn import balanced_assign

PCA_FIT_POINTS = 100_000  # PCA is fitted on at most this many points
SEED_POINTS_PER_CENTROID = 16  # k-means++ seeding looks at this many points per centroid
ASSIGN_CHUNK = 65_536  # rows preprocessed and assigned at a time (bounds memory)
ASSIGNMENTS = ("kmeans", "sinkhorn")  # cluster.assign: the nearest centroid, or equal cluster sizes
T = TypeVar("T")


@dataclass
class ClusterResult:
    labels: np.ndarray  # int64 (num_items,); -1 for items that had no features (skipped)
    centroids: np.ndarray  # float32 (k, d) in the preprocessed space
    empty_clusters: int  # empty clusters after assigning every point, BEFORE any reassignment
    sizes: np.ndarray  # int64 (k,) points per cluster, after reassignment
    objective: float  # sum of squared distances of every point to its centroid (before reassignment)

    @property
    def k(self) -> int:
        return len(self.centroids)

    @property
    def missing(self) -> int:
        """Items left unlabelled (-1) because no features were extracted for them."""
        return int((self.labels < 0).sum())


def faiss_gpus() -> int:
    """GPUs this faiss build can use: 0 for a CPU build (faiss-cpu) or when it sees none."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def kmeans_uses_gpu(device: str | torch.device, gpus: int) -> bool:
    """k-means on the GPU only for a run on CUDA (`device`) with a faiss that sees `gpus` > 0 GPUs:
    device=cpu never touches the GPU, even on a GPU machine."""
    return torch.device(device).type == "cuda" and gpus > 0


def kmeans_device_note(device: str | torch.device) -> str:
    """Where k-means runs for a run on `device`, in one line for the run's plan; when a CUDA run
    clusters on the CPU, why and what to install."""
    if torch.device(device).type != "cuda":
        return "k-means on the CPU (device cpu)"
    if faiss_gpus() > 0:
        return f"k-means on each rank's GPU (faiss {faiss.__version__}, GPU build)"
    if not hasattr(faiss, "StandardGpuResources"):
        return (f"k-means on the CPU: faiss {faiss.__version__} is a CPU build (faiss-cpu); for the GPU "
                "install faiss-gpu as docs/SCALE.md says (faiss on the GPU)")
    return f"k-means on the CPU: faiss {faiss.__version__}'s GPU build sees no GPU (NVIDIA driver, CUDA_VISIBLE_DEVICES?)"


def is_out_of_memory(err: BaseException) -> bool:
    """torch's CUDA out-of-memory, or faiss's: a RuntimeError "StandardGpuResources: alloc fail ...
    (cudaMalloc error out of memory [2])"."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "alloc fail" in text


class Indexes:
    """Where one clustering's exact L2 indexes live: this rank's GPU (torch's current device;
    faiss.Kmeans(gpu=True) would spread over every GPU of the node, which the other ranks use) or
    the CPU. The faiss GPU resources (their scratch memory) are made at the first GPU index, after
    torch's caching allocator has handed its free blocks back (faiss allocates outside it), and let
    go by `close`, so training gets that memory back. `run` falls back to the CPU on a GPU
    out-of-memory."""

    def __init__(self, use_gpu: bool = False):
        self.use_gpu = use_gpu
        self._resources = None

    def flat(self, d: int):
        index = faiss.IndexFlatL2(d)
        if not self.use_gpu:
            return index
        if self._resources is None:
            torch.cuda.empty_cache()
            self._resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(self._resources, torch.cuda.current_device(), index)

    def run(self, work: Callable[[Indexes], T]) -> T:
        """`work(self)`; when it runs out of GPU memory, one warning line and `work` again on the
        CPU (and the CPU for the rest of this clustering)."""
        if self.use_gpu:
            try:
                return work(self)
            except RuntimeError as err:  # torch.OutOfMemoryError is one
                if not is_out_of_memory(err):
                    raise
                reason = str(err).strip().splitlines()[-1][-160:]  # faiss puts the cause last
                print(f"warning: rank {dist.rank()}: k-means ran out of GPU memory ({reason}); it goes on on the CPU",
                      file=sys.stderr, flush=True)
                self.close()
        return work(self)

    def close(self) -> None:
        """Back to the CPU, the GPU resources released."""
        self.use_gpu, self._resources = False, None


# ---------------------------------------------------------------- preprocessing (PCA, L2)

@dataclass
class Projection:
    """y = x @ matrix.T + bias (PCA, optionally whitened), as plain arrays so ranks can share it."""

    matrix: np.ndarray  # float32 (d_out, d_in)
    bias: np.ndarray  # float32 (d_out,)


def fit_pca(sample: np.ndarray, pca_dim: int, whiten: bool = True) -> Projection:
    """faiss.PCAMatrix on `sample`; whitening = eigen_power -0.5 (DeepCluster). n points span at
    most n - 1 directions: with fewer points than `pca_dim` + 1, PCA keeps those (and warns)."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    d = sample.shape[1]
    if not 0 < pca_dim <= d:
        raise ValueError(f"pca_dim={pca_dim} must be in [1, feature dim {d}]")
    if len(sample) <= pca_dim:
        kept = max(1, len(sample) - 1)
        warnings.warn(f"cluster.pca_dim={pca_dim}, but only {len(sample)} videos to fit the PCA: "
                      f"keeping {kept} dimensions")
        pca_dim = kept
    pca = faiss.PCAMatrix(d, pca_dim, -0.5 if whiten else 0.0)
    pca.epsilon = 1e-6  # dead (always-zero) feature dims have zero variance: don't divide by 0
    pca.train(sample)
    matrix = faiss.vector_to_array(pca.A).reshape(pca_dim, d).astype(np.float32)
    bias = faiss.vector_to_array(pca.b).astype(np.float32)
    return Projection(matrix, bias)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """float32 rows of unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12))


def apply_preprocessing(x: np.ndarray, projection: Projection | None) -> np.ndarray:
    """float32, projected when `projection` is given, then L2-normalised rows."""
    x = np.asarray(x, dtype=np.float32)
    if projection is not None:
        x = x @ projection.matrix.T + projection.bias
    return l2_normalise(x)


# ---------------------------------------------------------------- k-means pieces

def _check_k(k: int, n: int) -> None:
    if k < 1:
        raise ValueError(f"k-means needs k >= 1, got k={k}")
    if k > n:
        raise ValueError(f"k-means with k={k} clusters needs at least {k} points, got {n}")


def kmeans_plus_plus(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Greedy k-means++ seeds among SEED_POINTS_PER_CENTROID × k random points of `x`: each next
    seed is the best (lowest total squared distance) of 2 + log k candidates drawn with
    probability ∝ squared distance to the nearest seed so far (as scikit-learn does)."""
    rng = np.random.default_rng(seed)
    pool = x[np.sort(rng.choice(len(x), min(len(x), SEED_POINTS_PER_CENTROID * k), replace=False))]
    pool_sq = (pool ** 2).sum(axis=1)
    trials = 2 + int(np.log(k))
    seeds = np.empty((k, x.shape[1]), np.float32)
    seeds[0] = pool[rng.integers(len(pool))]
    sq_dist = np.maximum(pool_sq - 2 * pool @ seeds[0] + (seeds[0] ** 2).sum(), 0)
    for i in range(1, k):
        probs = sq_dist.astype(np.float64)  # float64: choice() wants probabilities summing to 1
        total = probs.sum()
        if total <= 0:  # fewer distinct points than k: any point will do
            candidates = rng.integers(len(pool), size=trials)
        else:
            candidates = rng.choice(len(pool), size=trials, p=probs / total)
        cand_sq = np.maximum(pool_sq[:, None] - 2 * pool @ pool[candidates].T + pool_sq[candidates], 0)
        new_sq = np.minimum(sq_dist[:, None], cand_sq)  # pool × trials
        best = int(np.argmin(new_sq.sum(axis=0)))
        seeds[i] = pool[candidates[best]]
        sq_dist = new_sq[:, best]
    return seeds


def train_centroids(x: np.ndarray, k: int, niter: int = 20, seed: int = 0,
                    max_points_per_centroid: int = 256, indexes: Indexes | None = None,
                    init: str = "kmeans++") -> tuple[np.ndarray, float]:
    """faiss.Kmeans on `x` (subsampled by faiss to k × max_points_per_centroid), started from
    k-means++ seeds or, with init="random", faiss' own random points; (centroids, last obj).
    `indexes`: where the search runs (default: the CPU)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_k(k, len(x))
    if init not in ("kmeans++", "random"):
        raise ValueError(f"init must be 'kmeans++' or 'random', got {init!r}")
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False,
                      max_points_per_centroid=max_points_per_centroid,
                      min_points_per_centroid=1)  # small CPU runs: don't warn about few points
    km.index = (indexes or Indexes()).flat(x.shape[1])
    km.train(x, init_centroids=kmeans_plus_plus(x, k, seed) if init == "kmeans++" else None)
    return km.centroids.astype(np.float32), float(km.obj[-1]) if len(km.obj) else 0.0


def assign(x, centroids: np.ndarray, indexes: Indexes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row of `x` (exact search), read ASSIGN_CHUNK rows at a time (`x`:
    an array or `PreprocessedRows`): (labels int64, squared distances)."""
    index = (indexes or Indexes()).flat(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(len(x), np.int64)
    sq_dist = np.empty(len(x), np.float32)
    for start in range(0, len(x), ASSIGN_CHUNK):
        chunk = np.ascontiguousarray(x[start:start + ASSIGN_CHUNK], dtype=np.float32)
        dist_chunk, label_chunk = index.search(chunk, 1)
        labels[start:start + len(chunk)] = label_chunk[:, 0]
        sq_dist[start:start + len(chunk)] = dist_chunk[:, 0]
    return labels, sq_dist


class PreprocessedRows:
    """`apply_preprocessing` of the rows of `features`, computed when read: `assign` reads slices of
    ASSIGN_CHUNK rows, so the preprocessed float32 shard is never held whole (at 65M videos and
    512-d features without PCA: 16 GB a rank on 8 ranks)."""

    def __init__(self, features, projection: Projection | None):
        self.features, self.projection = features, projection

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return apply_preprocessing(self.features[rows], self.projection)


def _global_sizes(labels: np.ndarray, k: int, distributed: bool) -> np.ndarray:
    sizes = np.bincount(labels[labels >= 0], minlength=k).astype(np.int64)
    if distributed:
        sizes = dist.all_reduce_sum(torch.from_numpy(sizes)).numpy()
    return sizes


def reassign_empty_clusters(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, seed: int = 0,
                            distributed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """DeepCluster's empty-cluster trick; returns new (labels, centroids).

    For each empty cluster: draw a non-empty cluster with probability proportional to its size,
    give the empty cluster a copy of its centroid nudged along a random direction (and nudge the
    donor the other way), and split the donor's points by the side of that direction they lie on.
    The donor's centroid is the mean of its points, so both sides get points unless all its points
    are identical (then another donor is tried). Repeats until no cluster is empty.

    distributed=True: `x`/`labels` are this rank's points; sizes are summed over ranks and every
    rank draws the same donors and direction (same seed), so the result equals a single process's.
    """
    labels = labels.copy()
    centroids = centroids.copy()
    k, d = centroids.shape
    rng = np.random.default_rng(seed)
    unsplittable: set[int] = set()  # donors whose points are all identical
    sizes = _global_sizes(labels, k, distributed)
    while True:
        empty = np.flatnonzero(sizes == 0)
        donors = np.array([c for c in range(k) if sizes[c] >= 2 and c not in unsplittable])
        if len(empty) == 0 or len(donors) == 0:
            break
        target = int(empty[0])
        donor = int(rng.choice(donors, p=sizes[donors] / sizes[donors].sum()))
        direction = rng.standard_normal(d).astype(np.float32)
        direction *= 1e-3 * max(float(np.linalg.norm(centroids[donor])), 1e-6) / np.linalg.norm(direction)
        members = np.flatnonzero(labels == donor)
        side = (x[members] - centroids[donor]) @ direction > 0
        moved = _global_sizes(np.where(side, 0, -1), 1, distributed)[0]
        if moved == 0 or moved == sizes[donor]:
            unsplittable.add(donor)
            continue
        labels[members[side]] = target
        centroids[target] = centroids[donor] + direction
        centroids[donor] = centroids[donor] - direction
        sizes[target], sizes[donor] = moved, sizes[donor] - moved
    if (sizes == 0).any():
        warnings.warn(f"{int((sizes == 0).sum())} clusters stay empty: the remaining clusters' points "
                      "are identical and cannot be split", stacklevel=2)
    return labels, centroids


# ---------------------------------------------------------------- distributed

def cluster_features(local_features, local_indices: np.ndarray, num_items: int, k: int, cfg,
                     reassign_empty: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> ClusterResult:
    """k-means over the features every rank holds (rows of `local_features` are items `local_indices`).

    `cfg` is a ClusterConfig (niter, max_points_per_centroid, pca_dim, whiten, assign: `sinkhorn`
    labels under equal cluster sizes, clustering.sinkhorn; `objective` stays k-means'). Pass only rows
    that have features (extraction's `present`); items no rank has get label -1. `local_features`:
    an array, or rows read when sliced (`methods.base.PresentRows`: float16 memmap rows, never
    copied whole). Returns labels of all `num_items` items, ordered by item index, identical on
    every rank. `device`: the run's; on "cuda" with a faiss GPU build, k-means runs on this rank's
    GPU (`kmeans_uses_gpu`). Without an initialised process group it is the single-process
    computation.
    """
    local_indices = np.asarray(local_indices, dtype=np.int64)
    if len(local_indices) != len(local_features):
        raise ValueError(f"{len(local_features)} feature rows but {len(local_indices)} indices")
    if len(local_indices) and (local_indices.min() < 0 or local_indices.max() >= num_items):
        raise ValueError(f"item indices must be in [0, {num_items})")
    multi = dist.world_size() > 1
    indexes = Indexes(kmeans_uses_gpu(device, faiss_gpus()))
    try:
        return _cluster(local_features, local_indices, num_items, k, cfg, reassign_empty, seed, multi, indexes)
    finally:
        indexes.close()


def _cluster(local_features, local_indices: np.ndarray, num_items: int, k: int, cfg, reassign_empty: bool,
             seed: int, multi: bool, indexes: Indexes) -> ClusterResult:
    # 1. The training sample: drawn from the global item list, so it does not depend on sharding.
    rank_indices = dist.all_gather_arrays(local_indices)  # kept for step 4
    all_indices = np.concatenate(rank_indices)
    all_indices.sort()  # in place: at 65M videos each copy is 520 MB on every rank
    if (all_indices[1:] == all_indices[:-1]).any():
        raise ValueError("an item index is held by more than one row/rank")
    _check_k(k, len(all_indices))
    budget = min(len(all_indices), k * cfg.max_points_per_centroid)
    rng = np.random.default_rng(seed)
    sample_items = np.sort(rng.choice(all_indices, budget, replace=False))
    del all_indices
    local_take = np.flatnonzero(np.isin(local_indices, sample_items))
    # To rank 0 only, in the features' own dtype (float16 from extraction): it alone fits on them.
    gathered = dist.gather_arrays(np.asarray(local_features[local_take]))
    gathered_items = dist.gather_arrays(local_indices[local_take])

    # 2. Rank 0 fits PCA and centroids on the sample (ordered by item index) and broadcasts them.
    matrix = bias = centroids = None
    if dist.rank() == 0:
        items = np.concatenate(gathered_items)
        sample = np.concatenate(gathered).astype(np.float32)[np.argsort(items)]
        del gathered
        projection = fit_pca(sample, cfg.pca_dim, cfg.whiten) if cfg.pca_dim > 0 else None
        if projection is not None:
            matrix, bias = projection.matrix, projection.bias
        preprocessed = apply_preprocessing(sample, projection)
        centroids, _ = indexes.run(lambda where: train_centroids(preprocessed, k, cfg.niter, seed,
                                                                 cfg.max_points_per_centroid, where))
    if cfg.pca_dim > 0:
        projection = Projection(dist.broadcast_array(matrix), dist.broadcast_array(bias))
    else:
        projection = None
    centroids = dist.broadcast_array(centroids)

    # 3. Each rank assigns its own shard, preprocessed chunk by chunk as it is read; the whole
    # preprocessed shard is held only to reassign empty clusters (that moves points between them).
    rows = PreprocessedRows(local_features, projection)
    local_labels, sq_dist = indexes.run(lambda where: assign(rows, centroids, where))
    if cfg.assign == "sinkhorn":  # equal cluster masses instead of the nearest centroid (sinkhorn.py)
        local_labels = balanced_assign(rows, centroids)
    objective = float(sum(float(v[0]) for v in dist.all_gather_arrays(np.array([sq_dist.sum()]))))
    sizes = _global_sizes(local_labels, k, multi)
    empty = int((sizes == 0).sum())
    if reassign_empty and empty:
        x_local = np.empty((len(rows), centroids.shape[1]), np.float32)
        for start in range(0, len(rows), ASSIGN_CHUNK):  # the chunks assign read: the same values
            x_local[start:start + ASSIGN_CHUNK] = rows[start:start + ASSIGN_CHUNK]
        local_labels, centroids = reassign_empty_clusters(x_local, local_labels, centroids, seed,
                                                          distributed=multi)
        sizes = _global_sizes(local_labels, k, multi)

    # 4. All-gather the labels (int32: 4 bytes a video) into the full array; every rank holds
    # every rank's indices since step 1.
    labels = np.full(num_items, -1, np.int64)
    for indices, values in zip(rank_indices, dist.all_gather_arrays(local_labels.astype(np.int32))):
        labels[indices] = values
    return ClusterResult(labels, centroids, empty, sizes.astype(np.int64), objective)


# ---------------------------------------------------------------- sampling and the RAND control

def uniform_over_clusters_weights(labels: np.ndarray) -> np.ndarray:
    """DeepCluster's sampler: per-item weights (sum 1) giving every non-empty cluster the same
    total weight; items with label -1 (not clustered) get 0."""
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels >= 0
    if not valid.any():
        raise ValueError("no item has a cluster label")
    sizes = np.bincount(labels[valid])
    weights = np.zeros(len(labels), np.float64)
    weights[valid] = 1.0 / sizes[labels[valid]]
    return weights / np.count_nonzero(sizes)


def random_labels(num_items: int, k: int, seed: int = 0) -> np.ndarray:
    """Uniform random pseudo-labels in [0, k) (the RAND control), int64 (num_items,)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return np.random.default_rng(seed).integers(0, k, num_items, dtype=np.int64)
