"""Video encoders: torchvision's R(2+1)D-18 and R3D-18, pooled features out (`fc` is Identity).

width=64 is torchvision's own network (its builder, weights=None), so published weights load.
Other widths build the same torchvision `VideoResNet` with every channel count scaled by
width/64 (CPU-scale runs); state-dict key names stay the same.
"""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import video as tv_video
from torchvision.models.video.resnet import (
    BasicBlock,
    Conv2Plus1D,
    Conv3DSimple,
    VideoResNet,
)

VIDEO_ARCHS = ("r2plus1d_18", "r3d_18")
TORCHVISION_WIDTH = 64


def scale_channels(channels: int, width: int) -> int:
    """A channel count of torchvision's 64-wide network, scaled to `width` (at least 1)."""
    return max(1, round(channels * width / TORCHVISION_WIDTH))


def _r2plus1d_stem(width: int) -> nn.Sequential:
    # torchvision's R2Plus1dStem with its hard-coded 45 (spatial) and 64 (temporal) channels scaled.
    mid, out = scale_channels(45, width), scale_channels(64, width)
    return nn.Sequential(
        nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, out, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(out),
        nn.ReLU(inplace=True),
    )


def _r3d_stem(width: int) -> nn.Sequential:
    # torchvision's BasicStem with its 64 channels scaled.
    out = scale_channels(64, width)
    return nn.Sequential(
        nn.Conv3d(3, out, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(out),
        nn.ReLU(inplace=True),
    )


class ScaledVideoResNet(VideoResNet):
    """torchvision's VideoResNet with channel counts scaled by width/64.

    Only `_make_layer` changes: torchvision passes the planes of its 64-wide network (and starts
    from its hard-coded inplanes=64, the stem's output); both are scaled here. Everything else
    (blocks, the R(2+1)D midplanes rule, weight init, forward) is torchvision's code.
    """

    def __init__(self, conv_makers, stem, width: int) -> None:
        self._width = width  # read by _make_layer during VideoResNet.__init__
        self._layers_made = 0
        super().__init__(BasicBlock, conv_makers, [2, 2, 2, 2], lambda: stem(width))

    def _make_layer(self, block, conv_builder, planes, blocks, stride=1):
        if self._layers_made == 0:
            self.inplanes = scale_channels(self.inplanes, self._width)
        self._layers_made += 1
        return super()._make_layer(block, conv_builder, scale_channels(planes, self._width), blocks, stride)


_ARCH_PARTS = {
    "r2plus1d_18": ([Conv2Plus1D] * 4, _r2plus1d_stem, tv_video.r2plus1d_18),
    "r3d_18": ([Conv3DSimple] * 4, _r3d_stem, tv_video.r3d_18),
}


def _as_encoder(model: VideoResNet, feature_dim: int) -> VideoResNet:
    model.fc = nn.Identity()
    model.feature_dim = feature_dim
    return model


def scaled_video_resnet(arch: str, width: int) -> VideoResNet:
    """The scaled code path at any width (also at 64, where it equals torchvision's network)."""
    conv_makers, stem, _ = _ARCH_PARTS[arch]
    return _as_encoder(ScaledVideoResNet(conv_makers, stem, width), scale_channels(512, width))


def video_encoder(arch: str, width: int = TORCHVISION_WIDTH) -> VideoResNet:
    """`arch` in VIDEO_ARCHS; input B×3×T×H×W, output pooled features B×feature_dim (8·width)."""
    if arch not in _ARCH_PARTS:
        raise ValueError(f"unknown video arch {arch!r}: expected one of {', '.join(VIDEO_ARCHS)}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if width == TORCHVISION_WIDTH:
        return _as_encoder(_ARCH_PARTS[arch][2](weights=None), 512)
    return scaled_video_resnet(arch, width)


def r2plus1d_18(width: int = TORCHVISION_WIDTH) -> VideoResNet:
    return video_encoder("r2plus1d_18", width)


def r3d_18(width: int = TORCHVISION_WIDTH) -> VideoResNet:
    return video_encoder("r3d_18", width)
