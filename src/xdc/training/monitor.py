"""What a pretraining run says: its plan, the epoch line and summary.json record, its TensorBoard
scalars, the closing summary, and digests that show the ranks agree. Per-head losses sit beside
chance (ln k): a mean over heads hides a head that learns nothing.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from xdc import distributed as dist_utils
from xdc.checkpoint import rng_state, set_rng_state
from xdc.clustering.kmeans import kmeans_device_note
from xdc.clustering.pseudo_labels import weights_digest
from xdc.config import config_to_yaml
from xdc.data.audio import num_audio_frames
from xdc.data.datasets import AudioVideoClips, resolve_num_workers
from xdc.methods import METHODS, MODALITIES, HeadSpec
from xdc.models import encode
from xdc.stamps import flatten
from xdc.training.schedule import effective_lr, global_batch, steps_per_epoch
from xdc.training.sizes import held_out_videos

# A head whose loss stays within this fraction of chance (ln k) learned (next to) nothing; one
# further above it overfit.
CHANCE_MARGIN = 0.05


# ------------------------------------------------------------------ the plan, before the work

# A training step (forward and backward) costs about three forward passes.
TRAIN_COST = 3.0


@torch.no_grad()
def seconds_per_clip(encoder: torch.nn.Module, modality: str, data, device: torch.device, amp: bool = False,
                     batch: int = 4) -> float:
    """Measured seconds of one clip's forward pass through `encoder` on `device`, from a batch of
    random clips of `data`'s shape (decoding not included). Eval mode, no gradients and a private
    random generator: the model, its BatchNorm statistics and every random stream stay as they were."""
    shape = (3, data.frames, data.crop, data.crop) if modality == "video" else (1, data.n_mels, num_audio_frames(data))
    clips = torch.randn(batch, 1, *shape, generator=torch.Generator().manual_seed(0))
    was_training = encoder.training
    encoder.eval()
    try:
        encode(encoder, clips, modality, device, amp)  # warm-up: first calls allocate and tune
        times = []
        for _ in range(3):  # the median: a busy machine makes single timings jump
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            encode(encoder, clips, modality, device, amp)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
        return sorted(times)[1] / batch
    finally:
        encoder.train(was_training)


def seconds_to_decode(dataset, index: int = 0) -> float:
    """Measured seconds to read one item of `dataset` (decoding, resizing, log-mel); the random
    streams are put back as they were, so the run computes what it would have."""
    state = rng_state()
    try:
        started = time.perf_counter()
        dataset[index]
        return time.perf_counter() - started
    finally:
        set_rng_state(state)


def duration_text(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def print_plan(what: str, facts: list[str], compute: float, decoding: float, note: str = "") -> None:
    """What a long command is about to do and how long it should take (compute and decoding as
    measured on this machine), before it starts."""
    print(f"plan: {what}\n" + "".join(f"  {fact}\n" for fact in facts)
          + f"  estimate: about {duration_text(compute + decoding)} (compute {duration_text(compute)}, "
          f"reading videos {duration_text(decoding)}, measured here)" + (f"; {note}" if note else ""), flush=True)


def print_pretrain_plan(cfg, rows: list[dict], model, device: torch.device, fitted: list[str] = ()) -> None:
    """The pretraining plan (rank 0): `pretrain_plan_facts`, where k-means runs, and an estimate
    from the encoders' measured speed and one video's measured reading time; then `batch_warning`,
    if any."""
    if not dist_utils.is_main():
        return
    o, c, num_videos, ranks = cfg.optim, cfg.cluster, len(rows), dist_utils.world_size()
    # At the run's batch size: per clip, a CPU forward of 4 clips costs several times one of 16.
    per_clip = sum(seconds_per_clip(getattr(model, f"{m}_encoder"), m, cfg.data, device, cfg.amp, o.batch_size)
                   for m in MODALITIES)
    read = seconds_to_decode(AudioVideoClips(rows, cfg.data, mode="eval", clips_per_video=1))
    val = held_out_videos(num_videos, o.val_fraction)
    clips = cfg.iterations * (num_videos * c.clips_per_video + o.total_epochs * (o.epoch_size + val))
    seconds = cfg.iterations * (num_videos * c.clips_per_video + o.total_epochs * val) * per_clip \
        + cfg.iterations * o.total_epochs * o.epoch_size * TRAIN_COST * per_clip
    # Clips are read by the DataLoader's workers of every rank, side by side.
    decoding = clips * read / max(1, resolve_num_workers(cfg.data.num_workers)) / ranks
    # Where k-means runs, and on a GPU run without faiss' GPU build why not there (docs/SCALE.md).
    kmeans = [kmeans_device_note(device)] if METHODS[cfg.method].clusterings else []
    print_plan(f"{cfg.method} pretraining on {device} ({ranks} process(es))",
               pretrain_plan_facts(cfg, num_videos, ranks, fitted) + kmeans, seconds / ranks, decoding,
               "at most: early stopping can end an iteration sooner" if o.early_stop else "")
    warning = batch_warning(o, ranks)
    if warning:
        print(warning, flush=True)


def pretrain_plan_facts(cfg, num_videos: int, world_size: int, fitted: list[str] = ()) -> list[str]:
    """The plan's lines: videos, clips, iterations, k, epochs; the global batch, SGD steps per epoch
    and the lr they train at on `world_size` ranks; then the settings fitted to the data
    (xdc.training.sizes)."""
    o, c = cfg.optim, cfg.cluster
    val = held_out_videos(num_videos, o.val_fraction)
    return [f"{num_videos} videos ({num_videos - val} train, {val} validation), {cfg.data.frames}-frame "
            f"{cfg.data.crop}px clips at {cfg.data.fps:g} fps, encoders of width {cfg.model.width}",
            f"{cfg.iterations} iterations: cluster (k video/audio/joint {c.k_video}/{c.k_audio}/{c.k_joint}), "
            f"then up to {o.total_epochs} epochs of {o.epoch_size} clips",
            f"{world_size} rank(s) × batch {o.batch_size} = global batch {global_batch(o, world_size)}, "
            f"{steps_per_epoch(o, world_size)} SGD step(s) per epoch; lr {effective_lr(o, world_size):g} "
            f"(optim.lr {o.lr:g}, lr_scaling {o.lr_scaling}, reference_batch {o.reference_batch})",
            *fitted]


def batch_warning(o, world_size: int) -> str | None:
    """One line when the global batch is more than 2× away from `optim.reference_batch` (the batch
    `optim.lr` was set for) and the lr does not follow it (lr_scaling none), naming both remedies."""
    batch = global_batch(o, world_size)
    ratio = max(batch, o.reference_batch) / min(batch, o.reference_batch)
    if o.lr_scaling != "none" or ratio <= 2:
        return None
    return (f"warning: global batch {batch} ({world_size} rank(s) × {o.batch_size}) is {ratio:.3g}× "
            f"{'above' if batch > o.reference_batch else 'below'} optim.reference_batch {o.reference_batch}, the "
            f"batch optim.lr {o.lr:g} was set for, and the lr stays {o.lr:g}: set optim.lr_scaling=linear "
            f"(lr {o.lr * batch / o.reference_batch:g} here), or set optim.lr and optim.reference_batch for this batch")


# ------------------------------------------------------------------------------ TensorBoard

def tensorboard_writer(folder: Path, cfg=None):
    """TensorBoard's writer on rank 0, None elsewhere (imported here: it is slow to import);
    with `cfg`, the config is logged as text and as hparams."""
    if not dist_utils.is_main():
        return None
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(folder))
    if cfg is not None:
        log_config(writer, cfg)
    return writer


def log_config(writer, cfg) -> None:
    """The config as a text panel (YAML) and in the HPARAMS tab (one flat key per setting)."""
    from torch.utils.tensorboard.summary import hparams

    writer.add_text("config", "\n".join("    " + line for line in config_to_yaml(cfg).splitlines()))
    flat = {}
    for key, value in flatten(OmegaConf.to_container(OmegaConf.structured(cfg))).items():
        flat[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    for summary in hparams(flat, {}):  # written into this run, not a new sub-run as add_hparams does
        writer.file_writer.add_summary(summary)


def log_clusters(writer, record: dict, step: int) -> None:
    """An iteration's cluster statistics as TensorBoard scalars, on the training scalars' step
    axis (`step`: the global step when the clustering happened)."""
    for modality in MODALITIES:
        for key in ("empty_clusters", "nmi_prev", "purity", "nmi"):
            if record.get(modality, {}).get(key) is not None:
                writer.add_scalar(f"cluster/{modality}/{key}", record[modality][key], step)


def rank_digests(labels: dict[str, np.ndarray], encoders: list[torch.nn.Module]) -> list[dict[str, str]]:
    """Per rank, short hashes of the labels and of the encoders it holds (the weights that gave
    the features; a resumed run holds the same): equal when the ranks agree."""
    digest = hashlib.sha1()
    for name in sorted(labels):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(labels[name], dtype=np.int64).tobytes())
    mine = {"labels": digest.hexdigest()[:16], "weights": weights_digest(*encoders)}
    if not dist_utils.is_distributed():
        return [mine]
    every = [None] * dist_utils.world_size()
    torch.distributed.all_gather_object(every, mine)
    return every


def log_training(writer, step: int, loss: float, lr: float) -> None:
    """The training loss of the latest steps (every LOG_EVERY steps, training.loop) and the lr."""
    writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("train/lr", lr, step)


def epoch_record(record: dict, epoch: int, train: dict, val: dict | None, stop: bool, specs: list[HeadSpec],
                 prior: dict[str, float]) -> dict:
    """An iteration's summary.json record after `epoch` (0-based): its clustering part (`record`)
    and the training so far; samples skipped add up over the epochs."""
    return {**record, "epochs": epoch + 1, "train_loss": train["loss"], "val_loss": val and val["loss"],
            "train_clips": train["clips"], "stopped_early": bool(stop),
            "skipped": record.get("skipped", 0) + train["skipped"] + (val["skipped"] if val else 0),
            "heads": {s.name: {"train_loss": train["heads"][s.name], "val_loss": val and val["heads"][s.name],
                               "chance": s.chance_loss, "prior_entropy": prior[s.name]} for s in specs}}


def log_epoch(writer, record: dict, train: dict, val: dict, specs: list[HeadSpec], epoch: int, epochs: int,
              step: int, stop: bool) -> None:
    """The epoch's line on the console and its scalars in TensorBoard (rank 0): the loss that
    trains, and each head's loss beside its chance level ln k."""
    if writer is None:
        return
    if val is not None:  # None: no validation pass (early stopping off)
        writer.add_scalar("val/loss", val["loss"], step)
    writer.add_scalar("train/epoch_loss", train["loss"], step)
    writer.add_scalar("train/data_wait", train["data_wait"], step)
    for s in specs:
        writer.add_scalar(f"heads/{s.name}/train_loss", train["heads"][s.name], step)
        if val is not None:
            writer.add_scalar(f"heads/{s.name}/val_loss", val["heads"][s.name], step)
        writer.add_scalar(f"heads/{s.name}/chance", s.chance_loss, step)
    heads = ", ".join(f"{s.name} {train['heads'][s.name]:.3f}/{_num(val and val['heads'][s.name])} "
                      f"(chance {s.chance_loss:.3f})" for s in specs)
    print(f"iteration {record['iteration']} epoch {epoch + 1}/{epochs}: train loss {train['loss']:.4f}, "
          f"val loss {_num(val and val['loss'], 4)}, {train['clips']} clips, skipped {train['skipped']} train / "
          f"{val['skipped'] if val else 0} val, data wait {train['data_wait']:.0%}; heads train/val {heads}"
          + (" -> early stop" if stop else ""), flush=True)


