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
import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from xdc import clustering
from xdc import distributed as dist_utils
from xdc.checkpoint import rank_rng_states, restore_rank_rng, save_checkpoint
from xdc.clustering.features import no_features_error
from xdc.config import (
    ConfigError,
    PretrainConfig,
    config_to_yaml,
    default_pretrain_config,
    load_config,
    save_config,
)
from xdc.data.datasets import AudioVideoClips, EpochSampler, as_manifest, clip_loader
from xdc.data.manifest import (
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
    weights_digest,
)
from xdc.training.monitor import (
    log_clusters,
    log_epoch,
    logged_run,
    print_closing_summary,
    print_pretrain_plan,
    rank_digests,
    tensorboard_writer,
)
from xdc.training.resume import resume_state, take_run_folder
from xdc.training.run_folder import RunFolder, RunFolderError
from xdc.training.schedule import (
    EarlyStopping,
    effective_lr,
    make_scheduler,
    steps_per_epoch,
)

# ----------------------------------------------------------------------------------- the command

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a YAML file or packaged name (e.g. tiny_cpu, pretrain/cpu.yaml; "
                        "default: dc_kinetics on a GPU, cpu otherwise)")
    parser.add_argument("--data", type=Path, help="manifest CSV written by `xdc scan`")
    parser.add_argument("-o", "--out", type=Path, help="run folder to create, or to continue when it holds this "
                        "same run (same config and manifest rows)")
    parser.add_argument("--method", choices=tuple(METHODS), help=f"overrides the config's `method`: "
                        f"{', '.join(METHODS)} (rand: random labels, the control; superv: the manifest's labels)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue an interrupted run from RUN_DIR/checkpoints/last.pt")
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
        raise RunFolderError("xdc pretrain needs --data MANIFEST and --out RUN_DIR (or --resume RUN_DIR)")
    overrides = list(args.overrides) + ([f"method={args.method}"] if args.method else [])
    cfg = load_config(args.config or default_pretrain_config(), overrides)
    manifest = read_manifest(args.data, drop_missing=getattr(args, "drop_missing", False),
                             check_files=cfg.data.check_files)
    rows, dropped = usable_rows(manifest, require_audio=True)
    if len(rows) < 2:  # say why the rows went, before any count of clusters does
        raise ManifestError(f"{args.data}: {len(rows)} usable video(s) of {len(manifest)}, pretraining needs "
                            f"at least 2: {describe_dropped(dropped)}")
    check_inputs(cfg, rows)
    dist_utils.init_distributed(cfg.device, cfg.dist.timeout_minutes)  # so that only rank 0 prints
    if dist_utils.is_main():
        print(f"{args.data}: {len(rows)} usable videos, {describe_dropped(dropped)}", flush=True)
    return cfg, rows, args.out


def check_inputs(cfg: PretrainConfig, rows: list[dict]) -> None:
    """What would fail later, said before any work: too few videos for k, superv without labels."""
    method = METHODS[cfg.method]
    for name in method.clusterings:
        k = method().num_clusters(name, cfg.cluster)
        if k > len(rows):
            raise ConfigError(f"cluster.k_{name}={k} is more than the {len(rows)} usable videos of the "
                              f"manifest: lower it (a few videos per cluster at least)")
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
    num_val = min(num_videos - 1, max(1, round(val_fraction * num_videos)))
    return np.sort(order[num_val:]), np.sort(order[:num_val])


def shard(indices: np.ndarray) -> np.ndarray:
    """This rank's share of `indices` (strided like clustering.shard_indices)."""
    return indices[clustering.shard_indices(len(indices), dist_utils.rank(), dist_utils.world_size())]


def make_loader(dataset, cfg: PretrainConfig, device: torch.device, sampler=None) -> DataLoader:
    return clip_loader(dataset, cfg.optim.batch_size, sampler=sampler, num_workers=cfg.data.num_workers,
                       pin_memory=device.type == "cuda")


