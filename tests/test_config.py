"""xdc.config: packaged configs, how a config argument resolves, the demo's DemoConfig, validation
(fitted `auto` settings, optimizer values, data and clustering limits), refused through `xdc
pretrain` before any work with one line; the one XdcError base of every user error (xdc.errors)."""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, fields, replace

import pytest
import torch
from conftest import SMALL, TINY, assert_user_error, cli

import xdc.config
from xdc.cli import main as xdc_main
from xdc.config import (
    ClusterConfig,
    ConfigError,
    DataConfig,
    DemoConfig,
    FinetuneConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    SyntheticConfig,
    default_pretrain_config,
    dotlist,
    load_config,
    packaged_configs,
    resolve_config,
    smallest_feature_size,
)
from xdc.demo import load_demo_config
from xdc.errors import XdcError


@pytest.mark.parametrize("kind, schema", [("pretrain", PretrainConfig), ("finetune", FinetuneConfig)])
def test_every_packaged_config_loads_by_name(kind, schema):
    names = packaged_configs(kind)
    assert len(names) >= 4 and {"pretrain": "tiny_cpu", "finetune": "tiny"}[kind] in names
    for name in names:
        assert isinstance(load_config(name, schema=schema), schema)
    assert packaged_configs() == ["demo", "demo_quick"]


def test_a_config_argument_is_a_file_or_a_packaged_name(tmp_path, monkeypatch):
    packaged = resolve_config("tiny_cpu", "pretrain")
    assert packaged.is_file() and packaged.name == "tiny_cpu.yaml" and packaged.parent.name == "pretrain"
    for arg in ("tiny_cpu.yaml", "pretrain/tiny_cpu", "pretrain/tiny_cpu.yaml"):
        assert resolve_config(arg, "pretrain") == packaged
    assert resolve_config("pretrain/tiny_cpu") == packaged  # the folder named, no kind needed
    # A file on disk wins over a packaged name.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_cpu").write_text("iterations: 4\n")
    assert load_config("tiny_cpu").iterations == 4
    assert load_config("tiny_cpu.yaml").iterations == 2
    with pytest.raises(ConfigError, match="neither a file nor a packaged config.*cpu, dc_audioset"):
        load_config("no_such_config")


def test_default_pretrain_config_says_which(capsys):
    path = default_pretrain_config()
    assert path.name == ("dc_kinetics.yaml" if torch.cuda.is_available() else "cpu.yaml")
    assert f"no --config given: using {path}" in capsys.readouterr().err


# The demo's settings as the pre-DemoConfig code built them (captured from it): the pretrain
# section on PretrainConfig's defaults, the finetune section on the pretrain section's data and model.
DEMO_DATA = DataConfig(short_side=32, crop=28, eval_clips=2, num_workers=0)
DEMO_PRETRAIN = PretrainConfig(
    iterations=3, data=DEMO_DATA, model=ModelConfig(width=8),
    cluster=ClusterConfig(k_video=12, k_audio=12, k_joint=12, max_points_per_centroid=64,
                          first_features="handcrafted", clips_per_video=2),
    optim=OptimConfig(epoch_size=400, batch_size=16, warmup_epochs=1, step_epochs=3, total_epochs=4,
                      patience=2, reference_batch=16))  # reference_batch: the plan's batch warning only
DEMO_FINETUNE = FinetuneConfig(
    mode="linear", lrs=[0.01, 0.1, 1.0], fc_lrs=[0.01, 0.1, 1.0], data=replace(DEMO_DATA, eval_clips=4),
    model=ModelConfig(width=8),
    optim=replace(FinetuneConfig().optim, epoch_size=2000, warmup_epochs=0, step_epochs=6, weight_decay=1e-4))


