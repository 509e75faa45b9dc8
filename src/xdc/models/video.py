"""Video encoders: torchvision's R(2+1)D-18 and R3D-18, pooled features out (`fc` is Identity).

width=64 is torchvision's own network (its builder, weights=None), so published weights load.
Other widths build the same torchvision `VideoResNet` with every channel count scaled by
width/64 (CPU-scale runs); state-dict key names stay the same.

`video_input` fixes what the first conv sees (no parameters, nothing in the state dict):
- `sobel`, DeepCluster's input trick: each frame's grey-level horizontal and vertical Sobel
  gradients (2 channels), so the first clusters of a randomly initialised encoder cannot follow
  colour or brightness; the stem's first conv then takes 2 channels (`stem.0.weight` says so);
- `residual`, residual frames (Tao et al., 2020): each frame minus the one before (the first
  frame's residual is zero), so what stands still (background, clutter) is gone before any
  learning and a random encoder's features follow what moves.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import video as tv_video
from torchvision.models.video.resnet import (
    BasicBlock,
    Conv2Plus1D,
    Conv3DSimple,
    VideoResNet,
)

VIDEO_ARCHS = ("r2plus1d_18", "r3d_18")
VIDEO_INPUTS = ("rgb", "sobel", "residual")  # model.video_input
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


class SobelInput(nn.Module):
    """Fixed filters (no parameters, nothing in the state dict): B×3×T×H×W RGB -> B×2×T×H×W, the
    Sobel gradients (x, y) of each frame's grey level (the mean of its channels), as DeepCluster."""

    def __init__(self) -> None:
        super().__init__()
        sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        kernels = torch.stack([sobel, sobel.T])[:, None, None]  # 2×1×1×3×3: per frame
        self.register_buffer("kernels", kernels, persistent=False)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        grey = video.mean(dim=1, keepdim=True)
        return F.conv3d(grey, self.kernels.to(grey.dtype), padding=(0, 1, 1))


class ResidualFrames(nn.Module):
    """B×C×T×H×W -> B×C×T×H×W: frame t minus frame t-1 (zero for the first frame)."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(video[:, :, :1]), video[:, :, 1:] - video[:, :, :-1]], dim=2)


def _input_hook(model: nn.Module, args: tuple) -> tuple:
    return (model.input_filter(args[0]),)


def with_sobel_input(model: VideoResNet) -> VideoResNet:
    """`model` taking Sobel gradients: its first conv re-made for 2 input channels (same init as
    torchvision's: kaiming normal, fan out), the filter applied before the stem."""
    first = model.stem[0]
    model.stem[0] = nn.Conv3d(2, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)
    nn.init.kaiming_normal_(model.stem[0].weight, mode="fan_out", nonlinearity="relu")
    model.input_filter = SobelInput()
    model.register_forward_pre_hook(_input_hook)
    return model


def with_residual_input(model: VideoResNet) -> VideoResNet:
    """`model` taking residual frames (see the module docstring)."""
    model.input_filter = ResidualFrames()
    model.register_forward_pre_hook(_input_hook)
    return model


def video_encoder(arch: str, width: int = TORCHVISION_WIDTH, video_input: str = "rgb") -> VideoResNet:
    """`arch` in VIDEO_ARCHS; input B×3×T×H×W, output pooled features B×feature_dim (8·width).
    `video_input` in VIDEO_INPUTS (see the module docstring)."""
    if arch not in _ARCH_PARTS:
        raise ValueError(f"unknown video arch {arch!r}: expected one of {', '.join(VIDEO_ARCHS)}")
    if video_input not in VIDEO_INPUTS:
        raise ValueError(f"unknown video input {video_input!r}: expected one of {', '.join(VIDEO_INPUTS)}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if width == TORCHVISION_WIDTH:
        model = _as_encoder(_ARCH_PARTS[arch][2](weights=None), 512)
    else:
        model = scaled_video_resnet(arch, width)
    if video_input == "sobel":
        return with_sobel_input(model)
    return with_residual_input(model) if video_input == "residual" else model


def r2plus1d_18(width: int = TORCHVISION_WIDTH) -> VideoResNet:
    return video_encoder("r2plus1d_18", width)


def r3d_18(width: int = TORCHVISION_WIDTH) -> VideoResNet:
    return video_encoder("r3d_18", width)
