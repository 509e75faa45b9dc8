"""What paper-scale data costs the program, simulated on one machine (issue 11).

    python benchmarks/scale.py --json out.json [--videos 2000000] [--cluster-videos 200000]

- manifest: a synthetic manifest of `--videos` Kinetics-like rows (the files need not exist:
  `check_files=none`) is written (what rank 0 does for `rows.csv`), then read in a fresh process
  as every rank does at start (`read_manifest` + `usable_rows`): seconds and resident-memory growth
  (RSS after minus before, divided by the rows: `manifest_bytes_per_video`) and the peak.
- sampler: one epoch of `EpochSampler` (`--epoch-size` draws, 2 ranks) over the training videos,
  shuffled and uniform-over-clusters.
- clustering: 2 gloo ranks on this machine, each holding its share of `--cluster-videos` random
  float16 features: `cluster_features` (sample gather, centroids on rank 0, assignment, label
  exchange), timed at two sizes to split a fixed part (centroid training) from a per-video part,
  and the label exchange alone (all-gather of (index, label) pairs).
- extrapolated: the same figures at 240k (Kinetics), 2M (AudioSet) and 65M (IG-Kinetics) videos,
  linear in the number of videos (clustering: fixed + per-video, 2 ranks).
Targets: `manifest_load_s_per_million` <= 5, `manifest_bytes_per_video` <= 150.

    python benchmarks/scale.py --memory --json out.json [--memory-videos 240000 2000000]

- memory (`--memory`, instead of the above): what clustering holds per rank. Gloo ranks on this
  machine each write their shard of 512-d float16 features for both modalities as extraction
  does (memmaps on disk), then run pretraining's clustering step on them (XDC: `cluster_inputs`,
  then `cluster_features` for video, k=64, and audio, k=128, pca_dim 0 as the paper presets),
  while a thread samples the process's resident memory every 10 ms: the peak growth of anonymous
  memory (what the rank must hold; `peak_anon_bytes`) and of mapped file pages (the memmaps, page
  cache the kernel can drop; `peak_file_bytes`). At 2 ranks, and 4 for the largest size, so that
  the per-rank figure splits into a part per video of the rank's shard and a part per video of the
  whole set (labels and indices every rank holds): anon ≈ fixed + shard_bytes_per_video ×
  videos / ranks + whole_set_bytes_per_video × videos (`memory_table`), extrapolated to 65M.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from xdc.data.manifest import (
    Manifest,
    read_manifest,
    release_free_memory,
    usable_rows,
    write_manifest,
)
from xdc.data.manifest_csv import STRINGS

SCALES = {"kinetics_240k": 240_000, "audioset_2m": 2_000_000, "ig_kinetics_65m": 65_000_000}


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic_manifest(n: int, seed: int = 0) -> Manifest:
    """Kinetics-like rows: /data/kinetics/train/<class>/<11-char id>_<start>_<end>.mp4, 10 s, audio
    on 90 %, a few skip rows."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"))
    ids = alphabet[rng.integers(0, len(alphabet), (n, 11))].view("<U11").reshape(n).astype(STRINGS)
    classes = np.array([f"class_{c:03d}" for c in range(400)], dtype=STRINGS)
    label = rng.integers(0, 400, n).astype(np.int32)
    start = np.strings.mod("%06d", rng.integers(0, 300, n) * 10)
    paths = np.strings.add(np.strings.add(np.strings.add("/data/kinetics/train/", classes[label]), "/"), ids)
    paths = np.strings.add(np.strings.add(np.strings.add(paths, "_"), start), ".mp4")
    skip = rng.random(n) < 0.01
    status = np.where(skip, 1, 0).astype(np.int32)
    ints = lambda value: np.full(n, value, np.int32)
    columns = {
        "path": paths, "status": status, "reason": np.where(skip, 0, -1).astype(np.int32),
        # Varied as in a real scan: sizes, rates and frame counts take a few dozen values each.
        "duration": np.round(rng.uniform(5, 10, n), 3), "fps": rng.choice([25.0, 29.97, 30.0, 24.0], n),
        "num_frames": rng.integers(150, 301, n).astype(np.int32),
        "width": rng.choice([320, 340, 426, 454, 480, 640], n).astype(np.int32),
        "height": rng.choice([240, 256, 360], n).astype(np.int32), "rotation": ints(0),
        "video_codec": rng.integers(0, 2, n).astype(np.int32), "has_audio": (rng.random(n) < 0.9).astype(np.int8),
        "audio_rate": rng.choice([44100, 48000, 22050], n).astype(np.int32),
        "audio_channels": rng.integers(1, 3, n).astype(np.int32),
        "audio_silent": (rng.random(n) < 0.02).astype(np.int8), "label": label,
        "id": np.strings.slice(paths, len("/data/kinetics/"), None),  # as xdc scan writes it
    }
    categories = {"status": ["ok", "skip"], "reason": ["cannot open: Invalid data"], "video_codec": ["h264", "mpeg4"],
                  "label": [str(c) for c in classes.tolist()]}
    return Manifest(columns, categories)


