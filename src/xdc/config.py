"""Typed configuration: dataclasses, loaded from YAML and `key=value` overrides, then validated.

One config object travels through the whole flow. `load_config` merges the schema's defaults, one
or more YAML files and the overrides (with OmegaConf, which type-checks every key) and `validate`
rejects values out of range with a message naming the key. The YAML files shipped with the package
(xdc/configs: pretrain/, finetune/, demo.yaml, demo_quick.yaml) are found by name with
`resolve_config`; docs/DESIGN.md says how a config argument is resolved.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from os import PathLike
from pathlib import Path
from typing import Any, Union

from omegaconf import OmegaConf

# The allowed values of each setting come from the module that implements it: the config sits
# above data, models, clustering and methods (docs/DESIGN.md, "How the code is laid out").
from xdc.clustering.handcrafted import HOG_MIN_SIZE, VIDEO_DESCRIPTORS, descriptor_sizes
from xdc.clustering.kmeans import ASSIGNMENTS
from xdc.data.audio import MIN_WINDOW_SAMPLES, NORMALIZATIONS, stft_sizes
from xdc.data.decode import SHORT_VIDEO
from xdc.data.manifest import CHECK_FILES
from xdc.data.transforms import VIDEO_NORMS
from xdc.distributed import DEVICES
from xdc.errors import XdcError
from xdc.files import write_text_atomic
from xdc.methods import HEAD_REDUCTIONS, METHODS
from xdc.models.video import VIDEO_ARCHS, VIDEO_INPUTS
from xdc.stamps import flatten

PACKAGED = files("xdc") / "configs"  # shipped as package data (pyproject.toml)
# The demo's methods: scratch (random encoders, no pretraining) and the self-supervised ones
# (superv needs labels, which the demo keeps from pretraining).
DEMO_METHODS = ("scratch", "rand", "sdc", "mdc", "cdc", "xdc")


@dataclass
class DataConfig:
    """How a clip is cut from a video. Not fixed by the paper; these are the usual choices."""

    frames: int = 8  # frames per clip
    fps: float = 8.0  # clips are resampled to this frame rate by timestamps
    short_side: int = 128  # resize so the shorter side has this many pixels
    crop: int = 112  # square crop (random in train mode, centre in eval mode)
    sample_rate: int = 16000  # audio is resampled to this rate, mono
    audio_seconds: float | None = None  # audio window, centred on the clip; None = frames / fps
    n_mels: int = 40
    win_ms: float = 25.0  # STFT window
    hop_ms: float = 10.0  # STFT hop
    # log-mel normalisation: per_spectrogram (mean 0, std 1) | per_band (each mel band over time) |
    # per_band_mean (each band's mean over time, the spectrogram's std) | none
    audio_norm: str = "per_spectrogram"
    video_norm: str = "dataset"  # dataset (video_mean/std) | per_clip (then each clip's own mean, std too)
    eval_clips: int = 10  # uniformly spaced clips per video in eval mode
    short_video: str = "loop"  # a video shorter than the clip: "loop" its frames or "pad" the last one
    video_stream: int = 0  # index among the file's video streams
    audio_stream: int = 0  # index among the file's audio streams
    max_retries: int = 3  # other windows tried after a decode error before the sample is skipped
    cache_dir: str | None = None  # decoded-clip cache (xdc.data.cache.build_cache); None = decode files
    # DataLoader workers: an int, or "auto" = CPU cores per local rank minus one (datasets.resolve_num_workers)
    num_workers: Union[int, str] = "auto"
    # Existence of the files of ok rows at start: all | sample | none | auto (all up to 100k rows,
    # a sample above); a missing file not checked is a skipped sample when training reaches it.
    check_files: str = "auto"
    flip: bool = True  # random horizontal flip in train mode
    video_mean: tuple[float, float, float] = (0.43216, 0.394666, 0.37645)  # Kinetics, as torchvision
    video_std: tuple[float, float, float] = (0.22803, 0.22145, 0.216989)

    @property
    def clip_seconds(self) -> float:
        return self.frames / self.fps

    @property
    def audio_window_seconds(self) -> float:
        return self.audio_seconds if self.audio_seconds is not None else self.clip_seconds


@dataclass
class ModelConfig:
    video_arch: str = "r2plus1d_18"
    width: int = 64  # channels of the first stage; 64 is torchvision's network, smaller for CPU runs
    # What the video encoder's first conv sees (xdc.models.video): rgb | sobel (each frame's grey-
    # level gradients, DeepCluster) | residual (each frame minus the one before)
    video_input: str = "rgb"
    sync_bn: bool = False


@dataclass
class ClusterConfig:
    k_video: Union[int, str] = 64  # the paper's Kinetics k (its Tables 6-7); "auto": xdc.training.sizes
    k_audio: Union[int, str] = 128
    k_joint: Union[int, str] = 128  # CDC clusters the concatenated features
    niter: int = 20
    max_points_per_centroid: int = 256  # faiss subsamples k * this many points to train centroids
    pca_dim: int = 0  # 0 = no PCA; else PCA to this many dimensions before k-means
    whiten: bool = True  # PCA-whitening (DeepCluster) when pca_dim > 0
    first_features: str = "random"  # iteration 0: "random" encoders or "handcrafted" features
    # the hand-crafted video descriptor: layout (colour thumbnail + motion grid) | hog (gradient
    # orientations of the frames and of what moves; position- and colour-free). xdc.clustering.handcrafted
    video_descriptor: str = "layout"
    clips_per_video: int = 1  # clips averaged into one feature per video
    # kmeans: each video to its nearest centroid | sinkhorn: equal cluster sizes (SeLa's balanced
    # assignment, xdc.clustering.sinkhorn), against clusters that swallow most videos
    assign: str = "kmeans"
    reassign_empty: bool | None = None  # None = the method decides (SDC: yes)
    uniform_sampling: bool | None = None  # sample clips uniformly over clusters; None = method decides


# Settings whose code sits above the config own their lists here, and that code imports them.
AUTO = "auto"  # cluster.k_*: xdc.training.sizes
LR_SCALINGS = ("none", "linear")  # optim.lr_scaling: xdc.training.schedule.effective_lr
FIRST_FEATURES = ("random", "handcrafted")  # cluster.first_features: what iteration 0 clusters


@dataclass
class OptimConfig:
    """The paper's Table 1. Epochs are counted in clips (`epoch_size`), not in passes over the data."""

    epoch_size: int = 1_000_000
    epoch_passes: int = 0  # pretraining: epochs of min(epoch_size, this × usable videos); 0 = off
    batch_size: int = 32  # per GPU (per rank): the global batch is batch_size × ranks
    lr: float = 0.01
    # Goyal et al.'s linear rule: "linear" trains at lr × global batch / reference_batch; "none"
    # trains at `lr` whatever the number of ranks.
    lr_scaling: str = "none"
    reference_batch: int = 256  # the global batch `lr` was set for (lr_scaling=linear)
    warmup_epochs: int = 10
    step_epochs: int = 10
    total_epochs: int = 30
    gamma: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    early_stop: bool = True
    patience: int = 3  # stop after this many consecutive rises of the validation loss
    val_fraction: float = 0.1  # share of videos held out for the validation loss
    val_max_videos: int = 10_000  # at most this many of them (the loss needs no more at scale)
    # How the heads' cross-entropies combine into the loss (pretraining): "sum" gives every head
    # the full gradient that Table 2's lr was set for (a single-head network's); "mean" divides it
    # by the number of heads (XDC's encoders would train at half, MDC's at a quarter of that lr).
    head_reduction: str = "sum"


