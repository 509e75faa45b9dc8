"""Encoder weights files: strict loading of torchvision-keyed state dicts, and the files we accept.

Files we accept (`read_state_dict`): our pretrain checkpoints (`video_encoder` / `audio_encoder`
entries), files `xdc export` wrote (`{"state_dict": ..., "xdc": {architecture, width, input
settings}}`), torchvision's own files, and the official XDC release files (torchvision
VideoResNet keys, e.g. `r2plus1d_18_xdc_ig65m_kinetics-f24f6ffb.pth`).
The official hub code loads those with `strict=False`, which silently keeps random weights for
any key that does not match; `load_strict` only lets the classifier `fc.*` differ. Here, beside
the models, because hubconf.py and the reports read weights too, not only evaluation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xdc.checkpoint import load_error_reason
from xdc.errors import XdcError

# Only the classification layer may differ between a checkpoint and the encoder it goes into.
ALLOWED_PREFIXES = ("fc.",)
# BatchNorm's step counter: absent from old (caffe2-converted) files, and unused by our BN layers
# (momentum is set), so torch fills it in.
IGNORED_MISSING_SUFFIXES = ("num_batches_tracked",)
MAX_LISTED = 20

SUPERV_ARCHS = ("r2plus1d_18", "r3d_18")


class WeightsError(XdcError, RuntimeError):
    """A weights file is absent, unreadable, or does not match the model."""


def _load(path: str | Path) -> object:
    """What a weights file holds, loaded safely (weights_only); WeightsError when absent or refused."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"cannot read weights from {path}: {load_error_reason(err)}") from err


def read_state_dict(path: str | Path, modality: str = "video") -> dict[str, torch.Tensor]:
    """The encoder state dict in `path` (see the module docstring for accepted files)."""
    blob = _load(path)
    if isinstance(blob, dict) and f"{modality}_encoder" in blob:  # our pretrain checkpoint
        blob = blob[f"{modality}_encoder"]
    for wrapper in ("state_dict", "model"):
        if isinstance(blob, dict) and isinstance(blob.get(wrapper), dict):
            blob = blob[wrapper]
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise WeightsError(f"{path} holds no state dict of tensors (a {modality} encoder was asked for)")
    # DistributedDataParallel saves keys as "module.x"; the keys underneath are the model's.
    if blob and all(key.startswith("module.") for key in blob):
        blob = {key[len("module."):]: value for key, value in blob.items()}
    return dict(blob)


def read_metadata(path: str | Path) -> dict:
    """The `xdc` entry of an exported file (architecture, width, input settings); {} for other files."""
    blob = _load(path)
    entry = blob.get("xdc") if isinstance(blob, dict) else None
    return dict(entry) if isinstance(entry, dict) else {}


def encoder_shape(state_dict: dict[str, torch.Tensor]) -> dict:
    """What encoder a state dict holds, from its weights alone: `modality` and `arch` (video: 5-d
    stem conv, R(2+1)D's 1×7×7, R3D's 3×7×7; audio: ResNet-18's 4-d conv1) and `width` (its
    features are 8·width wide: the last BatchNorm of layer4); {} when the keys are not an encoder's."""
    norms = [v for k, v in state_dict.items() if k.startswith("layer4.") and k.endswith(".weight") and v.ndim == 1]
    shape = {"width": int(norms[-1].shape[0]) // 8} if norms else {}
    stem, conv1 = state_dict.get("stem.0.weight"), state_dict.get("conv1.weight")
    if stem is not None and stem.ndim == 5:
        shape.update(modality="video", arch="r2plus1d_18" if stem.shape[2] == 1 else "r3d_18")
        if stem.shape[1] == 2:  # a stem for Sobel gradients (models.video, video_input=sobel)
            shape["video_input"] = "sobel"
    elif conv1 is not None and conv1.ndim == 4:
        shape.update(modality="audio", arch="resnet18")
    return shape


def describe_encoder(shape: dict) -> str:
    """'a video encoder (r3d_18, width 16)', from `encoder_shape` or an exported file's `xdc` entry."""
    modality = shape.get("modality", "unknown")
    details = ", ".join(str(v) for v in (shape.get("arch"), shape.get("width") and f"width {shape['width']}") if v)
    return f"{'an' if modality[0] in 'aeiou' else 'a'} {modality} encoder" + (f" ({details})" if details else "")


def check_metadata(meta: dict, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """What a file says it holds (`meta`: its `xdc` entry, or a checkpoint's config) must be what its
    weights are (`encoder_shape`): WeightsError naming both otherwise."""
    shape = encoder_shape(state_dict)
    if any(meta.get(key) not in (None, shape.get(key)) for key in ("modality", "arch", "width")):
        raise WeightsError(f"{source} says it holds {describe_encoder(meta)} but its weights are "
                           f"{describe_encoder(shape)}'s: the file is mislabelled; export the encoder again "
                           f"from its pretrain checkpoint (xdc export --checkpoint CHECKPOINT --modality MODALITY)")


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else "")


def check_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor],
                     allowed_prefixes: tuple[str, ...] = ALLOWED_PREFIXES) -> dict[str, list[str]]:
    """Missing, unexpected and shape-mismatched keys, leaving out those allowed to differ."""
    expected = model.state_dict()
    allowed = lambda key: key.startswith(allowed_prefixes)  # noqa: E731
    missing = [k for k in expected if k not in state_dict and not allowed(k)
               and not k.endswith(IGNORED_MISSING_SUFFIXES)]
    unexpected = [k for k in state_dict if k not in expected and not allowed(k)]
    shapes = [f"{k} (file {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
              for k in expected if k in state_dict and not allowed(k)
              and state_dict[k].shape != expected[k].shape]
    return {"missing": missing, "unexpected": unexpected, "shape": shapes}


