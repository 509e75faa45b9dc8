"""Weights in and out: strict loading of torchvision-keyed state dicts, and `xdc export`.

Files we accept (`read_state_dict`): our pretrain checkpoints (`video_encoder` / `audio_encoder`
entries), state dicts we exported, torchvision's own files, and the official XDC release files
(torchvision VideoResNet keys, e.g. `r2plus1d_18_xdc_ig65m_kinetics-f24f6ffb.pth`).
The official hub code loads those with `strict=False`, which silently keeps random weights for
any key that does not match; `load_strict` only lets the classifier `fc.*` differ.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

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


def read_state_dict(path: str | Path, modality: str = "video") -> dict[str, torch.Tensor]:
    """The encoder state dict in `path` (see the module docstring for accepted files)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"cannot read weights from {path}: {err}") from err
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


def export_encoder(checkpoint: str | Path, out: str | Path, modality: str = "video") -> Path:
    """Write the `modality` encoder of a pretrain checkpoint as a plain state dict.

    The file loads into torchvision's builder once its classifier is replaced, e.g.
    `m = torchvision.models.video.r2plus1d_18(); m.fc = nn.Identity(); m.load_state_dict(sd)`
    (for width-64 encoders; the audio encoder's conv1 takes 1 channel).
    """
    from xdc.training.checkpoint import save_checkpoint

    state = read_state_dict(checkpoint, modality)
    state = {k: v for k, v in state.items() if not k.startswith(ALLOWED_PREFIXES)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a pretrain checkpoint (checkpoints/*.pt)")
    parser.add_argument("-o", "--out", required=True, help="output .pth file (a plain state dict)")
    parser.add_argument("--modality", choices=("video", "audio"), default="video")


def run(args: argparse.Namespace) -> int:
    out = export_encoder(args.checkpoint, args.out, args.modality)
    print(f"wrote the {args.modality} encoder of {args.checkpoint} to {out}")
    return 0
