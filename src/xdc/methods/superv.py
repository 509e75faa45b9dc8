"""Superv, the supervised upper bound: both heads predict the manifest's true labels."""

from __future__ import annotations

import numpy as np

from xdc.config import ClusterConfig
from xdc.methods.base import HeadSpec, Method


class Superv(Method):
    name = "superv"
    clusterings = ()

    def __init__(self, true_labels: np.ndarray | None = None):
        if true_labels is None:
            raise ValueError("method superv needs a manifest with a `label` for every row used")
        self.true_labels = np.asarray(true_labels, dtype=np.int64)
        self.num_classes = int(self.true_labels.max()) + 1 if self.true_labels.size else 0
        if self.num_classes < 2:
            raise ValueError("method superv needs a manifest whose labels name >= 2 classes")

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        return [HeadSpec("video", "true", self.num_classes), HeadSpec("audio", "true", self.num_classes)]

    def modality_labels(self, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"video": labels["true"], "audio": labels["true"]}

    def make_labels(self, clusters, num_videos, iteration, seed, cfg) -> dict[str, np.ndarray]:
        return {"true": self.true_labels}

    def modality_num_classes(self, cfg: ClusterConfig) -> dict[str, int]:
        return {"video": self.num_classes, "audio": self.num_classes}
