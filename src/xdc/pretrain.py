"""`xdc pretrain`: deep-clustering pretraining (XDC, SDC, MDC, CDC, the RAND control, Superv).

    xdc pretrain --config configs/pretrain/tiny_cpu.yaml --data manifest.csv --out runs/xdc
    torchrun --nproc_per_node 2 -m xdc.pretrain --config ... --data ... --out ...
    xdc pretrain --resume runs/xdc

Each iteration n: (a) features of every video (iteration 0: freshly initialised encoders after a
BatchNorm recompute, or hand-crafted features), (b) k-means per the method -> pseudo-labels,
identical on every rank, (c) fresh classification heads, (d) SGD with warmup + step decay until
the validation loss rises `patience` epochs in a row or `total_epochs`, (e) write the iteration's
labels and summary. `checkpoints/last.pt` is written after clustering and after every epoch,
`checkpoints/iteration_NN.pt` after every iteration; `--resume` continues from `last.pt`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from xdc import clustering
from xdc.config import METHODS, ConfigError, PretrainConfig, config_to_yaml, load_config, save_config
from xdc.data.datasets import AudioVideoClips, EpochSampler, clip_loader
from xdc.data.manifest import ManifestError, describe_dropped, read_manifest, usable_rows, write_manifest
from xdc.methods import METHODS as METHOD_CLASSES
from xdc.methods import MODALITIES, Method, get_method
from xdc.models import audio_encoder, video_encoder
from xdc.training import distributed as dist_utils
from xdc.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from xdc.training.loop import PretrainModel, average_buffers, train_one_epoch, validation_loss, weights_digest
from xdc.training.schedule import EarlyStopping, make_scheduler, steps_per_epoch

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (e.g. configs/pretrain/tiny_cpu.yaml)")
    parser.add_argument("--data", type=Path, help="manifest CSV written by `xdc scan`")
    parser.add_argument("--out", type=Path, help="run folder to create")
    parser.add_argument("--method", choices=METHODS, help="overrides the config's `method`")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue an interrupted run from RUN_DIR/checkpoints/last.pt")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. optim.lr=0.005 cluster.k_video=32")


def setup(args: argparse.Namespace) -> tuple[PretrainConfig, list[dict], Path]:
    """Config, usable manifest rows and run folder of a new run, or of the run to resume."""
    if args.resume is not None:
        if args.config or args.data or args.method or args.overrides:
            raise SystemExit("--resume takes the run folder only: its config.yaml and rows.csv are reused")
        run_dir = args.resume
        if not (run_dir / "checkpoints" / "last.pt").is_file():
            raise SystemExit(f"nothing to resume: {run_dir}/checkpoints/last.pt not found")
        return load_config(run_dir / "config.yaml"), read_manifest(run_dir / "rows.csv"), run_dir
    if args.data is None or args.out is None:
        raise SystemExit("xdc pretrain needs --data MANIFEST and --out RUN_DIR (or --resume RUN_DIR)")
    overrides = list(args.overrides) + ([f"method={args.method}"] if args.method else [])
    cfg = load_config(args.config or default_config(), overrides)
    if (args.out / "checkpoints" / "last.pt").exists():
        raise SystemExit(f"{args.out} already holds a run: pass --resume {args.out} to continue it, "
                         f"or choose another --out")
    rows, dropped = usable_rows(read_manifest(args.data), require_audio=True)
    check_inputs(cfg, rows)
    dist_utils.init_distributed(cfg.device)  # so that only rank 0 prints
    if dist_utils.is_main():
        print(f"{args.data}: {len(rows)} usable videos, {describe_dropped(dropped)}", flush=True)
    return cfg, rows, args.out


def check_inputs(cfg: PretrainConfig, rows: list[dict]) -> None:
    """What would fail later, said before any work: too few videos for k, superv without labels."""
    method = METHOD_CLASSES[cfg.method]
    for name in method.clusterings:
        k = method().num_clusters(name, cfg.cluster)
        if k > len(rows):
            raise ConfigError(f"cluster.k_{name}={k} is more than the {len(rows)} usable videos of the "
                              f"manifest: lower it (a few videos per cluster at least)")
    if cfg.method == "superv" and any(row.get("label") in (None, "") for row in rows):
        raise ConfigError("method superv needs a manifest with a `label` on every row "
                          "(e.g. `xdc scan --labels-from-dirs`)")


def default_config() -> Path:
    """Without --config: the paper's Kinetics schedule on a GPU, a CPU-scale one otherwise."""
    name = "dc_kinetics.yaml" if torch.cuda.is_available() else "cpu.yaml"
    path = CONFIGS / name
    print(f"no --config given: using {path}", file=sys.stderr, flush=True)
    return path


