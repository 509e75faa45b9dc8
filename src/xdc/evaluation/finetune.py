"""`xdc finetune`: a new classifier on a (pretrained) encoder, with base-lr cross-validation, or
kNN and retrieval on its frozen features.

Modes (seed section C, Tables 3-4; kNN and retrieval beside them, as DINO and the AV papers):
- `full`: encoder and classifier train (lr set `cfg.lrs`);
- `fc`: the encoder is frozen (eval-mode BatchNorm), only the new classifier trains on
  augmented clips (lr set `cfg.fc_lrs`);
- `linear`: like `fc`, but the frozen encoder's features of N clips per video are computed once
  and cached (`features.pt`), standardised with the training set's mean and std, and the
  classifier trains on them for every lr in seconds (no augmentation: centre crops);
- `knn`: no training: each test video's class is voted by its `knn_k` nearest training videos
  (cosine of the cached features, votes exp(cosine / knn_temperature)); `xdc.evaluation.knn`;
- `retrieval`: no training: recall@1/5/10 of the test videos against the training videos.

`full` and `fc` (`finetune_clips`) and `linear` (`finetune_linear`) share one lr sweep
(`lr_sweep`): each lr trains with the same schedule (epochs of `epoch_size` clips, warmup then
step decay by γ, SGD with momentum and weight decay) and is scored on the validation videos by
video-level top-1; the best lr's model is then scored once on the test videos. Without a
validation manifest, `optim.val_fraction` of the training videos of every class is held out
(seeded) for choosing the lr, and the final model is the one trained without them. kNN and
retrieval have no lr to choose: all training videos are their reference set, and a validation
manifest, when given, is scored too (`val`).

Output folder: `results.json` (docs/DESIGN.md lists its keys), `lr_<lr>/` (`model.pt`: the
trained classifier, and the encoder in full mode; `val.json`; `last.pt` while training, for
resuming), `features.pt` (linear, knn, retrieval), `tb/` (TensorBoard). Rerunning into the same
folder resumes: finished lrs are read back, an interrupted one goes on from its last epoch.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from xdc.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from xdc.config import (
    FINETUNE_MODES,
    FinetuneConfig,
    config_to_yaml,
    default_finetune_config,
    load_config,
)
from xdc.data.datasets import (
    AudioClips,
    AudioVideoClips,
    EpochSampler,
    clip_loader,
    resolve_num_workers,
)
from xdc.data.manifest import (
    class_indices,
    describe_dropped,
    read_manifest,
    usable_rows,
)
from xdc.distributed import init_distributed
from xdc.errors import XdcError
from xdc.evaluation.knn import (
    RECALL_AT,
    knn_accuracy,
    knn_votes,
    recall,
    video_features,
)
from xdc.evaluation.linear import accuracy, clip_features, train_linear
from xdc.evaluation.splits import split_manifests, stratified_split
from xdc.evaluation.weights import load_encoder
from xdc.models import MODALITIES, ClassificationHead, autocast, encode
from xdc.progress import progress
from xdc.training.monitor import (
    TRAIN_COST,
    print_plan,
    seconds_per_clip,
    seconds_to_decode,
)
from xdc.training.schedule import make_scheduler, sgd_step, steps_per_epoch

SELECTION_METRIC = "top1_video"
SWEPT_MODES = ("full", "fc", "linear")  # the modes that train, one model per lr
# results.json's test scores: top1_clip (full, fc, linear), top1_video and top5_video (and knn),
# recall@k (retrieval).
TEST_METRICS = ("top1_clip", "top1_video", "top5_video", *(f"recall@{k}" for k in RECALL_AT))


class FinetuneError(XdcError, ValueError):
    """The inputs cannot make a fine-tuning run (labels, manifests, output folder)."""


# ------------------------------------------------------------------------------------------ data

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


# ------------------------------------------------------------------------ guards and the plan

# Fewer validation videos than this per class cannot tell the lrs apart (one video flips top-1).
MIN_VAL_PER_CLASS = 2


def input_warnings(data: Labelled, cfg: FinetuneConfig) -> list[str]:
    """What makes the scores untrustworthy, said before any work: test videos that are also
    training videos, and an lr choice on too few validation videos. results.json keeps them."""
    warnings = []
    train = {str(Path(row["path"]).resolve()) for row in data.rows["train"] + data.rows.get("val", [])}
    shared = sum(str(Path(row["path"]).resolve()) in train for row in data.rows["test"])
    if shared:
        warnings.append(f"{shared} of the {len(data.rows['test'])} test videos are also train/val videos: "
                        f"the test scores will be optimistic (use disjoint --train and --test manifests)")
    lrs = cfg.fc_lrs if cfg.mode in ("fc", "linear") else cfg.lrs
    val = len(data.rows.get("val", []))
    if cfg.mode in SWEPT_MODES and len(lrs) > 1 and val < MIN_VAL_PER_CLASS * len(data.classes):
        warnings.append(f"the lr is chosen on {val} validation video(s) for {len(data.classes)} classes: too few "
                        f"to tell {len(lrs)} lrs apart (pass --val with at least {MIN_VAL_PER_CLASS} videos "
                        f"per class, or a single lr: fc_lrs=[0.1])")
    return warnings


def print_finetune_plan(cfg: FinetuneConfig, encoder: nn.Module, modality: str, data: Labelled,
                        device: torch.device) -> None:
    """Videos, clips, epochs, lrs and device, and an estimate from the encoder's measured speed and
    one video's measured reading time."""
    per_clip = seconds_per_clip(encoder, modality, cfg.data, device, cfg.amp)
    per_video = seconds_to_decode(make_dataset(data.rows["train"], cfg, modality, "eval"))  # its eval clips
    workers = max(1, resolve_num_workers(cfg.data.num_workers))
    o, clips = cfg.optim, cfg.data.eval_clips
    videos = {name: len(rows) for name, rows in data.rows.items()}
    facts = [f"{len(data.classes)} classes; train/val/test {videos['train']}/{videos.get('val', 0)}/{videos['test']} "
             f"videos, {clips} clips each when scored; {cfg.data.frames}-frame {cfg.data.crop}px clips"]
    if cfg.mode in ("full", "fc"):
        lrs = list(cfg.lrs if cfg.mode == "full" else cfg.fc_lrs)
        cost = TRAIN_COST if cfg.mode == "full" else 1.0
        facts.append(f"{cfg.mode}: per lr ({', '.join(f'{lr:g}' for lr in lrs)}) {o.total_epochs} epochs of "
                     f"{o.epoch_size} clips (batch {o.batch_size}), then validation")
        seconds = per_clip * (len(lrs) * (o.total_epochs * o.epoch_size * cost + videos.get("val", 0) * clips)
                              + videos["test"] * clips)
        decoding = per_video / workers * (len(lrs) * (o.total_epochs * o.epoch_size / clips + videos.get("val", 0))
                                          + videos["test"])
    else:  # features of every clip once; the linear heads train on them in seconds
        extra = (f": a linear head per lr ({', '.join(f'{lr:g}' for lr in cfg.fc_lrs)}), {o.total_epochs} epochs "
                 f"of {o.epoch_size} samples" if cfg.mode == "linear" else "")
        facts.append(f"{cfg.mode} on cached features of the frozen encoder{extra}")
        seconds = per_clip * sum(videos.values()) * clips
        decoding = per_video / workers * sum(videos.values())
    print_plan(f"finetune {cfg.mode} {modality} on {device}", facts, seconds, decoding)


