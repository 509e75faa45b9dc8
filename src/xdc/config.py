"""Typed configuration: dataclasses, loaded from YAML and `key=value` overrides, then validated.

One config object travels through the whole flow. YAML files under `configs/` only list what
differs from these defaults; `load_config` merges them (with OmegaConf, which type-checks every
key) and `validate` rejects values out of range with a message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from xdc.errors import XdcError

METHODS = ("xdc", "sdc", "mdc", "cdc", "rand", "superv")
VIDEO_ARCHS = ("r2plus1d_18", "r3d_18")


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
    audio_norm: str = "per_spectrogram"  # log-mel normalisation: per_spectrogram (mean 0, std 1) | none
    eval_clips: int = 10  # uniformly spaced clips per video in eval mode
    short_video: str = "loop"  # a video shorter than the clip: "loop" its frames or "pad" the last one
    video_stream: int = 0  # index among the file's video streams
    audio_stream: int = 0  # index among the file's audio streams
    max_retries: int = 3  # other windows tried after a decode error before the sample is skipped
    cache_dir: str | None = None  # decoded-clip cache (xdc.data.cache.build_cache); None = decode files
    num_workers: int = 2  # DataLoader workers
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
    sync_bn: bool = False


@dataclass
class ClusterConfig:
    k_video: int = 64  # the paper's Kinetics setting (seed Tables 6-7)
    k_audio: int = 128
    k_joint: int = 128  # CDC clusters the concatenated features
    niter: int = 20
    max_points_per_centroid: int = 256  # faiss subsamples k * this many points to train centroids
    pca_dim: int = 0  # 0 = no PCA; else PCA to this many dimensions before k-means
    whiten: bool = True  # PCA-whitening (DeepCluster) when pca_dim > 0
    first_features: str = "random"  # iteration 0: "random" encoders or "handcrafted" features
    clips_per_video: int = 1  # clips averaged into one feature per video
    reassign_empty: bool | None = None  # None = the method decides (SDC: yes)
    uniform_sampling: bool | None = None  # sample clips uniformly over clusters; None = method decides


@dataclass
class OptimConfig:
    """Seed Table 1. Epochs are counted in clips (`epoch_size`), not in passes over the data."""

    epoch_size: int = 1_000_000
    batch_size: int = 32
    lr: float = 0.01
    warmup_epochs: int = 10
    step_epochs: int = 10
    total_epochs: int = 30
    gamma: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    early_stop: bool = True
    patience: int = 3  # stop after this many consecutive rises of the validation loss
    val_fraction: float = 0.1  # share of videos held out for the validation loss


@dataclass
class PretrainConfig:
    method: str = "xdc"
    iterations: int = 5  # deep-clustering iterations (cluster, then train)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    # Encoders to start from (a pretraining checkpoint, e.g. RUN/checkpoints/iteration_NN.pt);
    # iteration 0 then clusters their features. Used for the seed's longer last iteration (IG*).
    init_from: str | None = None


@dataclass
class FinetuneConfig:
    """Seed Tables 3-4."""

    mode: str = "full"  # full | fc | linear
    lrs: list[float] = field(default_factory=lambda: [0.001, 0.002, 0.004, 0.006, 0.008, 0.01])
    fc_lrs: list[float] = field(
        default_factory=lambda: [0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.02, 0.04]
    )
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            epoch_size=106_000, batch_size=32, lr=0.01, warmup_epochs=2, step_epochs=2,
            total_epochs=8, weight_decay=0.005, early_stop=False,
        )
    )
    device: str = "auto"
    amp: bool = True


class ConfigError(XdcError, ValueError):
    """A config value is missing, mistyped or out of range."""


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config value {key}={value!r} is out of range: expected {expected}")


def validate_data(cfg: DataConfig, prefix: str = "data") -> None:
    for key in ("frames", "short_side", "crop", "sample_rate", "n_mels", "eval_clips"):
        _check(getattr(cfg, key) >= 1, f"{prefix}.{key}", getattr(cfg, key), ">= 1")
    for key in ("fps", "win_ms", "hop_ms"):
        _check(getattr(cfg, key) > 0, f"{prefix}.{key}", getattr(cfg, key), "> 0")
    _check(cfg.crop <= cfg.short_side, f"{prefix}.crop", cfg.crop, f"<= short_side ({cfg.short_side})")
    _check(cfg.audio_seconds is None or cfg.audio_seconds > 0, f"{prefix}.audio_seconds",
           cfg.audio_seconds, "> 0 or null")
    _check(cfg.hop_ms <= cfg.win_ms, f"{prefix}.hop_ms", cfg.hop_ms, f"<= win_ms ({cfg.win_ms})")
    _check(cfg.short_video in ("loop", "pad"), f"{prefix}.short_video", cfg.short_video, "loop | pad")
    _check(cfg.audio_norm in ("per_spectrogram", "none"), f"{prefix}.audio_norm", cfg.audio_norm,
           "per_spectrogram | none")
    for key in ("video_stream", "audio_stream", "max_retries", "num_workers"):
        _check(getattr(cfg, key) >= 0, f"{prefix}.{key}", getattr(cfg, key), ">= 0")


def validate_model(cfg: ModelConfig, prefix: str = "model") -> None:
    _check(cfg.video_arch in VIDEO_ARCHS, f"{prefix}.video_arch", cfg.video_arch, " | ".join(VIDEO_ARCHS))
    _check(cfg.width >= 1, f"{prefix}.width", cfg.width, ">= 1")


def validate_optim(cfg: OptimConfig, prefix: str = "optim") -> None:
    for key in ("epoch_size", "batch_size", "total_epochs", "patience"):
        _check(getattr(cfg, key) >= 1, f"{prefix}.{key}", getattr(cfg, key), ">= 1")
    _check(cfg.lr > 0, f"{prefix}.lr", cfg.lr, "> 0")
    _check(0 < cfg.gamma <= 1, f"{prefix}.gamma", cfg.gamma, "in (0, 1]")
    _check(cfg.weight_decay >= 0, f"{prefix}.weight_decay", cfg.weight_decay, ">= 0")
    _check(0 <= cfg.momentum < 1, f"{prefix}.momentum", cfg.momentum, "in [0, 1)")
    _check(0 <= cfg.warmup_epochs <= cfg.total_epochs, f"{prefix}.warmup_epochs", cfg.warmup_epochs,
           f"in [0, total_epochs={cfg.total_epochs}]")
    _check(cfg.step_epochs >= 1, f"{prefix}.step_epochs", cfg.step_epochs, ">= 1")
    _check(0 < cfg.val_fraction < 1, f"{prefix}.val_fraction", cfg.val_fraction, "in (0, 1)")


def validate(cfg: PretrainConfig | FinetuneConfig) -> None:
    validate_data(cfg.data)
    validate_model(cfg.model)
    validate_optim(cfg.optim)
    _check(cfg.device in ("auto", "cpu", "cuda"), "device", cfg.device, "auto | cpu | cuda")
    if isinstance(cfg, PretrainConfig):
        _check(cfg.method in METHODS, "method", cfg.method, " | ".join(METHODS))
        _check(cfg.iterations >= 1, "iterations", cfg.iterations, ">= 1")
        c = cfg.cluster
        for key in ("k_video", "k_audio", "k_joint"):
            _check(getattr(c, key) >= 2, f"cluster.{key}", getattr(c, key), ">= 2")
        for key in ("niter", "max_points_per_centroid", "clips_per_video"):
            _check(getattr(c, key) >= 1, f"cluster.{key}", getattr(c, key), ">= 1")
        _check(c.pca_dim >= 0, "cluster.pca_dim", c.pca_dim, ">= 0 (0 = no PCA)")
        _check(c.first_features in ("random", "handcrafted"), "cluster.first_features",
               c.first_features, "random | handcrafted")
    else:
        _check(cfg.mode in ("full", "fc", "linear"), "mode", cfg.mode, "full | fc | linear")
        _check(len(cfg.lrs) > 0 and all(lr > 0 for lr in cfg.lrs), "lrs", cfg.lrs, "positive values")
        _check(len(cfg.fc_lrs) > 0 and all(lr > 0 for lr in cfg.fc_lrs), "fc_lrs", cfg.fc_lrs,
               "positive values")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                schema: type = PretrainConfig):
    """Defaults of `schema`, then the YAML file, then `key=value` overrides; validated."""
    merged = OmegaConf.structured(schema)
    try:
        if path is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except Exception as err:  # OmegaConf names the bad key and the expected type
        raise ConfigError(f"bad config ({path or 'defaults'}): {err}") from err
    cfg = OmegaConf.to_object(merged)
    validate(cfg)
    return cfg


def config_to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(config_to_yaml(cfg))
