"""What a deep-clustering method decides: which features are clustered and what each head predicts.

A method is a small object, one file each (solo-learn style). It names
- `clusterings`: the feature sets to cluster each iteration, and `cluster_inputs` builds them from
  the extracted per-modality features (CDC's "joint" set is its own business);
- `heads(cfg)`: the classification heads, each sitting on one encoder and predicting one label
  set (a key of the labels dict) with its number of classes;
- its defaults for DeepCluster's two safeguards against trivial solutions (empty-cluster
  reassignment, sampling uniformly over clusters), which the config may override.

The training loop builds the heads, trains them on the sum or mean of their cross-entropies
(`optim.head_reduction`), and never needs to know which method it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from xdc.models.device import MODALITIES

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import ClusterConfig


@dataclass(frozen=True)
class HeadSpec:
    """One classification head: on `encoder` ("video" | "audio"), predicting labels[`target`]."""

    encoder: str
    target: str
    num_classes: int
    multilabel: bool = False  # a sigmoid per class (several true classes per row), not a softmax

    @property
    def name(self) -> str:
        return f"{self.encoder}_to_{self.target}"

    @property
    def chance_loss(self) -> float:
        """Loss of a head that learned nothing: ln k for a softmax over k classes (uniform
        output); ln 2 for a multi-label head (every logit 0, the binary cross-entropy per class)."""
        return math.log(2) if self.multilabel else math.log(self.num_classes)


class PresentRows:
    """The feature rows of the videos that have features (`present`), read from the extraction's
    float16 memmaps only when sliced: k-means reads its sample and then ASSIGN_CHUNK rows at a
    time, so a rank's shard is never copied whole into memory (at 65M videos, 512-d, both
    modalities: 16 GB a rank on 8 ranks as float16, twice that as float32). `combine` turns the
    parts' rows into one array (CDC's [f_v; f_a]); with one part the rows come as stored."""

    def __init__(self, parts: list[np.ndarray], present: np.ndarray,
                 combine: Callable[[list[np.ndarray]], np.ndarray] | None = None):
        self.parts, self.rows, self.combine = parts, np.flatnonzero(present), combine

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self[:0].shape[1:])

    def __getitem__(self, rows) -> np.ndarray:
        """Rows by position among the present ones (a slice or an index array)."""
        read = [np.asarray(part[self.rows[rows]]) for part in self.parts]
        return self.combine(read) if self.combine else read[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)


class Method:
    """Base class; subclasses set the class attributes and `heads`."""

    name: str = ""
    clusterings: tuple[str, ...] = ()  # feature sets clustered each iteration
    reassign_empty: bool = False  # DeepCluster's empty-cluster reassignment, default
    uniform_sampling: bool = False  # DeepCluster's uniform-over-clusters sampler, default

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        raise NotImplementedError

    def cluster_inputs(self, features) -> dict[str, PresentRows]:
        """The rows k-means sees for each of `clusterings`, from extracted features
        (`clustering.Features`: one float16 memmap per modality), read only when k-means asks."""
        return {name: PresentRows([features[name]], features.present) for name in self.clusterings}

    def num_clusters(self, clustering: str, cfg: ClusterConfig) -> int:
        return {"video": cfg.k_video, "audio": cfg.k_audio, "joint": cfg.k_joint}[clustering]

    def use_reassign_empty(self, cfg: ClusterConfig) -> bool:
        return self.reassign_empty if cfg.reassign_empty is None else cfg.reassign_empty

    def use_uniform_sampling(self, cfg: ClusterConfig) -> bool:
        return self.uniform_sampling if cfg.uniform_sampling is None else cfg.uniform_sampling

    def modality_labels(self, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The label array reported (and saved) for each modality: its own clustering by default."""
        return {m: labels[m] for m in MODALITIES}

    def modality_num_classes(self, cfg: ClusterConfig) -> dict[str, int]:
        """Number of classes of each `modality_labels` array."""
        return {"video": cfg.k_video, "audio": cfg.k_audio}

    def make_labels(self, clusters: dict[str, np.ndarray], num_videos: int, iteration: int,
                    seed: int, cfg: ClusterConfig) -> dict[str, np.ndarray]:
        """Labels the heads predict, from this iteration's clusterings (keyed like `clusterings`)."""
        return dict(clusters)


HEAD_REDUCTIONS = ("sum", "mean")


def head_losses(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                heads: list[HeadSpec]) -> torch.Tensor:
    """Each head's cross-entropy against its own label set, in `heads` order (a 1-D tensor)."""
    # -1 marks a video without features (skipped at extraction): it has no pseudo-label.
    return torch.stack([
        F.binary_cross_entropy_with_logits(logits[h.name].float(), targets[h.target].float()) if h.multilabel
        else F.cross_entropy(logits[h.name].float(), targets[h.target], ignore_index=-1)
        for h in heads])


def reduce_heads(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """The loss that trains: `sum` gives each encoder the full gradient of each of its heads, as a
    single-head network trained at Table 2's lr gets; `mean` divides it by the number of heads."""
    if reduction not in HEAD_REDUCTIONS:
        raise ValueError(f"head reduction must be one of {HEAD_REDUCTIONS}, got {reduction!r}")
    return losses.sum() if reduction == "sum" else losses.mean()
