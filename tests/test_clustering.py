"""xdc.clustering (kmeans, features, handcrafted, metrics, sinkhorn): faiss k-means and
DeepCluster's tricks, metrics, features, handcrafted descriptors, a 2-process gloo run.
(pseudo_labels is exercised by every pretraining run: test_pretrain.py, test_resume.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from xdc.clustering import (
    ari,
    cluster_features,
    cluster_sizes_summary,
    extract_features,
    extracted,
    handcrafted_features,
    hungarian_accuracy,
    nmi,
    per_cluster_purity,
    purity,
    random_labels,
    reassign_empty_clusters,
    recompute_batchnorms,
    shard_indices,
    uniform_over_clusters_weights,
)
from xdc.clustering.kmeans import apply_preprocessing, assign, fit_pca, train_centroids
from xdc.config import ClusterConfig

# xdc.models (torchvision) is imported inside the tests that need it: the spawned ranks of the
# distributed test import this module, and every second of import is paid twice there.


def kmeans(x, k, niter=20, seed=0, max_points_per_centroid=256, reassign_empty=False):
    """Single-process k-means through the entry point pretraining uses (`cluster_features`)."""
    cfg = ClusterConfig(niter=niter, max_points_per_centroid=max_points_per_centroid)
    return cluster_features(x, np.arange(len(x)), len(x), k, cfg, reassign_empty=reassign_empty, seed=seed)


def l2(x):
    return apply_preprocessing(x, None)


def blobs(n=2000, k=8, d=32, noise=0.3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)) * 3
    truth = rng.integers(0, k, n)
    return (centers[truth] + noise * rng.standard_normal((n, d))).astype(np.float32), truth


# ------------------------------------------------------------------------------------ k-means

def test_kmeans_finds_planted_blobs():
    x, truth = blobs()
    result = kmeans(x, 8, niter=20, seed=0)
    assert result.labels.dtype == np.int64 and result.labels.shape == (2000,)
    assert nmi(result.labels, truth) > 0.95
    assert result.sizes.sum() == 2000 and result.empty_clusters == 0
    assert result.centroids.shape == (8, 32) and result.objective > 0


def test_preprocess_l2_and_pca_whitening():
    x, _ = blobs(d=32)
    plain = apply_preprocessing(x, None)
    assert plain.dtype == np.float32 and np.allclose(np.linalg.norm(plain, axis=1), 1, atol=1e-5)
    projection = fit_pca(x, 8, whiten=True)
    reduced = apply_preprocessing(x, projection)
    assert reduced.shape == (2000, 8) and np.allclose(np.linalg.norm(reduced, axis=1), 1, atol=1e-5)
    # Whitened: before the L2 step, the sample's principal components have equal variance (faiss
    # scales them all alike; the L2 step makes the scale irrelevant).
    spread = (x @ projection.matrix.T + projection.bias).std(0)
    np.testing.assert_allclose(spread, spread.mean(), rtol=0.05)
    unwhitened = (x @ fit_pca(x, 8, whiten=False).matrix.T).std(0)
    assert unwhitened.max() / unwhitened.min() > 1.2  # without whitening they differ
    with pytest.raises(ValueError, match="pca_dim"):
        fit_pca(x, 64)
    # Fewer points than dimensions asked for (a small dataset): the directions they span, and a warning.
    with pytest.warns(UserWarning, match="only 10 videos to fit the PCA: keeping 9"):
        few = fit_pca(x[:10], 16)
    assert few.matrix.shape == (9, 32) and np.isfinite(apply_preprocessing(x, few)).all()


def test_k_larger_than_points_is_a_clear_error():
    x, _ = blobs(n=5)
    with pytest.raises(ValueError, match="k=8 clusters needs at least 8 points"):
        kmeans(x, 8)


def test_reassign_empty_clusters_splits_big_clusters():
    x, truth = blobs(k=4)
    x = l2(x)
    result = kmeans(x, 4)
    # Three extra centroids far from every point: empty clusters 4, 5, 6.
    centroids = np.vstack([result.centroids, np.full((3, 32), 10.0, np.float32)])
    assert (np.bincount(result.labels, minlength=7) == 0).sum() == 3
    labels, new_centroids = reassign_empty_clusters(x, result.labels, centroids, seed=0)
    sizes = np.bincount(labels, minlength=7)
    assert (sizes > 0).all()
    assert sizes.sum() == len(x)
    # Points only moved out of a donor into a new cluster: each new cluster is a piece of an old one.
    for cluster in range(4, 7):
        assert len(np.unique(result.labels[labels == cluster])) == 1
    assert np.abs(new_centroids[4:]).max() < 2  # moved next to real points


def test_empty_clusters_are_counted_then_reassigned():
    # Centroids trained by faiss on a small subsample with one iteration: some end up nearest to no
    # point of the full set (the pieces cluster_features runs: train_centroids, assign, reassign).
    x = l2(np.random.default_rng(1).standard_normal((3000, 8)).astype(np.float32))
    centroids, _ = train_centroids(x, 300, niter=1, seed=0, max_points_per_centroid=2)
    labels, _ = assign(x, centroids)
    sizes = np.bincount(labels, minlength=300)
    assert (sizes == 0).sum() > 0
    fixed, _ = reassign_empty_clusters(x, labels, centroids, seed=0)
    assert (np.bincount(fixed, minlength=300) > 0).all()
    moved = fixed != labels  # only points of non-empty clusters moved, into the empty ones
    assert moved.any() and (sizes[fixed[moved]] == 0).all()


def test_identical_points_cannot_be_split():
    x = l2(np.vstack([np.eye(4, dtype=np.float32)] * 5))  # 4 distinct points, 5 copies each
    labels = np.tile(np.arange(4), 5)
    centroids = np.vstack([np.eye(4, dtype=np.float32), np.zeros((2, 4), np.float32)])
    with pytest.warns(UserWarning, match="2 clusters stay empty"):
        new_labels, _ = reassign_empty_clusters(x, labels, centroids)
    assert np.array_equal(new_labels, labels)


def test_uniform_over_clusters_weights():
    labels = np.array([0] * 90 + [1] * 9 + [3] * 1 + [-1] * 5)  # cluster 2 empty, 5 unclustered
    weights = uniform_over_clusters_weights(labels)
    assert weights[-5:].sum() == 0 and np.isclose(weights.sum(), 1.0)
    per_cluster = np.bincount(labels[labels >= 0], weights=weights[labels >= 0])
    assert np.allclose(per_cluster[[0, 1, 3]], 1 / 3) and per_cluster[2] == 0
    drawn = np.random.default_rng(0).choice(len(labels), 30000, p=weights)
    freq = np.bincount(labels[drawn], minlength=4)[[0, 1, 3]] / 30000
    assert np.allclose(freq, 1 / 3, atol=0.02)


def test_random_labels():
    a, b = random_labels(1000, 7, seed=3), random_labels(1000, 7, seed=4)
    assert a.dtype == np.int64 and a.min() >= 0 and a.max() == 6
    assert np.array_equal(a, random_labels(1000, 7, seed=3)) and not np.array_equal(a, b)
    assert nmi(a, b) < 0.05


# ------------------------------------------------------------------------------------ metrics

def test_metrics_on_known_cases():
    truth = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    permuted = np.array([5, 5, 5, 3, 3, 3, 0, 0])
    assert hungarian_accuracy(permuted, truth) == 1.0
    assert nmi(permuted, truth) == pytest.approx(1.0) and ari(permuted, truth) == pytest.approx(1.0)
    clusters = np.array([0, 0, 1, 1, 1, 1, 2, 2])
    assert purity(clusters, truth) == pytest.approx(7 / 8)  # cluster 1 holds 0,1,1,1 -> 3 right
    assert hungarian_accuracy(clusters, truth) == pytest.approx(7 / 8)  # 0->0, 1->1, 2->2
    singletons = np.arange(8)  # every item its own cluster: pure, but only 3 clusters can match
    assert purity(singletons, truth) == 1.0 and hungarian_accuracy(singletons, truth) == pytest.approx(3 / 8)
    assert purity(np.zeros(8, int), truth) == pytest.approx(3 / 8)
    # unclustered items (-1) are left out
    assert purity(np.array([0, 0, 0, -1]), np.array([1, 1, 1, 0])) == 1.0


def test_cluster_sizes_summary_and_per_cluster_purity():
    labels = np.array([0, 0, 0, 0, 2, 2, 2, 3])
    assert cluster_sizes_summary(labels, 5) == {"num_clusters": 5, "empty_clusters": 2, "min": 0,
                                                "median": 1.0, "max": 4}
    truth = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    rows = per_cluster_purity(labels, truth, ["cat", "dog", "bird"])
    assert [r["cluster"] for r in rows] == [3, 0, 2]  # purity 1.0, 0.75, 0.67
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert rows[1]["top"] == [("cat", 0.75), ("dog", 0.25)]
    assert rows[2]["purity"] == pytest.approx(2 / 3) and rows[2]["size"] == 3


# ------------------------------------------------------------------------------------ features

def video_eval_batch(indices, clips=2, frames=4, size=32, seed=0):
    """An eval-mode batch as DESIGN.md describes it (B×N×C×T×H×W video, B×N×1×M×F audio)."""
    g = torch.Generator().manual_seed(seed)
    b = len(indices)
    return {"video": torch.rand(b, clips, 3, frames, size, size, generator=g) + 0.5,
            "audio": torch.randn(b, clips, 1, 20, 30, generator=g),
            "index": torch.tensor(indices), "skipped": []}


def test_recompute_batchnorm_is_the_average_over_batches():
    from xdc.models import r2plus1d_18

    torch.manual_seed(0)
    encoder = r2plus1d_18(4)
    first_bn = encoder.stem[1]
    seen = []
    first_bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].mean(dim=(0, 2, 3, 4))))
    loader = [video_eval_batch([i, i + 1], seed=i) for i in range(0, 6, 2)]
    encoder.eval()
    used = recompute_batchnorms({"video": encoder}, loader, "cpu", max_batches=10)
    assert used == 3 and not encoder.training
    assert first_bn.momentum == 0.1  # restored
    assert first_bn.running_mean.abs().max() > 1e-3  # moved away from the initial zeros
    assert torch.allclose(first_bn.running_mean, torch.stack(seen).mean(0), atol=1e-5)
    assert recompute_batchnorms({"video": encoder}, loader, "cpu", max_batches=1) == 1


def test_extract_features_rows_follow_index_and_skips_are_reported(tmp_path):
    from xdc.models import audio_resnet18, r2plus1d_18

    torch.manual_seed(0)
    encoders = {"video": r2plus1d_18(4), "audio": audio_resnet18(4)}
    b1 = video_eval_batch([3, 0], seed=1)
    b2 = video_eval_batch([4], seed=2)
    b2["skipped"] = [(1, "decode error: truncated file")]
    b3 = video_eval_batch([2], seed=3)
    with pytest.warns(UserWarning, match="1 of 5 items have no features"):
        feats = extract_features(encoders, [b1, b2, b3], 5, tmp_path, "cpu")
    assert feats["video"].shape == (5, 32) and feats["video"].dtype == np.float16
    assert feats["audio"].shape == (5, 32)
    assert feats.present.tolist() == [True, False, True, True, True] and feats.num_missing == 1
    assert feats.skipped == [(1, "decode error: truncated file")]
    assert not feats["video"][1].any()
    encoders["video"].eval()
    with torch.no_grad():  # item 3 is b1's first video: mean over its 2 clips
        expected = encoders["video"](b1["video"][0]).mean(0).numpy()
    assert np.allclose(feats["video"][3], expected, rtol=1e-2, atol=1e-3)
    # Files on disk, readable without knowing the shape.
    assert np.load(tmp_path / "video.f16.npy", mmap_mode="r").shape == (5, 32)
    assert np.load(tmp_path / "present.npy").sum() == 4


def test_extraction_restart_keeps_the_rows_a_crash_left(tmp_path):
    from xdc.clustering.features import run_extraction

    batches = [video_eval_batch([i, i + 1], seed=i) for i in range(0, 6, 2)]
    seen = []

    def mean_colour(clips):
        seen.extend([len(clips)])
        return clips.mean(dim=(1, 3, 4, 5))  # B×3

    def crashing():
        yield from batches[:2]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run_extraction({"video": mean_colour}, crashing(), 6, tmp_path, key="it 0", save_every_s=0)
    done = extracted(tmp_path, "it 0", np.arange(6), ("video",))
    assert done.tolist() == [True] * 4 + [False] * 2
    assert not extracted(tmp_path, "it 1", np.arange(6), ("video",)).any()  # other weights: nothing
    assert not extracted(tmp_path, "it 0", np.arange(0, 6, 2), ("video",)).any()  # other rows
    seen.clear()
    feats = run_extraction({"video": mean_colour}, batches[2:], 6, tmp_path, key="it 0")
    assert seen == [2]  # only the missing batch went through the encoder
    once = run_extraction({"video": mean_colour}, batches, 6, tmp_path / "once")
    assert feats.present.all()
    np.testing.assert_array_equal(np.asarray(feats["video"]), np.asarray(once["video"]))
    # A new key starts afresh: the old rows are not taken for the new weights' features.
    with pytest.warns(UserWarning, match="4 of 6 items have no features"):
        fresh = run_extraction({"video": mean_colour}, batches[:1], 6, tmp_path, key="it 1")
    assert fresh.present.tolist() == [True, True] + [False] * 4


def test_kmeans_honours_device_cpu_and_says_where_it_runs():
    import faiss

    from xdc.clustering.kmeans import (
        Indexes,
        faiss_gpus,
        kmeans_device_note,
        kmeans_uses_gpu,
    )

    # The choice, whatever faiss this machine has: a run on the CPU never asks for the GPU.
    assert not kmeans_uses_gpu("cpu", gpus=8) and not kmeans_uses_gpu(torch.device("cpu"), gpus=1)
    assert not kmeans_uses_gpu("cuda", gpus=0)  # a CUDA run with faiss-cpu: the CPU
    assert kmeans_uses_gpu("cuda", gpus=1) and kmeans_uses_gpu(torch.device("cuda", 3), gpus=1)
    assert kmeans_device_note("cpu") == "k-means on the CPU (device cpu)"
    if faiss_gpus() == 0:
        note = kmeans_device_note("cuda")
        assert note.startswith("k-means on the CPU: faiss") and "docs/SCALE.md" in note
    assert type(Indexes().flat(16)) is faiss.IndexFlatL2  # a CPU index, not a GpuIndexFlatL2
    x, truth = blobs(n=400, k=4, d=16, seed=1)
    result = cluster_features(x, np.arange(400), 400, 4, ClusterConfig(), device="cpu")
    assert nmi(result.labels, truth) > 0.95


def test_kmeans_out_of_gpu_memory_says_so_once_and_goes_on_on_the_cpu(capsys):
    from xdc.clustering.kmeans import Indexes

    def work(indexes):  # what a faiss GPU index raises when cudaMalloc fails (faiss' own words)
        tried.append(indexes.use_gpu)
        if indexes.use_gpu:
            raise RuntimeError("Error in virtual void* faiss::gpu::StandardGpuResourcesImpl::allocMemory(...): "
                               "StandardGpuResources: alloc fail type TemporaryMemoryBuffer dev 0 space Device "
                               "stream 0x1 size 1610612736 bytes (cudaMalloc error out of memory [2])")
        return "assigned"

    tried = []
    indexes = Indexes(use_gpu=True)
    assert indexes.run(work) == "assigned" and tried == [True, False]
    assert indexes.run(work) == "assigned" and tried == [True, False, False]  # the CPU from then on
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "k-means ran out of GPU memory" in err and "on the CPU" in err

    def broken(indexes):
        raise RuntimeError("an index of another size")

    with pytest.raises(RuntimeError, match="another size"):  # not a memory error: not hidden
        Indexes(use_gpu=True).run(broken)


def test_extract_features_rejects_items_outside_the_shard(tmp_path):
    from xdc.models import r2plus1d_18

    with pytest.raises(ValueError, match="not among this rank's"):
        extract_features({"video": r2plus1d_18(4)}, [video_eval_batch([7])], 5, tmp_path, "cpu")


def test_features_of_train_batches_and_encode_needs_the_clip_axis(tmp_path):
    from xdc.models import encode, r2plus1d_18

    torch.manual_seed(0)
    encoder = r2plus1d_18(4)
    cpu = torch.device("cpu")
    train = video_eval_batch([1, 0], clips=1, seed=4)  # a train batch: one clip per video
    feats = extract_features({"video": encoder}, [train], 2, tmp_path / "train", cpu)
    assert encoder.training  # mode restored
    encoder.eval()
    with torch.no_grad():
        expected = encoder(train["video"][:, 0]).numpy()  # rows follow the batch's index
        assert np.allclose(feats["video"][[1, 0]], expected, rtol=1e-2, atol=1e-3)
        clips = video_eval_batch([0, 1, 2], clips=2, seed=5)["video"]
        out = encode(encoder, clips, "video", cpu)
        assert out.shape == (3, 2, 32) and out.dtype == torch.float32
        assert torch.allclose(out[2, 1], encoder(clips[2, 1:2])[0], atol=1e-5)
        no_clip_axis = train["video"][:, 0]
        with pytest.raises(ValueError, match=r"shape \(2, 3, 4, 32, 32\): expected B×N×clip"):
            encode(encoder, no_clip_axis, "video", cpu)
    with pytest.raises(ValueError, match="expected B×N×clip"):
        extract_features({"video": encoder}, [dict(train, video=no_clip_axis)], 2, tmp_path / "bad", cpu)


def moving_bar(vertical: bool, x0: int, y0: int, background: float, frames=4, size=32) -> torch.Tensor:
    """1×1×3×T×H×W: a bright bar (3×12 px) moving right by 2 px a frame over a flat background."""
    video = torch.full((1, 1, 3, frames, size, size), background)
    for t in range(frames):
        x = x0 + 2 * t
        if vertical:
            video[..., t, y0:y0 + 12, x:x + 3] = 1.0
        else:
            video[..., t, y0:y0 + 3, x:x + 12] = 1.0
    return video


def test_hog_video_descriptor_follows_shape_not_place_or_background():
    from xdc.clustering.handcrafted import descriptor_sizes, video_hog_descriptor

    a = video_hog_descriptor(moving_bar(True, 2, 2, 0.1))
    same_shape = video_hog_descriptor(moving_bar(True, 14, 16, 0.6))  # elsewhere, brighter background
    other_shape = video_hog_descriptor(moving_bar(False, 2, 2, 0.1))  # same place and background
    assert a.shape == (1, descriptor_sizes(40, "hog")["video"])
    assert (a - same_shape).norm() < 0.5 * (a - other_shape).norm()
    still = video_hog_descriptor(moving_bar(True, 2, 2, 0.1)[..., :1, :, :].expand(-1, -1, -1, 4, -1, -1))
    shape, moving = still.view(2, 2, -1).unbind(1)  # per scale: HOG of the frames, of what moves
    assert shape.abs().sum() > 0 and torch.all(moving == 0), "nothing moves: no motion HOG"


def test_handcrafted_features(tmp_path):
    batch = video_eval_batch([0, 1, 2])
    batch["video"][1] = batch["video"][1, :, :, :1]  # item 1: a still picture (no motion)
    batch["video"][2, :, 0] += 1.0  # item 2: redder than item 0
    feats = handcrafted_features([batch], 3, tmp_path)
    video, audio = feats["video"].astype(np.float32), feats["audio"].astype(np.float32)
    assert video.shape == (3, 3 * 64 + 16) and audio.shape == (3, 3 * 20)
    assert np.allclose(video[1, -16:], 0) and video[0, -16:].min() > 0.05
    assert video[2, :64].mean() == pytest.approx(video[0, :64].mean() + 1.0, abs=0.01)
    log_mel = batch["audio"][0].squeeze(1)  # N×M×F
    assert np.allclose(audio[0, :20], log_mel.mean(-1).mean(0).numpy(), atol=1e-2)


# ------------------------------------------------------------------------------------ distributed

SKIPPED_ITEM = 7  # skipped at extraction: no rank holds it


def _distributed_case(features, rank, world, distributed):
    """cluster_features and reassign_empty_clusters on this rank's shard; full label arrays."""
    cfg = ClusterConfig(niter=10, max_points_per_centroid=64, pca_dim=8)  # a 384-point sample
    mine = shard_indices(len(features), rank, world)
    mine = mine[mine != SKIPPED_ITEM]
    result = cluster_features(features[mine], mine, len(features), 6, cfg, seed=5)
    # Reassignment of two empty (far away) clusters, on sharded points.
    x = l2(features)
    base_centroids, _ = train_centroids(x, 6, seed=0)  # every rank alike: a single-process k-means
    base_labels, _ = assign(x, base_centroids)
    centroids = np.vstack([base_centroids, np.full((2, x.shape[1]), 9, np.float32)])
    labels, _ = reassign_empty_clusters(x[mine], base_labels[mine], centroids, seed=2,
                                        distributed=distributed)
    reassigned = np.full(len(features), -1, np.int64)
    pairs = [np.stack([mine, labels])]
    if distributed:
        pairs = [None] * world
        torch_dist.all_gather_object(pairs, np.stack([mine, labels]))
    for p in pairs:
        reassigned[p[0]] = p[1]
    return result, reassigned


