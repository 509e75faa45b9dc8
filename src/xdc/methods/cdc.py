"""CDC, concatenation deep clustering: cluster [f_v; f_a] once; both encoders predict those labels.

Both `labels_video.npy` and `labels_audio.npy` of a CDC run hold the same joint labels, since
there is only one clustering.
"""

from __future__ import annotations

import numpy as np

from xdc.config import ClusterConfig
from xdc.methods.base import HeadSpec, Method


class CDC(Method):
    name = "cdc"
    clusterings = ("joint",)

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        return [HeadSpec("video", "joint", cfg.k_joint), HeadSpec("audio", "joint", cfg.k_joint)]

    def modality_labels(self, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"video": labels["joint"], "audio": labels["joint"]}

    def modality_num_classes(self, cfg: ClusterConfig) -> dict[str, int]:
        return {"video": cfg.k_joint, "audio": cfg.k_joint}
