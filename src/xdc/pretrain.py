"""`xdc pretrain`: deep-clustering pretraining (XDC, SDC, MDC, CDC, the RAND control, Superv).

    xdc pretrain --config tiny_cpu --data manifest.csv --out runs/xdc
    torchrun --nproc_per_node 2 -m xdc.pretrain --config ... --data ... --out ...
    xdc pretrain --resume runs/xdc

Running the same command again continues the run in --out when its config and manifest rows are
the ones recorded there (refused otherwise): that is what lets `torchrun --max-restarts` or a
scheduler bring a crashed or preempted job back (docs/SCALE.md).

Each iteration: (a) features of every video (iteration 0: freshly initialised encoders after a
BatchNorm recompute, or hand-crafted features), (b) k-means on the feature sets the method asks
for -> pseudo-labels, identical on every rank, (c) fresh classification heads, optimizer and lr
schedule, (d) SGD until the validation loss rises `patience` epochs in a row or `total_epochs`.
`checkpoints/last.pt` is written after clustering and after every epoch, `iteration_NN.pt` when
an iteration's training ends; a relaunch or `--resume` continues from `last.pt`. Run folder:
docs/DESIGN.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from xdc import clustering
from xdc import distributed as dist_utils
from xdc.checkpoint import restore_rank_rng
from xdc.clustering.pseudo_labels import (
    PseudoLabels,
    cluster_feature_sets,
    describe_clusters,
    iteration_features,
)
from xdc.config import (
    AUTO,
    ConfigError,
    PretrainConfig,
    default_pretrain_config,
    load_config,
    save_config,
)
from xdc.console import run_log
from xdc.data.datasets import AudioVideoClips, EpochSampler, as_manifest, clip_loader
from xdc.data.manifest import (
    Manifest,
    ManifestError,
    describe_dropped,
    read_manifest,
    release_free_memory,
    usable_rows,
    write_manifest,
)
from xdc.methods import METHODS, MODALITIES, HeadSpec, Method, get_method
from xdc.training.loop import (
    PretrainModel,
    average_buffers,
    build_pretrain_model,
    load_encoders,
    train_one_epoch,
    validation_loss,
)
from xdc.training.monitor import (
    epoch_record,
    log_clusters,
    log_epoch,
    log_training,
    print_closing_summary,
    print_pretrain_plan,
    rank_digests,
    tensorboard_writer,
)
from xdc.training.resume import (
    IterationState,
    resume_state,
    save_checkpoints,
    take_run_folder,
)
from xdc.training.run_folder import RunFolder, RunFolderError
from xdc.training.schedule import (
    EarlyStopping,
    effective_lr,
    make_scheduler,
    steps_per_epoch,
)
from xdc.training.sizes import K_RULE, auto_k, fit_to_data, held_out_videos

# ----------------------------------------------------------------------------------- the command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="CONFIG", help="a YAML file or packaged name (e.g. tiny_cpu, "
                        "pretrain/cpu.yaml; default: dc_kinetics on a GPU, cpu otherwise)")
    parser.add_argument("--data", type=Path, metavar="MANIFEST",
                        help="manifest CSV written by `xdc scan` or `xdc prepare` (a new run needs it)")
    parser.add_argument("-o", "--out", type=Path, metavar="OUT", help="run folder to create, or to continue "
                        "when it holds this same run (same config and manifest rows)")
    parser.add_argument("--method", choices=tuple(METHODS), metavar="METHOD",
                        help=f"{', '.join(METHODS)} (rand: random labels, the control; superv: the manifest's "
                        f"labels) (default: the config's `method`: xdc, superv in superv_*)")
    parser.add_argument("--resume", type=Path, metavar="RUN",
                        help="continue an interrupted run from RUN/checkpoints/last.pt")
    parser.add_argument("--drop-missing", action="store_true",
                        help="rows whose file is gone become skip rows instead of stopping the start")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.lr=0.005 cluster.k_video=32")


def setup(args: argparse.Namespace) -> tuple[PretrainConfig, list[dict], Path]:
    """Config, usable manifest rows and run folder of a new run, or of the run to resume."""
    if args.resume is not None:
        if args.config or args.data or args.method or args.overrides:
            raise RunFolderError("--resume takes the run folder only: its config.yaml and rows.csv are reused")
        run = RunFolder(args.resume)
        if not run.config.is_file():  # a run killed before its first checkpoint restarts from scratch
            raise RunFolderError(f"nothing to resume: {run.config} not found")
        cfg = load_config(run.config)
        return cfg, read_manifest(run.rows, check_files=cfg.data.check_files), run.root
    if args.data is None or args.out is None:
        raise RunFolderError("xdc pretrain needs --data MANIFEST and --out OUT (or --resume RUN)")
    overrides = list(args.overrides) + ([f"method={args.method}"] if args.method else [])
    cfg = load_config(args.config or default_pretrain_config(), overrides)
    manifest = read_manifest(args.data, drop_missing=getattr(args, "drop_missing", False),
                             check_files=cfg.data.check_files)
    rows, dropped = usable_rows(manifest, require_audio=True)
    if len(rows) < 2:  # say why the rows went, before any count of clusters does
        raise ManifestError(f"{args.data}: {len(rows)} usable video(s) of {len(manifest)}, pretraining needs "
                            f"at least 2: {describe_dropped(dropped)}")
    check_inputs(cfg, rows)
    if os.environ.get("RANK", "0") == "0":  # rank 0 (torchrun sets RANK; the process group starts in pretrain())
        print(f"{args.data}: {len(rows)} usable videos, {describe_dropped(dropped)}", flush=True)
    return cfg, rows, args.out


def check_inputs(cfg: PretrainConfig, rows: list[dict]) -> None:
    """What would fail later, said before any work: too few videos for k, superv without labels."""
    method = METHODS[cfg.method]
    ks = {name: method().num_clusters(name, cfg.cluster) for name in method.clusterings}
    too_many = {name: k for name, k in ks.items() if k != AUTO and k > len(rows)}
    if too_many:  # all at once, each with a value that fits
        given = ", ".join(f"cluster.k_{name}={k}" for name, k in too_many.items())
        fits = " ".join(f"cluster.k_{name}={auto_k(name, len(rows))}" for name in too_many)
        raise ConfigError(f"{given}: more clusters than the {len(rows)} usable videos of the manifest: "
                          f"give {fits} (or `auto`: {K_RULE})")
    if cfg.method == "superv" and any(label in (None, "") for label in as_manifest(rows).text("label")):
        raise ConfigError("method superv needs a manifest with a `label` on every row "
                          "(e.g. `xdc scan --labels-from-dirs`)")


def run(args: argparse.Namespace) -> int:
    cfg, rows, run_dir = setup(args)
    # SIGTERM (cluster schedulers, `kill`) ends the run like Ctrl-C: cleanly, between two writes;
    # the last checkpoint stays whole (atomic), and --resume goes on from it.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        pretrain(cfg, rows, run_dir, resume=args.resume is not None)
    except KeyboardInterrupt:
        print(f"interrupted; continue with: xdc pretrain --resume {run_dir}", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        dist_utils.cleanup()
    return 0


# ------------------------------------------------------------------------------ the parts

def split_train_val(num_videos: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (seeded) split of video indices into training and held-out validation videos."""
    if num_videos < 2:
        raise ValueError(f"pretraining needs at least 2 usable videos (one held out), got {num_videos}")
    order = np.random.default_rng(seed).permutation(num_videos)
    num_val = held_out_videos(num_videos, val_fraction)
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def shard(indices: np.ndarray) -> np.ndarray:
    """This rank's share of `indices` (strided like clustering.shard_indices)."""
    return indices[clustering.shard_indices(len(indices), dist_utils.rank(), dist_utils.world_size())]


