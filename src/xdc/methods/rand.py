"""RAND, a control (not in the paper): uniform random pseudo-labels, re-drawn each iteration.

Same heads and training budget as SDC (k_video classes for the video head, k_audio for the audio
one), so it measures what training alone gives (augmentation invariances) without any clusters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from xdc.clustering import random_labels
from xdc.methods.base import HeadSpec, Method

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import ClusterConfig


class RAND(Method):
    name = "rand"
    clusterings = ()

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        return [HeadSpec("video", "video", cfg.k_video), HeadSpec("audio", "audio", cfg.k_audio)]

    def make_labels(self, clusters, num_videos, iteration, seed, cfg) -> dict[str, np.ndarray]:
        # Seeded by (seed, iteration) so every rank draws the same labels without communicating.
        return {
            "video": random_labels(num_videos, cfg.k_video, seed=seed * 1000 + 2 * iteration),
            "audio": random_labels(num_videos, cfg.k_audio, seed=seed * 1000 + 2 * iteration + 1),
        }