def _balanced_case(features, rank, world):
    """cluster.assign=sinkhorn on this rank's shard: the full label array."""
    mine = shard_indices(len(features), rank, world)
    return cluster_features(features[mine], mine, len(features), 6, ClusterConfig(niter=10, assign="sinkhorn"),
                            seed=3).labels


def _rank_main(rank, world, port, out_dir, features):
    import faiss

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)  # two ranks share 2 cores: OpenMP spinning would stall them
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                  world_size=world)
    try:
        result, reassigned = _distributed_case(features, rank, world, distributed=True)
        np.save(out_dir / f"labels{rank}.npy", result.labels)
        np.save(out_dir / f"sizes{rank}.npy", result.sizes)
        np.save(out_dir / f"reassigned{rank}.npy", reassigned)
        # Arrays as tensors: rank r sends r + 1 rows (padded to the longest, cut back).
        from xdc.distributed import (
            all_gather_arrays,
            broadcast_array,
            every_rank,
            gather_arrays,
        )

        gathered = all_gather_arrays(np.full((rank + 1, 3), rank, np.int64))
        np.save(out_dir / f"gathered{rank}.npy", np.concatenate(gathered))
        to_first = gather_arrays(np.full((rank + 1, 2), rank, np.float16))  # received by rank 0 alone
        np.save(out_dir / f"to_first{rank}.npy", np.zeros(0) if to_first is None else np.concatenate(to_first))
        np.save(out_dir / f"every{rank}.npy", [every_rank(True), every_rank(rank == 0)])
        sent = broadcast_array(np.arange(6, dtype=np.float32).reshape(2, 3) if rank == 0 else None)
        np.save(out_dir / f"broadcast{rank}.npy", sent)
        np.save(out_dir / f"balanced{rank}.npy", _balanced_case(features, rank, world))
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow  # two spawned ranks import torch + faiss: ~10-20 s on 2 busy cores
def test_cluster_features_two_ranks_match_one_process(tmp_path):
    from conftest import free_port  # here: the spawned ranks import this module, not conftest

    x, truth = blobs(n=600, k=6, d=16, seed=4)
    features = x.astype(np.float16)
    mp.spawn(_rank_main, args=(2, free_port(), tmp_path, features), nprocs=2, join=True)
    labels = [np.load(tmp_path / f"labels{r}.npy") for r in range(2)]
    assert np.array_equal(labels[0], labels[1])
    keep = np.arange(600) != SKIPPED_ITEM
    assert labels[0][SKIPPED_ITEM] == -1 and (labels[0][keep] >= 0).all()
    assert np.array_equal(np.load(tmp_path / "sizes0.npy"), np.bincount(labels[0][keep]))

    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as in the ranks, so floating-point sums run in the same order
    try:
        single, single_reassigned = _distributed_case(features, 0, 1, distributed=False)
    finally:
        faiss.omp_set_num_threads(threads)
    assert np.array_equal(single.labels, labels[0])
    assert nmi(single.labels[keep], truth[keep]) > 0.95
    reassigned = [np.load(tmp_path / f"reassigned{r}.npy") for r in range(2)]
    assert np.array_equal(reassigned[0], reassigned[1])
    assert np.array_equal(reassigned[0], single_reassigned)
    balanced = [np.load(tmp_path / f"balanced{r}.npy") for r in range(2)]  # sinkhorn's sums over ranks
    assert np.array_equal(balanced[0], balanced[1]) and np.array_equal(balanced[0], _balanced_case(features, 0, 1))
    assert (np.bincount(reassigned[0][keep], minlength=8) > 0).all()
    np.testing.assert_array_equal(np.load(tmp_path / "to_first0.npy"), [[0, 0], [1, 1], [1, 1]])
    assert np.load(tmp_path / "to_first0.npy").dtype == np.float16 and np.load(tmp_path / "to_first1.npy").size == 0
    for r in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"gathered{r}.npy"), [[0] * 3, [1] * 3, [1] * 3])
        assert np.load(tmp_path / f"every{r}.npy").tolist() == [True, False]
        broadcast = np.load(tmp_path / f"broadcast{r}.npy")
        assert broadcast.dtype == np.float32 and broadcast.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_cluster_features_without_process_group():
    x, truth = blobs(n=500, k=5, d=16, seed=2)
    order = np.random.default_rng(0).permutation(500)
    result = cluster_features(x[order], order, 500, 5, ClusterConfig(niter=10))
    assert result.labels.shape == (500,)
    assert nmi(result.labels, truth) > 0.95  # labels are in item order, not row order
    with pytest.raises(ValueError, match="indices"):
        cluster_features(x, np.arange(10), 500, 5, ClusterConfig())