# ---------------------------------------------------------------------------------- the model

class Classifier(nn.Module):
    """Encoder + a new linear layer. `frozen`: the encoder stays in eval mode without gradients."""

    def __init__(self, encoder: nn.Module, num_classes: int, frozen: bool):
        super().__init__()
        self.encoder, self.frozen = encoder, frozen
        self.fc = ClassificationHead(encoder.feature_dim, num_classes)
        if frozen:
            encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # BatchNorm statistics of the pretrained encoder stay as they are
        return self

    def forward(self, clips: torch.Tensor, modality: str, device: torch.device, amp: bool) -> torch.Tensor:
        """Logits B×N×C of a clip batch B×N×clip."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            features = encode(self.encoder, clips, modality, device, amp)
        with autocast(device, amp):
            return self.fc(features.flatten(0, 1)).view(*features.shape[:2], -1)

    def trained_state(self) -> dict:
        """What training changed: the classifier, and the encoder unless frozen."""
        return self.fc.state_dict() if self.frozen else self.state_dict()

    def load_trained_state(self, state: dict) -> None:
        (self.fc if self.frozen else self).load_state_dict(state)


# ------------------------------------------------------------------------------- training

def train_classifier(model: Classifier, dataset, labels: torch.Tensor, cfg: FinetuneConfig,
                     modality: str, lr: float, folder: Path, device: torch.device, writer=None) -> None:
    """SGD on the labelled clips with the fine-tuning schedule; `folder/last.pt` after every
    epoch, so an interrupted lr resumes from its last finished epoch."""
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    steps = steps_per_epoch(o)
    scheduler = make_scheduler(optimizer, o, steps)
    first_epoch = 0
    if (folder / "last.pt").is_file():
        state = load_checkpoint(folder / "last.pt")
        model.load_trained_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        first_epoch = int(state["epoch"])
    sampler = EpochSampler(len(dataset), o.epoch_size, seed=cfg.seed, rank=0, world_size=1)
    loader = clip_loader(dataset, o.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                         pin_memory=device.type == "cuda")
    labels = labels.to(device)
    for epoch in range(first_epoch, o.total_epochs):
        sampler.set_epoch(epoch)
        model.train()
        loss_sum, correct, seen, skipped = 0.0, 0, 0, 0
        bar = progress(loader, desc=f"lr {lr:g} epoch {epoch + 1}/{o.total_epochs}", leave=False,
                   dynamic_ncols=True)
        for batch in bar:
            skipped += len(batch.get("skipped", ()))
            if modality not in batch:
                continue
            clips = batch[modality]
            logits = model(clips, modality, device, cfg.amp).flatten(0, 1)
            # Every clip of an item is a sample labelled with its video's class.
            target = labels[torch.as_tensor(batch["index"], device=device)].repeat_interleave(clips.shape[1])
            loss = nn.functional.cross_entropy(logits.float(), target)
            sgd_step(loss, optimizer, scheduler)
            loss_sum += loss.item() * len(target)
            correct += int((logits.argmax(-1) == target).sum())
            seen += len(target)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if writer is not None:
                step = epoch * steps + bar.n
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
        if seen == 0:
            raise FinetuneError(f"epoch {epoch + 1}: no training clip could be decoded ({skipped} skipped)")
        if writer is not None:
            writer.add_scalar("train/epoch_loss", loss_sum / seen, epoch)
            writer.add_scalar("train/epoch_top1_clip", correct / seen, epoch)
            writer.add_scalar("train/skipped", skipped, epoch)
        save_checkpoint({"model": model.trained_state(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "rng": rng_state()},
                        folder / "last.pt")


def scores(encoder: nn.Module, fc: nn.Module, dataset, labels: torch.Tensor, cfg: FinetuneConfig,
           modality: str, device: torch.device, desc: str) -> tuple[dict, list]:
    """Clip- and video-level accuracy of encoder + fc on an eval-mode dataset, and the skips."""
    feats, index, skipped = clip_features(encoder, dataset, modality, device, cfg.amp,
                                          videos_per_batch(cfg), cfg.data.num_workers, desc)
    with torch.no_grad():
        logits = fc(feats.to(next(fc.parameters()).device)).float().cpu()
    return {**accuracy(logits, labels[index]), "videos": len(index)}, skipped


def videos_per_batch(cfg: FinetuneConfig) -> int:
    return max(1, cfg.optim.batch_size // cfg.data.eval_clips)


def _writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(path))


# -------------------------------------------------------------------------------- the sweep

def _lr_name(lr: float) -> str:
    return f"lr_{lr:g}"


def lr_sweep(lrs: list[float], out_dir: Path, fit: Callable[[float, Path], dict]) -> tuple[dict, float]:
    """(validation scores by lr, the best lr). `fit(lr, folder)` trains one lr, saves its
    `folder/model.pt` and returns its validation scores, which go to `folder/val.json`; a folder
    with both is finished and read back instead (resuming). The best lr has the highest val
    top1_video; of equals, the lowest."""
    print(f"  lr sweep: {', '.join(f'{lr:g}' for lr in lrs)}")
    val: dict[str, dict] = {}
    for lr in progress(lrs, desc="lr sweep", unit="lr"):
        folder, key = out_dir / _lr_name(lr), f"{lr:g}"
        folder.mkdir(exist_ok=True)
        done = folder / "val.json"
        if done.is_file() and (folder / "model.pt").is_file():
            val[key] = json.loads(done.read_text())
            continue
        val[key] = fit(lr, folder)
        done.write_text(json.dumps(val[key], indent=2))
        tqdm.write(f"  lr {key}: val top1_clip {val[key]['top1_clip']:.3f} top1_video {val[key]['top1_video']:.3f}")
    best_lr = max(lrs, key=lambda lr: val[f"{lr:g}"][SELECTION_METRIC])  # max keeps the first of equals
    writer = _writer(out_dir / "tb" / "summary")
    for lr, lr_scores in val.items():
        writer.add_scalar(f"val/{SELECTION_METRIC}_by_lr", lr_scores[SELECTION_METRIC],
                          int(round(float(lr) * 1e4)))
    writer.close()
    print(f"  best lr {best_lr:g} (val {SELECTION_METRIC} {val[f'{best_lr:g}'][SELECTION_METRIC]:.3f})")
    return val, best_lr


def _swept(lrs: list[float], val: dict, best_lr: float, test: dict) -> dict:
    """results.json's entries of a mode with an lr sweep."""
    return {"selection_metric": SELECTION_METRIC, "lrs": lrs, "val": val, "best_lr": best_lr,
            "top1_clip": test["top1_clip"], "top1_video": test["top1_video"],
            "top5_video": test["top5_video"], "test_videos": test["videos"]}