def test_demo_config_is_the_demo_of_before():
    cfg = load_demo_config()
    assert cfg.pretrain == DEMO_PRETRAIN and cfg.finetune == DEMO_FINETUNE
    assert asdict(cfg.synthetic) == dict(num_classes=6, videos_per_class=40, seed=0, seconds=2.0, fps=8.0,
                                         size=32, sample_rate=16000)
    assert (cfg.probe.val_fraction, cfg.probe.test_fraction) == (0.2, 0.6)
    assert cfg.methods == ["scratch", "rand", "sdc", "mdc", "cdc", "xdc"] and cfg.threads == 1

    quick = load_demo_config(quick=True)
    assert quick.pretrain == replace(DEMO_PRETRAIN, iterations=2, optim=replace(
        DEMO_PRETRAIN.optim, epoch_size=64, total_epochs=1, step_epochs=1, warmup_epochs=0))
    assert quick.finetune == replace(DEMO_FINETUNE, lrs=[0.1], fc_lrs=[0.1], data=DEMO_DATA, optim=replace(
        DEMO_FINETUNE.optim, epoch_size=200, total_epochs=2, step_epochs=2))
    assert quick.synthetic == replace(cfg.synthetic, videos_per_class=8)


def test_the_probe_inherits_the_pretraining_clips_and_encoders():
    cfg = load_demo_config(overrides=["pretrain.data.crop=24", "pretrain.model.video_arch=r3d_18"])
    assert cfg.finetune.data.crop == 24 and cfg.finetune.model.video_arch == "r3d_18"
    assert cfg.finetune.data.eval_clips == 4  # the finetune section's own key stays on top
    cfg = load_demo_config(overrides=["finetune.data.crop=20"])
    assert (cfg.pretrain.data.crop, cfg.finetune.data.crop) == (28, 20)


def test_synthetic_config_mirrors_generate():
    from xdc.data.synthetic import generate

    params = {name: p.default for name, p in inspect.signature(generate).parameters.items()
              if name not in ("out_dir", "progress")}
    assert {f.name: f.default for f in fields(SyntheticConfig)} == params


def test_names_are_checked_against_the_owners_lists():
    from xdc.methods import METHODS
    from xdc.models.video import VIDEO_ARCHS

    assert xdc.config.METHODS is METHODS and xdc.config.VIDEO_ARCHS is VIDEO_ARCHS  # the owners' lists, no copies
    for method in METHODS:
        assert load_config(None, [f"method={method}"]).method == method
    for arch in VIDEO_ARCHS:
        assert load_config(None, [f"model.video_arch={arch}"]).model.video_arch == arch
    with pytest.raises(ConfigError, match="method='dino' is out of range: expected xdc | sdc"):
        load_config(None, ["method=dino"])
    with pytest.raises(ConfigError, match="video_arch='r50' is out of range: expected r2plus1d_18 | r3d_18"):
        load_config(None, ["model.video_arch=r50"], schema=FinetuneConfig)
    with pytest.raises(ConfigError, match="methods=.*expected a list of scratch"):
        load_config(None, ["methods=[superv]"], schema=DemoConfig)
    with pytest.raises(ConfigError, match="video_descriptor='sift' is out of range: expected layout | hog"):
        load_config(None, ["cluster.video_descriptor=sift"])
    with pytest.raises(ConfigError, match=r"data.crop=4 is out of range: expected >= 6 with cluster.video_descriptor=hog"):
        load_config(None, ["cluster.first_features=handcrafted", "cluster.video_descriptor=hog", "data.crop=4",
                           "data.short_side=8"])
    with pytest.raises(ConfigError, match=re.escape("audio_norm='global' is out of range: expected per_spectrogram | per_band | per_band_mean | none")):
        load_config(None, ["data.audio_norm=global"])


def test_dotlist_is_what_load_config_takes():
    tree = {"iterations": 4, "optim": {"lr": 0.5}, "data": {"video_mean": [0.5, 0.5, 0.5]}}
    assert dotlist(tree) == ["iterations=4", "optim.lr=0.5", "data.video_mean=[0.5, 0.5, 0.5]"]
    cfg = load_config(None, dotlist(tree))
    assert (cfg.iterations, cfg.optim.lr, tuple(cfg.data.video_mean)) == (4, 0.5, (0.5, 0.5, 0.5))


