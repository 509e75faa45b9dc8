"""The encoder to evaluate (`load_encoder`: a pretrain checkpoint, a weights file, torchvision's
supervised weights, or random init), and `xdc export`. Reading and strict loading of weights
files: xdc.models.weights.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from xdc.checkpoint import load_checkpoint, save_checkpoint
from xdc.config import DataConfig, ModelConfig, PretrainConfig, validate
from xdc.models import MODALITIES, audio_encoder, video_encoder
from xdc.models.weights import (
    ALLOWED_PREFIXES,
    WeightsError,
    check_metadata,
    describe_encoder,
    encoder_shape,
    load_strict,
    read_metadata,
    read_state_dict,
    superv_state_dict,
)

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
        return video_encoder(model.video_arch, model.width, model.video_input)
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
            model = replace(model, video_arch=pretrain.model.video_arch, width=pretrain.model.width,
                            video_input=pretrain.model.video_input)
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
    """The `xdc` entry of an exported file: modality, arch, width and feature_dim of the weights
    (`encoder_shape`), and the input settings of EXPORTED_INPUT, from the checkpoint's config or,
    for a file `xdc export` wrote, its own entry; plain numbers and strings, so the file still loads
    with weights_only. What the checkpoint says it holds is checked against the weights
    (`check_metadata`)."""
    recorded = read_metadata(checkpoint)  # an export of an export keeps its input settings
    pretrain = checkpoint_config(checkpoint)
    if pretrain is not None:
        recorded.update(arch=pretrain.model.video_arch if modality == "video" else "resnet18",
                        width=pretrain.model.width, method=pretrain.method)
        if modality == "video":  # what its first conv is fed (models.video.VIDEO_INPUTS)
            recorded["video_input"] = pretrain.model.video_input
        recorded.update({key: list(value) if isinstance(value, tuple) else value
                         for key in EXPORTED_INPUT for value in [getattr(pretrain.data, key)]})
    check_metadata(recorded, state_dict, str(checkpoint))
    shape = encoder_shape(state_dict)
    return {**recorded, "modality": modality, "arch": shape["arch"], "width": shape.get("width"),
            "feature_dim": 8 * shape["width"] if shape.get("width") else None}


def export_encoder(checkpoint: str | Path, out: str | Path, modality: str = "video") -> Path:
    """Write the `modality` encoder of a pretrain checkpoint (or of a file `xdc export` wrote) as
    `{"state_dict": ..., "xdc": meta}` (`export_metadata`: architecture, width, input settings;
    `torch.hub.load(..., weights=out)` builds the encoder from it). WeightsError when the weights
    are not a `modality` encoder's. A full disk: DiskFullError naming `out`.

    A width-64 encoder loads into torchvision's builder once its classifier is replaced, e.g.
    `m = torchvision.models.video.r2plus1d_18(); m.fc = nn.Identity();
    m.load_state_dict(torch.load(out)["state_dict"])` (the audio encoder's conv1 takes 1 channel).
    """
    state = read_state_dict(checkpoint, modality)
    state = {k: v for k, v in state.items() if not k.startswith(ALLOWED_PREFIXES)}
    found = encoder_shape(state)
    if found.get("modality") != modality:
        advice = f"export it with --modality {found['modality']}" if found.get("modality") else \
            "give a pretrain checkpoint (checkpoints/*.pt) or a file xdc export wrote"
        raise WeightsError(f"{checkpoint} holds {describe_encoder(found)}, not the {modality} encoder asked for: "
                           f"{advice}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"state_dict": state, "xdc": export_metadata(checkpoint, modality, state)}, out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CHECKPOINT",
                        help="a `xdc pretrain` checkpoint (checkpoints/*.pt), or a file xdc export wrote")
    parser.add_argument("-o", "--out", required=True, metavar="OUT",
                        help="output .pth file ({state_dict, xdc: architecture, width, input settings})")
    parser.add_argument("--modality", choices=MODALITIES, default="video", metavar="MODALITY",
                        help="video or audio: which encoder to export")


def run(args: argparse.Namespace) -> int:
    out = export_encoder(args.checkpoint, args.out, args.modality)
    print(f"wrote the {args.modality} encoder of {args.checkpoint} to {out}")
    return 0