def make_loader(dataset, cfg: PretrainConfig, device: torch.device, sampler=None) -> DataLoader:
    return clip_loader(dataset, cfg.optim.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                       pin_memory=device.type == "cuda")


def sampling_weights(videos: np.ndarray, labels: dict[str, np.ndarray], specs: list[HeadSpec],
                     method: Method, cfg: PretrainConfig) -> np.ndarray | None:
    """None (shuffled passes over `videos`), or weights uniform over clusters (DeepCluster)."""
    if not method.use_uniform_sampling(cfg.cluster):
        return None
    # Each label set the heads predict gets its clusters equal weight; average over sets.
    targets = sorted({s.target for s in specs})
    return np.mean([clustering.uniform_over_clusters_weights(labels[t][videos]) for t in targets], axis=0)


def labelled(indices: np.ndarray, labels: dict[str, np.ndarray]) -> np.ndarray:
    """Those of `indices` that have a label for every head (-1: no features were extracted)."""
    return indices[np.all([(labels[t][indices] >= 0).reshape(len(indices), -1).all(1) for t in labels], axis=0)]


@dataclass
class Pretraining:
    """What every iteration uses, set up once."""

    cfg: PretrainConfig
    run: RunFolder
    device: torch.device
    rows: Manifest
    method: Method
    model: PretrainModel
    train_set: AudioVideoClips
    val_set: AudioVideoClips  # one centre clip per video
    train_idx: np.ndarray
    val_idx: np.ndarray
    lr: float  # the base lr the schedule multiplies (optim.lr, or scaled: schedule.effective_lr)
    steps: int  # SGD steps per epoch on this world size
    writer: object | None  # TensorBoard (rank 0)

    @classmethod
    def set_up(cls, cfg: PretrainConfig, rows: Manifest, run: RunFolder, device: torch.device) -> Pretraining:
        train_set = AudioVideoClips(rows, cfg.data, mode="train")
        truth = train_set.labels  # class index per row, or None without labels
        train_idx, val_idx = split_train_val(len(rows), cfg.optim.val_fraction, cfg.seed)
        if len(val_idx) > cfg.optim.val_max_videos:  # a seeded subset: the loss needs no more at scale
            val_idx = np.sort(np.random.default_rng(cfg.seed).choice(val_idx, cfg.optim.val_max_videos, replace=False))
        return cls(cfg=cfg, run=run, device=device, rows=rows,
                   method=get_method(cfg.method, list(rows.text("label")) if truth is not None else None),
                   model=build_pretrain_model(cfg, device), train_set=train_set,
                   val_set=AudioVideoClips(rows, cfg.data, mode="eval", clips_per_video=1),
                   train_idx=train_idx, val_idx=val_idx, lr=effective_lr(cfg.optim, dist_utils.world_size()),
                   steps=steps_per_epoch(cfg.optim, dist_utils.world_size()),
                   writer=tensorboard_writer(run.tensorboard, cfg))