@dataclass
class DistConfig:
    """torch.distributed settings (docs/SCALE.md)."""

    # How long a collective waits for the slowest rank before the job fails (and torchrun
    # --max-restarts relaunches it): rank 0 alone fits PCA and k-means while the others wait.
    timeout_minutes: float = 60.0


@dataclass
class PretrainConfig:
    method: str = "xdc"
    iterations: int = 5  # deep-clustering iterations (cluster, then train)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    # Encoders to start from (a pretraining checkpoint, e.g. RUN/checkpoints/iteration_NN.pt);
    # iteration 0 then clusters their features. Used for the paper's longer last iteration (IG*).
    init_from: str | None = None


FINETUNE_MODES = ("full", "fc", "linear", "knn", "retrieval")  # xdc.evaluation: one module each


@dataclass
class FinetuneConfig:
    """The paper's Tables 3-4."""

    mode: str = "full"  # full | fc | linear | knn | retrieval (xdc.evaluation.finetune)
    lrs: list[float] = field(default_factory=lambda: [0.001, 0.002, 0.004, 0.006, 0.008, 0.01])
    fc_lrs: list[float] = field(default_factory=lambda: [0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.02, 0.04])
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        epoch_size=106_000, batch_size=32, lr=0.01, warmup_epochs=2, step_epochs=2, total_epochs=8,
        weight_decay=0.005, early_stop=False))
    device: str = "auto"
    amp: bool = True
    knn_k: int = 20  # mode knn: neighbours that vote (DINO's eval_knn)
    knn_temperature: float = 0.07  # mode knn: a neighbour's vote is exp(cosine / knn_temperature)


