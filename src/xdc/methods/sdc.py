"""SDC, single-modality deep clustering: each encoder predicts the clusters of its own features.

Like DeepCluster, it learns the classifier on the very input its labels came from, so it can
collapse; DeepCluster's two safeguards are on by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdc.methods.base import HeadSpec, Method

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import ClusterConfig


class SDC(Method):
    name = "sdc"
    clusterings = ("video", "audio")
    reassign_empty = True
    uniform_sampling = True

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        return [HeadSpec("video", "video", cfg.k_video), HeadSpec("audio", "audio", cfg.k_audio)]
