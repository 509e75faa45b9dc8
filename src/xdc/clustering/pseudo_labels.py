"""The clustering step of a deep-clustering iteration, apart from training (DeepCluster's
clustering.py): features of every video -> k-means on each feature set -> pseudo-labels, and the
record of how the clusters look.

What is clustered is the method's decision, given here as plain values: the feature sets (name ->
rows of the videos that have features), k per set, whether empty clusters are reassigned. The
caller turns the clusterings into the labels its heads predict; training gets one `PseudoLabels`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from xdc import distributed as dist
from xdc.data.datasets import clip_loader

from .features import (
    Features,
    extract_features,
    extracted,
    no_features_error,
    recompute_batchnorms,
    shard_indices,
)
from .handcrafted import handcrafted_features
from .kmeans import ClusterResult, cluster_features
from .metrics import cluster_stats


@dataclass
class PseudoLabels:
    """What one clustering step hands to training: per label set the heads predict (`video`,
    `audio`, `joint`, `true`), each video's class (-1: it had no features), and the record of how
    the clusters look (an iteration's summary.json entry, before training adds to it)."""

    labels: dict[str, np.ndarray]
    record: dict


def weights_digest(*modules: nn.Module) -> str:
    """Short hash of every parameter and buffer of `modules`: it keys an extraction (features of
    other weights are never reused), and it is equal on all ranks when they hold the same model."""
    digest = hashlib.sha1()
    for module in modules:
        for name, value in module.state_dict().items():
            digest.update(name.encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def iteration_features(dataset: Dataset, out_dir: Path, iteration: int, device: torch.device, *, batch_size: int,
                       num_workers: int | str, amp: bool, encoders: dict[str, nn.Module] | None = None,
                       video_descriptor: str = "layout", recompute_batches: int = 0) -> Features:
    """This rank's share of the features of every item of `dataset` (eval clips), into `out_dir`:
    hand-crafted descriptors (`video_descriptor`) without `encoders`, else the encoders' pooled
    outputs, after recomputing their BatchNorm statistics on `recompute_batches` batches when > 0
    (a freshly initialised encoder's statistics are meaningless). Rows that a crashed attempt at
    this same extraction (same iteration, same weights) wrote are kept: only the rest is read."""
    mine = shard_indices(len(dataset), dist.rank(), dist.world_size())

    def loader_of(items: np.ndarray):
        return clip_loader(Subset(dataset, items), batch_size, num_workers=num_workers,
                           pin_memory=device.type == "cuda")

    if encoders is None:
        key = f"iteration {iteration}: handcrafted, video {video_descriptor}"
        todo = mine[~extracted(out_dir, key, mine)]
        return handcrafted_features(loader_of(todo), len(dataset), out_dir, indices=mine, key=key,
                                    video_descriptor=video_descriptor)
    if recompute_batches:
        recompute_batchnorms(encoders, loader_of(mine), device, recompute_batches, amp)
    key = f"iteration {iteration}: weights {weights_digest(*encoders.values())}"
    todo = mine[~extracted(out_dir, key, mine)]
    return extract_features(encoders, loader_of(todo), len(dataset), out_dir, device, amp=amp, indices=mine, key=key)


def cluster_feature_sets(features: Features, feature_sets: dict[str, np.ndarray], ks: dict[str, int],
                         num_videos: int, cfg, reassign_empty: bool, seed: int,
                         device: str | torch.device = "cpu") -> tuple[dict[str, ClusterResult], int]:
    """k-means on each feature set (its rows: the videos `features.present` marks), with `cfg` a
    ClusterConfig, on the run's `device` (kmeans.cluster_features): labels of every video, identical
    on every rank; and the number of videos the extraction skipped, over all ranks.
    NoFeaturesError when fewer videos than k have features."""
    skipped, have = (int(v) for v in dist.all_reduce_sum(
        torch.tensor([float(len(features.skipped)), float(features.present.sum())])))
    results = {}
    for name, x in feature_sets.items():
        if have < ks[name]:
            raise no_features_error(name, have, ks[name], num_videos, features.skipped)
        results[name] = cluster_features(x, features.indices[features.present], num_videos, ks[name], cfg,
                                         reassign_empty=reassign_empty, seed=seed, device=device)
    return results, skipped


def describe_clusters(labels: dict[str, np.ndarray], num_classes: dict[str, int], previous: dict[str, np.ndarray],
                      truth: np.ndarray | None, kmeans_empty: dict[str, int | None]) -> dict[str, dict]:
    """Per modality, how its labels' clusters look (`metrics.cluster_stats`): sizes, the empty
    clusters k-means left, agreement with the `previous` iteration's labels and with `truth`."""
    return {modality: cluster_stats(values, num_classes[modality], previous.get(modality), truth,
                                    kmeans_empty.get(modality))
            for modality, values in labels.items()}
