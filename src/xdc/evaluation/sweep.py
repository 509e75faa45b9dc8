"""The modes that train a classifier, one per lr, and choose the lr on validation videos: `full`
and `fc` on clips through the encoder (`run_on_clips`), `linear` on the frozen encoder's cached
clip features (`run_linear`).

`lr_sweep` trains every lr with the same schedule from the same start and scores it on the
validation videos by video-level top-1; the best lr's model is then scored once on the test
videos. Each lr's work sits in its own folder (`FinetuneFolder.lr_dir`): a rerun reads finished
lrs back and continues an interrupted one from its last epoch. An lr whose training loss goes
non-finite is left out of the choice, said in one line.
"""

from __future__ import annotations

import copy
from contextlib import closing
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from xdc.checkpoint import load_checkpoint, save_checkpoint
from xdc.config import FinetuneConfig
from xdc.evaluation.classifier import (
    Classifier,
    Diverged,
    clip_scores,
    train_classifier,
    train_linear,
)
from xdc.evaluation.feature_cache import cached_features
from xdc.evaluation.finetune_folder import FinetuneFolder
from xdc.evaluation.labelled import FinetuneError, Labelled, make_dataset, swept_lrs
from xdc.evaluation.scores import accuracy
from xdc.models import ClassificationHead
from xdc.progress import progress

SELECTION_METRIC = "top1_video"


def describe(scores: dict) -> str:
    """One lr's validation outcome, for the console."""
    if "diverged" in scores:
        return f"diverged ({scores['diverged']}): left out of the choice"
    return f"val top1_clip {scores['top1_clip']:.3f} top1_video {scores['top1_video']:.3f}"


def lr_sweep(lrs: list[float], folder: FinetuneFolder, fit: Callable[[float, Path], dict]) -> tuple[dict, float]:
    """(validation scores by lr, the best lr). `fit(lr, lr_dir)` trains one lr, saves its
    `lr_dir/model.pt` and returns its validation scores, which go to `lr_dir/val.json`; an lr
    whose val.json is there (with its model.pt) is finished and read back instead. The best lr has
    the highest val top1_video; of equals, the lowest. FinetuneError when every lr diverged."""
    print(f"  lr sweep: {', '.join(f'{lr:g}' for lr in lrs)}")
    val: dict[str, dict] = {}
    for lr in progress(lrs, desc="lr sweep", unit="lr"):
        lr_dir, name = folder.lr_dir(lr), f"{lr:g}"
        lr_dir.mkdir(parents=True, exist_ok=True)
        done = folder.read_json(lr_dir / "val.json")
        if done is not None and ("diverged" in done or (lr_dir / "model.pt").is_file()):
            val[name] = done
            tqdm.write(f"  lr {name}: reusing {lr_dir.name}/ (same encoder, rows and settings): {describe(done)}")
            continue
        try:
            val[name] = fit(lr, lr_dir)
        except Diverged as err:
            (lr_dir / "last.pt").unlink(missing_ok=True)
            val[name] = {"diverged": str(err)}
        folder.write_json(lr_dir / "val.json", val[name])
        tqdm.write(f"  lr {name}: {describe(val[name])}")
    trained = [lr for lr in lrs if "diverged" not in val[f"{lr:g}"]]
    if not trained:
        raise FinetuneError(f"every lr diverged (lr {lrs[0]:g}: {val[f'{lrs[0]:g}']['diverged']}): try smaller "
                            f"ones (lrs=[...] in full mode, fc_lrs=[...] in fc and linear)")
    best_lr = max(trained, key=lambda lr: val[f"{lr:g}"][SELECTION_METRIC])  # max keeps the first of equals
    writer = folder.writer("summary")
    for lr in trained:
        writer.add_scalar(f"val/{SELECTION_METRIC}_by_lr", val[f"{lr:g}"][SELECTION_METRIC], int(round(lr * 1e4)))
    writer.close()
    print(f"  best lr {best_lr:g} (val {SELECTION_METRIC} {val[f'{best_lr:g}'][SELECTION_METRIC]:.3f})")
    return val, best_lr


