"""CDC, concatenation deep clustering: cluster [f_v; f_a] once; both encoders predict those labels.

Both `labels_video.npy` and `labels_audio.npy` of a CDC run hold the same joint labels, since
there is only one clustering.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from xdc.clustering import l2_normalise
from xdc.methods.base import HeadSpec, Method, PresentRows

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import ClusterConfig


def joint(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([l2_normalise(part) for part in parts], axis=1)


class CDC(Method):
    name = "cdc"
    clusterings = ("joint",)

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        return [HeadSpec("video", "joint", cfg.k_joint), HeadSpec("audio", "joint", cfg.k_joint)]

    def cluster_inputs(self, features) -> dict[str, PresentRows]:
        """[f_v; f_a], each part L2-normalised so that neither modality dominates the distances
        (built a chunk of rows at a time, as k-means reads them)."""
        return {"joint": PresentRows([features["video"], features["audio"]], features.present, joint)}

    def modality_labels(self, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"video": labels["joint"], "audio": labels["joint"]}

    def modality_num_classes(self, cfg: ClusterConfig) -> dict[str, int]:
        return {"video": cfg.k_joint, "audio": cfg.k_joint}
