"""xdc.training.monitor: what a run says before and after it works: the plan's batch / steps / lr
line and its warning, the closing summary's verdict per head, and what a whole `xdc pretrain`
writes to TensorBoard and log.txt (the plan with its estimate, the epoch lines)."""

from __future__ import annotations

import json

from conftest import TINY

from xdc.cli import main as xdc_main
from xdc.config import load_config
from xdc.training.monitor import batch_warning, heads_not_learning, pretrain_plan_facts, print_closing_summary


def test_plan_states_global_batch_steps_and_lr():
    cfg = load_config("dc_kinetics")  # bs 32 per rank, lr 0.01 for reference_batch 256
    facts = pretrain_plan_facts(cfg, 1000, world_size=8)
    assert "8 rank(s) × batch 32 = global batch 256, 3907 SGD step(s) per epoch; lr 0.01 " \
           "(optim.lr 0.01, lr_scaling none, reference_batch 256)" in facts
    assert batch_warning(cfg.optim, 8) is None and batch_warning(cfg.optim, 4) is None  # within 2×
    one = batch_warning(cfg.optim, 1)
    assert one.startswith("warning: global batch 32 (1 rank(s) × 32) is 8× below optim.reference_batch 256")
    assert "optim.lr_scaling=linear (lr 0.00125 here)" in one and "set optim.lr and optim.reference_batch" in one
    assert "\n" not in one
    assert "is 8× above optim.reference_batch 256" in batch_warning(cfg.optim, 64)
    # With the linear rule the lr follows the batch: said in the plan, no warning.
    linear = load_config("dc_kinetics", ["optim.lr_scaling=linear"])
    assert batch_warning(linear.optim, 64) is None
    assert "global batch 2048, 489 SGD step(s) per epoch; lr 0.08 " in pretrain_plan_facts(linear, 1000, 64)[2]


def test_cpu_presets_do_not_warn_on_one_process():
    for name in ("cpu", "tiny_cpu", "dc_kinetics_32frames"):
        cfg = load_config(name)
        assert batch_warning(cfg.optim, 8 if name.startswith("dc_") else 1) is None, name


def summary_with(heads: dict[str, tuple[float, float]]) -> dict:
    """A one-iteration summary whose heads have these (val loss, labels' entropy)."""
    stats = {"empty_clusters": 0, "num_clusters": 4}
    return {"method": "xdc", "iterations": [{
        "iteration": 0, "epochs": 3, "train_loss": 1.0, "val_loss": 1.0, "video": stats, "audio": stats,
        "heads": {name: {"train_loss": 0.1, "val_loss": val, "chance": 1.386, "prior_entropy": entropy}
                  for name, (val, entropy) in heads.items()}}]}


def test_closing_summary_tells_overfit_from_chance(tmp_path, capsys):
    summary = summary_with({"video_to_audio": (1.27, 1.28), "audio_to_video": (6.45, 1.28), "learned": (0.5, 1.28)})
    assert heads_not_learning(summary) == {"at chance": ["video_to_audio"], "overfit": ["audio_to_video"]}
    print_closing_summary(summary, tmp_path, 1.0, "cpu")
    out = capsys.readouterr().out
    assert "heads that never left chance (val loss within 5% of their labels' entropy): video_to_audio\n" in out
    assert "heads that overfit (val loss more than 5% above their labels' entropy, never below it): " \
           "audio_to_video\n" in out
    # A head that went below chance in some iteration learned something: in neither list.
    later = summary_with({"audio_to_video": (0.9, 1.28)})["iterations"][0] | {"iteration": 1}
    assert heads_not_learning({"iterations": [*summary["iterations"], later]})["overfit"] == []


def test_tensorboard_scalars(av_manifest, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert xdc_main(["pretrain", "--config", TINY, "--data", str(av_manifest), "--out", str(out),
                     "optim.epoch_size=16", "optim.total_epochs=2", "iterations=2",
                     "cluster.first_features=handcrafted"]) == 0
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
    assert "  k-means on the CPU (device cpu)\n" in log  # where the clustering runs (kmeans_device_note)
    assert "\r" not in log and "\x1b[" not in log
