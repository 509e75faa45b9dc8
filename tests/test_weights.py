"""xdc.models.weights (strict loading, the hub entry points) and xdc.evaluation.weights (export), on
state dicts torchvision itself makes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from conftest import on_a_small_disk
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
    # A file that does not say what it holds, given to the other entry point: its weights say it.
    with pytest.raises(WeightsError, match=r"holds a video encoder \(r2plus1d_18, width 64\): use xdc_video$"):
        torch.hub.load(str(repo), "xdc_audio", source="local", weights=str(torchvision_r2plus1d))


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
    assert main(["export", "--checkpoint", str(ckpt), "-o", str(tmp_path / "a.pth"), "--modality", "audio"]) == 0
    assert load_strict(audio_encoder(8), read_state_dict(tmp_path / "a.pth"))
    assert main(["export", "--checkpoint", str(tmp_path / "absent.pt"), "-o", str(tmp_path / "b.pth")]) == 2


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
        assert main(["export", "--checkpoint", str(ckpt), "--modality", "video", "-o", str(tmp_path / "f.pth")]) == 0
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
    with pytest.raises(WeightsError, match=r"holds a video encoder \(r3d_18, width 16\): use xdc_video"):
        torch.hub.load(str(repo), "xdc_audio", source="local", weights=str(tmp_path / "f.pth"))



@pytest.mark.parametrize("video_input", ["sobel", "residual"])
def test_export_and_hub_keep_the_video_input(tmp_path, video_input):
    """A video encoder fed Sobel gradients or residual frames comes back from `xdc export` and
    torch.hub with the same input filter (the export says which; a Sobel stem shows it too)."""
    from xdc.cli import main
    from xdc.config import PretrainConfig, config_to_yaml

    pre = PretrainConfig()
    pre.model.width, pre.model.video_input = 8, video_input
    torch.manual_seed(0)
    encoder = video_encoder("r2plus1d_18", 8, video_input).eval()
    ckpt = save_checkpoint({"video_encoder": encoder.state_dict(), "audio_encoder": audio_encoder(8).state_dict(),
                            "config": config_to_yaml(pre)}, tmp_path / "last.pt")
    assert main(["export", "--checkpoint", str(ckpt), "--modality", "video", "-o", str(tmp_path / "v.pth")]) == 0
    repo = Path(__file__).resolve().parents[1]
    clip = torch.rand(2, 3, 4, 32, 32)
    for weights in (tmp_path / "v.pth", ckpt):  # exported; a plain checkpoint (no `xdc` entry)
        if video_input == "residual" and weights == ckpt:
            continue  # nothing in residual weights shows the filter: only the export says it
        hub = torch.hub.load(str(repo), "xdc_video", source="local", weights=str(weights)).eval()
        with torch.no_grad():
            assert torch.allclose(hub(clip), encoder(clip), atol=1e-5)


# ------------------------------------------------------------------------- issue 22.6 and 22.13

def _checkpoint_with_config(tmp_path):
    from xdc.config import PretrainConfig, config_to_yaml

    pre = PretrainConfig()
    pre.model.width, pre.data.frames = 8, 4
    return save_checkpoint({"video_encoder": video_encoder("r2plus1d_18", 8).state_dict(),
                            "audio_encoder": audio_encoder(8).state_dict(), "config": config_to_yaml(pre)},
                           tmp_path / "last.pt")


def test_export_of_an_export_is_checked_against_its_weights(tmp_path, capsys):
    """`xdc export --checkpoint v.pth --modality audio` of an exported video encoder is one line (it wrote a file
    tagged audio/resnet18 holding R(2+1)D weights); with the right modality it keeps the input settings."""
    from xdc.cli import main
    from xdc.models.weights import read_metadata

    video = tmp_path / "v.pth"
    assert main(["export", "--checkpoint", str(_checkpoint_with_config(tmp_path)), "--modality", "video", "-o", str(video)]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(video), "--modality", "audio", "-o", str(tmp_path / "a.pth")]) == 2
    err = capsys.readouterr().err
    assert err == (f"xdc export: {video} holds a video encoder (r2plus1d_18, width 8), not the audio encoder "
                   f"asked for: export it with --modality video\n")
    assert not (tmp_path / "a.pth").exists()
    assert main(["export", "--checkpoint", str(video), "--modality", "video", "-o", str(tmp_path / "again.pth")]) == 0
    assert read_metadata(tmp_path / "again.pth") == read_metadata(video)
    assert read_metadata(video)["frames"] == 4


@pytest.mark.parametrize("label", [{"modality": "audio", "arch": "resnet18"}, {"arch": "r3d_18"}, {"width": 16}])
def test_a_mislabelled_file_is_one_sentence_for_export_and_the_hub(tmp_path, capsys, label):
    """A file whose `xdc` entry disagrees with its weights (modality, architecture or width)."""
    from pathlib import Path

    from xdc.cli import main

    bad = tmp_path / "bad.pth"
    meta = {"modality": "video", "arch": "r2plus1d_18", "width": 8, **label}
    torch.save({"state_dict": video_encoder("r2plus1d_18", 8).state_dict(), "xdc": meta}, bad)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(bad), "--modality", "video", "-o", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its weights are a video encoder (r2plus1d_18, width 8)'s" in err
    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(WeightsError, match=r"says it holds .* but its weights are a video encoder") as refused:
        torch.hub.load(str(repo), f"xdc_{meta['modality']}", source="local", weights=str(bad))
    assert "\n" not in str(refused.value)


def test_the_hub_never_advises_unsafe_loading(tmp_path):
    """A refused (hostile) file: the error names the refused object, never torch's advice to load it
    with weights_only=False (which would run its code)."""
    import os
    from pathlib import Path

    class Hostile:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'pwned'}",)

    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": Hostile()}}, evil)
    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(WeightsError) as refused:
        torch.hub.load(str(repo), "xdc_video", source="local", weights=str(evil))
    message = str(refused.value)
    assert str(evil) in message and "refused by weights_only loading" in message
    assert "False" not in message and not (tmp_path / "pwned").exists()


def test_export_on_a_full_disk_names_the_path(tmp_path):
    """save_checkpoint's full disk (export, finetune, clusters alike) is DiskFullError naming the file."""
    import sys

    ckpt = _checkpoint_with_config(tmp_path)
    mount = tmp_path / "disk"
    script = f"{sys.executable} -m xdc.cli export --checkpoint {ckpt} -o {mount}/v.pth; echo rc=$?; ls -a {mount}"
    done = on_a_small_disk(mount, "64k", script, timeout=300)
    assert "rc=2" in done.stdout and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert line.startswith(f"xdc export: the disk holding {mount}/v.pth is full (") and \
        line.endswith("): free some space and run the same command again"), line
    assert done.stdout.split()[1:] == [".", ".."]  # no partial file left
