"""Features of a loader's videos: the one extraction loop (`feature_batches`), kept per video in
float16 memmaps for clustering (`run_extraction`, `extract_features`) or per clip in memory for
evaluation (`clip_features`); and the BatchNorm recompute before a fresh encoder's extraction.

Sharding: under torch.distributed each rank extracts `shard_indices(num_items, rank, world)` (or
the `indices` it is given); its memmap rows follow that order. With one process the shard is
every item, so row i is item i. `kmeans.cluster_features` gathers what it needs across ranks.

Restarts: given a `key` (pretraining: the iteration and a digest of the encoders' weights), an
extraction records it with its rows in a sidecar (`extraction[.rankR].json`) and saves `present`
every `save_every_s` seconds, after flushing the memmaps. A restart with the same key and rows asks
`extracted` which rows are done, gives the loader only the others, and keeps the rest.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from xdc import distributed as dist
from xdc.errors import XdcError
from xdc.files import atomic_file, write_text_atomic
from xdc.models import autocast, encode, flat_clips, to_device
from xdc.progress import progress

FLOAT16_MAX = float(np.finfo(np.float16).max)


class NoFeaturesError(XdcError):
    """Too few videos could be decoded to give the features asked for."""


def describe_skipped(skipped: list[tuple[int, str]]) -> str:
    """What a user needs to fix the files: how many were skipped and the first reasons."""
    return f"{len(skipped)} skipped" + (f": {'; '.join(r for _, r in skipped[:3])}" if skipped else "")


def shard_indices(num_items: int, rank: int, world_size: int) -> np.ndarray:
    """Items of `rank`: every world_size-th item from `rank` on (balanced to within one)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    return np.arange(rank, num_items, world_size, dtype=np.int64)


def _decoded_batches(loader, skipped: list[tuple[int, str]]) -> Iterator[dict]:
    """The batches of `loader` that hold at least one decoded item; the (index, reason) of every
    item a batch skipped is appended to `skipped`."""
    for batch in loader:
        skipped.extend((int(index), str(reason)) for index, reason in batch.get("skipped", ()))
        if "index" in batch and len(batch["index"]) > 0:
            yield batch


@contextmanager
def _in_mode(encoders: dict[str, nn.Module], training: bool) -> Iterator[None]:
    """The encoders in train or eval mode (BatchNorm: batch or running statistics) while the block
    runs; each one's mode restored after."""
    modes = {key: enc.training for key, enc in encoders.items()}
    for enc in encoders.values():
        enc.train(training)
    try:
        yield
    finally:
        for key, enc in encoders.items():
            enc.train(modes[key])


