"""`xdc pretrain` end to end on CPU on real clips, one run per method, plus shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xdc.cli import main as xdc_main
from xdc.config import load_config, packaged_configs, resolve_config
from xdc.methods import get_method

TINY = resolve_config("tiny_cpu", "pretrain")
# Smaller than tiny_cpu.yaml so five runs stay short: 1 iteration would not test re-clustering.
FAST = ["optim.epoch_size=16", "optim.total_epochs=2", "iterations=2"]


@pytest.mark.parametrize("name", packaged_configs("pretrain"))
def test_every_shipped_config_validates(name):
    cfg = load_config(name)
    assert cfg.optim.gamma == 0.01
    if name not in ("tiny_cpu", "cpu"):  # CPU-scale configs use fewer clusters
        assert (cfg.cluster.k_video, cfg.cluster.k_audio) == (64, 128)
    if cfg.data.frames == 32:  # the paper's 32-frame rule
        assert (cfg.optim.batch_size, cfg.optim.lr) == (8, 0.0025)


def test_table_2_rows():
    def row(name):
        o = load_config(f"pretrain/{name}").optim
        return (o.epoch_size, o.lr, o.warmup_epochs, o.step_epochs, o.total_epochs, o.weight_decay,
                o.early_stop)
    assert row("dc_kinetics") == (1_000_000, 0.01, 10, 10, 30, 1e-4, True)
    assert row("superv_audioset") == (2_000_000, 0.04, 10, 20, 45, 1e-5, False)
    assert row("dc_ig_random_last") == (10_000_000, 0.01, 0, 9, 30, 1e-4, False)


def pretrain(*args: str) -> int:
    return xdc_main(["pretrain", *map(str, args)])


@pytest.mark.parametrize("method", ["xdc", "sdc", "mdc", "cdc", "rand"])
def test_pretrain_writes_the_run_folder(method, av_manifest, tmp_path):
    out = tmp_path / "run"
    assert pretrain("--config", TINY, "--data", av_manifest, "--out", out, "--method", method,
                    *FAST) == 0
    cfg = load_config(out / "config.yaml")
    assert cfg.method == method
    rows = (out / "rows.csv").read_text().splitlines()
    assert len(rows) == 1 + 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and len(summary["iterations"]) == 2
    k = 4
    for n, record in enumerate(summary["iterations"]):
        assert record["iteration"] == n and 1 <= record["epochs"] <= 2
        assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
        # Per-head diagnostics: each head's losses beside its chance level ln k.
        heads = get_method(method).heads(cfg.cluster)
        assert set(record["heads"]) == {h.name for h in heads}
        for h in heads:
            entry = record["heads"][h.name]
            assert entry["chance"] == pytest.approx(np.log(h.num_classes))
            assert 0 < entry["prior_entropy"] <= entry["chance"] + 1e-9  # unbalanced clusters: below ln k
            assert np.isfinite(entry["train_loss"]) and np.isfinite(entry["val_loss"])
        # the loss that trains: the heads' summed (optim.head_reduction defaults to sum)
        assert record["val_loss"] == pytest.approx(np.sum([e["val_loss"] for e in record["heads"].values()]))
        for modality in ("video", "audio"):
            labels = np.load(out / "iterations" / f"{n:02d}" / f"labels_{modality}.npy")
            assert labels.shape == (8,) and labels.min() >= 0 and labels.max() < k
            stats = record[modality]
            assert stats["num_clusters"] == k
            assert stats["empty_clusters"] == k - len(np.unique(labels)) or method == "sdc"
            assert stats["sizes"]["max"] == np.bincount(labels).max()
            assert 0 <= stats["purity"] <= 1 and 0 <= stats["nmi"] <= 1  # the manifest has labels
            assert (stats["nmi_prev"] is None) == (n == 0)
    if method == "cdc":
        np.testing.assert_array_equal(np.load(out / "iterations/00/labels_video.npy"),
                                      np.load(out / "iterations/00/labels_audio.npy"))
    if method == "rand":  # re-drawn each iteration
        assert not np.array_equal(np.load(out / "iterations/00/labels_video.npy"),
                                  np.load(out / "iterations/01/labels_video.npy"))
    last = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (last["iteration"], last["epoch"]) == (2, 0) and "labels" not in last  # nothing left to run
    final = torch.load(out / "checkpoints" / "iteration_01.pt", weights_only=True)
    assert final["iteration"] == 1 and final["epoch"] == summary["iterations"][1]["epochs"]
    assert set(final["labels"]) == {h.target for h in get_method(method).heads(cfg.cluster)}
    assert (out / "checkpoints" / "iteration_00.pt").is_file()
    assert "conv1.weight" in last["audio_encoder"] and "stem.0.weight" in last["video_encoder"]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())


def test_tensorboard_scalars(av_manifest, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert pretrain("--config", TINY, "--data", av_manifest, "--out", out, *FAST,
                    "iterations=2", "cluster.first_features=handcrafted") == 0
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "cluster/video/empty_clusters",
            "cluster/audio/nmi", "cluster/video/nmi_prev"} <= tags
    epochs = json.loads((out / "summary.json").read_text())["iterations"][0]["epochs"]
    assert len(events.Scalars("train/loss")) >= epochs * 2  # 2 steps per epoch of 16 clips, batches of 8
    # One step axis: iteration 1 clusters at the global step where iteration 0's training ended.
    assert [e.step for e in events.Scalars("cluster/video/nmi_prev")] == [epochs * 2]
    assert "config/text_summary" in events.Tags()["tensors"]  # the config as text
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    # log.txt: the plan with its estimate, the epoch lines, no progress-bar redraws.
    log = (out / "log.txt").read_text()
    assert "plan: xdc pretraining" in log and "estimate: about" in log and "epoch 1/2" in log
    assert "\r" not in log and "\x1b[" not in log


def test_superv_predicts_the_manifest_labels_in_rows_order(av_manifest, tmp_path):
    from xdc.data.manifest import read_manifest

    out = tmp_path / "run"
    assert pretrain("--config", TINY, "--data", av_manifest, "--out", out, "--method", "superv",
                    *FAST, "iterations=1") == 0
    classes = sorted({"low", "high"})
    truth = [classes.index(row["label"]) for row in read_manifest(out / "rows.csv")]
    np.testing.assert_array_equal(np.load(out / "iterations/00/labels_video.npy"), truth)
    record = json.loads((out / "summary.json").read_text())["iterations"][0]
    assert record["video"]["num_clusters"] == 2 and record["video"]["purity"] == 1.0


@pytest.mark.slow
def test_r3d18_config_runs_with_tiny_sizes(av_manifest, tmp_path):
    """The paper's Table 5's backbone: the shipped R3D-18 config, shrunk to the tiny sizes."""
    tiny = load_config(TINY)
    sizes = [f"data.{k}={getattr(tiny.data, k)}" for k in ("frames", "fps", "short_side", "crop", "eval_clips",
                                                            "num_workers")]
    sizes += [f"model.width={tiny.model.width}", "device=cpu", "optim.batch_size=8", "cluster.k_video=4",
              "cluster.k_audio=4", "optim.warmup_epochs=0", "optim.step_epochs=1", "iterations=1", *FAST[:2]]
    out = tmp_path / "run"
    assert pretrain("--config", "dc_kinetics_r3d18", "--data", av_manifest, "--out", out, *sizes) == 0
    assert load_config(out / "config.yaml").model.video_arch == "r3d_18"
    final = torch.load(out / "checkpoints" / "iteration_00.pt", weights_only=True)
    assert "stem.0.weight" in final["video_encoder"] and final["video_encoder"]["stem.0.weight"].shape[2:] == (3, 7, 7)


def test_superv_multi_label_manifest(av_manifest, tmp_path):
    from xdc.data.manifest import read_manifest, write_manifest

    # AudioSet-style: some rows name two classes
    rows = [dict(row, label=f"{row['label']}|loud" if i % 2 else row["label"])
            for i, row in enumerate(read_manifest(av_manifest))]
    manifest = write_manifest(rows, tmp_path / "multi.csv")
    out = tmp_path / "run"
    assert pretrain("--config", TINY, "--data", manifest, "--out", out, "--method", "superv",
                    *FAST, "iterations=1") == 0
    final = torch.load(out / "checkpoints" / "iteration_00.pt", weights_only=True)
    assert final["labels"]["true"].shape == (8, 3)  # multi-hot over high, loud, low
    assert final["labels"]["true"].sum(1).tolist() == [1 + i % 2 for i in range(8)]
    record = json.loads((out / "summary.json").read_text())["iterations"][0]
    assert all(head["chance"] == pytest.approx(np.log(2)) for head in record["heads"].values())
    assert np.isfinite(record["train_loss"])


def test_bad_inputs_are_clear_errors(av_manifest, tmp_path, capsys):
    from xdc.data.manifest import read_manifest, write_manifest

    unlabelled = write_manifest([dict(r, label=None) for r in read_manifest(av_manifest)],
                                av_manifest.parent / "unlabelled.csv")
    assert pretrain("--config", TINY, "--data", unlabelled, "--out", tmp_path / "s", "--method", "superv") == 2
    assert "superv needs a manifest with a `label`" in capsys.readouterr().err
    assert pretrain("--config", TINY, "--data", av_manifest, "--out", tmp_path / "k",
                    "cluster.k_video=9", "cluster.k_audio=12", "cluster.k_joint=99") == 2  # 8 videos
    # Both of XDC's ks at once (k_joint is CDC's), each with a value that works; nothing written.
    assert "xdc pretrain: cluster.k_video=9, cluster.k_audio=12: more clusters than the 8 usable videos of " \
        "the manifest: give cluster.k_video=2 cluster.k_audio=2 (or `auto`: " in capsys.readouterr().err
    assert not (tmp_path / "k").exists()
    assert pretrain("--config", TINY, "--data", av_manifest, "--out", tmp_path / "x", "optim.lr=-1") == 2
    assert "optim.lr=-1.0 is out of range" in capsys.readouterr().err
    assert pretrain("--config", TINY, "--data", tmp_path / "none.csv", "--out", tmp_path / "y") == 2
    assert "manifest not found" in capsys.readouterr().err
    out = tmp_path / "done"
    assert pretrain("--config", TINY, "--data", av_manifest, "--out", out, *FAST, "iterations=1",
                    "optim.total_epochs=1") == 0
    capsys.readouterr()
    assert pretrain("--config", TINY, "--data", av_manifest, "--out", out) == 2
    assert "holds another run (its config differs: iterations=2" in capsys.readouterr().err
    assert pretrain("--resume", tmp_path / "missing") == 2
    assert "nothing to resume" in capsys.readouterr().err


def broken_copy(av_manifest: Path, folder: Path, broken: int = 1) -> Path:
    """The manifest's rows with `broken` of the files overwritten by garbage after the scan."""
    import shutil

    from xdc.data.manifest import read_manifest, write_manifest

    rows = []
    for i, row in enumerate(read_manifest(av_manifest)):
        copy = folder / f"clip_{i}.mp4"
        shutil.copy(row["path"], copy)
        if i < broken:
            copy.write_bytes(b"not a video" * 100)
        rows.append(dict(row, path=str(copy)))
    return write_manifest(rows, folder / "manifest.csv")