def load_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "weights",
                allowed_prefixes: tuple[str, ...] = ALLOWED_PREFIXES) -> nn.Module:
    """Load `state_dict` into `model`; any mismatch outside `fc.*` raises, naming the keys."""
    problems = check_state_dict(model, state_dict, allowed_prefixes)
    theirs, ours = encoder_shape(state_dict), encoder_shape(model.state_dict())
    if problems["shape"] and theirs.get("width") not in (None, ours.get("width")):
        # One sentence instead of a list of every layer's shape.
        raise WeightsError(
            f"{source} holds a width-{theirs['width']} encoder, the model is width {ours.get('width')}: "
            f"build it with width={theirs['width']} (xdc.models.video_encoder(arch, {theirs['width']}), "
            f"torch.hub.load(..., width={theirs['width']})); only width 64 is torchvision's network")
    if any(problems.values()):
        lines = [f"{source} does not match the model ({type(model).__name__}):"]
        for kind, what in (("missing", "keys missing from the file"),
                           ("unexpected", "keys in the file the model lacks"),
                           ("shape", "shape mismatches")):
            if problems[kind]:
                lines.append(f"  {len(problems[kind])} {what}: {_listed(problems[kind])}")
        raise WeightsError("\n".join(lines))
    expected = model.state_dict()
    usable = {k: v for k, v in state_dict.items()
              if k in expected and v.shape == expected[k].shape}
    model.load_state_dict(usable, strict=False)  # what strict=False would hide was checked above
    return model


def _kinetics_url(arch: str) -> str:
    from torchvision.models.video import R2Plus1D_18_Weights, R3D_18_Weights

    if arch not in SUPERV_ARCHS:
        raise WeightsError(f"no supervised Kinetics weights for {arch!r}: expected {' | '.join(SUPERV_ARCHS)}")
    return {"r2plus1d_18": R2Plus1D_18_Weights, "r3d_18": R3D_18_Weights}[arch].KINETICS400_V1.url


def superv_weights_path(arch: str) -> Path:
    """Where torch's hub cache keeps torchvision's Kinetics-400 weights for `arch`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _kinetics_url(arch).rsplit("/", 1)[-1]


def superv_state_dict(arch: str, path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """torchvision's KINETICS400_V1 weights for `arch`, from `path` or the hub cache; never downloaded."""
    location = Path(path) if path is not None else superv_weights_path(arch)
    if not location.is_file():
        raise WeightsError(
            f"supervised Kinetics-400 weights for {arch} not found at {location}.\n"
            f"Nothing is downloaded at run time: fetch {_kinetics_url(arch)} on a machine with network "
            f"access and put it at {superv_weights_path(arch)} (torch's hub cache), or pass its path "
            f"with --weights.")
    return read_state_dict(location)