@dataclass
class SyntheticConfig:
    """The parameters of xdc.data.synthetic.generate (a test keeps the two in step)."""

    num_classes: int = 6
    videos_per_class: int = 30
    seed: int = 0
    seconds: float = 2.0
    fps: float = 8.0
    size: int = 32
    sample_rate: int = 16000


@dataclass
class ProbeConfig:
    """The demo's stratified train / val / test split of the labelled videos."""

    val_fraction: float = 0.2  # of each class's videos, for the lr choice
    test_fraction: float = 0.6  # of each class's videos, for the reported accuracy


@dataclass
class DemoConfig:
    """`xdc demo`: data, methods and budgets. In YAML the finetune section's `data` and `model`
    start from the pretrain section's (the probe reads the same clips with the pretrained
    encoders); only the keys it lists differ."""

    methods: list[str] = field(default_factory=lambda: list(DEMO_METHODS))
    threads: int = 1  # torch threads
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


class ConfigError(XdcError, ValueError):
    """A config value is missing, mistyped or out of range."""


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config value {key}={value!r} is out of range: expected {expected}")


def _one_of(value: Any, key: str, choices) -> None:
    """`value` among `choices`: the list of the module that implements the setting."""
    _check(value in choices, key, value, " | ".join(choices))


def validate_data(cfg: DataConfig, prefix: str = "data") -> None:
    for key in ("frames", "short_side", "crop", "sample_rate", "n_mels", "eval_clips"):
        _check(getattr(cfg, key) >= 1, f"{prefix}.{key}", getattr(cfg, key), ">= 1")
    for key in ("fps", "win_ms", "hop_ms"):
        _check(getattr(cfg, key) > 0, f"{prefix}.{key}", getattr(cfg, key), "> 0")
    # A window of a few samples, or fewer frequency bins than mel bands, gives a constant log-mel.
    samples = cfg.sample_rate * cfg.win_ms / 1000
    if samples < MIN_WINDOW_SAMPLES:
        raise ConfigError(f"config values {prefix}.win_ms={cfg.win_ms} at {prefix}.sample_rate={cfg.sample_rate} "
                          f"give an STFT window of {samples:g} samples: expected >= {MIN_WINDOW_SAMPLES} "
                          f"(raise {prefix}.win_ms or {prefix}.sample_rate)")
    bins = stft_sizes(cfg.sample_rate, cfg.win_ms)[1] // 2 + 1
    _check(cfg.n_mels <= bins, f"{prefix}.n_mels", cfg.n_mels,
           f"<= the {bins} frequency bins of a {cfg.win_ms} ms window at {cfg.sample_rate} Hz "
           f"(or raise {prefix}.win_ms / {prefix}.sample_rate)")
    _check(cfg.crop <= cfg.short_side, f"{prefix}.crop", cfg.crop, f"<= short_side ({cfg.short_side})")
    _check(cfg.audio_seconds is None or cfg.audio_seconds > 0, f"{prefix}.audio_seconds",
           cfg.audio_seconds, "> 0 or null")
    _check(cfg.hop_ms <= cfg.win_ms, f"{prefix}.hop_ms", cfg.hop_ms, f"<= win_ms ({cfg.win_ms})")
    _one_of(cfg.short_video, f"{prefix}.short_video", SHORT_VIDEO)
    _one_of(cfg.video_norm, f"{prefix}.video_norm", VIDEO_NORMS)
    _one_of(cfg.audio_norm, f"{prefix}.audio_norm", NORMALIZATIONS)
    for key in ("video_stream", "audio_stream", "max_retries"):
        _check(getattr(cfg, key) >= 0, f"{prefix}.{key}", getattr(cfg, key), ">= 0")
    _check(cfg.num_workers == "auto" or (isinstance(cfg.num_workers, int) and cfg.num_workers >= 0),
           f"{prefix}.num_workers", cfg.num_workers, "auto or >= 0")
    _one_of(cfg.check_files, f"{prefix}.check_files", CHECK_FILES)