def test_user_errors_share_one_base_and_one_exit_code(tmp_path, capsys):
    from xdc.data.manifest_csv import ManifestError
    from xdc.data.scan import ScanError
    from xdc.evaluation.labelled import FinetuneError
    from xdc.experiments.runner import ExperimentError
    from xdc.evaluation.splits import SplitError
    from xdc.models.weights import WeightsError
    from xdc.reports.clusters import ReportError

    for error in (ConfigError, ManifestError, ScanError, SplitError, WeightsError, FinetuneError,
                  ReportError, ExperimentError):
        assert issubclass(error, XdcError)
    assert issubclass(ConfigError, ValueError) and issubclass(WeightsError, RuntimeError)  # as before
    assert xdc_main(["demo", "--config", "nope", "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err == ("xdc demo: config 'nope' is neither a file nor a packaged config; "
                                       "packaged top-level configs: demo, demo_quick\n")
    assert not (tmp_path / "d").exists()
    assert xdc_main(["filters", "a.pt", "b.pt", "c.pt"]) == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        xdc_main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"xdc {xdc.__version__}\n"  # 0.1.0


@pytest.mark.parametrize(("override", "words"), [("cluster.k_video=lots", "cluster.k_video='lots'"),
                                                  ("cluster.k_audio=1", "cluster.k_audio=1"),
                                                  ("optim.epoch_passes=-1", "optim.epoch_passes=-1")])
def test_fitted_settings_are_validated(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config("cpu", [override])


def test_finetune_refuses_epoch_passes():
    with pytest.raises(ConfigError, match=r"optim.epoch_passes=2 is out of range: expected 0 \(pretraining only\)"):
        load_config("cpu", ["optim.epoch_passes=2"], schema=FinetuneConfig)


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=inf", "optim.lr=inf is out of range: expected in (0, 10]"),
    ("optim.lr=1e6", "optim.lr=1000000.0 is out of range: expected in (0, 10]"),
    ("optim.lr=nan", "optim.lr=nan is out of range"),
    ("optim.weight_decay=inf", "optim.weight_decay=inf is out of range: expected in [0, 1]"),
    ("optim.momentum=nan", "optim.momentum=nan is out of range"),
    ("optim.gamma=inf", "optim.gamma=inf is out of range"),
])
def test_non_finite_and_absurd_optimizer_values_are_refused(override, expected, av_manifest, tmp_path, capsys):
    """Issue 22 item 12: refused before any work, one line."""
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", av_manifest, "--out", tmp_path / "run", override)
    assert rc == 2
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, words", [
    ("data.sample_rate=1", ["data.sample_rate=1", "data.win_ms"]),
    ("data.win_ms=0.01", ["data.win_ms=0.01"]),
    ("data.n_mels=300", ["data.n_mels=300", "257 frequency bins"]),
    ("cluster.pca_dim=33", ["cluster.pca_dim=33", "<= 32"]),  # width 4: 32-d features
    ("device=cuda", ["device=cuda", "device=cpu"]),
])
def test_settings_refused_before_any_work(tmp_path, capsys, av_manifest, override, words):
    if override == "device=cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "run"
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", av_manifest, "--out", out, *SMALL, override)
    line = assert_user_error(rc, err, "pretrain", *words)
    assert err.strip() == line and not out.exists()


def test_a_bad_override_is_blamed_on_the_override(capsys, av_manifest, tmp_path):
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", av_manifest, "--out", tmp_path / "r",
                  "optim.lr=abc")
    line = assert_user_error(rc, err, "pretrain", "bad config (override optim.lr=abc)")
    assert "tiny_cpu" not in line


def test_pca_limit_follows_the_features_clustered():
    from xdc.clustering.handcrafted import (
        audio_descriptor,
        descriptor_sizes,
        video_descriptor,
    )

    assert video_descriptor(torch.rand(2, 1, 3, 4, 16, 16)).shape[1] == descriptor_sizes(40)["video"]
    assert audio_descriptor(torch.rand(2, 1, 1, 40, 9)).shape[1] == descriptor_sizes(40)["audio"]
    assert smallest_feature_size(load_config(TINY, ["model.width=64", "method=cdc"])) == 1024
    hand = ["model.width=64", "cluster.first_features=handcrafted"]
    assert smallest_feature_size(load_config(TINY, hand)) == 120  # 3 × 40 mel bands
    assert smallest_feature_size(load_config(TINY, hand + ["method=cdc"])) == 208 + 120
    with pytest.raises(ConfigError, match="cluster.pca_dim=121"):
        load_config(TINY, hand + ["cluster.pca_dim=121"])
    load_config(TINY, ["cluster.pca_dim=500", "method=rand"])  # RAND clusters nothing
