"""Settings that follow the data: `cluster.k_*: auto` and `optim.epoch_passes`; and the number of
videos held out for the validation loss (`held_out_videos`).

A preset made for one size of data (the paper's k for Kinetics' 240k videos, epochs of thousands
of clips) does not fit a folder of ten videos. These two settings follow the number N of usable
videos (ok rows with audible audio) instead. `fit_to_data` turns them into plain numbers before
the run folder is taken, so config.yaml records what the run used and a relaunch of the same
command on the same rows finds the same config:

- `cluster.k_video | k_audio | k_joint: auto` -> k = clamp(round(N / 39), 2, the paper's k
  (64 video, 128 audio and joint; the paper's Tables 6-7)). 39 is faiss's `min_points_per_centroid`,
  the fewest points per centroid its k-means trains on without warning: with fewer, a centroid
  is the mean of a handful of videos. On Kinetics (240k videos) the rule gives the paper's k.
- `optim.epoch_passes: P` (0: off) -> `optim.epoch_size` = min(epoch_size, P × N): on a small
  folder an epoch is a pass or a few over its videos, not thousands of clips of the same few.
"""

from __future__ import annotations

from dataclasses import replace

from xdc.config import AUTO, ClusterConfig, PretrainConfig

VIDEOS_PER_CLUSTER = 39  # faiss's min_points_per_centroid
# The most `auto` gives: the config's defaults, the paper's k on Kinetics (its Tables 6-7).
PAPER_K = {name: getattr(ClusterConfig, f"k_{name}") for name in ("video", "audio", "joint")}
K_RULE = f"clamp(round(videos / {VIDEOS_PER_CLUSTER}), 2, the paper's {'/'.join(map(str, PAPER_K.values()))})"


def auto_k(clustering: str, num_videos: int) -> int:
    """k for `num_videos` usable videos: one cluster per VIDEOS_PER_CLUSTER, at least 2, at most the paper's."""
    return min(max(2, round(num_videos / VIDEOS_PER_CLUSTER)), PAPER_K[clustering])


def held_out_videos(num_videos: int, val_fraction: float) -> int:
    """Videos held out of training for the validation loss: `val_fraction` of them, at least one,
    and never all (pretrain.split_train_val holds them out, the plan counts them)."""
    return min(num_videos - 1, max(1, round(val_fraction * num_videos)))


def fit_to_data(cfg: PretrainConfig, num_videos: int) -> tuple[PretrainConfig, list[str]]:
    """`cfg` with `cluster.k_*: auto` and `optim.epoch_passes` made numbers for `num_videos`
    usable videos, and one line per setting that changed (the plan prints them)."""
    notes = []
    auto = {name: auto_k(name, num_videos) for name in PAPER_K if getattr(cfg.cluster, f"k_{name}") == AUTO}
    if auto:
        cfg = replace(cfg, cluster=replace(cfg.cluster, **{f"k_{name}": k for name, k in auto.items()}))
        notes.append(f"cluster.k_* auto = {K_RULE} for {num_videos} videos: "
                     + ", ".join(f"k_{name} {k}" for name, k in auto.items()))
    o = cfg.optim
    if o.epoch_passes and o.epoch_passes * num_videos < o.epoch_size:
        cfg = replace(cfg, optim=replace(o, epoch_size=o.epoch_passes * num_videos))
        notes.append(f"optim.epoch_passes {o.epoch_passes}: epochs of {o.epoch_passes} pass(es) over "
                     f"{num_videos} videos = {cfg.optim.epoch_size} clips (fewer than optim.epoch_size {o.epoch_size})")
    return cfg, notes