def test_undecodable_video_is_counted_not_fatal(av_manifest, tmp_path, capsys):
    out = tmp_path / "run"
    manifest = broken_copy(av_manifest, tmp_path)
    assert pretrain("--config", TINY, "--data", manifest, "--out", out, *FAST, "iterations=1") == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "have no features" in line]
    assert len(warned) == 1 and warned[0].startswith("warning: extract features: 1 of 8 items have no features")
    record = json.loads((out / "summary.json").read_text())["iterations"][0]
    assert record["skipped_clustering"] == 1
    assert record["video"]["unlabelled"] == 1 and record["audio"]["unlabelled"] == 1
    labels = np.load(out / "iterations/00/labels_video.npy")
    assert labels[0] == -1 and (labels[1:] >= 0).all()
    assert record["skipped"] == 0  # the unlabelled video is never drawn for training


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_training_loop_counts_skipped_samples(av_manifest, tmp_path):
    from torch.utils.data import Subset

    from xdc.data.datasets import AudioVideoClips, clip_loader
    from xdc.data.manifest import read_manifest
    from xdc.methods import get_method
    from xdc.models import audio_encoder, video_encoder
    from xdc.training.loop import PretrainModel, train_one_epoch
    from xdc.training.schedule import make_scheduler

    cfg = load_config(TINY)
    rows = read_manifest(broken_copy(av_manifest, tmp_path, broken=2))
    specs = get_method("xdc").heads(cfg.cluster)
    model = PretrainModel(video_encoder("r2plus1d_18", 8), audio_encoder(8))
    model.reset_heads(specs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = make_scheduler(optimizer, cfg.optim, 2)
    dataset = AudioVideoClips(rows, cfg.data, mode="train")
    # Two batches: the first only the two broken videos (no step), the second all good ones.
    order = Subset(dataset, [0, 1, 2, 3, 4, 5])
    loader = clip_loader(order, batch_size=2, sampler=list(range(4)))
    labels = {"video": torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), "audio": torch.tensor([3, 2, 1, 0] * 2)}
    before = [p.detach().clone() for p in model.video_encoder.parameters()]
    stats = train_one_epoch(model, specs, loader, labels, optimizer, scheduler, torch.device("cpu"),
                            amp=False)
    assert stats["skipped"] == 2 and stats["clips"] == 2
    assert "2 samples skipped (2 videos)" in stats["skip_summary"]
    assert scheduler.last_epoch == 2  # the schedule advanced for the skipped batch too
    assert any(not torch.equal(a, b) for a, b in zip(before, model.video_encoder.parameters()))