def run(args: argparse.Namespace) -> int:
    try:
        cfg, rows, run_dir = setup(args)
    except (ConfigError, ManifestError) as err:
        print(f"xdc pretrain: {err}", file=sys.stderr)
        return 2
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


# ---------------------------------------------------------------------------------------- data

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


# ----------------------------------------------------------------------------------- clustering

def eval_loader(rows: list[dict], cfg: PretrainConfig, device: torch.device, indices: np.ndarray,
                clips: int) -> DataLoader:
    """Eval-mode clips (`clips` per video, centre crop) of the videos `indices`, in order."""
    dataset = AudioVideoClips(rows, cfg.data, mode="eval", clips_per_video=clips)
    return make_loader(Subset(dataset, indices.tolist()), cfg, device)


def compute_features(model: PretrainModel, rows: list[dict], cfg: PretrainConfig, iteration: int,
                     device: torch.device, out_dir: Path) -> clustering.Features:
    """One feature vector per video and modality for this rank's share of the videos:
    hand-crafted (iteration 0, if asked) or from the encoders."""
    mine = shard(np.arange(len(rows)))
    loader = eval_loader(rows, cfg, device, mine, cfg.cluster.clips_per_video)
    if iteration == 0 and cfg.cluster.first_features == "handcrafted":
        return clustering.handcrafted_features(loader, len(rows), out_dir, indices=mine)
    encoders = {"video": model.video_encoder, "audio": model.audio_encoder}
    if iteration == 0 and not cfg.init_from:
        # Running statistics of freshly initialised BatchNorm layers are meaningless.
        # Every rank uses the same number of batches (SyncBatchNorm syncs each forward).
        fewest = max(1, (len(rows) // dist_utils.world_size()) // cfg.optim.batch_size)
        for key, encoder in encoders.items():
            clustering.recompute_batchnorm(encoder, loader, key, device, amp=cfg.amp,
                                           max_batches=min(50, fewest))
    return clustering.extract_features(encoders, loader, len(rows), out_dir, device, amp=cfg.amp,
                                       indices=mine)


def cluster_for_method(method: Method, features: clustering.Features, num_videos: int,
                       cfg: PretrainConfig, iteration: int) -> dict[str, clustering.ClusterResult]:
    """Cluster each feature set the method asks for ("joint" = [f_v; f_a], each L2-normalised).
    Labels are identical on every rank; -1 marks a video without features."""
    present = features.present
    results = {}
    for name in method.clusterings:
        if name == "joint":
            x = np.concatenate([clustering.l2_normalise(features["video"][present]),
                                clustering.l2_normalise(features["audio"][present])], axis=1)
        else:
            x = features[name][present]
        results[name] = clustering.cluster_features(
            x, features.indices[present], num_videos, method.num_clusters(name, cfg.cluster),
            cfg.cluster, reassign_empty=method.use_reassign_empty(cfg.cluster),
            seed=cfg.seed * 1000 + iteration)
    return results


def cluster_stats(labels: np.ndarray, k: int, previous: np.ndarray | None, truth: np.ndarray | None,
                  kmeans_empty: int | None = None) -> dict:
    """Per-modality summary: sizes, empty clusters (as k-means left them, before any
    reassignment), NMI with the previous iteration's labels and, with true labels, purity/NMI."""
    sizes = clustering.cluster_sizes_summary(labels, k)
    stats = {"num_clusters": int(k),
             "empty_clusters": sizes["empty_clusters"] if kmeans_empty is None else int(kmeans_empty),
             "empty_after_reassignment": sizes["empty_clusters"],
             "unlabelled": int((labels < 0).sum()),
             "sizes": {key: sizes[key] for key in ("min", "median", "max")},
             "nmi_prev": None if previous is None else clustering.nmi(labels, previous)}
    if truth is not None:
        stats["purity"] = clustering.purity(labels, truth)
        stats["nmi"] = clustering.nmi(labels, truth)
    return stats


def labels_digest(labels: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha1()
    for name in sorted(labels):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(labels[name], dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


# -------------------------------------------------------------------------------------- training

class Pretraining:
    """State of one run: model, optimizer of the current iteration, labels, counters, summary."""

    def __init__(self, cfg: PretrainConfig, rows: list[dict], run_dir: Path, device: torch.device):
        self.cfg, self.rows, self.run_dir, self.device = cfg, rows, Path(run_dir), device
        self.train_set = AudioVideoClips(rows, cfg.data, mode="train")
        self.truth = self.train_set.labels  # class index per row, or None without labels
        self.method = get_method(cfg.method, self.truth)
        self.train_idx, self.val_idx = split_train_val(len(rows), cfg.optim.val_fraction, cfg.seed)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.model = PretrainModel(video_encoder(cfg.model.video_arch, cfg.model.width),
                                   audio_encoder(cfg.model.width))
        # From here on each rank draws its own augmentations (DDP broadcasts rank 0's new heads).
        seed_everything(cfg.seed * 1000 + dist_utils.rank())
        if cfg.model.sync_bn and dist_utils.is_distributed():
            if device.type != "cuda":  # torch's SyncBatchNorm runs on GPUs only
                print("model.sync_bn ignored on CPU: each rank keeps its own BatchNorm statistics",
                      file=sys.stderr, flush=True)
            else:
                self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if cfg.init_from:
            start = load_checkpoint(cfg.init_from)
            self.model.video_encoder.load_state_dict(start["video_encoder"])
            self.model.audio_encoder.load_state_dict(start["audio_encoder"])
        self.model.to(device)
        if device.type == "cuda":
            self.model.video_encoder.to(memory_format=torch.channels_last_3d)
        self.val_set = AudioVideoClips(rows, cfg.data, mode="eval", clips_per_video=1)  # centre clip
        self.steps = steps_per_epoch(cfg.optim, dist_utils.world_size())
        # What a checkpoint holds (besides weights, optimizer and scheduler).
        self.iteration, self.epoch, self.finished = 0, 0, True
        self.labels: dict[str, np.ndarray] = {}
        self.early_stop = EarlyStopping(cfg.optim.patience)
        self.summary: list[dict] = []
        self.global_step = 0
        self.optimizer = self.scheduler = self.ddp = None
        self.writer = None
        if dist_utils.is_main():
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.run_dir / "tb"))

    # -- iteration set-up --------------------------------------------------------------------
    def new_heads_and_optimizer(self) -> None:
        self.model.reset_heads(self.method.heads(self.cfg.cluster))
        o = self.cfg.optim
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum,
                                         nesterov=False, weight_decay=o.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, o, self.steps)
        # New heads are new parameters, so DDP wraps the model again each iteration.
        if dist_utils.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model

    def cluster(self) -> None:
        """Steps (a)-(c) of iteration `self.iteration`: features, k-means, labels, fresh heads."""
        n, cfg = self.iteration, self.cfg
        started = time.perf_counter()
        previous = self.method.modality_labels(self.labels) if self.labels else None
        results, skipped = {}, 0
        if self.method.clusterings:
            features = compute_features(self.model, self.rows, cfg, n, self.device,
                                        self.run_dir / "features")
            skipped = int(dist_utils.all_reduce_sum(torch.tensor(float(len(features.skipped)))))
            results = cluster_for_method(self.method, features, len(self.rows), cfg, n)
        clusters = {name: r.labels for name, r in results.items()}
        self.labels = self.method.make_labels(clusters, len(self.rows), n, cfg.seed, cfg.cluster)
        # Every rank says what it holds; equal digests show the ranks agree (checked by a test).
        print(f"rank {dist_utils.rank()} iteration {n} labels {labels_digest(self.labels)} "
              f"weights {weights_digest(self.model)}", flush=True)
        record = {"iteration": n, "seconds_clustering": round(time.perf_counter() - started, 2),
                  "skipped_clustering": skipped}
        per_modality = self.method.modality_labels(self.labels)
        num_classes = self.method.modality_num_classes(cfg.cluster)
        # k-means' own empty count (before reassignment) for a modality's own clustering.
        kmeans_empty = {m: r.empty_clusters for m, r in results.items()}
        if "joint" in results:
            kmeans_empty = dict.fromkeys(MODALITIES, results["joint"].empty_clusters)
        for modality, values in per_modality.items():
            record[modality] = cluster_stats(values, num_classes[modality],
                                             None if previous is None else previous[modality],
                                             self.truth, kmeans_empty.get(modality))
        self.summary.append(record)
        self.epoch, self.finished = 0, False
        self.early_stop = EarlyStopping(self.cfg.optim.patience)
        self.new_heads_and_optimizer()
        if dist_utils.is_main():
            folder = self.run_dir / "iterations" / f"{n:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for modality, values in per_modality.items():
                np.save(folder / f"labels_{modality}.npy", values)
            for modality in MODALITIES:
                for key in ("empty_clusters", "nmi_prev", "purity", "nmi"):
                    value = record[modality].get(key)
                    if value is not None:
                        self.writer.add_scalar(f"cluster/{modality}/{key}", value, n)
            self.write_summary()
        self.save("last.pt")

    # -- one epoch ---------------------------------------------------------------------------
    def labelled(self, indices: np.ndarray) -> np.ndarray:
        """Those of `indices` that have a label for every head (-1: no features were extracted)."""
        ok = np.all([self.labels[t][indices] >= 0 for t in self.labels], axis=0)
        return indices[ok]

    def train_loader(self) -> DataLoader:
        """`epoch_size` clips of the training videos: shuffled passes, or uniform over clusters."""
        n, cfg = self.iteration, self.cfg
        videos = self.labelled(self.train_idx)
        weights = None
        if self.method.use_uniform_sampling(cfg.cluster):
            # Each label set the heads predict gets its clusters equal weight; average over sets.
            targets = sorted({s.target for s in self.model.head_specs})
            weights = np.mean([clustering.uniform_over_clusters_weights(self.labels[t][videos])
                               for t in targets], axis=0)
        sampler = EpochSampler(len(videos), cfg.optim.epoch_size, weights=weights, seed=cfg.seed)
        sampler.set_epoch(n * cfg.optim.total_epochs + self.epoch)  # distinct draw per epoch, resumable
        return make_loader(Subset(self.train_set, videos.tolist()), cfg, self.device, sampler)

    def train_epoch(self) -> None:
        n, cfg = self.iteration, self.cfg
        loader = self.train_loader()
        labels = {k: torch.as_tensor(v, device=self.device) for k, v in self.labels.items()}

        def on_step(step: int, loss: float) -> None:
            self.global_step += 1
            if self.writer is not None:
                self.writer.add_scalar("train/loss", loss, self.global_step)
                self.writer.add_scalar("train/lr", self.optimizer.param_groups[0]["lr"], self.global_step)

        train = train_one_epoch(self.ddp, self.model.head_specs, loader, labels, self.optimizer,
                                self.scheduler, self.device, cfg.amp,
                                description=f"iter {n} epoch {self.epoch}", on_step=on_step)
        average_buffers(self.model)
        val_videos = shard(self.labelled(self.val_idx))
        val_loader = make_loader(Subset(self.val_set, val_videos.tolist()), cfg, self.device)
        val, val_skipped = validation_loss(self.model, self.model.head_specs, val_loader, labels,
                                           self.device, cfg.amp)
        self.epoch += 1
        rising = self.early_stop.step(val)  # recorded even when early stopping is off
        stop = cfg.optim.early_stop and rising
        self.finished = stop or self.epoch >= cfg.optim.total_epochs
        record = self.summary[-1]
        record.update(epochs=self.epoch, train_loss=train["loss"], val_loss=val,
                      stopped_early=bool(stop),
                      skipped=record.get("skipped", 0) + train["skipped"] + val_skipped)
        if dist_utils.is_main():
            self.writer.add_scalar("val/loss", val, self.global_step)
            self.writer.add_scalar("train/epoch_loss", train["loss"], self.global_step)
            self.writer.add_scalar("train/data_wait", train["data_wait"], self.global_step)
            print(f"iteration {n} epoch {self.epoch}/{cfg.optim.total_epochs}: train loss "
                  f"{train['loss']:.4f}, val loss {val:.4f}, {train['clips']} clips, skipped "
                  f"{train['skipped']} train / {val_skipped} val, data wait {train['data_wait']:.0%}"
                  + (" -> early stop" if stop else ""), flush=True)
        if train["skipped"] and train["skip_summary"]:
            print(f"rank {dist_utils.rank()}: {train['skip_summary']}", flush=True)
        if dist_utils.is_main():
            self.write_summary()
        self.save("last.pt")
        if self.finished:
            self.save(f"iteration_{n:02d}.pt")

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "video_encoder": self.model.video_encoder.state_dict(),
            "audio_encoder": self.model.audio_encoder.state_dict(),
            "heads": self.model.heads.state_dict(),
            "head_specs": [[s.encoder, s.target, s.num_classes] for s in self.model.head_specs],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "iteration": self.iteration, "epoch": self.epoch, "finished": self.finished,
            "global_step": self.global_step,
            "labels": {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in self.labels.items()},
            "early_stop": self.early_stop.state_dict(),
            "summary": json.dumps(self.summary),
            "config": config_to_yaml(self.cfg),
        }

    def save(self, name: str) -> None:
        # Every rank's RNG state goes in, so that each rank resumes its own random streams.
        states = [rng_state()]
        if dist_utils.is_distributed():
            states = [None] * dist_utils.world_size()
            torch.distributed.all_gather_object(states, rng_state())
        if dist_utils.is_main():
            save_checkpoint(self.state() | {"rng": states}, self.run_dir / "checkpoints" / name)
        dist_utils.barrier()

    def load(self, path: Path) -> None:
        state = load_checkpoint(path)  # on the CPU (see load_checkpoint)
        self.model.video_encoder.load_state_dict(state["video_encoder"])
        self.model.audio_encoder.load_state_dict(state["audio_encoder"])
        self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])
        self.finished, self.global_step = bool(state["finished"]), int(state["global_step"])
        self.labels = {k: v.cpu().numpy() for k, v in state["labels"].items()}
        self.summary = json.loads(state["summary"])
        self.new_heads_and_optimizer()
        self.model.heads.load_state_dict(state["heads"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.early_stop.load_state_dict(state["early_stop"])
        states = state["rng"]
        if len(states) != dist_utils.world_size():
            print(f"rank {dist_utils.rank()}: the checkpoint was written by {len(states)} rank(s); "
                  "random streams restart from rank 0's state", file=sys.stderr, flush=True)
        set_rng_state(states[dist_utils.rank() if len(states) == dist_utils.world_size() else 0])

    def write_summary(self) -> None:
        text = json.dumps({"method": self.cfg.method, "iterations": self.summary}, indent=2)
        tmp = self.run_dir / ".summary.json.tmp"
        tmp.write_text(text)
        tmp.replace(self.run_dir / "summary.json")

    # -- the whole run -------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        done = self.iteration + int(self.finished and bool(self.labels))
        bar = tqdm(total=cfg.iterations, initial=done, desc="iterations",
                   disable=not dist_utils.is_main(), dynamic_ncols=True)
        while True:
            if self.finished:  # start the next iteration (or the first one)
                if self.labels:
                    self.iteration += 1
                    bar.update(1)
                if self.iteration >= cfg.iterations:
                    break
                self.cluster()
            while not self.finished:
                self.train_epoch()
        bar.close()


def pretrain(cfg: PretrainConfig, rows: list[dict], run_dir: str | Path, resume: bool = False) -> dict:
    """Run (or, with `resume`, continue) pretraining into `run_dir`; returns the summary."""
    run_dir = Path(run_dir)
    device = dist_utils.init_distributed(cfg.device)
    if dist_utils.is_main():
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if not resume:
            save_config(cfg, run_dir / "config.yaml")
            write_manifest(rows, run_dir / "rows.csv", relative=False)
    dist_utils.barrier()
    run = Pretraining(cfg, rows, run_dir, device)
    if resume:
        run.load(run_dir / "checkpoints" / "last.pt")
        if dist_utils.is_main():
            print(f"resumed {run_dir} at iteration {run.iteration}, epoch {run.epoch}"
                  f"{' (finished)' if run.finished else ''}", flush=True)
    started = time.perf_counter()
    run.run()
    if run.writer is not None:
        run.writer.close()
    summary = {"method": cfg.method, "iterations": run.summary}
    if dist_utils.is_main():
        print_closing_summary(summary, run_dir, time.perf_counter() - started, device)
    return summary


def print_closing_summary(summary: dict, run_dir: Path, seconds: float, device: torch.device) -> None:
    print(f"\n{summary['method']} pretraining done in {seconds:.0f} s on {device}: {run_dir}")
    for r in summary["iterations"]:
        parts = [f"iteration {r['iteration']}: {r.get('epochs', 0)} epochs",
                 f"train {r.get('train_loss', float('nan')):.3f}",
                 f"val {r.get('val_loss', float('nan')):.3f}"]
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
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xdc.pretrain", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