@torch.no_grad()
def recompute_batchnorms(encoders: dict[str, nn.Module], loader, device, max_batches: int = 50,
                         amp: bool = True) -> int:
    """Reset the BatchNorm running statistics of each encoder and recompute them on data.

    A freshly initialised encoder's running stats (mean 0, var 1) have nothing to do with its
    activations, so eval-mode features would be badly scaled. Forward passes in train mode with
    momentum=None make each running stat the plain average over the batches seen; no gradient, no
    labels. `encoders` maps a batch key ("video", "audio") to its encoder; one pass over `loader`
    (train or eval batches) serves them all. Pass bare encoders, not DDP wrappers.

    Under torch.distributed every rank runs the same number of forwards: the fewest batches with a
    decoded item any rank has, at most `max_batches`. A SyncBatchNorm layer exchanges statistics in
    every forward, so one rank running fewer would leave the others waiting for the timeout. How
    many of its batches decode a rank only learns while reading them, so the ranks agree step by
    step (`every_rank`: one small all-reduce per batch, next to a forward pass) rather than on a
    count up front; feeding a rank's last good batch again instead would weight it twice. Then
    each rank's stats are averaged. Returns the batches used (the same on every rank).
    """
    device = torch.device(device)
    norms = [m for enc in encoders.values() for m in enc.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average instead of an exponential one
    used = 0
    skipped: list[tuple[int, str]] = []
    try:
        with _in_mode(encoders, training=True), autocast(device, amp):
            batches = _decoded_batches(loader, skipped)
            while used < max_batches:
                batch = next(batches, None)
                if not dist.every_rank(batch is not None):
                    break
                for key, enc in encoders.items():
                    enc(to_device(flat_clips(batch[key], key), device))
                used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    if dist.is_distributed():
        for m in norms:  # each rank averaged over its own batches: average the ranks' averages
            for name in ("running_mean", "running_var"):
                stat = getattr(m, name)
                stat.copy_((dist.all_reduce_sum(stat.double()) / dist.world_size()).to(stat.dtype))
            m.num_batches_tracked.fill_(used * dist.world_size())
    if used == 0:
        where = (f" on rank {dist.rank()}; all {dist.world_size()} ranks stop when one has none"
                 if dist.is_distributed() else "")
        raise NoFeaturesError(f"no video could be decoded to recompute BatchNorm statistics on "
                              f"({describe_skipped(skipped)}{where}): re-encode or remove the broken files")
    return used


@dataclass
class Features:
    """Per-item feature vectors of one rank's items; `features["video"]` gives a memmap.

    Row r of every array is item `indices[r]`. `present[r]` is False when that item was skipped
    (could not be decoded) or never came out of the loader; its row is zeros.
    """

    arrays: dict[str, np.ndarray]  # key -> float16 memmap (len(indices), D)
    indices: np.ndarray  # int64 item index of each row
    present: np.ndarray  # bool per row
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def keys(self):
        return self.arrays.keys()

    @property
    def num_missing(self) -> int:
        return int((~self.present).sum())

    def valid(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(feature rows, item indices) of the items that have features: what
        `cluster_features(local_features, local_indices, ...)` takes."""
        return self.arrays[key][self.present], self.indices[self.present]


def _suffix() -> str:
    return "" if dist.world_size() == 1 else f".rank{dist.rank()}"


def _sidecar(out_dir: Path, key: str, indices: np.ndarray) -> tuple[Path, str]:
    rows = hashlib.sha1(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]
    return out_dir / f"extraction{_suffix()}.json", json.dumps({"key": key, "rows": rows})


def extracted(out_dir: str | Path, key: str | None, indices: np.ndarray, keys=("video", "audio")) -> np.ndarray:
    """Per row of `indices` (this rank's items): True where an earlier extraction into `out_dir`
    with the same `key` and rows already wrote the features of every one of `keys`."""
    out_dir, indices = Path(out_dir), np.asarray(indices, dtype=np.int64)
    none = np.zeros(len(indices), bool)
    if key is None:
        return none
    sidecar, expected = _sidecar(out_dir, key, indices)
    files = [out_dir / f"present{_suffix()}.npy"] + [out_dir / f"{k}{_suffix()}.f16.npy" for k in keys]
    if not (sidecar.is_file() and sidecar.read_text() == expected and all(f.is_file() for f in files)):
        return none
    present = np.load(files[0])
    return present if present.shape == none.shape else none


FeatureFns = dict[str, Callable[[torch.Tensor], torch.Tensor]]


def feature_batches(feature_fns: FeatureFns, loader, skipped: list[tuple[int, str]],
                    desc: str = "features") -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """The one loop from a loader's batches to features: per batch that holds items, (their dataset
    indices, {key: feature_fns[key](batch[key] as B×N×clip)}). The (index, reason) of every item
    the batches skipped are appended to `skipped`; a batch whose every item was skipped yields
    nothing. A progress bar on rank 0."""
    bar = progress(loader, desc=desc, disable=not dist.is_main(), leave=False, dynamic_ncols=True)
    for batch in _decoded_batches(bar, skipped):
        yield np.asarray(batch["index"], dtype=np.int64), {name: fn(batch[name]) for name, fn in feature_fns.items()}


def clip_encoder(encoder: nn.Module, modality: str, device, amp: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """clips B×N×clip -> `encoder`'s pooled features B×N×D (float32), without gradients."""
    device = torch.device(device)

    @torch.no_grad()
    def fn(clips: torch.Tensor) -> torch.Tensor:
        return encode(encoder, clips, modality, device, amp)
    return fn


def run_extraction(feature_fns: FeatureFns, loader, num_items: int, out_dir: str | Path,
                   indices: np.ndarray | None = None, desc: str = "features", key: str | None = None,
                   save_every_s: float = 60.0) -> Features:
    """Write `feature_fns[key](batch[key] as B×N×clip) -> B×D` for every batch into memmaps.

    Shared by `extract_features` (encoders) and `handcrafted_features`. Files:
    `out_dir/{key}.f16.npy` (float16 rows × D; an .npy memmap, so shape and dtype are in its
    header) and `out_dir/present.npy`; under torch.distributed the names get `.rank{r}` so ranks
    never write the same file. With a `key`, rows an earlier extraction with that key finished
    are kept (`extracted`; the loader may then yield only the others) and `present` is saved every
    `save_every_s` seconds, so that a crash loses little.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if indices is None:
        indices = shard_indices(num_items, dist.rank(), dist.world_size())
    indices = np.asarray(indices, dtype=np.int64)
    row_of = np.full(num_items, -1, np.int64)
    row_of[indices] = np.arange(len(indices))
    suffix = _suffix()
    present_path = out_dir / f"present{suffix}.npy"
    present = extracted(out_dir, key, indices, tuple(feature_fns))
    arrays: dict[str, np.ndarray] = {}
    if present.any():  # a restart: keep what the crashed extraction wrote
        arrays = {k: np.load(out_dir / f"{k}{suffix}.f16.npy", mmap_mode="r+") for k in feature_fns}
    elif key is not None:
        present_path.unlink(missing_ok=True)  # before the new key: never an old present with it
        write_text_atomic(*_sidecar(out_dir, key, indices))

    def save_present() -> None:
        for array in arrays.values():
            array.flush()  # the rows before the flags that say they are there
        with atomic_file(present_path) as handle:
            np.save(handle, present)

    skipped: list[tuple[int, str]] = []
    saved = time.monotonic()
    for index, features in feature_batches(feature_fns, loader, skipped, desc):
        if index.min() < 0 or index.max() >= num_items or (row_of[index] < 0).any():
            bad = index[(index < 0) | (index >= num_items)]
            bad = bad if len(bad) else index[row_of[index] < 0]
            raise ValueError(f"loader yielded item {int(bad[0])}, which is not among this rank's "
                             f"{len(indices)} items (of {num_items})")
        rows = row_of[index]
        for name, values in features.items():
            values = values.float().cpu().numpy()
            if np.isnan(values).any():
                raise ValueError(f"{name} features of items {index.tolist()} are NaN (diverged encoder?)")
            values = np.clip(values, -FLOAT16_MAX, FLOAT16_MAX)  # keep huge values finite in float16
            if name not in arrays:
                arrays[name] = np.lib.format.open_memmap(
                    out_dir / f"{name}{suffix}.f16.npy", mode="w+", dtype=np.float16,
                    shape=(len(indices), values.shape[1]))
            arrays[name][rows] = values.astype(np.float16)
        present[rows] = True
        if key is not None and time.monotonic() - saved >= save_every_s:
            save_present()
            saved = time.monotonic()
    if not arrays:
        raise NoFeaturesError(f"no video could be decoded for {desc} ({describe_skipped(skipped)}): re-encode "
                              f"or remove the broken files")
    save_present()
    missing = int((~present).sum())
    if missing:
        reasons = "; ".join(f"{i}: {r}" for i, r in skipped[:5])
        warnings.warn(f"{desc}: {missing} of {len(indices)} items have no features "
                      f"({len(skipped)} skipped by the loader{': ' + reasons if reasons else ''})",
                      stacklevel=2)
    return Features(arrays, indices, present, skipped)


def extract_features(encoders: dict[str, nn.Module], loader, num_items: int, out_dir: str | Path,
                     device, amp: bool = True, indices: np.ndarray | None = None, key: str | None = None) -> Features:
    """Pooled encoder features per video, the N clips of a video averaged; eval mode, no grad,
    bf16 autocast on CUDA. `encoders` maps a batch key ("video", "audio") to its encoder; `key`
    lets a restart keep finished rows (`run_extraction`)."""
    def per_video(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda clips: fn(clips).mean(dim=1)

    with _in_mode(encoders, training=False):
        return run_extraction({name: per_video(clip_encoder(enc, name, device, amp)) for name, enc in encoders.items()},
                              loader, num_items, out_dir, indices, desc="extract features", key=key)


def clip_features(encoder: nn.Module, loader, modality: str, device, amp: bool,
                  desc: str = "features") -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """(features V×N×D float32 on CPU, dataset indices V, skipped [(index, reason)]) of the videos an
    eval-mode loader yields, every clip kept (evaluation: clip- and video-level scores); eval mode,
    no grad. Videos that could not be decoded are left out and listed."""
    features, indices, skipped = [], [], []
    with _in_mode({modality: encoder}, training=False):
        for index, batch in feature_batches({modality: clip_encoder(encoder, modality, device, amp)}, loader,
                                            skipped, desc):
            features.append(batch[modality].cpu())
            indices.append(torch.as_tensor(index))
    if not features:
        raise NoFeaturesError(f"no video could be decoded for {desc} ({describe_skipped(skipped)}): "
                              f"re-encode or remove the broken files")
    return torch.cat(features), torch.cat(indices), skipped


def no_features_error(name: str, have: int, k: int, num_videos: int,
                      skipped: list[tuple[int, str]]) -> NoFeaturesError:
    """Why k-means cannot run: how many videos gave features, and why the others were skipped."""
    return NoFeaturesError(
        f"only {have} of the {num_videos} usable videos could be decoded for clustering, and cluster.k_{name}={k} "
        f"needs at least {k} ({describe_skipped(skipped)}): re-encode or remove the broken files, or lower "
        f"cluster.k_{name}")
