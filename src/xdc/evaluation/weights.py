"""Weights in and out: strict loading of torchvision-keyed state dicts, the encoder to evaluate
(`load_encoder`: a pretrain checkpoint, a weights file, torchvision's supervised weights, or
random init), and `xdc export`.

Files we accept (`read_state_dict`): our pretrain checkpoints (`video_encoder` / `audio_encoder`
entries), files we exported (`{"state_dict": ..., "xdc": {architecture, width, input settings}}`,
see `export_encoder`), torchvision's own files, and the official XDC release files (torchvision
VideoResNet keys, e.g. `r2plus1d_18_xdc_ig65m_kinetics-f24f6ffb.pth`).
The official hub code loads those with `strict=False`, which silently keeps random weights for
any key that does not match; `load_strict` only lets the classifier `fc.*` differ.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from xdc.config import DataConfig, ModelConfig, PretrainConfig, validate
from xdc.models import MODALITIES, audio_encoder, video_encoder
from xdc.training.checkpoint import load_checkpoint, load_error_reason, save_checkpoint
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
        raise WeightsError(f"cannot read weights from {path}: {load_error_reason(err)}") from err
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
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(f"cannot read weights from {path}: {err}") from err
    return dict(blob.get("xdc", {})) if isinstance(blob, dict) else {}


def encoder_shape(state_dict: dict[str, torch.Tensor]) -> dict:
    """`{"width"}` of the encoder a state dict holds (its features are 8·width wide: the last
    BatchNorm of layer4), and for a video encoder its `arch` (R(2+1)D's stem starts with a 1×7×7
    conv); {} when the keys are not an encoder's."""
    norms = [v for k, v in state_dict.items() if k.startswith("layer4.") and k.endswith(".weight") and v.ndim == 1]
    shape = {"width": int(norms[-1].shape[0]) // 8} if norms else {}
    stem = state_dict.get("stem.0.weight")
    if stem is not None and stem.ndim == 5:
        shape["arch"] = "r2plus1d_18" if stem.shape[2] == 1 else "r3d_18"
    return shape


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


# Input settings an encoder is tied to: fine-tuning with other values feeds it inputs unlike those
# it learned from (a warning, not an error: it can be what one wants to study).
INPUT_SETTINGS = ("n_mels", "audio_norm", "sample_rate", "win_ms", "hop_ms", "video_mean", "video_std", "video_norm")


@dataclass(frozen=True)
class LoadedEncoder:
    """What `load_encoder` read: the encoder, where its weights came from (results.json's
    `checkpoint`), the model settings it was built with, and a checkpoint's pretraining config."""

    encoder: nn.Module
    source: str
    model: ModelConfig
    pretrain: PretrainConfig | None = None


def build_encoder(modality: str, model: ModelConfig) -> nn.Module:
    """A randomly initialised encoder of `model`'s architecture and width."""
    if modality == "video":
        return video_encoder(model.video_arch, model.width)
    return audio_encoder(model.width)


def checkpoint_config(path: str | Path) -> PretrainConfig | None:
    """The validated config a pretrain checkpoint was trained with (None for files without one)."""
    state = load_checkpoint(path)
    if "config" not in state:
        return None
    try:  # the same merge onto the defaults and the same checks as `xdc.config.load_config`
        merged = OmegaConf.merge(OmegaConf.structured(PretrainConfig), OmegaConf.create(state["config"]))
        cfg = OmegaConf.to_object(merged)
        validate(cfg)
    except Exception as err:
        raise WeightsError(f"{path}: the pretraining config it holds is not valid: {err}") from err
    return cfg


def load_encoder(modality: str, model: ModelConfig, checkpoint: str | Path | None = None,
                 weights: str | Path | None = None, superv: bool = False,
                 data: DataConfig | None = None) -> LoadedEncoder:
    """The encoder to evaluate: a pretrain checkpoint's (built with the checkpoint's own model
    settings), a weights file's or torchvision's supervised Kinetics weights (built with `model`),
    or random init ("scratch": seed torch first for a repeatable one). With a checkpoint and
    `data`, each input setting that differs from the pretraining's is printed as a warning.
    Nothing passed in is changed: the model settings used come back in `LoadedEncoder.model`."""
    if checkpoint is not None:
        pretrain = checkpoint_config(checkpoint)
        if pretrain is not None:  # rebuild the encoder the checkpoint was trained with
            model = replace(model, video_arch=pretrain.model.video_arch, width=pretrain.model.width)
            if data is not None:
                for key in INPUT_SETTINGS:
                    ours, theirs = getattr(data, key), getattr(pretrain.data, key)
                    if ours != theirs:
                        print(f"warning: data.{key}={ours} differs from the pretraining's {theirs}")
        encoder = build_encoder(modality, model)
        load_strict(encoder, read_state_dict(checkpoint, modality), source=str(checkpoint))
        return LoadedEncoder(encoder, str(checkpoint), model, pretrain)
    encoder = build_encoder(modality, model)
    if weights is not None:
        load_strict(encoder, read_state_dict(weights, modality), source=str(weights))
        return LoadedEncoder(encoder, str(weights), model)
    if superv:
        if modality != "video":
            raise WeightsError("--superv gives torchvision's Kinetics video weights: use --modality video")
        if model.width != 64:
            raise WeightsError(f"--superv loads torchvision's full-width network: set model.width=64 "
                               f"(the config has {model.width})")
        load_strict(encoder, superv_state_dict(model.video_arch), source=f"superv {model.video_arch}")
        return LoadedEncoder(encoder, f"superv:{model.video_arch}/KINETICS400_V1", model)
    return LoadedEncoder(encoder, "scratch", model)


# The input settings an exported encoder carries: what a clip must look like for it.
EXPORTED_INPUT = ("frames", "fps", "short_side", "crop", "video_mean", "video_std", "sample_rate",
                  "audio_seconds", "n_mels", "win_ms", "hop_ms", "audio_norm", "video_norm")


def export_metadata(checkpoint: str | Path, modality: str, state_dict: dict[str, torch.Tensor]) -> dict:
    """The `xdc` entry of an exported file: modality, arch, width, feature_dim and (when the
    checkpoint holds its config) the input settings of EXPORTED_INPUT; plain numbers and strings,
    so the file still loads with weights_only."""
    shape = encoder_shape(state_dict)
    meta = {"modality": modality, "arch": shape.get("arch", "resnet18") if modality == "video" else "resnet18",
            "width": shape.get("width")}
    pretrain = checkpoint_config(checkpoint)
    if pretrain is not None:
        meta.update(arch=pretrain.model.video_arch if modality == "video" else "resnet18",
                    width=pretrain.model.width, method=pretrain.method)
        meta.update({key: list(value) if isinstance(value, tuple) else value
                     for key in EXPORTED_INPUT for value in [getattr(pretrain.data, key)]})
    meta["feature_dim"] = 8 * meta["width"] if meta["width"] else None
    return meta


def export_encoder(checkpoint: str | Path, out: str | Path, modality: str = "video") -> Path:
    """Write the `modality` encoder of a pretrain checkpoint as `{"state_dict": ..., "xdc": meta}`
    (`export_metadata`: architecture, width, input settings; `torch.hub.load(..., weights=out)`
    builds the encoder from it).

    A width-64 encoder loads into torchvision's builder once its classifier is replaced, e.g.
    `m = torchvision.models.video.r2plus1d_18(); m.fc = nn.Identity();
    m.load_state_dict(torch.load(out)["state_dict"])` (the audio encoder's conv1 takes 1 channel).
    """
    state = read_state_dict(checkpoint, modality)
    state = {k: v for k, v in state.items() if not k.startswith(ALLOWED_PREFIXES)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"state_dict": state, "xdc": export_metadata(checkpoint, modality, state)}, out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?", help="a pretrain checkpoint (checkpoints/*.pt)")
    parser.add_argument("--checkpoint", dest="checkpoint_option", metavar="CHECKPOINT",
                        help="the same, spelled as in `xdc finetune`")
    parser.add_argument("-o", "--out", required=True,
                        help="output .pth file ({state_dict, xdc: architecture, width, input settings})")
    parser.add_argument("--modality", choices=MODALITIES, default="video", help="which encoder to export")


def run(args: argparse.Namespace) -> int:
    if (args.checkpoint is None) == (args.checkpoint_option is None):
        raise WeightsError("give the checkpoint once: `xdc export CKPT` or `xdc export --checkpoint CKPT`")
    args.checkpoint = args.checkpoint or args.checkpoint_option
    out = export_encoder(args.checkpoint, args.out, args.modality)
    print(f"wrote the {args.modality} encoder of {args.checkpoint} to {out}")
    return 0