# ---------------------------------------------------------------- linear: on cached features

def finetune_linear(cfg: FinetuneConfig, encoder: nn.Module, modality: str, data: Labelled,
                    out_dir: Path, device: torch.device) -> dict:
    """Linear classifiers on the frozen encoder's cached, standardised clip features, one per lr
    of `cfg.fc_lrs`; the best on val is tested. Returns results.json's mode entries."""
    cached = cached_features(encoder, data.rows, cfg, modality, device, out_dir)
    # Features standardised with the training clips' mean and std (MAE's linear probe does the
    # same with an affine-free BatchNorm): encoders differ widely in feature scale, and one lr
    # set has to suit them all.
    mean = cached["train"].flatten(0, 1).mean(0)
    std = cached["train"].flatten(0, 1).std(0).clamp_min(1e-6)
    features = {name: (cached[name] - mean) / std for name in data.rows}
    # Every clip of every training video is one sample, labelled with its video's class.
    clips_per_video = features["train"].shape[1]
    train_features = features["train"].flatten(0, 1)
    train_labels = data.labels["train"][cached["train_index"]].repeat_interleave(clips_per_video)

    def fit(lr: float, folder: Path) -> dict:
        writer = _writer(out_dir / "tb" / folder.name)
        head = train_linear(train_features, train_labels, len(data.classes), lr, cfg.optim, device,
                            cfg.seed, writer, desc=f"linear lr {lr:g}")
        save_checkpoint({"fc": head.state_dict(), "feature_mean": mean, "feature_std": std},
                        folder / "model.pt")
        result = _linear_scores(head, features, cached, data, "val")
        writer.add_scalar(f"val/{SELECTION_METRIC}", result[SELECTION_METRIC], 0)
        writer.close()
        return result

    val, best_lr = lr_sweep(list(cfg.fc_lrs), out_dir, fit)
    head = ClassificationHead(train_features.shape[-1], len(data.classes))
    head.load_state_dict(load_checkpoint(out_dir / _lr_name(best_lr) / "model.pt")["fc"])
    test = _linear_scores(head, features, cached, data, "test")
    return {**_swept(list(cfg.fc_lrs), val, best_lr, test), "skipped": cached["skipped"]}


