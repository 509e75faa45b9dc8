"""torch.hub entry points for xdc's encoders, from local weights only (nothing is downloaded).

    video = torch.hub.load("/path/to/xdc", "xdc_video", source="local", weights="r2plus1d.pth")
    audio = torch.hub.load("/path/to/xdc", "xdc_audio", source="local", weights="audio.pth")

`weights` may be a file written by `xdc export` (it names its architecture and width, so nothing
else is needed), a pretrain checkpoint, a torchvision state dict or an official XDC release file;
it is loaded strictly (only `fc.*` may differ). For files that do not name them, `arch`, `width`
and a Sobel input are read off the weights (`models.weights.encoder_shape`); without weights they
default to torchvision's network (r2plus1d_18, 64). The encoders return pooled features
(`fc` is Identity; `model.feature_dim` gives their size); `model.xdc_input` holds the input
settings an exported file carries (frames, fps, crop, mean/std, n_mels, ...; {} otherwise).
"""

import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "av", "numpy"]

_SRC = Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:  # a source checkout that is not pip-installed
    sys.path.insert(0, str(_SRC))


def _load(modality, weights, arch, width):
    from xdc.models import audio_encoder, video_encoder
    from xdc.models.weights import (
        WeightsError,
        check_metadata,
        describe_encoder,
        encoder_shape,
        load_strict,
        read_metadata,
        read_state_dict,
    )

    meta, shape, state = {}, {}, None
    if weights is not None:
        meta, state = read_metadata(weights), read_state_dict(weights, modality)
        check_metadata(meta, state, str(weights))  # a mislabelled file: one sentence, not a list of keys
        shape = encoder_shape(state)  # what the weights show, when the file says nothing
    found = {**shape, **meta}
    if found.get("modality", modality) != modality:  # the other encoder's file: one sentence too
        raise WeightsError(f"{weights} holds {describe_encoder(found)}: use xdc_{found['modality']}")
    width = width or meta.get("width") or shape.get("width") or 64
    arch = arch or meta.get("arch") or shape.get("arch") or "r2plus1d_18"
    # what the first conv is fed: the file says so (exported), or a Sobel stem shows it
    video_input = meta.get("video_input") or shape.get("video_input") or "rgb"
    model = video_encoder(arch, width, video_input) if modality == "video" else audio_encoder(width)
    if state is not None:
        load_strict(model, state, source=str(weights))
    model.xdc_input = {k: v for k, v in meta.items() if k not in ("modality", "arch", "width", "feature_dim", "video_input")}
    return model


def xdc_video(weights=None, arch=None, width=None):
    """R(2+1)D-18 or R3D-18 video encoder; random weights when `weights` is None."""
    return _load("video", weights, arch, width)


def xdc_audio(weights=None, width=None):
    """ResNet-18 audio encoder on 1×n_mels×frames log-mels; random weights when `weights` is None."""
    return _load("audio", weights, None, width)
