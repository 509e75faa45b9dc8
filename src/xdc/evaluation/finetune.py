"""`xdc finetune`: a new classifier on a (pretrained) encoder, with base-lr cross-validation.

Modes (seed section C, Tables 3-4):
- `full`: encoder and classifier train (lr set `cfg.lrs`);
- `fc`: the encoder is frozen (eval-mode BatchNorm), only the new classifier trains on
  augmented clips (lr set `cfg.fc_lrs`);
- `linear`: like `fc`, but the frozen encoder's features of N clips per video are computed once
  and cached (`features.pt`), standardised with the training set's mean and std, and the
  classifier trains on them for every lr in seconds (no augmentation: centre crops).

Each lr trains with the same schedule (epochs of `epoch_size` clips, warmup then step decay by
γ, SGD with momentum and weight decay) and is scored on the validation videos by video-level
top-1; the best lr's model is then scored once on the test videos. Without a validation
manifest, `optim.val_fraction` of the training videos of every class is held out (seeded) for
choosing the lr, and the final model is the one trained without them.

Output folder: `results.json` (`best_lr`, per-lr validation scores, test `top1_clip`,
`top1_video`, `top5_video`, ...), `lr_<lr>/` (`model.pt`: the trained classifier, and the
encoder in full mode; `val.json`; `last.pt` while training, for resuming), `tb/` (TensorBoard).
Rerunning into the same folder resumes: finished lrs are read back, an interrupted one goes on
from its last epoch.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn
from tqdm import tqdm

from xdc.config import ConfigError, FinetuneConfig, PretrainConfig, config_to_yaml, load_config
from xdc.data.datasets import AudioClips, AudioVideoClips, EpochSampler, clip_loader
from xdc.data.manifest import ManifestError, describe_dropped, read_manifest, usable_rows
from xdc.errors import XdcError
from xdc.evaluation.linear import accuracy, clip_features, encoder_input, train_linear
from xdc.evaluation.splits import SplitError, split_manifests
from xdc.evaluation.weights import WeightsError, load_strict, read_state_dict, superv_state_dict
from xdc.models import ClassificationHead, audio_encoder, autocast, video_encoder
from xdc.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from xdc.training.distributed import init_distributed
from xdc.training.schedule import make_scheduler, steps_per_epoch

MODALITIES = ("video", "audio")
SELECTION_METRIC = "top1_video"


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
    """(train, val): `fraction` of every class's videos held out (at least one where a class has
    two or more), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_class.setdefault(row["label"], []).append(i)
    val: set[int] = set()
    for label in sorted(by_class):
        members = by_class[label]
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        val.update(int(i) for i in rng.permutation(members)[:count])
    if not val:
        raise FinetuneError("too few training videos to hold out a validation set: pass --val")
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def labelled_subsets(train_rows, val_rows, test_rows, modality: str, cfg: FinetuneConfig):
    """({"train", "val", "test"}: usable rows, rows dropped per subset and reason, where val came
    from); checks that every row has a label and that val/test classes were seen in training."""
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
    val_source = "val manifest"
    if "val" not in subsets:
        subsets["train"], subsets["val"] = hold_out(subsets["train"], cfg.optim.val_fraction, cfg.seed)
        val_source = f"held out {cfg.optim.val_fraction:g} of each class's train videos (seed {cfg.seed})"
    seen = {row["label"] for row in subsets["train"]}
    for name in ("val", "test"):
        unknown = sorted({row["label"] for row in subsets[name]} - seen)
        if unknown:
            raise FinetuneError(f"{name} labels not among the training classes: {', '.join(unknown[:10])}")
    return subsets, dropped, val_source


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.frozen:
            with torch.no_grad():
                features = self.encoder(x)
            return self.fc(features.float())
        return self.fc(self.encoder(x))

    def trained_state(self) -> dict:
        """What training changed: the classifier, and the encoder unless frozen."""
        return self.fc.state_dict() if self.frozen else self.state_dict()

    def load_trained_state(self, state: dict) -> None:
        (self.fc if self.frozen else self).load_state_dict(state)


def build_encoder(modality: str, cfg: FinetuneConfig) -> nn.Module:
    if modality == "video":
        return video_encoder(cfg.model.video_arch, cfg.model.width)
    return audio_encoder(cfg.model.width)