FEATURES_FILE = "features.pt"  # a run folder's frozen-encoder features (linear, knn, retrieval)


def cached_features(encoder: nn.Module, subsets: dict[str, list[dict]], cfg: FinetuneConfig, modality: str,
                    device: torch.device, out_dir: Path) -> dict:
    """Frozen-encoder features of every subset (`<name>`: V×N×D, `<name>_index`: the dataset
    index of each of the V videos decoded, `skipped`), computed once and kept in `features.pt`."""
    path = out_dir / FEATURES_FILE
    if path.is_file():
        state = load_checkpoint(path)
        state["skipped"] = json.loads(state["skipped"])
        return state
    state, skipped = {}, {}
    for name, rows in subsets.items():
        dataset = make_dataset(rows, cfg, modality, "eval")  # N clips per video, centre crop
        feats, index, skipped[name] = clip_features(encoder, dataset, modality, device, cfg.amp,
                                                    videos_per_batch(cfg), cfg.data.num_workers,
                                                    f"{name} features")
        state[name], state[f"{name}_index"] = feats, index
    save_checkpoint({**state, "skipped": json.dumps(skipped)}, path)
    state["skipped"] = skipped
    return state


def _linear_scores(head: nn.Module, features: dict, cached: dict, data: Labelled, name: str) -> dict:
    with torch.no_grad():
        logits = head.cpu()(features[name])
    index = cached[f"{name}_index"]
    return {**accuracy(logits, data.labels[name][index]), "videos": len(index)}