def validate_model(cfg: ModelConfig, prefix: str = "model") -> None:
    _one_of(cfg.video_arch, f"{prefix}.video_arch", VIDEO_ARCHS)
    _check(cfg.width >= 1, f"{prefix}.width", cfg.width, ">= 1")
    _one_of(cfg.video_input, f"{prefix}.video_input", VIDEO_INPUTS)


def validate_optim(cfg: OptimConfig, prefix: str = "optim") -> None:
    for key in ("epoch_size", "batch_size", "total_epochs", "patience", "val_max_videos"):
        _check(getattr(cfg, key) >= 1, f"{prefix}.{key}", getattr(cfg, key), ">= 1")
    _check(cfg.epoch_passes >= 0, f"{prefix}.epoch_passes", cfg.epoch_passes, ">= 0 (0 = off)")
    # Bounds far above any useful value (the paper's lr is at most 0.04), so that a typo such as
    # lr=1e6 or inf is refused here rather than diverging after an hour. NaN fails every comparison.
    _check(0 < cfg.lr <= 10, f"{prefix}.lr", cfg.lr, "in (0, 10]: a larger lr makes the loss diverge")
    _check(0 < cfg.gamma <= 1, f"{prefix}.gamma", cfg.gamma, "in (0, 1]")
    _check(0 <= cfg.weight_decay <= 1, f"{prefix}.weight_decay", cfg.weight_decay, "in [0, 1]")
    _check(0 <= cfg.momentum < 1, f"{prefix}.momentum", cfg.momentum, "in [0, 1)")
    _check(0 <= cfg.warmup_epochs <= cfg.total_epochs, f"{prefix}.warmup_epochs", cfg.warmup_epochs,
           f"in [0, total_epochs={cfg.total_epochs}]")
    _check(cfg.step_epochs >= 1, f"{prefix}.step_epochs", cfg.step_epochs, ">= 1")
    _check(0 < cfg.val_fraction < 1, f"{prefix}.val_fraction", cfg.val_fraction, "in (0, 1)")
    _one_of(cfg.head_reduction, f"{prefix}.head_reduction", HEAD_REDUCTIONS)
    _one_of(cfg.lr_scaling, f"{prefix}.lr_scaling", LR_SCALINGS)
    _check(cfg.reference_batch >= 1, f"{prefix}.reference_batch", cfg.reference_batch, ">= 1")