def cluster(p: Pretraining, iteration: int) -> PseudoLabels:
    """Steps (a)-(b): the method's feature sets of every video clustered (the work is
    xdc.clustering.pseudo_labels'), the labels its heads predict, and their record."""
    cfg, method, model, started = p.cfg, p.method, p.model, time.perf_counter()
    results, skipped = {}, 0
    if method.clusterings:
        encoders = {"video": model.video_encoder, "audio": model.audio_encoder}
        handcrafted = iteration == 0 and cfg.cluster.first_features == "handcrafted"
        # Running statistics of freshly initialised BatchNorm layers are meaningless: recomputed on
        # at most 50 batches, and no more than the smallest shard's full batches.
        fewest = max(1, (len(p.rows) // dist_utils.world_size()) // cfg.optim.batch_size)
        features = iteration_features(
            AudioVideoClips(p.rows, cfg.data, mode="eval", clips_per_video=cfg.cluster.clips_per_video),
            p.run.features, iteration, p.device, batch_size=cfg.optim.batch_size, num_workers=cfg.data.num_workers,
            amp=cfg.amp, encoders=None if handcrafted else encoders, video_descriptor=cfg.cluster.video_descriptor,
            recompute_batches=min(50, fewest) if iteration == 0 and not cfg.init_from else 0)
        ks = {name: method.num_clusters(name, cfg.cluster) for name in method.clusterings}
        results, skipped = cluster_feature_sets(
            features, method.cluster_inputs(features), ks, len(p.rows), cfg.cluster,
            method.use_reassign_empty(cfg.cluster), seed=cfg.seed * 1000 + iteration, device=p.device)
    labels = method.make_labels({name: r.labels for name, r in results.items()}, len(p.rows), iteration,
                                cfg.seed, cfg.cluster)
    record = {"iteration": iteration, "seconds_clustering": round(time.perf_counter() - started, 2),
              "skipped_clustering": skipped,
              "digests": rank_digests(labels, [model.video_encoder, model.audio_encoder])}
    if dist_utils.is_main():  # only rank 0 writes the record
        modality_labels = method.modality_labels(labels)
        # k-means' own empty count (before any reassignment) of the clustering behind each modality
        # (CDC's: the joint one; RAND and Superv cluster nothing).
        empty = {m: (results.get(m) or results["joint"]).empty_clusters for m in modality_labels} if results else {}
        previous = {m: p.run.read_labels(iteration - 1, m) for m in MODALITIES} if iteration else {}
        record |= describe_clusters(modality_labels, method.modality_num_classes(cfg.cluster), previous,
                                    p.train_set.labels, empty)
    return PseudoLabels(labels, record)


# ------------------------------------------------------------------------------------- the loop

def pretrain(cfg: PretrainConfig, rows: list[dict], run_dir: str | Path, resume: bool = False) -> dict:
    """Run (or, with `resume`, continue) pretraining into `run_dir`; returns the summary. A run
    folder that already holds this run (`resume.same_run`) is continued as with `resume`:
    relaunching the same command is how torchrun --max-restarts and schedulers bring a run back."""
    device = dist_utils.init_distributed(cfg.device, cfg.dist.timeout_minutes)  # ranks are known from here on
    rows = as_manifest(rows)
    cfg, fitted = fit_to_data(cfg, len(rows))  # config.yaml records the numbers the run uses
    run = RunFolder(run_dir)
    with take_run_folder(run, cfg, rows, resume) as resumed, run_log(run.log):  # the log: once the folder is ours
        return _pretrain(cfg, rows, run, resumed, device, fitted)


def _pretrain(cfg: PretrainConfig, rows: Manifest, run: RunFolder, resumed: bool, device: torch.device,
              fitted: list[str]) -> dict:
    # ============ set-up: run folder, data, method, model ============
    release_free_memory()  # what reading and filtering the manifest freed: back to the OS
    if dist_utils.is_main() and not resumed:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        write_manifest(rows, run.rows, relative=False)  # rows first: config.yaml marks a complete pair
        save_config(cfg, run.config)
    dist_utils.barrier()
    p = Pretraining.set_up(cfg, rows, run, device)

    # ============ a fresh start, or where the last checkpoint left off ============
    # (a run killed before its first checkpoint starts afresh, reusing the features it extracted)
    checkpoint = resume_state(run) if resumed else None
    state = IterationState.from_checkpoint(checkpoint) if checkpoint else IterationState()
    summary: list[dict] = json.loads(checkpoint["summary"]) if checkpoint else []
    if checkpoint:
        load_encoders(p.model, checkpoint, run.last)
        if dist_utils.is_main():
            print(f"resumed {run.root} at iteration {state.iteration}, epoch {state.epoch}"
                  + (": the run is complete" if state.iteration >= cfg.iterations else ""), flush=True)
    started = time.perf_counter()
    print_pretrain_plan(cfg, rows, p.model, device, fitted)
    if checkpoint:  # each rank's random streams as they were: nothing before the loop draws after this
        restore_rank_rng(checkpoint["rng"])

    while state.iteration < cfg.iterations:
        state, summary = run_iteration(p, state, summary)

    if p.writer is not None:
        p.writer.close()
    result = {"method": cfg.method, "iterations": summary}
    if dist_utils.is_main():
        print_closing_summary(result, run.root, time.perf_counter() - started, device)
    return result


def run_iteration(p: Pretraining, state: IterationState, summary: list[dict]) -> tuple[IterationState, list[dict]]:
    """One iteration from `state` (its start, or where a checkpoint left it) to its end. Returns
    the next iteration's start and the summary with this iteration's record. Its loaders (and
    their worker processes) end with it, before the next clustering starts its own."""
    cfg, o, model, run, device = p.cfg, p.cfg.optim, p.model, p.run, p.device
    # ============ cluster: features -> k-means -> pseudo-labels ============
    if state.labels is None:  # not resumed after this iteration's clustering
        pseudo = cluster(p, state.iteration)
        state, summary = replace(state, labels=pseudo.labels), [*summary, pseudo.record]
        if dist_utils.is_main():
            run.save_labels(state.iteration, p.method.modality_labels(pseudo.labels))
            log_clusters(p.writer, pseudo.record, state.global_step)
        save_checkpoints(run, model, cfg, state, summary)
    labels = state.labels

    # ============ fresh heads, optimizer and lr schedule (resumed: the checkpoint's) ============
    model.reset_heads(p.method.heads(cfg.cluster), state.heads)
    specs = model.head_specs
    optimizer = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    early_stop = EarlyStopping(o.patience)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)  # momentum; the lr comes from the schedule
        early_stop.load_state_dict(state.early_stop)
    # The schedule's position is the epochs done, not a step count: steps per epoch depend on the
    # number of ranks, and a run may resume on another.
    scheduler = make_scheduler(optimizer, o, p.steps, state.epoch, base_lr=p.lr)
    # New heads are new parameters, so DDP wraps the model again each iteration.
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_utils.is_distributed() else model

    # ============ this iteration's data ============
    labels_t = {k: torch.as_tensor(v, device=device) for k, v in labels.items()}
    train_videos, val_videos = labelled(p.train_idx, labels), shard(labelled(p.val_idx, labels))
    # What a head that learns only the cluster sizes scores: chance, below ln k when unbalanced.
    prior = {s.name: s.chance_loss if s.multilabel else clustering.label_entropy(labels[s.target][train_videos])
             for s in specs}
    # One loader for the iteration, its workers kept across epochs; the sampler draws `epoch_size`
    # of `train_videos` per epoch (a distinct draw per epoch, the same after a resume).
    sampler = EpochSampler(len(train_videos), o.epoch_size, seed=cfg.seed, items=train_videos,
                           weights=sampling_weights(train_videos, labels, specs, p.method, cfg))
    loader = make_loader(p.train_set, cfg, device, sampler)
    # Without early stopping the validation loss decides nothing: not computed (val_loss null).
    val_loader = make_loader(Subset(p.val_set, val_videos), cfg, device) if o.early_stop else None

    # ============ train until the validation loss saturates ============
    on_log = None if p.writer is None else functools.partial(log_training, p.writer)
    for epoch in range(state.epoch, o.total_epochs):
        sampler.set_epoch(state.iteration * o.total_epochs + epoch)
        where = f"iteration {state.iteration} epoch {epoch + 1}/{o.total_epochs}"
        train = train_one_epoch(ddp, specs, loader, labels_t, optimizer, scheduler, device, cfg.amp,
                                o.head_reduction, where, on_log, first_step=state.global_step)
        average_buffers(model)
        val = validation_loss(model, specs, val_loader, labels_t, device, cfg.amp, o.head_reduction) \
            if val_loader is not None else None
        stop = val is not None and early_stop.step(val["loss"])
        state = replace(state, epoch=epoch + 1, global_step=state.global_step + train["steps"],
                        heads=model.heads.state_dict(), head_specs=specs, optimizer=optimizer.state_dict(),
                        early_stop=early_stop.state_dict())
        record = epoch_record(summary[-1], epoch, train, val, stop, specs, prior)  # this iteration's, so far
        summary = [*summary[:-1], record]
        log_epoch(p.writer, record, train, val, specs, epoch, o.total_epochs, state.global_step, stop)
        if train["skipped"] and train["skip_summary"]:
            print(f"rank {dist_utils.rank()}: {train['skip_summary']}", flush=True)
        save_checkpoints(run, model, cfg, state, summary, iteration_done=stop or epoch + 1 == o.total_epochs)
        if stop:
            break
    return state.next_iteration(), summary


if __name__ == "__main__":  # torchrun -m xdc.pretrain: the same command, errors said the same way
    from xdc.cli import main

    sys.exit(main(["pretrain", *sys.argv[1:]]))