# ------------------------------------------------------------------- fc and full: on clips

def finetune_clips(cfg: FinetuneConfig, encoder: nn.Module, modality: str, data: Labelled,
                   out_dir: Path, device: torch.device) -> dict:
    """Encoder + new classifier trained on augmented clips, one model per lr (`fc`: encoder
    frozen, lrs `cfg.fc_lrs`; `full`: all of it, lrs `cfg.lrs`), each starting from the same
    encoder weights; the best on val is tested. Returns results.json's mode entries."""
    frozen = cfg.mode == "fc"
    lrs = list(cfg.fc_lrs if frozen else cfg.lrs)
    train_set = make_dataset(data.rows["train"], cfg, modality, "train")
    eval_sets = {name: make_dataset(data.rows[name], cfg, modality, "eval") for name in ("val", "test")}
    initial = copy.deepcopy(encoder.state_dict())
    skipped: dict[str, list] = {}

    def fit(lr: float, folder: Path) -> dict:
        encoder.load_state_dict(initial)
        torch.manual_seed(cfg.seed)
        model = Classifier(encoder, len(data.classes), frozen).to(device)
        writer = _writer(out_dir / "tb" / folder.name)
        train_classifier(model, train_set, data.labels["train"], cfg, modality, lr, folder, device, writer)
        save_checkpoint({"model": model.trained_state()}, folder / "model.pt")
        (folder / "last.pt").unlink(missing_ok=True)
        result, skipped["val"] = scores(model.encoder, model.fc, eval_sets["val"], data.labels["val"], cfg,
                                        modality, device, f"val lr {lr:g}")
        writer.add_scalar(f"val/{SELECTION_METRIC}", result[SELECTION_METRIC], 0)
        writer.close()
        return result

    val, best_lr = lr_sweep(lrs, out_dir, fit)
    encoder.load_state_dict(initial)
    model = Classifier(encoder, len(data.classes), frozen)
    model.load_trained_state(load_checkpoint(out_dir / _lr_name(best_lr) / "model.pt")["model"])
    model.to(device)
    test, skipped["test"] = scores(model.encoder, model.fc, eval_sets["test"], data.labels["test"], cfg,
                                   modality, device, "test")
    return {**_swept(lrs, val, best_lr, test), "skipped": skipped}


# ------------------------------------------------------------ knn and retrieval: no training

def _video_features(encoder: nn.Module, cfg: FinetuneConfig, modality: str, data: Labelled,
                    out_dir: Path, device: torch.device) -> tuple[dict, dict, dict]:
    """(unit video features per subset, their labels, the cached features' skips)."""
    cached = cached_features(encoder, data.rows, cfg, modality, device, out_dir)
    features = {name: video_features(cached[name]) for name in data.rows}
    labels = {name: data.labels[name][cached[f"{name}_index"]] for name in data.rows}
    return features, labels, cached["skipped"]


