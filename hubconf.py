"""torch.hub entry points for xdc's encoders, from local weights only (nothing is downloaded).

    video = torch.hub.load("/path/to/xdc", "xdc_video", source="local", weights="r2plus1d.pth")
    audio = torch.hub.load("/path/to/xdc", "xdc_audio", source="local", weights="audio.pth")

`weights` may be a pretrain checkpoint, a file written by `xdc export`, a torchvision state dict
or an official XDC release file; it is loaded strictly (only `fc.*` may differ). The encoders
return pooled features (`fc` is Identity; `model.feature_dim` gives their size).
"""

import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "av", "numpy"]

_SRC = Path(__file__).resolve().parent / "src"
if _SRC.is_dir() and str(_SRC) not in sys.path:  # a source checkout that is not pip-installed
    sys.path.insert(0, str(_SRC))


def xdc_video(weights=None, arch="r2plus1d_18", width=64):
    """R(2+1)D-18 or R3D-18 video encoder; random weights when `weights` is None."""
    from xdc.evaluation.weights import load_strict, read_state_dict
    from xdc.models import video_encoder

    model = video_encoder(arch, width)
    if weights is not None:
        load_strict(model, read_state_dict(weights, "video"), source=str(weights))
    return model


def xdc_audio(weights=None, width=64):
    """ResNet-18 audio encoder on 1×n_mels×frames log-mels; random weights when `weights` is None."""
    from xdc.evaluation.weights import load_strict, read_state_dict
    from xdc.models import audio_encoder

    model = audio_encoder(width)
    if weights is not None:
        load_strict(model, read_state_dict(weights, "audio"), source=str(weights))
    return model
