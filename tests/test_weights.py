"""Strict weight loading, export and the hub entry points, on state dicts torchvision itself makes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from xdc.checkpoint import save_checkpoint
from xdc.evaluation.weights import export_encoder
from xdc.models import audio_encoder, video_encoder
from xdc.models.weights import (
    WeightsError,
    load_strict,
    read_state_dict,
    superv_state_dict,
    superv_weights_path,
)


@pytest.fixture(scope="module")
def torchvision_r2plus1d(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tv") / "r2plus1d_18.pth"
    torch.save(torchvision.models.video.r2plus1d_18(weights=None).state_dict(), path)
    return path


def test_torchvision_state_dict_loads_strictly(torchvision_r2plus1d):
    state = read_state_dict(torchvision_r2plus1d)
    assert "fc.weight" in state
    state["layer4.1.conv2.1.running_var"] = torch.rand_like(state["layer4.1.conv2.1.running_var"]) + 2
    model = load_strict(video_encoder("r2plus1d_18"), state)  # fc.* is the only allowed difference
    assert torch.equal(model.state_dict()["stem.0.weight"], state["stem.0.weight"])
    assert torch.equal(model.state_dict()["layer4.1.conv2.1.running_var"], state["layer4.1.conv2.1.running_var"])


def test_renamed_or_reshaped_key_fails_loudly(torchvision_r2plus1d):
    state = read_state_dict(torchvision_r2plus1d)
    renamed = dict(state)
    renamed["layer2.0.conv1.0.0.weight_renamed"] = renamed.pop("layer2.0.conv1.0.0.weight")
    with pytest.raises(WeightsError) as err:
        load_strict(video_encoder("r2plus1d_18"), renamed, source="official.pth")
    message = str(err.value)
    assert "official.pth" in message
    assert "missing" in message and "layer2.0.conv1.0.0.weight" in message
    assert "layer2.0.conv1.0.0.weight_renamed" in message
    # The wrong architecture: every stem/conv shape differs, and the error says which.
    with pytest.raises(WeightsError, match=r"stem\.0\.weight \(file \(45, 3, 1, 7, 7\)"):
        load_strict(video_encoder("r3d_18"), state)


def test_wrappers_and_ddp_prefixes_are_unwrapped(tmp_path, torchvision_r2plus1d):
    state = read_state_dict(torchvision_r2plus1d)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, wrapped)
    assert read_state_dict(wrapped).keys() == state.keys()
    with pytest.raises(WeightsError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")
    torch.save({"epoch": 3}, tmp_path / "no_weights.pth")
    with pytest.raises(WeightsError, match="no state dict"):
        read_state_dict(tmp_path / "no_weights.pth")


def test_export_loads_into_torchvision_builders(tmp_path):
    torch.manual_seed(1)
    video, audio = video_encoder("r3d_18"), audio_encoder()
    ckpt = save_checkpoint({"video_encoder": video.state_dict(), "audio_encoder": audio.state_dict(),
                            "iteration": 2}, tmp_path / "checkpoints" / "last.pt")
    video_file = export_encoder(ckpt, tmp_path / "video.pth", "video")
    audio_file = export_encoder(ckpt, tmp_path / "audio.pth", "audio")

    tv_video = torchvision.models.video.r3d_18(weights=None)
    tv_video.fc = nn.Identity()
    exported = torch.load(video_file, weights_only=True)
    assert exported["xdc"] == {"modality": "video", "arch": "r3d_18", "width": 64, "feature_dim": 512}
    tv_video.load_state_dict(exported["state_dict"])  # strict
    tv_audio = torchvision.models.resnet18(weights=None)
    tv_audio.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    tv_audio.fc = nn.Identity()
    tv_audio.load_state_dict(torch.load(audio_file, weights_only=True)["state_dict"])  # strict
    video.eval(), tv_video.eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    assert torch.allclose(video(clip), tv_video(clip), atol=1e-5)


def test_hub_entry_points_load_local_weights(tmp_path, torchvision_r2plus1d):
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    model = torch.hub.load(str(repo), "xdc_video", source="local", weights=str(torchvision_r2plus1d))
    assert model.feature_dim == 512
    assert torch.equal(model.state_dict()["stem.3.weight"], read_state_dict(torchvision_r2plus1d)["stem.3.weight"])
    small = torch.hub.load(str(repo), "xdc_audio", source="local", width=8)
    assert small(torch.randn(2, 1, 40, 50)).shape == (2, 64)


def test_superv_weights_absent_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / "r2plus1d_18-91a641e6.pth"
    assert superv_weights_path("r2plus1d_18") == expected
    with pytest.raises(WeightsError) as err:
        superv_state_dict("r2plus1d_18")
    assert str(expected) in str(err.value) and "download.pytorch.org" in str(err.value)
    with pytest.raises(WeightsError, match="r2plus1d_18 | r3d_18"):
        superv_weights_path("resnet50")


def test_export_command(tmp_path):
    from xdc.cli import main

    ckpt = save_checkpoint({"video_encoder": video_encoder("r2plus1d_18", 8).state_dict(),
                            "audio_encoder": audio_encoder(8).state_dict()}, tmp_path / "last.pt")
    assert main(["export", str(ckpt), "-o", str(tmp_path / "a.pth"), "--modality", "audio"]) == 0
    assert load_strict(audio_encoder(8), read_state_dict(tmp_path / "a.pth"))
    assert main(["export", str(tmp_path / "absent.pt"), "-o", str(tmp_path / "b.pth")]) == 2


def test_export_names_what_the_hub_needs_and_honours_the_umask(tmp_path):
    """A width-16 R3D export loads through torch.hub with no other argument; its input settings
    come along; loading it at another width says so in one sentence."""
    import os
    from pathlib import Path

    from xdc.cli import main
    from xdc.config import PretrainConfig, config_to_yaml

    pre = PretrainConfig()
    pre.model.video_arch, pre.model.width, pre.data.frames, pre.data.n_mels = "r3d_18", 16, 4, 32
    ckpt = save_checkpoint({"video_encoder": video_encoder("r3d_18", 16).state_dict(),
                            "audio_encoder": audio_encoder(16).state_dict(), "config": config_to_yaml(pre)},
                           tmp_path / "last.pt")
    old = os.umask(0o022)
    try:
        assert main(["export", str(ckpt), "--modality", "video", "-o", str(tmp_path / "f.pth")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "f.pth").stat().st_mode & 0o777 == 0o644
    repo = Path(__file__).resolve().parents[1]
    model = torch.hub.load(str(repo), "xdc_video", source="local", weights=str(tmp_path / "f.pth"))
    assert model.feature_dim == 128 and model.xdc_input["frames"] == 4 and model.xdc_input["n_mels"] == 32
    assert model.xdc_input["video_mean"] == pytest.approx([0.43216, 0.394666, 0.37645])
    with pytest.raises(WeightsError, match=r"holds a width-16 encoder, the model is width 64: build it with width=16") as err:
        load_strict(video_encoder("r3d_18"), read_state_dict(tmp_path / "f.pth"))
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsError, match="holds a video encoder: use xdc_video"):
        torch.hub.load(str(repo), "xdc_audio", source="local", weights=str(tmp_path / "f.pth"))
