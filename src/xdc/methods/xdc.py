"""XDC, cross-modal deep clustering: video encoder predicts audio clusters, audio encoder video ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdc.methods.base import HeadSpec, Method

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import ClusterConfig


class XDC(Method):
    name = "xdc"
    clusterings = ("video", "audio")

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        return [HeadSpec("video", "audio", cfg.k_audio), HeadSpec("audio", "video", cfg.k_video)]