def test_init_from_starts_from_a_previous_runs_encoders(av_manifest, tmp_path):
    """The IG* rows (a longer last iteration) start from the encoders of an earlier run."""
    first, last = tmp_path / "first", tmp_path / "last"
    short = [*FAST, "iterations=1", "optim.total_epochs=1"]
    assert pretrain("--config", TINY, "--data", av_manifest, "--out", first, *short, "seed=1") == 0
    source = first / "checkpoints" / "iteration_00.pt"
    assert pretrain("--config", TINY, "--data", av_manifest, "--out", last, *short,
                    f"init_from={source}", "optim.lr=1e-12", "optim.weight_decay=0") == 0
    start = torch.load(source, weights_only=True)["video_encoder"]
    end = torch.load(last / "checkpoints" / "last.pt", weights_only=True)["video_encoder"]
    weight = "stem.0.weight"
    # lr ~0, so still the loaded weights (trained from seed 1; this run's own init uses seed 0).
    torch.testing.assert_close(end[weight], start[weight])


def test_the_same_command_twice_continues_the_run(av_manifest, tmp_path, capsys):
    out = tmp_path / "run"
    command = ["--config", TINY, "--data", av_manifest, "--out", out, "optim.epoch_size=8",
               "optim.total_epochs=2", "iterations=2"]
    assert pretrain(*command) == 0
    # Launched again (by hand, a scheduler, torchrun --max-restarts): the complete run says so.
    summary = (out / "summary.json").read_text()
    capsys.readouterr()
    assert pretrain(*command) == 0
    printed = capsys.readouterr().out
    assert "resumed" in printed and "at iteration 2, epoch 0: the run is complete" in printed
    assert (out / "summary.json").read_text() == summary  # nothing was trained again
    # Interrupted after epoch 1 of iteration 1: the same command goes on from that checkpoint.
    halfway = torch.load(out / "checkpoints" / "iteration_01.pt", weights_only=True)
    torch.save(halfway | {"epoch": 1}, out / "checkpoints" / "last.pt")
    assert pretrain(*command) == 0
    printed = capsys.readouterr().out
    assert "at iteration 1, epoch 1\n" in printed and "iteration 1 epoch 2/2" in printed
    assert "iteration 1 epoch 1/2" not in printed and "iteration 0 epoch" not in printed, printed
    assert [r["epochs"] for r in json.loads((out / "summary.json").read_text())["iterations"]] == [2, 2]
    # Another config or other rows in the same folder: refused, one line, exit 2.
    assert pretrain(*command, "optim.lr=0.02") == 2
    assert "holds another run (its config differs: optim.lr=0.02)" in capsys.readouterr().err
    fewer = av_manifest.parent / "fewer.csv"
    fewer.write_text("\n".join(av_manifest.read_text().splitlines()[:-1]) + "\n")
    assert pretrain("--config", TINY, "--data", fewer, "--out", out, *command[6:]) == 2
    assert "holds a run on other manifest rows" in capsys.readouterr().err


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
    assert pretrain("--config", TINY, "--data", av_manifest, "--out", tmp_path / "run", override) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_training_stops_at_the_first_non_finite_loss(av_manifest):
    """A clip holding inf (the second batch's) makes the video head's loss NaN: the epoch stops at
    the next reduction with one line naming the epoch, the SGD step and the head."""
    from xdc.data.datasets import AudioVideoClips, clip_loader
    from xdc.data.manifest import read_manifest
    from xdc.errors import XdcError
    from xdc.models import audio_encoder, video_encoder
    from xdc.training.loop import LOG_EVERY, NonFiniteLossError, PretrainModel, train_one_epoch
    from xdc.training.schedule import make_scheduler

    cfg = load_config(TINY)
    specs = get_method("xdc").heads(cfg.cluster)
    model = PretrainModel(video_encoder("r2plus1d_18", 4), audio_encoder(4))
    model.reset_heads(specs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scheduler = make_scheduler(optimizer, cfg.optim, 4)
    dataset = AudioVideoClips(read_manifest(av_manifest), cfg.data, mode="train")
    batches = list(clip_loader(dataset, batch_size=2, sampler=[0, 1, 2, 3, 4, 5, 6, 7]))
    batches[1]["video"][0] = float("inf")
    labels = {"video": torch.tensor([0, 1, 2, 3] * 2), "audio": torch.tensor([3, 2, 1, 0] * 2)}
    assert len(batches) < LOG_EVERY  # found by the reduction at the epoch's end
    with pytest.raises(NonFiniteLossError) as caught:
        train_one_epoch(model, specs, batches, labels, optimizer, scheduler, torch.device("cpu"), amp=False,
                        description="iteration 0 epoch 1/2")
    message = str(caught.value)
    assert isinstance(caught.value, XdcError) and "\n" not in message
    assert message.startswith("iteration 0 epoch 1/2, SGD step 2: the training loss of head video_to_audio is "
                              "not a finite number"), message
    assert "lower optim.lr" in message and "check the input files" in message
