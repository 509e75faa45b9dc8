"""The labelled videos an evaluation runs on: the usable rows of each subset (train, val, test),
their class indices, a held-out validation set where none is given, and the warnings that say
when the scores cannot be trusted."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from xdc.config import FinetuneConfig
from xdc.data.datasets import AudioClips, AudioVideoClips
from xdc.data.manifest import class_indices, describe_dropped, usable_rows
from xdc.errors import XdcError
from xdc.evaluation.splits import stratified_split

SWEPT_MODES = ("full", "fc", "linear")  # the modes that train one model per lr, chosen on val videos
# Fewer validation videos than this per class cannot tell the lrs apart (one video flips top-1).
MIN_VAL_PER_CLASS = 2


class FinetuneError(XdcError, ValueError):
    """The inputs cannot make a fine-tuning run (labels, manifests, training data)."""


def swept_lrs(cfg: FinetuneConfig) -> list[float]:
    """The lrs a swept mode tries: `lrs` when the encoder trains (full), `fc_lrs` otherwise."""
    return list(cfg.lrs if cfg.mode == "full" else cfg.fc_lrs)


def is_audio_only(row: dict) -> bool:
    """A probed sound file (`splits.probe_audio_file`): audio, and no video properties."""
    return bool(row.get("has_audio")) and row.get("video_codec") is None and row.get("num_frames") is None


def make_dataset(rows: list[dict], cfg: FinetuneConfig, modality: str, mode: str):
    if modality == "audio" and all(is_audio_only(row) for row in rows):
        return AudioClips(rows, cfg.data, mode)
    audio = modality == "audio"
    return AudioVideoClips(rows, cfg.data, mode, require_audio=audio, with_audio=audio)


def usable(rows: list[dict], modality: str) -> tuple[list[dict], dict[str, int]]:
    """Rows the modality can use, and how many were dropped for each reason."""
    kept, dropped = usable_rows(rows, require_audio=modality == "audio")
    if modality == "video" and any(is_audio_only(row) for row in kept):
        dropped["audio-only file"] = sum(is_audio_only(row) for row in kept)
        kept = [row for row in kept if not is_audio_only(row)]
    return kept, dropped


def hold_out(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val), each in the rows' order: `fraction` of every class's videos held out (at
    least one where a class has two or more), drawn with `seed` (`stratified_split`)."""
    parts = stratified_split([row["label"] for row in rows], {"val": fraction}, seed)
    if not parts["val"]:
        raise FinetuneError("too few training videos to hold out a validation set: pass --val")
    return [rows[i] for i in sorted(parts["train"])], [rows[i] for i in sorted(parts["val"])]


@dataclass
class Labelled:
    """The usable rows of each subset ("train", "val" where there is one, "test"), each row's
    class index (a tensor per subset), and the class names (the training set's, sorted)."""

    rows: dict[str, list[dict]]
    labels: dict[str, torch.Tensor]
    classes: list[str]


def labelled_subsets(train_rows, val_rows, test_rows, modality: str, cfg: FinetuneConfig):
    """(Labelled, rows dropped per subset and reason, where val came from); checks that every row
    has a label and that val/test classes were seen in training. Modes that choose an lr and
    have no val rows hold out part of the training videos."""
    subsets, dropped = {}, {}
    for name, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
        if rows is None:
            continue
        subsets[name], dropped[name] = usable(rows, modality)
        if not subsets[name]:
            raise FinetuneError(f"no usable {name} video for {modality} ({describe_dropped(dropped[name])})")
        unlabelled = sum(row.get("label") in (None, "") for row in subsets[name])
        if unlabelled:
            raise FinetuneError(f"{unlabelled} {name} rows have no label: every row needs one")
    val_source = "val manifest" if "val" in subsets else "none (no lr to choose)"
    if "val" not in subsets and cfg.mode in SWEPT_MODES:
        subsets["train"], subsets["val"] = hold_out(subsets["train"], cfg.optim.val_fraction, cfg.seed)
        val_source = f"held out {cfg.optim.val_fraction:g} of each class's train videos (seed {cfg.seed})"
    classes, _ = class_indices(row["label"] for row in subsets["train"])
    seen = set(classes)
    for name in ("val", "test"):
        unknown = sorted({row["label"] for row in subsets.get(name, ())} - seen)
        if unknown:
            raise FinetuneError(f"{name} labels not among the training classes: {', '.join(unknown[:10])}")
    labels = {name: torch.as_tensor(class_indices((row["label"] for row in rows), classes)[1])
              for name, rows in subsets.items()}
    return Labelled(subsets, labels, classes), dropped, val_source


def input_warnings(data: Labelled, cfg: FinetuneConfig) -> list[str]:
    """What makes the scores untrustworthy, said before any work (results.json keeps them): test
    videos that are also training videos, one class in training or in the test set, and an lr
    chosen on fewer than MIN_VAL_PER_CLASS validation videos of some class."""
    warnings = []
    train = {str(Path(row["path"]).resolve()) for row in data.rows["train"] + data.rows.get("val", [])}
    shared = sum(str(Path(row["path"]).resolve()) in train for row in data.rows["test"])
    if shared:
        warnings.append(f"{shared} of the {len(data.rows['test'])} test videos are also train/val videos: "
                        f"the test scores will be optimistic (use disjoint --train and --test manifests)")
    if len(data.classes) == 1:
        warnings.append(f"the training videos are all of one class ({data.classes[0]}): every score is 1.000 "
                        f"whatever the encoder (label videos of at least two classes)")
    test_classes = {row["label"] for row in data.rows["test"]}
    if len(test_classes) == 1 and len(data.classes) > 1:
        warnings.append(f"the test videos are all of one class ({test_classes.pop()}): a score says how often that "
                        f"class is predicted, not how well classes are told apart (compare it with majority 1.000)")
    lrs, val = swept_lrs(cfg), data.rows.get("val", [])
    per_class = Counter(row["label"] for row in val)
    few = [name for name in data.classes if per_class[name] < MIN_VAL_PER_CLASS]
    if cfg.mode in SWEPT_MODES and len(lrs) > 1 and few:
        warnings.append(f"the lr is chosen on {len(val)} validation video(s) for {len(data.classes)} classes, fewer "
                        f"than {MIN_VAL_PER_CLASS} for {len(few)} of them (e.g. {few[0]}): too few to tell {len(lrs)} "
                        f"lrs apart (pass --val with at least {MIN_VAL_PER_CLASS} videos per class, or a single lr: "
                        f"fc_lrs=[0.1])")
    return warnings