def _num(value: float | None, digits: int = 3) -> str:
    """A loss for the console; "n/a" when there was no validation pass."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def heads_not_learning(summary: dict) -> dict[str, list[str]]:
    """Heads whose validation loss never went below chance by more than CHANCE_MARGIN in any
    iteration (chance: the entropy of their labels, what knowing only the cluster sizes scores, at
    most ln k), as {"at chance": heads that stayed within the margin, "overfit": heads whose loss
    rose above chance by more than the margin (they fit the training videos' labels and
    generalised worse than guessing by cluster size)}."""
    learned: dict[str, bool] = {}
    above: dict[str, bool] = {}
    for record in summary["iterations"]:
        for name, head in record.get("heads", {}).items():
            loss = head["train_loss"] if head.get("val_loss") is None else head["val_loss"]  # no val pass
            chance = min(head["chance"], head.get("prior_entropy", head["chance"]))
            learned[name] = learned.get(name, False) or loss < (1 - CHANCE_MARGIN) * chance
            above[name] = above.get(name, False) or loss > (1 + CHANCE_MARGIN) * chance
    stuck = [name for name in learned if not learned[name]]
    return {"at chance": [n for n in stuck if not above[n]], "overfit": [n for n in stuck if above[n]]}


def print_closing_summary(summary: dict, run_dir: Path, seconds: float, device: torch.device) -> None:
    print(f"\n{summary['method']} pretraining done in {seconds:.0f} s on {device}: {run_dir}")
    for r in summary["iterations"]:
        parts = [f"iteration {r['iteration']}: {r.get('epochs', 0)} epochs",
                 f"train {r.get('train_loss', float('nan')):.3f}",
                 f"val {_num(r.get('val_loss'))}"]
        for m in MODALITIES:
            s = r[m]
            text = f"{m} empty {s['empty_clusters']}/{s['num_clusters']}"
            if s.get("nmi_prev") is not None:
                text += f" nmi_prev {s['nmi_prev']:.2f}"
            if s.get("nmi") is not None:
                text += f" nmi {s['nmi']:.2f} purity {s['purity']:.2f}"
            parts.append(text)
        parts.append(f"skipped {r.get('skipped', 0)}")
        print("  " + ", ".join(parts))
        for name, head in r.get("heads", {}).items():
            print(f"    {name}: train {head['train_loss']:.3f}, val {_num(head.get('val_loss'))}, "
                  f"chance {head['chance']:.3f} (ln k), {head.get('prior_entropy', head['chance']):.3f} "
                  f"(labels' entropy)")
    heads = heads_not_learning(summary)
    if heads["at chance"]:
        print(f"  heads that never left chance (val loss within {CHANCE_MARGIN:.0%} of their labels' entropy): "
              f"{', '.join(heads['at chance'])}")
    if heads["overfit"]:
        print(f"  heads that overfit (val loss more than {CHANCE_MARGIN:.0%} above their labels' entropy, never "
              f"below it): {', '.join(heads['overfit'])}")
    sys.stdout.flush()
