"""XDC, cross-modal deep clustering: video encoder predicts audio clusters, audio encoder video ones."""

from __future__ import annotations

from xdc.config import ClusterConfig
from xdc.methods.base import HeadSpec, Method


class XDC(Method):
    name = "xdc"
    clusterings = ("video", "audio")

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        return [HeadSpec("video", "audio", cfg.k_audio), HeadSpec("audio", "video", cfg.k_video)]