def swept_results(lrs: list[float], val: dict, best_lr: float, test: dict) -> dict:
    """results.json's entries of a mode with an lr sweep."""
    return {"selection_metric": SELECTION_METRIC, "lrs": lrs, "val": val, "best_lr": best_lr,
            **{name: value for name, value in test.items() if name != "videos"}, "test_videos": test["videos"]}


def run_on_clips(cfg: FinetuneConfig, encoder: nn.Module, modality: str, data: Labelled, folder: FinetuneFolder,
                 device: torch.device, key: str) -> dict:
    """Encoder + new classifier trained on augmented clips, one model per lr (`fc`: encoder
    frozen, lrs `cfg.fc_lrs`; `full`: all of it, lrs `cfg.lrs`), each starting from the same
    encoder weights; the best on val is tested. Returns results.json's mode entries."""
    frozen = cfg.mode == "fc"
    lrs = swept_lrs(cfg)
    train_set = make_dataset(data.rows["train"], cfg, modality, "train")
    initial = copy.deepcopy(encoder.state_dict())
    skipped: dict[str, list] = {}

    def fit(lr: float, lr_dir: Path) -> dict:
        encoder.load_state_dict(initial)
        torch.manual_seed(cfg.seed)
        model = Classifier(encoder, len(data.classes), frozen).to(device)
        with closing(folder.writer(lr_dir.name)) as writer:
            train_classifier(model, train_set, data.labels["train"], cfg, modality, lr, lr_dir, device, writer)
            save_checkpoint({"model": model.trained_state()}, lr_dir / "model.pt")
            (lr_dir / "last.pt").unlink(missing_ok=True)
            result, skipped["val"] = clip_scores(model.encoder, model.fc, data.rows["val"], data.labels["val"], cfg,
                                                 modality, device, f"val lr {lr:g}")
            writer.add_scalar(f"val/{SELECTION_METRIC}", result[SELECTION_METRIC], 0)
        return result

    val, best_lr = lr_sweep(lrs, folder, fit)
    encoder.load_state_dict(initial)
    model = Classifier(encoder, len(data.classes), frozen)
    model.load_trained_state(load_checkpoint(folder.lr_dir(best_lr) / "model.pt")["model"])
    model.to(device)
    test, skipped["test"] = clip_scores(model.encoder, model.fc, data.rows["test"], data.labels["test"], cfg,
                                        modality, device, "test")
    return {**swept_results(lrs, val, best_lr, test), "skipped": skipped}


def run_linear(cfg: FinetuneConfig, encoder: nn.Module, modality: str, data: Labelled, folder: FinetuneFolder,
               device: torch.device, key: str) -> dict:
    """Linear classifiers on the frozen encoder's cached, standardised clip features, one per lr
    of `cfg.fc_lrs`; the best on val is tested. Returns results.json's mode entries."""
    cached = cached_features(encoder, data.rows, cfg, modality, device, folder, key)
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

    def scores(head: nn.Module, name: str) -> dict:
        with torch.no_grad():
            logits = head.cpu()(features[name])
        index = cached[f"{name}_index"]
        return {**accuracy(logits, data.labels[name][index]), "videos": len(index)}

    def fit(lr: float, lr_dir: Path) -> dict:
        with closing(folder.writer(lr_dir.name)) as writer:
            head = train_linear(train_features, train_labels, len(data.classes), lr, cfg.optim, device,
                                cfg.seed, writer, desc=f"linear lr {lr:g}")
            save_checkpoint({"fc": head.state_dict(), "feature_mean": mean, "feature_std": std}, lr_dir / "model.pt")
            result = scores(head, "val")
            writer.add_scalar(f"val/{SELECTION_METRIC}", result[SELECTION_METRIC], 0)
        return result

    lrs = swept_lrs(cfg)
    val, best_lr = lr_sweep(lrs, folder, fit)
    head = ClassificationHead(train_features.shape[-1], len(data.classes))
    head.load_state_dict(load_checkpoint(folder.lr_dir(best_lr) / "model.pt")["fc"])
    return {**swept_results(lrs, val, best_lr, scores(head, "test")), "skipped": cached["skipped"]}
