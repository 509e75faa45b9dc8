"""SDC, single-modality deep clustering: each encoder predicts the clusters of its own features.

Like DeepCluster, it learns the classifier on the very input its labels came from, so it can
collapse; DeepCluster's two safeguards are on by default.
"""

from __future__ import annotations

from xdc.config import ClusterConfig
from xdc.methods.base import HeadSpec, Method


class SDC(Method):
    name = "sdc"
    clusterings = ("video", "audio")
    reassign_empty = True
    uniform_sampling = True

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        return [HeadSpec("video", "video", cfg.k_video), HeadSpec("audio", "audio", cfg.k_audio)]