def test_cluster_inputs_read_the_memmaps_by_chunks_and_give_the_labels_of_copies(tmp_path, monkeypatch):
    """Methods hand k-means row views of the float16 memmaps (`PresentRows`), not copies: the
    labels are those of clustering the copied rows, as before."""
    from xdc.clustering import Features
    from xdc.clustering import kmeans as kmeans_module
    from xdc.methods import get_method

    monkeypatch.setattr(kmeans_module, "ASSIGN_CHUNK", 100)  # several chunks on a small shard
    x, _ = blobs(n=700, k=5, d=12, seed=6)
    arrays = {}
    for name, values in (("video", x), ("audio", x[:, ::-1] * 2)):
        np.save(tmp_path / f"{name}.f16.npy", values.astype(np.float16))
        arrays[name] = np.load(tmp_path / f"{name}.f16.npy", mmap_mode="r")
    present = np.arange(700) % 9 != 0
    features = Features(arrays, np.arange(700), present)
    cfg = ClusterConfig(niter=5, pca_dim=6)
    copies = {"video": arrays["video"][present], "audio": arrays["audio"][present],
              "joint": np.concatenate([l2(arrays["video"][present]), l2(arrays["audio"][present])], axis=1)}
    for method in ("xdc", "cdc"):
        for name, rows in get_method(method).cluster_inputs(features).items():
            assert rows.shape == copies[name].shape and type(rows[:3]) is np.ndarray
            np.testing.assert_array_equal(np.asarray(rows), copies[name])
            lazy = cluster_features(rows, np.flatnonzero(present), 700, 5, cfg, seed=3)
            copied = cluster_features(copies[name], np.flatnonzero(present), 700, 5, cfg, seed=3)
            np.testing.assert_array_equal(lazy.labels, copied.labels)
            assert lazy.labels[0] == -1 and (lazy.labels[present] >= 0).all()


