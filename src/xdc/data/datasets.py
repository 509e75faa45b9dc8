"""Aligned (video clip, log-mel audio) pairs from a manifest, and the sampling around them.

Item contract (docs/DESIGN.md, "Dataset item"): every item carries a clip axis N, so a batch is
always B×N×clip and `xdc.models.encode` takes any batch.
- train: N = 1; `video` float32 1×C×T×H×W, `audio` float32 1×1×n_mels×n_frames, `start` float64
  tensor of 1 (s), `index`, `has_audio`, `label` (when labelled); random start, crop and flip.
- eval: N clips (uniformly spaced starts, centre crop, one decode), `start` N.
- with_audio=False: no `audio` and no `has_audio` (the audio is not decoded).
- a sample that cannot be decoded: `{"index": i, "skipped": reason}`; `collate_clips` drops it
  and lists it in `batch["skipped"]`, and a `SkipCounter` reports the skips at epoch end.

Randomness (start, crop, flip) uses torch's generator, which DataLoader seeds per worker.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from xdc import distributed
from xdc.data.audio import LogMel, window_samples
from xdc.data.cache import cached_clips
from xdc.data.decode import (
    DecodeError,
    decode_audio_windows,
    decode_clips,
    media_duration,
)
from xdc.data.manifest import Manifest, describe_dropped, read_manifest, usable_rows
from xdc.data.transforms import eval_video_transform, train_video_transform

if TYPE_CHECKING:  # the config sits above: it checks its values against the lists down here
    from xdc.config import DataConfig

log = logging.getLogger(__name__)

MODES = ("train", "eval")


def eval_starts(duration: float, clip_seconds: float, count: int) -> list[float]:
    """`count` uniformly spaced clip starts covering the video (one clip: the middle one)."""
    last = max(0.0, duration - clip_seconds)
    if count == 1:
        return [last / 2]
    return np.linspace(0.0, last, count).tolist()


class AudioVideoClips(Dataset):
    """One item per manifest row (video). See the module docstring for the item keys.

    require_audio=False: a video without an audio stream gets the log-mel of silence and
    `has_audio=False`. require_audio=True: such a video is skipped (pretraining drops these rows
    up front in `from_manifest`, so this only happens when a row's metadata was wrong).
    with_audio=False: the audio is not decoded at all and items have neither `audio` nor
    `has_audio` (video-only fine-tuning has no use for them).
    Train mode retries another random window after a decode error, up to `cfg.max_retries`
    times; eval windows are fixed, so eval mode skips at the first error.
    With `cfg.cache_dir` set, windows come from the decoded-clip cache (xdc.data.cache) when it
    holds the file with these settings, else from the file.
    """

    def __init__(self, rows: Sequence[dict], cfg: DataConfig, mode: str = "train",
                 require_audio: bool = True, clips_per_video: int | None = None, with_audio: bool = True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if require_audio and not with_audio:
            raise ValueError("require_audio=True needs with_audio=True")
        if clips_per_video is not None and clips_per_video < 1:
            raise ValueError(f"clips_per_video must be >= 1, got {clips_per_video}")
        self.rows = as_manifest(rows)
        if not len(self.rows):
            raise ValueError("AudioVideoClips needs at least one row (the manifest has no usable video)")
        self.cfg, self.mode, self.require_audio, self.with_audio = cfg, mode, require_audio, with_audio
        self.clips_per_video = clips_per_video or cfg.eval_clips
        self.classes, self.labels = self.rows.class_labels()
        durations = self.rows.columns["duration"]  # NaN: unknown, read from the file once (a copy to fill)
        self._durations = durations.copy() if np.isnan(durations).any() else durations
        self.dropped: dict[str, int] = {}  # rows from_manifest left out, counted by reason
        self.log_mel = LogMel.from_config(cfg)
        self._silence = self.log_mel(torch.zeros(window_samples(cfg)))

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @classmethod
    def from_manifest(cls, path, cfg: DataConfig, mode: str = "train", require_audio: bool = True,
                      drop_missing: bool = False, clips_per_video: int | None = None) -> "AudioVideoClips":
        """Usable rows of a manifest (status ok; with audio when `require_audio`); logs the drops."""
        rows = read_manifest(path, drop_missing=drop_missing)
        kept, dropped = usable_rows(rows, require_audio)
        message = f"{path}: using {len(kept)} of {len(rows)} videos, {describe_dropped(dropped)}"
        (log.warning if dropped else log.info)(message)
        dataset = cls(kept, cfg, mode, require_audio, clips_per_video)
        dataset.dropped = dropped
        return dataset

    def __len__(self) -> int:
        return len(self.rows)

    def duration(self, index: int) -> float:
        """Seconds of video `index`: the manifest's value, else read from the file once."""
        if math.isnan(self._durations[index]):
            self._durations[index] = media_duration(self.rows.source(index), self.cfg)
        return float(self._durations[index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.rows.source(index)
        tries = 1 + self.cfg.max_retries if self.mode == "train" else 1
        for _ in range(tries):
            try:
                clips = self._decode(index)
            except DecodeError as err:
                reason = err.what
                continue
            if self.require_audio and clips[0].audio is None:
                return {"index": index, "skipped": f"{path}: no audio stream"}
            return self._item(index, clips)
        return {"index": index, "skipped": f"{path}: {reason} (after {tries} tries)"}

    def _decode(self, index: int):
        path, cfg = self.rows.source(index), self.cfg
        duration = self.duration(index)
        if self.mode == "train":
            starts = [float(torch.rand(())) * max(0.0, duration - cfg.clip_seconds)]
        else:
            starts = eval_starts(duration, cfg.clip_seconds, self.clips_per_video)
        clips = None
        if cfg.cache_dir and isinstance(path, str):  # None when the cache cannot answer (file or settings not in it)
            clips = cached_clips(cfg.cache_dir, path, starts, cfg, with_audio=self.with_audio)
        return clips if clips is not None else decode_clips(path, starts, cfg, with_audio=self.with_audio)

    def _item(self, index: int, clips) -> dict[str, Any]:
        has_audio = clips[0].audio is not None
        transform = train_video_transform if self.mode == "train" else eval_video_transform
        item = {"video": torch.stack([transform(c.video, self.cfg) for c in clips]),
                "start": torch.tensor([c.start for c in clips], dtype=torch.float64)}
        if self.with_audio:
            if has_audio:
                audio = self.log_mel(torch.from_numpy(np.stack([c.audio for c in clips])))
            else:
                audio = self._silence.expand(len(clips), *self._silence.shape).clone()
            item.update(audio=audio, has_audio=has_audio)
        item["index"] = index
        if self.labels is not None:
            item["label"] = int(self.labels[index])
        return item


class AudioClips(Dataset):
    """Log-mel windows of sound files without video (ESC-50), with AudioVideoClips' audio keys
    (`audio` N×1×M×F, N = 1 in train mode).

    Same decoder and log-mel as the audio of AudioVideoClips, so the windows match."""

    def __init__(self, rows: Sequence[dict], cfg: DataConfig, mode: str = "train"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.rows, self.cfg, self.mode = as_manifest(rows), cfg, mode
        self.classes, self.labels = self.rows.class_labels()
        self.log_mel = LogMel.from_config(cfg)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, cfg = self.rows[index], self.cfg
        window = cfg.audio_window_seconds
        duration = row.get("duration") or window
        if self.mode == "train":
            starts = [float(torch.rand(())) * max(0.0, duration - window)]
        else:
            starts = eval_starts(duration, window, cfg.eval_clips)
        try:
            samples = decode_audio_windows(self.rows.source(index), starts, cfg)
        except DecodeError as err:
            return {"index": index, "skipped": f"{row['path']}: {err.what}"}
        item = {"audio": self.log_mel(torch.from_numpy(np.stack(samples))), "index": index,
                "has_audio": True, "start": torch.tensor(starts, dtype=torch.float64)}
        if self.labels is not None:
            item["label"] = int(self.labels[index])
        return item


def as_manifest(rows: Manifest | Sequence[dict]) -> Manifest:
    """Datasets keep their rows as columns (a list of dicts is converted once)."""
    return rows if isinstance(rows, Manifest) else Manifest.from_rows(rows)


def collate_clips(items: list[dict]) -> dict[str, Any]:
    """default_collate of the decoded items (video B×N×C×T×H×W, audio B×N×1×M×F, start B×N);
    `batch["skipped"]` = [(index, reason), ...].

    When every item of the batch was skipped, the batch holds only "skipped".
    """
    skipped = [(item["index"], item["skipped"]) for item in items if "skipped" in item]
    kept = [item for item in items if "skipped" not in item]
    batch = default_collate(kept) if kept else {}
    batch["skipped"] = skipped
    return batch


class SkipCounter:
    """Counts the samples `collate_clips` dropped, for a summary at epoch end."""

    def __init__(self):
        self.skipped: list[tuple[int, str]] = []

    def add(self, batch: dict) -> int:
        new = list(batch.get("skipped", ()))
        self.skipped.extend(new)
        return len(new)

    @property
    def total(self) -> int:
        return len(self.skipped)

    def summary(self, most: int = 5) -> str:
        if not self.skipped:
            return "no samples skipped"
        reasons = Counter(reason for _, reason in self.skipped)
        videos = len({index for index, _ in self.skipped})
        listed = "; ".join(f"{n}× {reason}" for reason, n in reasons.most_common(most))
        more = f"; ... {len(reasons) - most} more reasons" if len(reasons) > most else ""
        return f"{self.total} samples skipped ({videos} videos): {listed}{more}"

    def reset(self) -> None:
        self.skipped.clear()


class EpochSampler(Sampler[int]):
    """`epoch_size` video indices per epoch, independent of the number of videos (drawn from
    `items` when given: no dataset Subset, no per-epoch list of all videos).

    Unweighted: shuffled passes over all videos (a fresh permutation per pass, cut at
    epoch_size), so no video is drawn twice before every video is drawn once. Weighted (e.g.
    uniform over clusters): drawn with replacement with probability proportional to `weights`.
    The draw depends only on (seed, epoch), so every rank makes the same one and takes its share
    (every world_size-th index); each rank gets ceil(epoch_size / world_size) indices.
    """

    def __init__(self, num_items: int, epoch_size: int, weights=None, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, items: np.ndarray | None = None):
        if epoch_size < 1:
            raise ValueError(f"need epoch_size >= 1, got {epoch_size}")
        self.epoch_size, self.seed, self.epoch = int(epoch_size), int(seed), 0
        self.world_size = distributed.world_size() if world_size is None else int(world_size)
        self.rank = distributed.rank() if rank is None else int(rank)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.set_items(num_items, weights, items)

    def set_items(self, num_items: int, weights=None, items: np.ndarray | None = None) -> None:
        """Draw from `items` (dataset indices; default 0..num_items-1) with `weights`: a loader
        with persistent workers keeps its sampler, so a new iteration's videos are set here."""
        self.num_items = int(num_items)
        if self.num_items < 1:
            raise ValueError(f"need num_items >= 1, got {self.num_items}")
        if items is not None and len(items) != self.num_items:
            raise ValueError(f"items has {len(items)} entries, expected {self.num_items}")
        self.items = None if items is None else np.asarray(items, dtype=np.int64)
        self.weights = None
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (self.num_items,):
                raise ValueError(f"weights has shape {weights.shape}, expected ({self.num_items},)")
            if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
                raise ValueError("weights must be finite, >= 0, and not all zero")
            self.weights = weights / weights.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw(self) -> np.ndarray:
        """This epoch's indices for all ranks together."""
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is not None:
            drawn = rng.choice(self.num_items, size=self.epoch_size, replace=True, p=self.weights)
        else:
            passes = math.ceil(self.epoch_size / self.num_items)
            drawn = np.concatenate([rng.permutation(self.num_items) for _ in range(passes)])[:self.epoch_size]
        return drawn if self.items is None else self.items[drawn]

    def __len__(self) -> int:
        return math.ceil(self.epoch_size / self.world_size)

    def __iter__(self):
        # Wrap around so every rank gets the same count (DDP steps must match).
        indices = np.resize(self.draw(), len(self) * self.world_size)
        return iter(indices[self.rank::self.world_size].tolist())


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and `random` from the seed torch gives this worker (distinct per worker/epoch)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def resolve_num_workers(num_workers: int | str) -> int:
    """`data.num_workers`: an int as is; "auto" = the CPU cores this process may use, shared by
    the local ranks (torchrun's LOCAL_WORLD_SIZE), minus one for the rank itself."""
    if num_workers != "auto":
        return int(num_workers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")) - 1)


def clip_loader(dataset, batch_size: int, sampler=None, num_workers: int | str = 0, shuffle: bool = False,
                pin_memory: bool | None = None, drop_last: bool = False) -> DataLoader:
    """A DataLoader wired for clips: collate_clips, per-worker seeding, persistent workers (kept
    across epochs as long as the loader is), prefetching."""
    num_workers = resolve_num_workers(num_workers)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle and sampler is None,
                      num_workers=num_workers, collate_fn=collate_clips, worker_init_fn=worker_init_fn,
                      persistent_workers=num_workers > 0, drop_last=drop_last,
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory)