# Input settings an encoder is tied to: fine-tuning with other values feeds it inputs unlike those
# it learned from (a warning, not an error: it can be what one wants to study).
INPUT_SETTINGS = ("n_mels", "audio_norm", "sample_rate", "win_ms", "hop_ms", "video_mean", "video_std")


def checkpoint_config(path: str | Path) -> PretrainConfig | None:
    """The config a pretrain checkpoint was trained with (None for files without one)."""
    state = load_checkpoint(path)
    if "config" not in state:
        return None
    merged = OmegaConf.merge(OmegaConf.structured(PretrainConfig), OmegaConf.create(state["config"]))
    return OmegaConf.to_object(merged)


def load_encoder(modality: str, cfg: FinetuneConfig, checkpoint: str | None = None,
                 weights: str | None = None, superv: bool = False) -> tuple[nn.Module, str]:
    """(encoder, description of its weights): a pretrain checkpoint, a weights file, torchvision's
    supervised Kinetics weights, or random init (scratch)."""
    if checkpoint is not None:
        pretrained = checkpoint_config(checkpoint)
        if pretrained is not None:  # rebuild the encoder the checkpoint was trained with
            cfg.model.video_arch, cfg.model.width = pretrained.model.video_arch, pretrained.model.width
            for key in INPUT_SETTINGS:
                ours, theirs = getattr(cfg.data, key), getattr(pretrained.data, key)
                if ours != theirs:
                    print(f"warning: data.{key}={ours} differs from the pretraining's {theirs}")
        encoder = build_encoder(modality, cfg)
        load_strict(encoder, read_state_dict(checkpoint, modality), source=str(checkpoint))
        return encoder, str(checkpoint)
    encoder = build_encoder(modality, cfg)
    if weights is not None:
        load_strict(encoder, read_state_dict(weights, modality), source=str(weights))
        return encoder, str(weights)
    if superv:
        if modality != "video":
            raise FinetuneError("--superv gives torchvision's Kinetics video weights: use --modality video")
        if cfg.model.width != 64:
            raise FinetuneError(f"--superv loads torchvision's full-width network: set model.width=64 "
                                f"(the config has {cfg.model.width})")
        load_strict(encoder, superv_state_dict(cfg.model.video_arch), source=f"superv {cfg.model.video_arch}")
        return encoder, f"superv:{cfg.model.video_arch}/KINETICS400_V1"
    return encoder, "scratch"


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
        bar = tqdm(loader, desc=f"lr {lr:g} epoch {epoch + 1}/{o.total_epochs}", leave=False,
                   dynamic_ncols=True)
        for batch in bar:
            skipped += len(batch.get("skipped", ()))
            if modality not in batch:
                continue
            x = encoder_input(batch, modality, device)
            target = labels[torch.as_tensor(batch["index"], device=device)]
            with autocast(device, cfg.amp):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
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


# -------------------------------------------------------------------------------- the sweep

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


def _lr_name(lr: float) -> str:
    return f"lr_{lr:g}"


def _writer(path: Path):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(path))