def finetune_knn(cfg: FinetuneConfig, encoder: nn.Module, modality: str, data: Labelled,
                 out_dir: Path, device: torch.device) -> dict:
    """Weighted kNN of the test (and val) videos against the training videos, video-level.
    Returns results.json's mode entries."""
    features, labels, skipped = _video_features(encoder, cfg, modality, data, out_dir, device)

    def score(name: str) -> dict:
        votes = knn_votes(features["train"], labels["train"], features[name], len(data.classes),
                          cfg.knn_k, cfg.knn_temperature)
        return {**knn_accuracy(votes, labels[name]), "videos": len(labels[name])}

    test = score("test")
    return {"knn_k": cfg.knn_k, "knn_temperature": cfg.knn_temperature,
            **({"val": score("val")} if "val" in features else {}),
            "top1_video": test["top1_video"], "top5_video": test["top5_video"], "test_videos": test["videos"],
            "skipped": skipped}


def finetune_retrieval(cfg: FinetuneConfig, encoder: nn.Module, modality: str, data: Labelled,
                       out_dir: Path, device: torch.device) -> dict:
    """recall@1/5/10 of the test (and val) videos against the training videos. Returns
    results.json's mode entries."""
    features, labels, skipped = _video_features(encoder, cfg, modality, data, out_dir, device)

    def score(name: str) -> dict:
        return {**recall(features["train"], labels["train"], features[name], labels[name]),
                "videos": len(labels[name])}

    test = score("test")
    return {**({"val": score("val")} if "val" in features else {}),
            **{f"recall@{k}": test[f"recall@{k}"] for k in RECALL_AT}, "test_videos": test["videos"],
            "skipped": skipped}


# ------------------------------------------------------------------------------- the run

PATHS = {"full": finetune_clips, "fc": finetune_clips, "linear": finetune_linear,
         "knn": finetune_knn, "retrieval": finetune_retrieval}


def _fingerprint(cfg: FinetuneConfig, modality: str, source: str, subsets: dict[str, list[dict]]) -> str:
    digest = hashlib.sha1()
    digest.update(f"{modality}\n{source}\n{config_to_yaml(cfg)}".encode())
    for name in sorted(subsets):
        digest.update(name.encode())
        for row in subsets[name]:
            digest.update(f"{row['path']}|{row['label']}\n".encode())
    return digest.hexdigest()


def _check_out_dir(out_dir: Path, fingerprint: str) -> None:
    """Resume only a run of the same inputs: another run's cached features or models would mix in."""
    marker = out_dir / "fingerprint.txt"
    if marker.is_file() and marker.read_text().strip() != fingerprint:
        raise FinetuneError(f"{out_dir} holds a fine-tuning run with other inputs or settings: "
                            f"use another --out (or delete it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint + "\n")


def finetune(cfg: FinetuneConfig, encoder: nn.Module, modality: str, train_rows: list[dict],
             val_rows: list[dict] | None, test_rows: list[dict], out_dir: str | Path,
             source: str = "") -> dict:
    """Evaluate `encoder` in `cfg.mode` (see the module docstring); writes and returns
    results.json's content. Rows are manifest rows with a `label`."""
    if modality not in MODALITIES:
        raise FinetuneError(f"modality must be video or audio, got {modality!r}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    device = init_distributed(cfg.device)
    data, dropped, val_source = labelled_subsets(train_rows, val_rows, test_rows, modality, cfg)
    _check_out_dir(out_dir, _fingerprint(cfg, modality, source, data.rows))
    print(f"finetune {cfg.mode} {modality} ({source or 'given encoder'}) on {device}: "
          f"{len(data.classes)} classes, train/val/test {len(data.rows['train'])}/"
          f"{len(data.rows.get('val', ()))}/{len(data.rows['test'])} videos")
    for name, counts in dropped.items():
        if counts:
            print(f"  {name}: {describe_dropped(counts)}")
    warnings = input_warnings(data, cfg)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)

    torch.manual_seed(cfg.seed)
    encoder = encoder.to(device)
    if modality == "video" and device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last_3d)
    print_finetune_plan(cfg, encoder, modality, data, device)
    results = {
        "mode": cfg.mode, "modality": modality, "checkpoint": source,
        "arch": cfg.model.video_arch if modality == "video" else "resnet18", "width": cfg.model.width,
        "classes": data.classes, "videos": {name: len(rows) for name, rows in data.rows.items()},
        "dropped": dropped, "val_source": val_source, "eval_clips": cfg.data.eval_clips, "warnings": warnings,
        **PATHS[cfg.mode](cfg, encoder, modality, data, out_dir, device),
        "device": str(device), "seconds": round(time.perf_counter() - started, 1),
    }
    results["skipped"] = {name: [reason for _, reason in items]
                          for name, items in results["skipped"].items() if items}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    test = {key: results[key] for key in TEST_METRICS if key in results}
    writer = _writer(out_dir / "tb" / "summary")
    for key, value in test.items():
        writer.add_scalar(f"test/{key}", value, 0)
    writer.close()
    print(f"finetune {cfg.mode} {modality} done in {results['seconds']:.0f} s: test "
          f"{' '.join(f'{key} {value:.3f}' for key, value in test.items())} on {results['test_videos']} "
          f"videos -> {out_dir / 'results.json'}")
    return results