def load_child(path: str) -> None:
    """In a fresh process: what a rank does at start; prints JSON."""
    gc.collect()
    before, started, cpu = rss_bytes(), time.perf_counter(), time.process_time()
    manifest = read_manifest(path, check_files="none")
    rows, dropped = usable_rows(manifest, require_audio=True)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    del manifest  # as pretraining keeps only the usable rows (and releases the rest)
    gc.collect()
    release_free_memory()
    after = rss_bytes()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"rows": len(rows), "seconds": seconds, "cpu_seconds": cpu, "rss_growth": after - before,
                      "peak_growth": peak - before, "dropped": dropped}))


def measure_manifest(n: int, folder: Path) -> dict:
    manifest = synthetic_manifest(n)
    path = folder / "manifest.csv"
    started = time.perf_counter()
    write_manifest(manifest, path, relative=False)
    write_s = time.perf_counter() - started
    size = path.stat().st_size
    del manifest
    out = subprocess.run([sys.executable, __file__, "--load-child", str(path)], check=True,
                         capture_output=True, text=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    return {"videos": n, "csv_bytes": size, "write_s": write_s, "load_s": loaded["seconds"],
            "load_cpu_s": loaded["cpu_seconds"],
            "usable_videos": loaded["rows"], "rss_growth": loaded["rss_growth"], "peak_growth": loaded["peak_growth"]}


def measure_sampler(n: int, epoch_size: int) -> dict:
    from xdc.clustering import uniform_over_clusters_weights
    from xdc.data.datasets import EpochSampler
    from xdc.pretrain import split_train_val

    started = time.perf_counter()
    train, _ = split_train_val(n, 0.1, 0)
    split_s = time.perf_counter() - started
    out = {"split_s": split_s}
    labels = np.random.default_rng(0).integers(0, 128, n)
    for name, weights in (("shuffled", None), ("uniform_over_clusters", "labels")):
        started = time.perf_counter()
        w = uniform_over_clusters_weights(labels[train]) if weights else None
        sampler = EpochSampler(len(train), epoch_size, weights=w, seed=0, rank=0, world_size=2, items=train)
        sampler.set_epoch(1)
        drawn = sum(1 for _ in sampler)
        out[f"{name}_s"] = time.perf_counter() - started
        out["drawn_per_rank"] = drawn
    return out


def _cluster_rank(rank: int, world: int, init: str, sizes: list[int], dim: int, k: int, out: str) -> None:
    import torch
    import torch.distributed as torch_dist

    from xdc import distributed as dist
    from xdc.clustering import cluster_features
    from xdc.config import ClusterConfig

    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    cfg = ClusterConfig(niter=20, max_points_per_centroid=256)
    results = {}
    for n in sizes:
        indices = np.arange(rank, n, world)
        features = np.random.default_rng(rank).standard_normal((len(indices), dim)).astype(np.float16)
        dist.barrier()
        started = time.perf_counter()
        result = cluster_features(features, indices, n, k, cfg, seed=0)
        cluster_s = time.perf_counter() - started
        labels = result.labels[indices]
        dist.barrier()
        started = time.perf_counter()
        gathered = dist.all_gather_arrays(labels.astype(np.int32))  # as cluster_features exchanges them
        exchange_s = time.perf_counter() - started
        assert sum(len(g) for g in gathered) == n
        results[n] = {"cluster_s": cluster_s, "label_exchange_s": exchange_s}
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    torch_dist.destroy_process_group()


def measure_clustering(n: int, dim: int, k: int, folder: Path) -> dict:
    import torch.multiprocessing as mp

    sizes = [max(k * 256 + 1, n // 4), n]  # two sizes: a fixed part (centroids) and a per-video part
    out = folder / "cluster.json"
    mp.spawn(_cluster_rank, args=(2, f"file://{folder / 'rendezvous'}", sizes, dim, k, str(out)), nprocs=2)
    timings = {int(n): t for n, t in json.loads(out.read_text()).items()}
    (n0, t0), (n1, t1) = sorted(timings.items())
    per_video = max(0.0, (t1["cluster_s"] - t0["cluster_s"]) / (n1 - n0))
    fixed = max(0.0, t1["cluster_s"] - per_video * n1)
    exchange_per_video = t1["label_exchange_s"] / n1
    return {"ranks": 2, "dim": dim, "k": k, "timings": {str(n): t for n, t in timings.items()},
            "fixed_s": fixed, "per_video_s": per_video, "label_exchange_per_video_s": exchange_per_video}


def resident() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process."""
    fields = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("RssAnon:", "RssFile:")):
                name, value, _ = line.split()
                fields[name] = int(value) * 1024
    return fields["RssAnon:"], fields["RssFile:"]


class PeakSampler:
    """The peak of `resident()` over a block, sampled every 10 ms by a thread."""

    def __enter__(self):
        import threading

        self.base = resident()
        self.peak = list(self.base)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.01):
            now = resident()
            self.peak = [max(p, v) for p, v in zip(self.peak, now)]

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        now = resident()
        self.peak = [max(p, v) for p, v in zip(self.peak, now)]


def _memory_rank(rank: int, world: int, init: str, n: int, dim: int, folder: str, out: str) -> None:
    import torch
    import torch.distributed as torch_dist

    from xdc.clustering import Features, cluster_features, shard_indices
    from xdc.config import ClusterConfig
    from xdc.methods import get_method

    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    mine = shard_indices(n, rank, world)
    arrays, rng = {}, np.random.default_rng(rank)
    for name in ("video", "audio"):  # what extraction leaves: a float16 memmap per modality
        path = Path(folder) / f"{name}.rank{rank}.f16.npy"
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(mine), dim))
        for start in range(0, len(mine), 65_536):
            rows = min(65_536, len(mine) - start)
            array[start:start + rows] = np.abs(rng.standard_normal((rows, dim), dtype=np.float32))
        array.flush()
        del array
        arrays[name] = np.load(path, mmap_mode="r")
    present = np.ones(len(mine), bool)
    present[::97] = False  # a few videos without features, as a real extraction has
    features = Features(arrays, mine, present)
    method, cfg = get_method("xdc"), ClusterConfig()  # the paper presets: k 64 / 128, pca_dim 0
    torch_dist.barrier()
    started = time.perf_counter()
    with PeakSampler() as peak:  # pretrain.cluster's k-means part
        results = {}
        for name, x in method.cluster_inputs(features).items():
            results[name] = cluster_features(x, features.indices[features.present], n,
                                             method.num_clusters(name, cfg), cfg, seed=0)
    seconds = time.perf_counter() - started
    figures = {"peak_anon_bytes": peak.peak[0] - peak.base[0], "peak_file_bytes": peak.peak[1] - peak.base[1],
               "seconds": seconds}
    gathered = [None] * world
    torch_dist.all_gather_object(gathered, figures)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    torch_dist.destroy_process_group()


def measure_cluster_memory(n: int, world: int, dim: int, folder: Path) -> dict:
    import torch.multiprocessing as mp

    out = folder / f"memory_{n}_{world}.json"
    (folder / "features").mkdir(exist_ok=True)
    mp.spawn(_memory_rank, args=(world, f"file://{folder / f'rendezvous_{n}_{world}'}", n, dim,
                                 str(folder / "features"), str(out)), nprocs=world)
    ranks = json.loads(out.read_text())
    for path in (folder / "features").iterdir():
        path.unlink()
    return {"videos": n, "ranks": world, "dim": dim,
            "peak_anon_bytes_max_rank": max(r["peak_anon_bytes"] for r in ranks),
            "peak_file_bytes_max_rank": max(r["peak_file_bytes"] for r in ranks),
            "seconds": max(r["seconds"] for r in ranks), "per_rank": ranks}


def memory_table(sizes: list[int], dim: int, folder: Path) -> dict:
    """Measured at 2 ranks for every size and at 4 for the largest (every shard then holds more
    rows than one 65,536-row chunk, so the chunk buffers weigh the same). Ranks other than 0 give
    the bytes per video of the shard (2 vs 4 ranks) and of the whole set (the sizes at 2 ranks);
    rank 0 holds more (the k-means sample and centroid training: a fixed part). The model then
    gives rank 0 at the paper's sizes on 8 and 64 ranks."""
    runs = [measure_cluster_memory(n, 2, dim, folder) for n in sizes]
    runs.append(measure_cluster_memory(sizes[-1], 4, dim, folder))

    def others(run: dict) -> float:
        return float(np.mean([r["peak_anon_bytes"] for r in run["per_rank"][1:]]))

    small, big, big4 = runs[0], runs[-2], runs[-1]
    n = big["videos"]
    shard = (others(big) - others(big4)) / (n / 2 - n / 4)
    whole = (others(big) - others(small)) / (n - small["videos"]) - shard / 2
    fixed = others(big) - (shard / 2 + whole) * n
    rank0_extra = big["per_rank"][0]["peak_anon_bytes"] - others(big)
    model = {"fixed_bytes": round(fixed), "rank0_extra_bytes": round(rank0_extra),
             "shard_bytes_per_video": round(shard, 1), "whole_set_bytes_per_video": round(whole, 1)}
    table = {f"{name}_{ranks}_ranks_gb": round((fixed + rank0_extra + shard * videos / ranks + whole * videos) / 1e9, 2)
             for name, videos in SCALES.items() for ranks in (8, 64)}
    return {"measured": runs, "model": model, "rank0_gb": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2_000_000)
    parser.add_argument("--cluster-videos", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=128, help="feature size clustered (after PCA in the paper)")
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--epoch-size", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory", action="store_true", help="the clustering memory table instead (see above)")
    parser.add_argument("--memory-videos", type=int, nargs="+", default=[240_000, 2_000_000])
    parser.add_argument("--memory-dim", type=int, default=512, help="feature size per modality (R(2+1)D-18: 512)")
    parser.add_argument("--load-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        return load_child(args.load_child)
    if args.memory:
        with tempfile.TemporaryDirectory() as scratch:
            result = memory_table(sorted(args.memory_videos), args.memory_dim, Path(scratch))
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))
        return None

    with tempfile.TemporaryDirectory() as scratch:
        manifest = measure_manifest(args.videos, Path(scratch))
        sampler = measure_sampler(args.videos, args.epoch_size)
        clustering = measure_clustering(args.cluster_videos, args.dim, args.k, Path(scratch))
    n = args.videos
    per_video = {"load_s": manifest["load_s"] / n, "bytes": manifest["rss_growth"] / n,
                 "write_s": manifest["write_s"] / n,
                 "sampler_s": (sampler["split_s"] + sampler["uniform_over_clusters_s"]) / n}
    extrapolated = {}
    for name, videos in SCALES.items():
        cluster_s = clustering["fixed_s"] + clustering["per_video_s"] * videos
        extrapolated[name] = {
            "videos": videos,
            "manifest_memory_gb_per_rank": round(per_video["bytes"] * videos / 1e9, 3),
            "startup_s": round((per_video["load_s"] + per_video["write_s"]) * videos, 1),
            "manifest_load_s": round(per_video["load_s"] * videos, 1),
            "rows_csv_write_s": round(per_video["write_s"] * videos, 1),
            "sampler_s_per_epoch": round(per_video["sampler_s"] * videos + sampler["shuffled_s"], 2),
            "clustering_s_2_ranks": round(cluster_s, 1),
            "label_exchange_s_2_ranks": round(clustering["label_exchange_per_video_s"] * videos, 2),
        }
    result = {
        "videos": n,
        "manifest_load_s_per_million": round(manifest["load_s"] / n * 1e6, 3),
        "manifest_load_cpu_s_per_million": round(manifest["load_cpu_s"] / n * 1e6, 3),
        "manifest_bytes_per_video": round(manifest["rss_growth"] / n, 1),
        "manifest_peak_bytes_per_video": round(manifest["peak_growth"] / n, 1),
        "rows_csv_write_s_per_million": round(manifest["write_s"] / n * 1e6, 3),
        "targets": {"manifest_load_s_per_million": 5.0, "manifest_bytes_per_video": 150.0},
        "manifest": manifest, "sampler": sampler, "clustering": clustering, "extrapolated": extrapolated,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
