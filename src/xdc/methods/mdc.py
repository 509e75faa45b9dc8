"""MDC, multi-head deep clustering: each encoder has two heads, its own clusters and the other's."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdc.methods.base import HeadSpec, Method

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import ClusterConfig


class MDC(Method):
    name = "mdc"
    clusterings = ("video", "audio")

    def heads(self, cfg: ClusterConfig) -> list[HeadSpec]:
        return [
            HeadSpec("video", "video", cfg.k_video), HeadSpec("video", "audio", cfg.k_audio),
            HeadSpec("audio", "audio", cfg.k_audio), HeadSpec("audio", "video", cfg.k_video),
        ]
