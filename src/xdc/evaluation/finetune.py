"""`xdc finetune`: evaluate an encoder on labelled videos, by one of five protocols.

Modes (paper section C, Tables 3-4; kNN and retrieval beside them, as DINO and the AV papers):
- `full`: encoder and a new classifier train (lr set `cfg.lrs`);
- `fc`: the encoder is frozen (eval-mode BatchNorm), only the new classifier trains on
  augmented clips (lr set `cfg.fc_lrs`);
- `linear`: like `fc`, but on the frozen encoder's features of N clips per video, computed once
  (`features.pt`) and standardised with the training set's mean and std: every lr in seconds;
- `knn`: each test video's class is voted by its `knn_k` nearest training videos;
- `retrieval`: recall@1/5/10 of the test videos against the training videos.

The modules, one job each: `labelled` (the subsets, a held-out val set, warnings), `feature_cache`
(the frozen features), `classifier` (the training loops), `sweep` (full, fc, linear: one model per
lr, the best on val tested), `knn` (knn, retrieval), `scores` (accuracies, chance and majority),
`finetune_folder` (the output folder: what is reused, atomic files). This module reads the command
line and runs one mode: the plan, the mode, results.json and its closing line.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml
from torch import nn

from xdc.clustering.pseudo_labels import weights_digest
from xdc.config import (
    FINETUNE_MODES,
    FinetuneConfig,
    config_to_yaml,
    default_finetune_config,
    load_config,
)
from xdc.data.datasets import resolve_num_workers
from xdc.data.manifest import describe_dropped, read_manifest
from xdc.distributed import init_distributed
from xdc.evaluation.feature_cache import features_key
from xdc.evaluation.finetune_folder import FinetuneFolder
from xdc.evaluation.knn import RECALL_AT, run_knn, run_retrieval
from xdc.evaluation.labelled import (
    FinetuneError,
    Labelled,
    input_warnings,
    labelled_subsets,
    make_dataset,
    swept_lrs,
)
from xdc.evaluation.scores import baselines
from xdc.evaluation.splits import split_manifests
from xdc.evaluation.sweep import run_linear, run_on_clips
from xdc.evaluation.weights import load_encoder
from xdc.files import disk_full_names
from xdc.models import MODALITIES
from xdc.training.monitor import (
    TRAIN_COST,
    print_plan,
    run_log,
    seconds_per_clip,
    seconds_to_decode,
)

KEPT = "free some space and run the same command again (finished work is kept)"
RUN_MODE = {"full": run_on_clips, "fc": run_on_clips, "linear": run_linear, "knn": run_knn,
            "retrieval": run_retrieval}
# results.json's test scores: top1_clip (full, fc, linear), top1_video and top5_video (and knn; top5
# with more than 5 classes), recall@k (retrieval).
TEST_METRICS = ("top1_clip", "top1_video", "top5_video", *(f"recall@{k}" for k in RECALL_AT))


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
    lrs = ", ".join(f"{lr:g}" for lr in swept_lrs(cfg))
    if cfg.mode in ("full", "fc"):
        cost = TRAIN_COST if cfg.mode == "full" else 1.0
        facts.append(f"{cfg.mode}: per lr ({lrs}) {o.total_epochs} epochs of {o.epoch_size} clips (batch "
                     f"{o.batch_size}), then validation")
        runs = len(swept_lrs(cfg))
        seconds = per_clip * (runs * (o.total_epochs * o.epoch_size * cost + videos.get("val", 0) * clips)
                              + videos["test"] * clips)
        decoding = per_video / workers * (runs * (o.total_epochs * o.epoch_size / clips + videos.get("val", 0))
                                          + videos["test"])
    else:  # features of every clip once; the linear heads train on them in seconds
        extra = f": a linear head per lr ({lrs}), {o.total_epochs} epochs of {o.epoch_size} samples" \
            if cfg.mode == "linear" else ""
        facts.append(f"{cfg.mode} on cached features of the frozen encoder{extra}")
        seconds = per_clip * sum(videos.values()) * clips
        decoding = per_video / workers * sum(videos.values())
    print_plan(f"finetune {cfg.mode} {modality} on {device}", facts, seconds, decoding)


def rows_digest(rows: list[dict]) -> str:
    digest = hashlib.sha1()
    for row in rows:
        digest.update(f"{row['path']}|{row['label']}\n".encode())
    return digest.hexdigest()[:16]


def closing_line(results: dict, folder: FinetuneFolder) -> str:
    """The test scores beside chance and majority, and where they are kept."""
    test = " ".join(f"{key} {results[key]:.3f}" for key in TEST_METRICS if key in results)
    return (f"test {test} on {results['test_videos']} videos (chance {results['chance']:.3f}, majority "
            f"{results['majority']:.3f}) -> {folder.results}")


def evaluate(cfg: FinetuneConfig, encoder: nn.Module, modality: str, train_rows: list[dict],
             val_rows: list[dict] | None, test_rows: list[dict], folder: FinetuneFolder, source: str) -> dict:
    """What `finetune` does, inside the log and full-disk guard its callers hold (`finetune`, and
    `run`, whose log starts before the encoder is loaded)."""
    if modality not in MODALITIES:
        raise FinetuneError(f"modality must be video or audio, got {modality!r}")
    started = time.perf_counter()
    device = init_distributed(cfg.device)
    data, dropped, val_source = labelled_subsets(train_rows, val_rows, test_rows, modality, cfg)
    encoder_digest = weights_digest(encoder)
    same = folder.take({"modality": modality, "source": source, "encoder_weights": encoder_digest,
                        "rows": {name: rows_digest(rows) for name, rows in data.rows.items()},
                        "config": yaml.safe_load(config_to_yaml(cfg))}, cfg)
    what = f"finetune {cfg.mode} {modality}"
    print(f"{what} ({source or 'given encoder'}) on {device}: {len(data.classes)} classes, train/val/test "
          f"{len(data.rows['train'])}/{len(data.rows.get('val', ()))}/{len(data.rows['test'])} videos")
    for name, counts in dropped.items():
        if counts:
            print(f"  {name}: {describe_dropped(counts)}")
    warnings = input_warnings(data, cfg)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    finished = folder.read_json(folder.results) if same else None
    if finished is not None:
        print(f"{what}: reusing the finished results (same encoder, rows and settings): "
              f"{closing_line(finished, folder)}", flush=True)
        return finished

    torch.manual_seed(cfg.seed)
    encoder = encoder.to(device)
    if modality == "video" and device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last_3d)
    print_finetune_plan(cfg, encoder, modality, data, device)
    key = features_key(encoder_digest, modality, data.rows, cfg)
    results = {
        "mode": cfg.mode, "modality": modality, "checkpoint": source,
        "arch": cfg.model.video_arch if modality == "video" else "resnet18", "width": cfg.model.width,
        "classes": data.classes, "videos": {name: len(rows) for name, rows in data.rows.items()},
        "dropped": dropped, "val_source": val_source, "eval_clips": cfg.data.eval_clips,
        **baselines(data.labels["test"], len(data.classes)), "warnings": warnings,
        **RUN_MODE[cfg.mode](cfg, encoder, modality, data, folder, device, key),
        "device": str(device), "seconds": round(time.perf_counter() - started, 1),
    }
    results["skipped"] = {name: [reason for _, reason in items]
                          for name, items in results["skipped"].items() if items}
    folder.write_json(folder.results, results)
    writer = folder.writer("summary")
    for metric in TEST_METRICS:
        if metric in results:
            writer.add_scalar(f"test/{metric}", results[metric], 0)
    writer.close()
    print(f"{what} done in {results['seconds']:.0f} s: {closing_line(results, folder)}", flush=True)
    return results


def finetune(cfg: FinetuneConfig, encoder: nn.Module, modality: str, train_rows: list[dict],
             val_rows: list[dict] | None, test_rows: list[dict], out_dir: str | Path, source: str = "") -> dict:
    """Evaluate `encoder` in `cfg.mode` (see the module docstring) into `out_dir`; writes and
    returns results.json's content. Rows are manifest rows with a `label`. What the console shows
    goes to OUT/log.txt too; a rerun reuses the folder's finished work (`FinetuneFolder`)."""
    folder = FinetuneFolder(out_dir)
    with disk_full_names(folder.root, KEPT), run_log(folder.log):
        return evaluate(cfg, encoder, modality, train_rows, val_rows, test_rows, folder, source)


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
    folder = FinetuneFolder(args.out)
    # The log from the first line on: reading the splits and loading the encoder say things too.
    with disk_full_names(folder.root, KEPT), run_log(folder.log):
        train_rows, val_rows, test_rows = _rows_from_args(args)
        torch.manual_seed(cfg.seed)  # scratch: the same random encoder every run
        loaded = load_encoder(args.modality, cfg.model, args.checkpoint, args.weights, args.superv, cfg.data)
        evaluate(replace(cfg, model=loaded.model), loaded.encoder, args.modality, train_rows, val_rows,
                 test_rows, folder, loaded.source)
    return 0
