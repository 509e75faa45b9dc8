"""Superv, the supervised upper bound: both heads predict the manifest's true labels.

A row's label may name several classes, `a|b|c` (AudioSet-style multi-label data): the heads are
then multi-label (a sigmoid per class, binary cross-entropy) instead of single-label softmaxes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from xdc.methods.base import MODALITIES, HeadSpec, Method

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import ClusterConfig

LABEL_SEPARATOR = "|"


class Superv(Method):
    name = "superv"
    clusterings = ()

    def __init__(self, labels: Sequence | None = None):
        """`labels`: per row, a class index, or a label text (`a|b` for several classes)."""
        if labels is None or len(labels) == 0 or any(label in (None, "") for label in labels):
            raise ValueError("method superv needs a manifest with a `label` for every row used")
        self.multilabel = False
        if isinstance(labels[0], str):
            parts = [label.split(LABEL_SEPARATOR) for label in labels]
            self.classes = sorted({p for row in parts for p in row})
            index = {name: i for i, name in enumerate(self.classes)}
            self.multilabel = any(len(row) > 1 for row in parts)
            if self.multilabel:  # multi-hot rows
                self.targets = np.zeros((len(parts), len(self.classes)), np.int64)
                for i, row in enumerate(parts):
                    self.targets[i, [index[p] for p in row]] = 1
            else:
                self.targets = np.array([index[row[0]] for row in parts], np.int64)
        else:
            self.targets = np.asarray(labels, dtype=np.int64)
            self.classes = [str(i) for i in range(int(self.targets.max()) + 1)]
        self.num_classes = len(self.classes)
        if self.num_classes < 2:
            raise ValueError("method superv needs a manifest whose labels name >= 2 classes")

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        return [HeadSpec(encoder, "true", self.num_classes, self.multilabel) for encoder in MODALITIES]

    def modality_labels(self, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # One class per row for the cluster statistics: with several, the first by name.
        true = labels["true"].argmax(1) if self.multilabel else labels["true"]
        return {"video": true, "audio": true}

    def make_labels(self, clusters, num_videos, iteration, seed, cfg) -> dict[str, np.ndarray]:
        return {"true": self.targets}

    def modality_num_classes(self, cfg: ClusterConfig) -> dict[str, int]:
        return {"video": self.num_classes, "audio": self.num_classes}
