"""xdc.models (video, audio, heads): torchvision's networks (keys, shapes), the scaled-width path,
heads, the Sobel and residual inputs."""

from __future__ import annotations

import pytest
import torch
import torchvision

from xdc.models import ClassificationHead, audio_resnet18, r2plus1d_18, r3d_18, video_encoder
from xdc.models.video import scaled_video_resnet


def shapes(module: torch.nn.Module, drop_fc: bool = True) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()
            if not (drop_fc and k.startswith("fc."))}


@pytest.mark.parametrize("arch", ["r2plus1d_18", "r3d_18"])
def test_width64_is_torchvision_network(arch):
    reference = getattr(torchvision.models.video, arch)(weights=None)
    ours = video_encoder(arch, 64)
    assert shapes(ours) == shapes(reference)
    # The scaled code path at width 64 builds the very same network.
    assert shapes(scaled_video_resnet(arch, 64)) == shapes(reference)
    # torchvision weights (minus fc) load strictly.
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True)


@pytest.mark.parametrize("build,arch", [(r2plus1d_18, "r2plus1d_18"), (r3d_18, "r3d_18")])
@pytest.mark.parametrize("width", [64, 8])
def test_video_encoder_forward(build, arch, width):
    torch.manual_seed(0)
    model = build(width).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 4, 32, 32))
    assert model.feature_dim == 8 * width
    assert out.shape == (2, 8 * width)
    assert torch.isfinite(out).all()
    assert isinstance(model.fc, torch.nn.Identity)


def test_scaled_width_keeps_keys_and_midplanes_rule():
    small, reference = r2plus1d_18(8), torchvision.models.video.r2plus1d_18(weights=None)
    assert set(shapes(small)) == set(shapes(reference))
    block = small.layer2[0]  # inplanes 8 -> planes 16
    spatial = block.conv1[0][0]
    inplanes, planes = 8, 16
    assert spatial.in_channels == inplanes
    assert spatial.out_channels == (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)
    assert small.stem[0].out_channels == round(45 * 8 / 64)
    # r3d at width 16: every conv is 3×3×3, channels quartered.
    r3d = r3d_18(16)
    assert r3d.layer4[1].conv2[0].weight.shape == (128, 128, 3, 3, 3)


def test_audio_encoder_keys_and_shapes():
    reference = shapes(torchvision.models.resnet18(weights=None))
    ours = shapes(audio_resnet18(64))
    assert set(ours) == set(reference)
    assert ours["conv1.weight"] == (64, 1, 7, 7)
    assert {k: v for k, v in ours.items() if k != "conv1.weight"} == \
        {k: v for k, v in reference.items() if k != "conv1.weight"}
    assert set(shapes(audio_resnet18(8))) == set(reference)


@pytest.mark.parametrize("width", [64, 8])
def test_audio_encoder_forward(width):
    model = audio_resnet18(width).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 40, 50))
    assert model.feature_dim == 8 * width and out.shape == (2, 8 * width)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="unknown video arch"):
        video_encoder("resnet50", 8)
    with pytest.raises(ValueError, match="width"):
        audio_resnet18(0)
    with pytest.raises(ValueError, match="num_classes"):
        ClassificationHead(64, 0)


def test_head_reset_gives_fresh_parameters():
    torch.manual_seed(0)
    head = ClassificationHead(16, 5)
    assert head(torch.randn(3, 16)).shape == (3, 5)
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.fill_(1.0)
    head.reset_parameters()
    assert torch.all(head.bias == 0)
    assert head.weight.abs().max() < 0.1 and head.weight.std() > 0


def test_sobel_input_sees_gradients_not_colour_or_brightness():
    """video_input=sobel (DeepCluster): the stem takes 2 channels, nothing is added to the state
    dict, and a flat frame of any colour has zero gradients inside the frame."""
    from xdc.models.video import SobelInput

    model = video_encoder("r2plus1d_18", 8, "sobel")
    plain = video_encoder("r2plus1d_18", 8)
    assert model.stem[0].weight.shape[1] == 2 and set(model.state_dict()) == set(plain.state_dict())
    assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, model.feature_dim)
    flat = torch.ones(1, 3, 2, 16, 16) * torch.tensor([0.2, 0.7, -1.0]).view(1, 3, 1, 1, 1)
    gradients = SobelInput()(flat)
    assert gradients.shape == (1, 2, 2, 16, 16) and gradients[..., 1:-1, 1:-1].abs().max() < 1e-6
    edge = torch.zeros(1, 3, 1, 8, 8)
    edge[..., 4:] = 1.0  # a vertical edge: an x-gradient, no y-gradient inside
    g = SobelInput()(edge)[0, :, 0, 1:-1, 1:-1]
    assert g[0].abs().max() > 1 and g[1].abs().max() < 1e-6


def test_residual_input_sees_only_what_moves():
    """video_input=residual: a clip that does not move gives the same features whatever it shows."""
    model = video_encoder("r3d_18", 4, "residual").eval()
    still = [torch.rand(1, 3, 1, 16, 16).expand(1, 3, 4, 16, 16) for _ in range(2)]
    with torch.no_grad():
        assert torch.allclose(model(still[0]), model(still[1]))
        moving = torch.rand(1, 3, 4, 16, 16)
        assert not torch.allclose(model(moving), model(still[0]))
    with pytest.raises(ValueError, match="unknown video input 'flow'"):
        video_encoder("r3d_18", 4, "flow")