# ------------------------------------------------------------------------------------ real clips

def test_features_and_clusters_of_real_clips(tmp_path, clip_factory):
    """The dataset's real eval batches through BN recompute, extraction, hand-crafted features
    and k-means; a truncated file is reported, not lost."""
    from xdc.config import DataConfig
    from xdc.data.datasets import AudioVideoClips, clip_loader
    from xdc.data.scan import probe_file
    from xdc.models import audio_resnet18, r2plus1d_18

    cfg = DataConfig(frames=4, fps=4, short_side=64, crop=56, eval_clips=2, num_workers=0)
    tones = [300, 300, 2000, 2000]
    paths = [clip_factory(f"clip{i}.mp4", seconds=1.5, seed=i, tone_hz=hz) for i, hz in enumerate(tones)]
    rows = [probe_file(p) for p in paths]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(paths[0].read_bytes()[:1500])
    rows.append({**rows[0], "path": str(broken)})  # the manifest says ok; decoding will fail

    torch.manual_seed(0)
    video, audio = r2plus1d_18(4), audio_resnet18(4)
    train_loader = clip_loader(AudioVideoClips(rows[:4], cfg, mode="train"), batch_size=2)
    assert recompute_batchnorms({"video": video, "audio": audio}, train_loader, "cpu") == 2
    assert video.stem[1].running_var.max() != 1.0 and audio.bn1.running_mean.abs().max() > 0
    assert video.training and audio.training  # modes restored

    loader = clip_loader(AudioVideoClips(rows, cfg, mode="eval", clips_per_video=2), batch_size=2)
    with pytest.warns(UserWarning, match="1 of 5 items have no features"):
        feats = extract_features({"video": video, "audio": audio}, loader, 5, tmp_path / "deep", "cpu")
    assert feats.present.tolist() == [True, True, True, True, False]
    assert feats.skipped and feats.skipped[0][0] == 4 and "broken.mp4" in feats.skipped[0][1]
    assert np.isfinite(feats["video"][:4].astype(np.float32)).all() and feats["video"][:4].any()

    with pytest.warns(UserWarning, match="no features"):
        hand = handcrafted_features(loader, 5, tmp_path / "hand")
    audio_features, items = hand.valid("audio")
    assert items.tolist() == [0, 1, 2, 3]
    result = cluster_features(audio_features, items, 5, 2, ClusterConfig(niter=5), seed=0)
    assert result.labels[4] == -1 and result.missing == 1
    assert nmi(result.labels[:4], np.array(tones)) == pytest.approx(1.0)  # the two tones apart