def validate(cfg: PretrainConfig | FinetuneConfig | DemoConfig, prefix: str = "") -> None:
    """Raise ConfigError naming the first value out of range; `prefix` names a config's section."""
    if isinstance(cfg, DemoConfig):
        return validate_demo(cfg)
    validate_data(cfg.data, f"{prefix}data")
    validate_model(cfg.model, f"{prefix}model")
    validate_optim(cfg.optim, f"{prefix}optim")
    _one_of(cfg.device, f"{prefix}device", DEVICES)
    if isinstance(cfg, PretrainConfig):
        _one_of(cfg.method, f"{prefix}method", METHODS)
        _check(cfg.iterations >= 1, f"{prefix}iterations", cfg.iterations, ">= 1")
        _check(cfg.dist.timeout_minutes > 0, f"{prefix}dist.timeout_minutes", cfg.dist.timeout_minutes, "> 0")
        c = cfg.cluster
        for key in ("k_video", "k_audio", "k_joint"):
            k = getattr(c, key)
            _check(k == AUTO or (isinstance(k, int) and k >= 2), f"{prefix}cluster.{key}", k, f">= 2 or {AUTO}")
        for key in ("niter", "max_points_per_centroid", "clips_per_video"):
            _check(getattr(c, key) >= 1, f"{prefix}cluster.{key}", getattr(c, key), ">= 1")
        _one_of(c.first_features, f"{prefix}cluster.first_features", FIRST_FEATURES)
        _one_of(c.video_descriptor, f"{prefix}cluster.video_descriptor", VIDEO_DESCRIPTORS)
        hog_start = c.first_features == "handcrafted" and c.video_descriptor == "hog"
        _check(not hog_start or cfg.data.crop >= HOG_MIN_SIZE, f"{prefix}data.crop", cfg.data.crop,
               f">= {HOG_MIN_SIZE} with cluster.video_descriptor=hog")
        _one_of(c.assign, f"{prefix}cluster.assign", ASSIGNMENTS)
        _check(c.pca_dim >= 0, f"{prefix}cluster.pca_dim", c.pca_dim, ">= 0 (0 = no PCA)")
        if c.pca_dim and METHODS[cfg.method].clusterings:
            size = smallest_feature_size(cfg)
            _check(c.pca_dim <= size, f"{prefix}cluster.pca_dim", c.pca_dim,
                   f"<= {size}, the smallest feature size clustered (8·model.width per encoder, the "
                   f"hand-crafted sizes with first_features=handcrafted)")
    else:
        o = cfg.optim
        _check(o.epoch_passes == 0, f"{prefix}optim.epoch_passes", o.epoch_passes, "0 (pretraining only)")
        _one_of(cfg.mode, f"{prefix}mode", FINETUNE_MODES)
        _check(cfg.knn_k >= 1, f"{prefix}knn_k", cfg.knn_k, ">= 1")
        _check(cfg.knn_temperature > 0, f"{prefix}knn_temperature", cfg.knn_temperature, "> 0")
        for key in ("lrs", "fc_lrs"):
            lrs = getattr(cfg, key)
            _check(len(lrs) > 0 and all(lr > 0 for lr in lrs), f"{prefix}{key}", lrs, "positive values")


def smallest_feature_size(cfg: PretrainConfig) -> int:
    """The smallest feature vector any clustering of `cfg.method` gets, over all iterations: an
    encoder gives 8·width values (docs/DESIGN.md, Encoders), CDC clusters [f_v; f_a], and
    iteration 0 may cluster hand-crafted features instead."""
    stages = [{"video": 8 * cfg.model.width, "audio": 8 * cfg.model.width}]
    if cfg.cluster.first_features == "handcrafted":
        stages.append(descriptor_sizes(cfg.data.n_mels, cfg.cluster.video_descriptor))
    for sizes in stages:
        sizes["joint"] = sizes["video"] + sizes["audio"]
    return min(sizes[name] for sizes in stages for name in METHODS[cfg.method].clusterings)


def validate_demo(cfg: DemoConfig) -> None:
    # The synthetic section is checked by synthetic.generate itself, before it writes anything.
    _check(len(cfg.methods) > 0 and set(cfg.methods) <= set(DEMO_METHODS), "methods", cfg.methods,
           f"a list of {' | '.join(DEMO_METHODS)}")
    _check(cfg.threads >= 1, "threads", cfg.threads, ">= 1")
    for key in ("val_fraction", "test_fraction"):
        _check(0 < getattr(cfg.probe, key) < 1, f"probe.{key}", getattr(cfg.probe, key), "in (0, 1)")
    validate(cfg.pretrain, "pretrain.")
    validate(cfg.finetune, "finetune.")


# ------------------------------------------------------------------------------------ loading

# Packaged configs of a schema live in this subfolder of xdc/configs (the demo's at the top).
KINDS = {PretrainConfig: "pretrain", FinetuneConfig: "finetune", DemoConfig: None}