def cluster(model: PretrainModel, method: Method, rows: list[dict], cfg: PretrainConfig, iteration: int,
            device: torch.device, run: RunFolder, truth: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict]:
    """Steps (a)-(b): features, k-means on the method's feature sets, pseudo-labels (the same on
    every rank, -1 for a video without features), and the record of how the clusters look."""
    started = time.perf_counter()
    results, skipped = {}, 0
    if method.clusterings:
        mine = shard(np.arange(len(rows)))
        dataset = AudioVideoClips(rows, cfg.data, mode="eval", clips_per_video=cfg.cluster.clips_per_video)

        def loader_of(items: np.ndarray) -> DataLoader:
            return make_loader(Subset(dataset, items), cfg, device)

        # Features a crashed attempt at this same extraction wrote are kept: only the rest is read.
        if iteration == 0 and cfg.cluster.first_features == "handcrafted":
            key = f"iteration 0: handcrafted, video {cfg.cluster.video_descriptor}"
            todo = mine[~clustering.extracted(run.features, key, mine)]
            features = clustering.handcrafted_features(loader_of(todo), len(rows), run.features, indices=mine,
                                                       key=key, video_descriptor=cfg.cluster.video_descriptor)
        else:
            encoders = {"video": model.video_encoder, "audio": model.audio_encoder}
            if iteration == 0 and not cfg.init_from:
                # Running statistics of freshly initialised BatchNorm layers are meaningless. Every
                # rank uses the same number of batches (SyncBatchNorm syncs each forward).
                fewest = max(1, (len(rows) // dist_utils.world_size()) // cfg.optim.batch_size)
                clustering.recompute_batchnorms(encoders, loader_of(mine), device, min(50, fewest), cfg.amp)
            weights = f"{weights_digest(model.video_encoder)} {weights_digest(model.audio_encoder)}"
            key = f"iteration {iteration}: weights {weights}"
            todo = mine[~clustering.extracted(run.features, key, mine)]
            features = clustering.extract_features(encoders, loader_of(todo), len(rows), run.features, device,
                                                   amp=cfg.amp, indices=mine, key=key)
        skipped = int(dist_utils.all_reduce_sum(torch.tensor(float(len(features.skipped)))))
        have = int(dist_utils.all_reduce_sum(torch.tensor(float(features.present.sum()))))
        for name, x in method.cluster_inputs(features).items():
            if have < method.num_clusters(name, cfg.cluster):
                raise no_features_error(name, have, method.num_clusters(name, cfg.cluster), len(rows),
                                        features.skipped)
            results[name] = clustering.cluster_features(
                x, features.indices[features.present], len(rows), method.num_clusters(name, cfg.cluster),
                cfg.cluster, reassign_empty=method.use_reassign_empty(cfg.cluster),
                seed=cfg.seed * 1000 + iteration)
    labels = method.make_labels({name: r.labels for name, r in results.items()}, len(rows), iteration,
                                cfg.seed, cfg.cluster)
    record = {"iteration": iteration, "seconds_clustering": round(time.perf_counter() - started, 2),
              "skipped_clustering": skipped, "digests": rank_digests(labels, model)}
    if not dist_utils.is_main():  # only rank 0 writes the record
        return labels, record
    previous = {m: run.read_labels(iteration - 1, m) for m in MODALITIES} if iteration else {}
    num_classes = method.modality_num_classes(cfg.cluster)
    for modality, values in method.modality_labels(labels).items():
        # k-means' own empty count (before any reassignment) of the clustering behind `modality`.
        source = results.get(modality) or results.get("joint")
        record[modality] = clustering.cluster_stats(values, num_classes[modality], previous.get(modality), truth,
                                         None if source is None else source.empty_clusters)
    return labels, record


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


def save(path: Path, model: PretrainModel, cfg: PretrainConfig, position: dict, summary: list[dict],
         training: dict | None = None) -> None:
    """A checkpoint (docs/DESIGN.md): encoders, where the run continues (`iteration`, `epoch`),
    every rank's random state and, mid-iteration, the labels, heads and optimizer (`training`)."""
    states = rank_rng_states()
    if dist_utils.is_main():
        save_checkpoint({"video_encoder": model.video_encoder.state_dict(),
                         "audio_encoder": model.audio_encoder.state_dict(), **position,
                         "summary": json.dumps(summary), "config": config_to_yaml(cfg), "rng": states,
                         **(training or {})}, path)
    dist_utils.barrier()


# ------------------------------------------------------------------------------------- the loop

def pretrain(cfg: PretrainConfig, rows: list[dict], run_dir: str | Path, resume: bool = False) -> dict:
    """Run (or, with `resume`, continue) pretraining into `run_dir`; returns the summary. A run
    folder that already holds this run (`resume.same_run`) is continued as with `resume`:
    relaunching the same command is how torchrun --max-restarts and schedulers bring a run back."""
    dist_utils.init_distributed(cfg.device, cfg.dist.timeout_minutes)  # ranks are known from here on
    rows = as_manifest(rows)
    with take_run_folder(RunFolder(run_dir), cfg, rows, resume) as resume:
        return _pretrain(cfg, rows, run_dir, resume)


@logged_run  # RUN_DIR/log.txt, written once the folder is ours
def _pretrain(cfg: PretrainConfig, rows: list[dict], run_dir: str | Path, resume: bool) -> dict:
    # ============ set-up: device, run folder, data, method, model ============
    release_free_memory()  # what reading and filtering the manifest freed: back to the OS
    device = dist_utils.init_distributed(cfg.device, cfg.dist.timeout_minutes)
    run = RunFolder(run_dir)
    if dist_utils.is_main() and not resume:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        write_manifest(rows, run.rows, relative=False)  # rows first: config.yaml marks a complete pair
        save_config(cfg, run.config)
    dist_utils.barrier()
    train_set = AudioVideoClips(rows, cfg.data, mode="train")
    val_set = AudioVideoClips(rows, cfg.data, mode="eval", clips_per_video=1)  # the centre clip
    truth = train_set.labels  # class index per row, or None without labels
    method = get_method(cfg.method, list(rows.text("label")) if truth is not None else None)
    train_idx, val_idx = split_train_val(len(rows), cfg.optim.val_fraction, cfg.seed)
    if len(val_idx) > cfg.optim.val_max_videos:  # a seeded subset: the loss needs no more at scale
        val_idx = np.sort(np.random.default_rng(cfg.seed).choice(val_idx, cfg.optim.val_max_videos, replace=False))
    model = build_pretrain_model(cfg, device)
    steps = steps_per_epoch(cfg.optim, dist_utils.world_size())
    lr = effective_lr(cfg.optim, dist_utils.world_size())
    writer = tensorboard_writer(run.tensorboard, cfg)

    # ============ a fresh start, or where the last checkpoint left off ============
    # (a run killed before its first checkpoint starts afresh, reusing the features it extracted)
    state = resume_state(run) if resume else {}
    summary: list[dict] = json.loads(state.get("summary", "[]"))
    global_step = int(state.get("global_step", 0))
    if state:
        load_encoders(model, state, run.last)
        if dist_utils.is_main():
            print(f"resumed {run.root} at iteration {state['iteration']}, epoch {state['epoch']}"
                  + (": the run is complete" if state["iteration"] >= cfg.iterations else ""), flush=True)
    started = time.perf_counter()
    print_pretrain_plan(cfg, rows, model, device)

    for iteration in range(int(state.get("iteration", 0)), cfg.iterations):
        # ============ cluster: features -> k-means -> pseudo-labels ============
        mid_iteration = "labels" in state  # resumed after this iteration's clustering
        if mid_iteration:
            labels = {name: values.numpy() for name, values in state["labels"].items()}
        else:
            if state:
                restore_rank_rng(state["rng"])
            labels, record = cluster(model, method, rows, cfg, iteration, device, run, truth)
            summary.append(record)
            if dist_utils.is_main():
                run.save_labels(iteration, method.modality_labels(labels))
                log_clusters(writer, record, global_step)
        record = summary[-1]

        # ============ fresh heads, optimizer and lr schedule ============
        model.reset_heads(method.heads(cfg.cluster))
        specs = model.head_specs
        o = cfg.optim
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
        early_stop = EarlyStopping(o.patience)
        # New heads are new parameters, so DDP wraps the model again each iteration.
        ddp = model
        if dist_utils.is_distributed():
            ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

        def training_state() -> dict:
            return {"labels": {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in labels.items()},
                    "heads": model.heads.state_dict(),
                    "head_specs": [[s.encoder, s.target, s.num_classes, s.multilabel] for s in specs],
                    "optimizer": optimizer.state_dict(), "early_stop": early_stop.state_dict(),
                    "global_step": global_step}

        first_epoch = 0
        if mid_iteration:
            model.heads.load_state_dict(state["heads"])
            optimizer.load_state_dict(state["optimizer"])  # momentum; the lr comes from the schedule
            early_stop.load_state_dict(state["early_stop"])
            restore_rank_rng(state["rng"])
            first_epoch = int(state["epoch"])
        # The schedule's position is the epochs done, not a step count: steps per epoch depend on
        # the number of ranks, and a run may resume on another.
        scheduler = make_scheduler(optimizer, o, steps, first_epoch, base_lr=lr)
        if not mid_iteration:
            run.write_summary(cfg.method, summary)
            save(run.last, model, cfg, {"iteration": iteration, "epoch": 0}, summary, training_state())
        state = {}
        labels_t = {k: torch.as_tensor(v, device=device) for k, v in labels.items()}
        train_videos, val_videos = labelled(train_idx, labels), shard(labelled(val_idx, labels))
        # What a head that learns only the cluster sizes scores: chance, below ln k when unbalanced.
        prior = {s.name: s.chance_loss if s.multilabel else clustering.label_entropy(labels[s.target][train_videos])
                 for s in specs}
        # One loader per iteration, its workers kept across epochs; the sampler draws `epoch_size`
        # of `train_videos` per epoch (a distinct draw per epoch, the same after a resume).
        sampler = EpochSampler(len(train_videos), o.epoch_size, seed=cfg.seed, items=train_videos,
                               weights=sampling_weights(train_videos, labels, specs, method, cfg))
        loader = make_loader(train_set, cfg, device, sampler)
        # Without early stopping the validation loss decides nothing: not computed (val_loss null).
        val_loader = make_loader(Subset(val_set, val_videos), cfg, device) if o.early_stop else None

        # ============ train until the validation loss saturates ============
        for epoch in range(first_epoch, o.total_epochs):
            def on_step(step: int, loss: float) -> None:
                nonlocal global_step
                global_step += 1
                if writer is not None:
                    writer.add_scalar("train/loss", loss, global_step)
                    writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], global_step)

            sampler.set_epoch(iteration * o.total_epochs + epoch)
            train = train_one_epoch(ddp, specs, loader, labels_t, optimizer, scheduler, device, cfg.amp,
                                    o.head_reduction, f"iter {iteration} epoch {epoch}", on_step)
            average_buffers(model)
            val = None
            if val_loader is not None:
                val = validation_loss(model, specs, val_loader, labels_t, device, cfg.amp, o.head_reduction)
            stop = val is not None and early_stop.step(val["loss"])
            record.update(epochs=epoch + 1, train_loss=train["loss"], val_loss=val and val["loss"],
                          train_clips=train["clips"], stopped_early=bool(stop),
                          skipped=record.get("skipped", 0) + train["skipped"] + (val["skipped"] if val else 0),
                          heads={s.name: {"train_loss": train["heads"][s.name],
                                          "val_loss": val and val["heads"][s.name],
                                          "chance": s.chance_loss, "prior_entropy": prior[s.name]}
                                 for s in specs})
            log_epoch(writer, record, train, val, specs, epoch, o.total_epochs, global_step, stop)
            if train["skipped"] and train["skip_summary"]:
                print(f"rank {dist_utils.rank()}: {train['skip_summary']}", flush=True)
            run.write_summary(cfg.method, summary)
            save(run.last, model, cfg, {"iteration": iteration, "epoch": epoch + 1}, summary, training_state())
            if stop:
                break

        # ============ the iteration's record; the next one starts from its encoders ============
        save(run.iteration_checkpoint(iteration), model, cfg, {"iteration": iteration, "epoch": record["epochs"]},
             summary, training_state())
        save(run.last, model, cfg, {"iteration": iteration + 1, "epoch": 0, "global_step": global_step}, summary)

    if writer is not None:
        writer.close()
    result = {"method": cfg.method, "iterations": summary}
    if dist_utils.is_main():
        print_closing_summary(result, run.root, time.perf_counter() - started, device)
    return result


if __name__ == "__main__":  # torchrun -m xdc.pretrain: the same command, errors said the same way
    from xdc.cli import main

    sys.exit(main(["pretrain", *sys.argv[1:]]))