def test_label_entropy_is_the_loss_of_knowing_only_cluster_sizes():
    from xdc.clustering import label_entropy

    assert label_entropy(np.array([0, 1, 2, 3])) == pytest.approx(np.log(4))  # balanced: ln k
    labels = np.array([0] * 90 + [1] * 10 + [-1] * 7)  # -1 (no features) left out
    p = np.array([0.9, 0.1])
    assert label_entropy(labels) == pytest.approx(-(p * np.log(p)).sum())
    # the cross-entropy of always predicting the label frequencies is exactly that entropy
    logits = torch.log(torch.tensor(p, dtype=torch.float32)).expand(100, 2)
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(labels[labels >= 0]))
    assert float(loss) == pytest.approx(label_entropy(labels), rel=1e-5)


def test_sinkhorn_assignment_balances_clusters_kmeans_leaves_unequal():
    """One blob holds 70% of the points: nearest-centroid labels pile up there, the balanced
    assignment (cluster.assign=sinkhorn) gives every cluster about N/k; labels stay consistent with
    the blobs (points of one small blob are not split across many clusters)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16)) * 4
    truth = np.r_[np.zeros(1400, int), rng.integers(1, 4, 600)]
    x = (centres[truth] + 0.5 * rng.standard_normal((2000, 16))).astype(np.float32)
    nearest = cluster_features(x, np.arange(2000), 2000, 10, ClusterConfig(niter=10), seed=1)
    balanced = cluster_features(x, np.arange(2000), 2000, 10, ClusterConfig(niter=10, assign="sinkhorn"), seed=1)
    sizes = np.bincount(balanced.labels, minlength=10)
    assert sizes.min() >= 0.5 * 200 and sizes.max() <= 1.5 * 200  # about N/k each
    assert np.ptp(sizes) < np.ptp(np.bincount(nearest.labels, minlength=10))
    assert nmi(balanced.labels, truth) > 0.5