def finetune(cfg: FinetuneConfig, encoder: nn.Module, modality: str, train_rows: list[dict],
             val_rows: list[dict] | None, test_rows: list[dict], out_dir: str | Path,
             source: str = "") -> dict:
    """Cross-validate the base lr on `val_rows` (or held-out train videos), test the best; writes
    and returns results.json's content. Rows are manifest rows with a `label`."""
    if modality not in MODALITIES:
        raise FinetuneError(f"modality must be video or audio, got {modality!r}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    device = init_distributed(cfg.device)
    lrs = list(cfg.lrs if cfg.mode == "full" else cfg.fc_lrs)
    subsets, dropped, val_source = labelled_subsets(train_rows, val_rows, test_rows, modality, cfg)
    classes = sorted({row["label"] for row in subsets["train"]})
    lookup = {name: i for i, name in enumerate(classes)}
    labels = {name: torch.tensor([lookup[r["label"]] for r in rows]) for name, rows in subsets.items()}
    _check_out_dir(out_dir, _fingerprint(cfg, modality, source, subsets))
    print(f"finetune {cfg.mode} {modality} ({source or 'given encoder'}) on {device}: "
          f"{len(classes)} classes, train/val/test {len(subsets['train'])}/{len(subsets['val'])}/"
          f"{len(subsets['test'])} videos; lrs {', '.join(f'{lr:g}' for lr in lrs)}")
    for name, counts in dropped.items():
        if counts:
            print(f"  {name}: {describe_dropped(counts)}")

    torch.manual_seed(cfg.seed)
    encoder = encoder.to(device)
    if modality == "video" and device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last_3d)
    skipped: dict[str, list] = {}

    if cfg.mode == "linear":
        cached = _cached_features(encoder, subsets, cfg, modality, device, out_dir)
        skipped.update(cached["skipped"])

        # Features standardised with the training clips' mean and std (MAE's linear probe does the
        # same with an affine-free BatchNorm): encoders differ widely in feature scale, and one
        # lr set has to suit them all.
        mean = cached["train"].flatten(0, 1).mean(0)
        std = cached["train"].flatten(0, 1).std(0).clamp_min(1e-6)
        for name in subsets:
            cached[name] = (cached[name] - mean) / std
        # Every clip of every training video is one sample, labelled with its video's class.
        clips_per_video = cached["train"].shape[1]
        train_features = cached["train"].flatten(0, 1)
        train_labels = labels["train"][cached["train_index"]].repeat_interleave(clips_per_video)

        def train_and_score(lr: float, folder: Path) -> dict:
            writer = _writer(out_dir / "tb" / folder.name)
            head = train_linear(train_features, train_labels, len(classes), lr, cfg.optim, device,
                                cfg.seed, writer, desc=f"linear lr {lr:g}")
            save_checkpoint({"fc": head.state_dict(), "feature_mean": mean, "feature_std": std},
                            folder / "model.pt")
            result = _linear_scores(head, cached, labels, "val")
            writer.add_scalar(f"val/{SELECTION_METRIC}", result[SELECTION_METRIC], 0)
            writer.close()
            return result
    else:
        train_set = make_dataset(subsets["train"], cfg, modality, "train")
        eval_sets = {name: make_dataset(subsets[name], cfg, modality, "eval") for name in ("val", "test")}
        initial = copy.deepcopy(encoder.state_dict())

        def train_and_score(lr: float, folder: Path) -> dict:
            encoder.load_state_dict(initial)
            torch.manual_seed(cfg.seed)
            model = Classifier(encoder, len(classes), frozen=cfg.mode == "fc").to(device)
            writer = _writer(out_dir / "tb" / folder.name)
            train_classifier(model, train_set, labels["train"], cfg, modality, lr, folder, device, writer)
            save_checkpoint({"model": model.trained_state()}, folder / "model.pt")
            (folder / "last.pt").unlink(missing_ok=True)
            result, skipped["val"] = scores(model.encoder, model.fc, eval_sets["val"], labels["val"], cfg,
                                            modality, device, f"val lr {lr:g}")
            writer.add_scalar(f"val/{SELECTION_METRIC}", result[SELECTION_METRIC], 0)
            writer.close()
            return result

    val: dict[str, dict] = {}
    for lr in tqdm(lrs, desc=f"lr sweep ({cfg.mode})", unit="lr"):
        folder = out_dir / _lr_name(lr)
        folder.mkdir(exist_ok=True)
        done = folder / "val.json"
        if done.is_file() and (folder / "model.pt").is_file():  # resumed: this lr is finished
            val[f"{lr:g}"] = json.loads(done.read_text())
            continue
        val[f"{lr:g}"] = train_and_score(lr, folder)
        done.write_text(json.dumps(val[f"{lr:g}"], indent=2))
        tqdm.write(f"  lr {lr:g}: val top1_clip {val[f'{lr:g}']['top1_clip']:.3f} "
                   f"top1_video {val[f'{lr:g}']['top1_video']:.3f}")
    best_lr = max(lrs, key=lambda lr: val[f"{lr:g}"][SELECTION_METRIC])  # first of equals: the lowest lr

    # Test the best lr's model once.
    best = load_checkpoint(out_dir / _lr_name(best_lr) / "model.pt")
    if cfg.mode == "linear":
        head = ClassificationHead(cached["train"].shape[-1], len(classes))
        head.load_state_dict(best["fc"])
        test = _linear_scores(head, cached, labels, "test")
    else:
        encoder.load_state_dict(initial)
        model = Classifier(encoder, len(classes), frozen=cfg.mode == "fc")
        model.load_trained_state(best["model"])
        model.to(device)
        test, skipped["test"] = scores(model.encoder, model.fc, eval_sets["test"], labels["test"], cfg,
                                       modality, device, "test")

    results = {
        "mode": cfg.mode, "modality": modality, "checkpoint": source,
        "arch": cfg.model.video_arch if modality == "video" else "resnet18", "width": cfg.model.width,
        "classes": classes, "videos": {name: len(rows) for name, rows in subsets.items()},
        "dropped": dropped, "val_source": val_source, "eval_clips": cfg.data.eval_clips,
        "selection_metric": SELECTION_METRIC, "lrs": lrs, "val": val, "best_lr": best_lr,
        "top1_clip": test["top1_clip"], "top1_video": test["top1_video"], "top5_video": test["top5_video"],
        "test_videos": test["videos"],
        "skipped": {name: [reason for _, reason in items] for name, items in skipped.items() if items},
        "device": str(device), "seconds": round(time.perf_counter() - started, 1),
    }
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    _write_summary_tb(out_dir, results)
    print(f"finetune {cfg.mode} {modality} done in {results['seconds']:.0f} s: best lr {best_lr:g} "
          f"(val {SELECTION_METRIC} {val[f'{best_lr:g}'][SELECTION_METRIC]:.3f}); test top1_clip "
          f"{results['top1_clip']:.3f} top1_video {results['top1_video']:.3f} top5_video "
          f"{results['top5_video']:.3f} on {test['videos']} videos -> {out_dir / 'results.json'}")
    return results