def packaged_configs(kind: str | None = None) -> list[str]:
    """Names of the YAML files shipped in xdc/configs/KIND (or at its top), without `.yaml`."""
    folder = PACKAGED / kind if kind else PACKAGED
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_config(arg: str | Path | Traversable, kind: str | None = None) -> Path | Traversable:
    """A config argument: a YAML file on disk if one is there, else a packaged config named
    `NAME` or `NAME.yaml` in xdc/configs/KIND, or `KIND/NAME[.yaml]` (e.g. `tiny_cpu`,
    `pretrain/tiny_cpu.yaml`). Raises ConfigError naming the packaged choices."""
    if not isinstance(arg, (str, PathLike)):
        return arg  # already a packaged file (from `files`, maybe inside a zip)
    if Path(arg).is_file():
        return Path(arg)
    name = str(arg) if str(arg).endswith(".yaml") else f"{arg}.yaml"
    for candidate in ([PACKAGED / kind / name] if kind else []) + [PACKAGED / name]:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config {str(arg)!r} is neither a file nor a packaged config; packaged "
                      f"{kind or 'top-level'} configs: {', '.join(packaged_configs(kind))}")


def default_pretrain_config() -> Traversable:
    """`xdc pretrain` without --config: the paper's Kinetics schedule on a GPU, a CPU-scale one
    otherwise; says which on stderr."""
    return _default_config("pretrain", "dc_kinetics")


def default_finetune_config() -> Traversable:
    """`xdc finetune` without --config: the paper's UCF101 schedule on a GPU, a CPU-scale linear
    probe otherwise; says which on stderr."""
    return _default_config("finetune", "ucf101")


def _default_config(kind: str, gpu: str) -> Traversable:
    import torch

    path = resolve_config(gpu if torch.cuda.is_available() else "cpu", kind)
    print(f"no --config given: using {path}", file=sys.stderr, flush=True)
    return path


def load_config(path: str | Path | Traversable | list | None = None,
                overrides: list[str] | None = None, schema: type = PretrainConfig):
    """Defaults of `schema`, then the YAML file(s) `path` (one or a list, merged in order; each a
    file or a packaged name, see `resolve_config`), then `key=value` overrides; validated."""
    paths = [] if path is None else list(path) if isinstance(path, (list, tuple)) else [path]
    sources = [resolve_config(p, KINDS.get(schema)) for p in paths]
    try:
        tree = OmegaConf.create()
        for source in sources:
            with source.open() as f:
                tree = OmegaConf.merge(tree, OmegaConf.load(f))
        tree = OmegaConf.merge(tree, OmegaConf.from_dotlist(list(overrides or [])))
        if schema is DemoConfig:  # the probe's data and model start from the pretraining's
            tree.finetune = OmegaConf.merge({"data": tree.get("pretrain", {}).get("data", {}),
                                             "model": tree.get("pretrain", {}).get("model", {})},
                                            tree.get("finetune", {}))
        merged = OmegaConf.merge(OmegaConf.structured(schema), tree)
    except Exception as err:  # OmegaConf names the bad key and the expected type
        # Blame the override that set the bad key, not the YAML file(s) it was merged onto.
        given = [o for o in overrides or [] if o.split("=", 1)[0] == getattr(err, "full_key", None)]
        names = f"override {given[-1]}" if given else \
            ", ".join(map(str, sources + (["overrides"] if overrides else []))) or "defaults"
        where = f" (key {err.full_key})" if getattr(err, "full_key", None) else ""
        raise ConfigError(f"bad config ({names}): {str(err).splitlines()[0]}{where}") from err
    cfg = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg


def dotlist(tree: dict) -> list[str]:
    """{'a': {'b': 1}} -> ['a.b=1'] (lists as YAML flow text): a nested dict as `load_config` overrides."""
    return [f"{key}={json.dumps(value)}" for key, value in flatten(tree).items()]


def config_to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg, path: str | Path) -> None:
    write_text_atomic(path, config_to_yaml(cfg))  # a run killed while writing leaves no half file

