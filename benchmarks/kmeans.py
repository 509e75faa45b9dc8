"""The project's k-means vs raw faiss.Kmeans vs scikit-learn KMeans on the same features.

    python benchmarks/kmeans.py --json out.json [--n 100000 --d 128 --k 128 --niter 20] [--threads 1] [--gpu]

Features: a planted mixture of k Gaussian clusters, L2-normalised once (as `cluster_features` does) so
all three see the same input. Each method: train centroids, then assign every point. Project and
faiss train on a k × 256 subsample (faiss' rule); scikit-learn (n_init=1, same iterations, its
default k-means++ start) trains on every point. The project starts faiss from greedy k-means++
seeds; faiss stops once its objective stops changing, so a better start also means fewer of the
`niter` iterations run. Prints and writes seconds, `ratio_vs_faiss`
(target <= 1.2), NMI between the results and against the planted clusters, and each method's
mean squared distance to the assigned centroid. `--threads N` caps BLAS/OpenMP threads (faiss,
numpy, scikit-learn) for steadier figures on a shared machine. `--gpu` adds the GPU line: the
project's k-means on CUDA (`cluster_features(device="cuda")`: one GPU, faiss resources made and
released per clustering) against raw faiss.Kmeans on one GPU, and `gpu_speedup` (the project's
CPU seconds / its GPU seconds); without CUDA or a faiss GPU build it says it skipped that line, and
why (`gpu_skipped`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

from xdc.clustering import cluster_features, nmi
from xdc.clustering.kmeans import faiss_gpus, kmeans_device_note, l2_normalise
from xdc.config import ClusterConfig


def planted_features(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)).astype(np.float32)
    truth = rng.integers(0, k, n)
    x = centers[truth] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
    return l2_normalise(x), truth


def best_of(repeats: int, fn):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def raw_faiss(x: np.ndarray, k: int, niter: int, seed: int, gpu: bool = False) -> np.ndarray:
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, max_points_per_centroid=256, verbose=False,
                      gpu=1 if gpu else False)  # one GPU, as each rank uses its own
    km.train(x)
    return km.index.search(x, 1)[1][:, 0].astype(np.int64)


def gpu_skip_reason() -> str | None:
    """Why the GPU line cannot run here, or None."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    if faiss_gpus() == 0:
        return kmeans_device_note("cuda")
    return None


def mean_sq_dist(x: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Mean squared distance of each point to its cluster's mean (a fair objective for all)."""
    sums = np.zeros((k, x.shape[1]), np.float64)
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=k)
    means = sums / np.maximum(counts, 1)[:, None]
    return float(((x - means[labels]) ** 2).sum(axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--k", type=int, default=128)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many (project, faiss)")
    parser.add_argument("--skip-sklearn", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="BLAS/OpenMP threads (default: all)")
    parser.add_argument("--gpu", action="store_true", help="also the project's GPU k-means vs raw faiss on the GPU")
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        with threadpool_limits(limits=args.threads):
            run(args)
    else:
        run(args)


def run(args) -> None:

    x, truth = planted_features(args.n, args.d, args.k, args.seed)
    cfg = ClusterConfig(niter=args.niter, max_points_per_centroid=256)  # faiss's default budget
    everything = np.arange(len(x))
    s_project, project = best_of(args.repeats, lambda: cluster_features(x, everything, len(x), args.k, cfg,
                                                                        seed=args.seed).labels)
    s_faiss, faiss_labels = best_of(args.repeats, lambda: raw_faiss(x, args.k, args.niter, args.seed))
    skip = gpu_skip_reason() if args.gpu else "not asked for (--gpu)"
    results = {
        "config": {**{k: v for k, v in vars(args).items() if k != "json"}, "faiss": faiss.__version__,
                   "faiss_omp_threads": faiss.omp_get_max_threads(), "cpu_count": os.cpu_count(),
                   "machine": platform.machine(), "gpu": skip is None},
        "seconds_project": round(s_project, 3),
        "seconds_faiss": round(s_faiss, 3),
        "ratio_vs_faiss": round(s_project / s_faiss, 3),
        "nmi_project_vs_faiss": round(nmi(project, faiss_labels), 4),
        "nmi_project_vs_truth": round(nmi(project, truth), 4),
        "nmi_faiss_vs_truth": round(nmi(faiss_labels, truth), 4),
        "mse_project": round(mean_sq_dist(x, project, args.k), 5),
        "mse_faiss": round(mean_sq_dist(x, faiss_labels, args.k), 5),
    }
    if skip is None:
        import torch

        s_gpu, gpu_labels = best_of(args.repeats, lambda: cluster_features(
            x, everything, len(x), args.k, cfg, seed=args.seed, device="cuda").labels)
        s_faiss_gpu, faiss_gpu_labels = best_of(args.repeats, lambda: raw_faiss(x, args.k, args.niter, args.seed, True))
        results.update({
            "gpu_name": torch.cuda.get_device_name(),
            "seconds_project_gpu": round(s_gpu, 3),
            "seconds_faiss_gpu": round(s_faiss_gpu, 3),
            "ratio_vs_faiss_gpu": round(s_gpu / s_faiss_gpu, 3),
            "gpu_speedup": round(s_project / s_gpu, 2),
            "nmi_project_gpu_vs_cpu": round(nmi(gpu_labels, project), 4),
            "nmi_project_gpu_vs_truth": round(nmi(gpu_labels, truth), 4),
            "nmi_faiss_gpu_vs_truth": round(nmi(faiss_gpu_labels, truth), 4),
        })
    else:
        results["gpu_skipped"] = skip
    if not args.skip_sklearn:
        from sklearn.cluster import KMeans

        model = KMeans(args.k, n_init=1, max_iter=args.niter, tol=0.0, algorithm="lloyd",
                       random_state=args.seed)
        s_sklearn, sk_labels = best_of(1, lambda: model.fit(x).labels_.astype(np.int64))
        results.update({
            "seconds_sklearn": round(s_sklearn, 3),
            "ratio_vs_sklearn": round(s_project / s_sklearn, 3),
            "nmi_project_vs_sklearn": round(nmi(project, sk_labels), 4),
            "nmi_faiss_vs_sklearn": round(nmi(faiss_labels, sk_labels), 4),
            "nmi_sklearn_vs_truth": round(nmi(sk_labels, truth), 4),
            "mse_sklearn": round(mean_sq_dist(x, sk_labels, args.k), 5),
        })
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    verdict = "meets" if results["ratio_vs_faiss"] <= 1.2 else "MISSES"
    print(f"project {s_project:.2f} s vs faiss {s_faiss:.2f} s: ratio {results['ratio_vs_faiss']} "
          f"({verdict} the <= 1.2 target)")
    if skip is None:
        print(f"GPU: project {results['seconds_project_gpu']} s vs faiss {results['seconds_faiss_gpu']} s "
              f"(ratio {results['ratio_vs_faiss_gpu']}); {results['gpu_speedup']}x the project's CPU k-means")
    elif args.gpu:
        print(f"skipped the GPU line: {skip}")


if __name__ == "__main__":
    main()