def _cached_features(encoder, subsets, cfg, modality, device, out_dir: Path) -> dict:
    """Frozen-encoder features of every subset, computed once and kept in `features.pt`."""
    path = out_dir / "features.pt"
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


def _linear_scores(head: nn.Module, cached: dict, labels: dict, name: str) -> dict:
    with torch.no_grad():
        logits = head.cpu()(cached[name])
    index = cached[f"{name}_index"]
    return {**accuracy(logits, labels[name][index]), "videos": len(index)}


def _write_summary_tb(out_dir: Path, results: dict) -> None:
    writer = _writer(out_dir / "tb" / "summary")
    for lr, scores_ in results["val"].items():
        writer.add_scalar(f"val/{SELECTION_METRIC}_by_lr", scores_[SELECTION_METRIC], int(round(float(lr) * 1e4)))
    for key in ("top1_clip", "top1_video", "top5_video"):
        writer.add_scalar(f"test/{key}", results[key], 0)
    writer.close()


# ----------------------------------------------------------------------------------- the CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a `xdc pretrain` checkpoint (checkpoints/*.pt)")
    source.add_argument("--weights", help="a state dict: exported, an official XDC file, or torchvision's "
                        "(e.g. the Kinetics-400 file for a Superv baseline kept elsewhere)")
    source.add_argument("--superv", action="store_true",
                        help="torchvision's supervised Kinetics-400 weights, from torch's hub cache")
    source.add_argument("--scratch", action="store_true", help="random initialisation")
    parser.add_argument("--modality", choices=MODALITIES, default="video")
    parser.add_argument("--mode", choices=("full", "fc", "linear"), help="overrides the config's mode")
    parser.add_argument("--train", help="labelled manifest of training videos")
    parser.add_argument("--val", help="labelled manifest for choosing the lr (default: hold out train videos)")
    parser.add_argument("--test", help="labelled manifest of test videos")
    parser.add_argument("--split", choices=("ucf101", "hmdb51", "esc50"), help="a standard split instead of manifests")
    parser.add_argument("--root", help="with --split: the dataset's video (or ESC-50) folder")
    parser.add_argument("--split-dir", help="with --split: the folder of its split files")
    parser.add_argument("--fold", type=int, default=1, help="with --split: split / fold number")
    parser.add_argument("--config", help="configs/finetune/*.yaml")
    parser.add_argument("--out", required=True, help="output folder (rerun to resume)")
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
    try:
        cfg = load_config(args.config, overrides, schema=FinetuneConfig)
        train_rows, val_rows, test_rows = _rows_from_args(args)
        torch.manual_seed(cfg.seed)  # scratch: the same random encoder every run
        encoder, source = load_encoder(args.modality, cfg, args.checkpoint, args.weights, args.superv)
        finetune(cfg, encoder, args.modality, train_rows, val_rows, test_rows, args.out, source)
    except (ConfigError, FinetuneError, WeightsError, ManifestError, SplitError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