# ----------------------------------------------------------------------------------- the CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a `xdc pretrain` checkpoint (checkpoints/*.pt)")
    source.add_argument("--weights", help="a state dict: exported, an official XDC file, or torchvision's "
                        "(e.g. the Kinetics-400 file for a Superv baseline kept elsewhere)")
    source.add_argument("--superv", action="store_true",
                        help="torchvision's supervised Kinetics-400 weights, from torch's hub cache")
    source.add_argument("--scratch", action="store_true", help="random initialisation")
    parser.add_argument("--modality", choices=MODALITIES, default="video", help="which encoder to evaluate")
    parser.add_argument("--mode", choices=FINETUNE_MODES, help="overrides the config's mode")
    parser.add_argument("--train", help="labelled manifest of training videos")
    parser.add_argument("--val", help="labelled manifest for choosing the lr (default: hold out train "
                        "videos); knn and retrieval score it beside the test videos")
    parser.add_argument("--test", help="labelled manifest of test videos")
    parser.add_argument("--split", choices=("ucf101", "hmdb51", "esc50"), help="a standard split instead of manifests")
    parser.add_argument("--root", help="with --split: the dataset's video (or ESC-50) folder")
    parser.add_argument("--split-dir", help="with --split: the folder of its split files")
    parser.add_argument("--fold", type=int, default=1, help="with --split: split / fold number")
    parser.add_argument("--config", help="a YAML file or packaged name (ucf101, hmdb51, esc50, cpu, tiny; "
                        "default: ucf101 on a GPU, cpu otherwise)")
    parser.add_argument("-o", "--out", required=True, help="output folder (rerun to resume)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.epoch_size=2000")


def _rows_from_args(args) -> tuple[list[dict], list[dict] | None, list[dict]]:
    if args.split:
        if not args.root:
            raise FinetuneError("--split needs --root (the dataset folder)")
        # Kept in the output folder: probing a whole dataset takes minutes, a resumed run reuses them.
        paths = split_manifests(args.split, args.root, args.split_dir, args.fold, args.out)
        rows = {s: read_manifest(path, drop_missing=True) for s, path in paths.items()}
        return rows["train"], read_manifest(args.val) if args.val else None, rows["test"]
    if not args.train or not args.test:
        raise FinetuneError("give --train and --test manifests (and optionally --val), or --split")
    return (read_manifest(args.train), read_manifest(args.val) if args.val else None,
            read_manifest(args.test))


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides) + ([f"mode={args.mode}"] if args.mode else [])
    cfg = load_config(args.config or default_finetune_config(), overrides, schema=FinetuneConfig)
    train_rows, val_rows, test_rows = _rows_from_args(args)
    torch.manual_seed(cfg.seed)  # scratch: the same random encoder every run
    loaded = load_encoder(args.modality, cfg.model, args.checkpoint, args.weights, args.superv, cfg.data)
    finetune(replace(cfg, model=loaded.model), loaded.encoder, args.modality, train_rows, val_rows,
             test_rows, args.out, loaded.source)
    return 0
