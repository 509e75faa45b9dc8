"""Audio encoder: torchvision's ResNet-18 over a 1-channel log-mel input, pooled features out.

Input B×1×n_mels×n_frames. width=64 is torchvision's resnet18 (same state-dict keys; only
`conv1.weight` has 1 input channel instead of 3). Other widths scale every channel count by
width/64 through torchvision's own ResNet code.
"""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, ResNet

from .video import TORCHVISION_WIDTH, scale_channels


class ScaledResNet(ResNet):
    """torchvision's ResNet-18 with channel counts scaled by width/64 (only `_make_layer` differs)."""

    def __init__(self, width: int) -> None:
        self._width = width  # read by _make_layer during ResNet.__init__
        self._layers_made = 0
        super().__init__(BasicBlock, [2, 2, 2, 2])

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if self._layers_made == 0:  # torchvision starts from its hard-coded inplanes=64
            self.inplanes = scale_channels(self.inplanes, self._width)
        self._layers_made += 1
        return super()._make_layer(block, scale_channels(planes, self._width), blocks, stride, dilate)


def audio_resnet18(width: int = TORCHVISION_WIDTH) -> ResNet:
    """ResNet-18 encoder for log-mel spectrograms: B×1×M×F -> B×feature_dim (8·width)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    model = resnet18(weights=None) if width == TORCHVISION_WIDTH else ScaledResNet(width)
    stem = scale_channels(64, width)
    # One input channel (a log-mel), otherwise torchvision's conv1, bn1 and their init.
    model.conv1 = nn.Conv2d(1, stem, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.bn1 = nn.BatchNorm2d(stem)
    model.fc = nn.Identity()
    model.feature_dim = scale_channels(512, width)
    return model


audio_encoder = audio_resnet18  # the name DESIGN.md uses
