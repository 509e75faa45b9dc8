"""`xdc finetune` on small labelled manifests of real files made here: three classes that differ
visibly (background colour) and audibly (tone), labels from their folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xdc.cli import main
from xdc.config import FinetuneConfig, load_config
from xdc.data.encode import write_video
from xdc.data.manifest import write_manifest
from xdc.data.scan import scan_paths
from xdc.evaluation.finetune import FinetuneError, finetune, hold_out
from xdc.evaluation.linear import accuracy, encoder_input
from xdc.models import video_encoder
from xdc.reports.html import write_wav

TINY = "configs/finetune/tiny.yaml"
CLASSES = {"red_low": ((200, 30, 30), 300.0), "green_mid": ((30, 200, 30), 900.0),
           "blue_high": ((30, 30, 200), 2400.0)}


def make_labelled_clip(path, colour, tone, seed, seconds=1.0, fps=8.0, sample_rate=16000):
    rng = np.random.default_rng(seed)
    frames = np.empty((int(seconds * fps), 48, 64, 3), np.uint8)
    frames[:] = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
    for t in range(len(frames)):  # a moving white square, as conftest.make_clip
        x = (t * 5 + int(rng.integers(0, 20))) % 56
        frames[t, 16:24, x:x + 8] = 255
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * tone * (1 + 0.02 * rng.standard_normal()) * time)
    return write_video(path, frames, fps, wave + 0.01 * rng.standard_normal(time.size), sample_rate)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    """train.csv (4 videos per class) and test.csv (2 per class) of real MP4s."""
    root = tmp_path_factory.mktemp("labelled")
    for subset, count in (("train", 4), ("test", 2)):
        for label, (colour, tone) in CLASSES.items():
            for i in range(count):
                make_labelled_clip(root / subset / label / f"{i}.mp4", colour, tone,
                                   seed=100 * count + 10 * list(CLASSES).index(label) + i)
        write_manifest(scan_paths([root / subset], labels_from_dirs=True, progress=False),
                       root / f"{subset}.csv")
    return root


def _results(out):
    results = json.loads((out / "results.json").read_text())
    for key in ("best_lr", "val", "top1_clip", "top1_video", "top5_video", "mode", "modality", "checkpoint"):
        assert key in results, key
    assert results["best_lr"] in results["lrs"] and len(results["val"]) == len(results["lrs"])
    assert all(0 <= results[k] <= 1 for k in ("top1_clip", "top1_video", "top5_video"))
    assert results["top5_video"] == 1.0  # three classes: the true one is always among the top 5
    return results


def test_accuracy_video_level_averages_softmax_over_clips():
    # Video 0: clips say class 1, 1, 0 but clip 2 is very sure of class 0 -> the average picks 0.
    logits = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [9.0, 0.0, 0.0]],
                           [[0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0]]])
    scores = accuracy(logits, torch.tensor([0, 2]))
    assert scores["top1_clip"] == pytest.approx(4 / 6)
    assert scores["top1_video"] == 1.0
    assert accuracy(logits, torch.tensor([1, 2]))["top1_video"] == 0.5


def test_encoder_input_flattens_eval_clips_and_keeps_train_batches():
    # Eval batches carry a clip axis (V×N×...); the encoders take one batch of clips. On CUDA
    # the video then goes channels_last_3d, which only a 5-D tensor can (found on an H200).
    eval_batch = {"video": torch.randn(2, 3, 3, 4, 8, 8), "audio": torch.randn(2, 3, 1, 40, 20)}
    train_batch = {"video": torch.randn(5, 3, 4, 8, 8), "audio": torch.randn(5, 1, 40, 20)}
    cpu = torch.device("cpu")
    assert encoder_input(eval_batch, "video", cpu).shape == (6, 3, 4, 8, 8)
    assert encoder_input(eval_batch, "audio", cpu).shape == (6, 1, 40, 20)
    assert torch.equal(encoder_input(eval_batch, "video", cpu)[4], eval_batch["video"][1, 1])
    assert encoder_input(train_batch, "video", cpu).shape == (5, 3, 4, 8, 8)
    assert encoder_input(train_batch, "audio", cpu).shape == (5, 1, 40, 20)


def test_linear_mode_cli_learns_the_classes(manifests, tmp_path):
    out = tmp_path / "linear"
    code = main(["finetune", "--scratch", "--config", TINY, "--mode", "linear",
                 "--train", str(manifests / "train.csv"), "--test", str(manifests / "test.csv"),
                 "--out", str(out), "fc_lrs=[0.1,1.0]", "optim.total_epochs=6", "optim.epoch_size=64"])
    assert code == 0
    results = _results(out)
    assert results["mode"] == "linear" and results["checkpoint"] == "scratch"
    assert results["val_source"].startswith("held out") and results["videos"]["val"] == 3
    assert results["videos"] == {"train": 9, "val": 3, "test": 6} and results["test_videos"] == 6
    assert results["eval_clips"] == 2
    # Solid colours are linearly separable even in random features: far above chance (1/3).
    assert results["top1_video"] >= 0.8
    assert (out / "features.pt").is_file() and (out / "tb").is_dir()


@pytest.mark.parametrize("mode", ["fc", "full"])
def test_fc_and_full_modes_sweep_and_resume(manifests, tmp_path, mode):
    out = tmp_path / mode
    args = ["finetune", "--scratch", "--config", TINY, "--mode", mode,
            "--train", str(manifests / "train.csv"), "--val", str(manifests / "test.csv"),
            "--test", str(manifests / "test.csv"), "--out", str(out),
            "lrs=[0.01,0.05]", "fc_lrs=[0.01,0.05]", "optim.total_epochs=1", "optim.epoch_size=8"]
    assert main(args) == 0
    results = _results(out)
    assert results["mode"] == mode and set(results["val"]) == {"0.01", "0.05"}
    assert results["val_source"] == "val manifest" and results["videos"]["train"] == 12
    model = torch.load(out / f"lr_{results['best_lr']:g}" / "model.pt", weights_only=True)["model"]
    assert ("encoder.stem.0.weight" in model) == (mode == "full")  # fc mode keeps only the classifier
    # Val and test are the same videos here: the best lr's test score is its val score.
    assert results["top1_video"] == pytest.approx(results["val"][f"{results['best_lr']:g}"]["top1_video"])
    # Rerun into the same folder: finished lrs are read back, not retrained.
    stamp = (out / "lr_0.01" / "model.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "lr_0.01" / "model.pt").stat().st_mtime_ns == stamp
    assert _results(out)["top1_video"] == results["top1_video"]
    # Other settings into the same folder would mix runs: refused.
    assert main(args[:-1] + ["optim.epoch_size=16"]) == 1


def test_audio_modality_on_sound_files_without_video(tmp_path):
    root = tmp_path / "esc"
    (root / "meta").mkdir(parents=True)
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for i in range(12):
        category, tone = [("low", 250.0), ("high", 3000.0)][i % 2]
        name = f"{i % 3 + 1}-{i}-A-0.wav"
        t = np.arange(24000) / 16000  # 1.5 s
        write_wav(0.3 * np.sin(2 * np.pi * tone * (1 + 0.03 * i) * t), 16000, root / "audio" / name)
        lines.append(f"{name},{i % 3 + 1},{i % 2},{category},False,{i},A")
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code = main(["finetune", "--scratch", "--config", TINY, "--modality", "audio", "--mode", "linear",
                 "--split", "esc50", "--root", str(root), "--fold", "1", "--out", str(out),
                 "fc_lrs=[0.1,1.0]", "optim.total_epochs=4", "optim.epoch_size=64"])
    assert code == 0
    results = _results(out)
    assert results["modality"] == "audio" and results["arch"] == "resnet18"
    assert results["videos"]["test"] == 4 and results["classes"] == ["high", "low"]
    assert not results.get("skipped")
    assert results["top1_video"] >= 0.75  # low vs high tones: far above chance (1/2)
    assert (out / "esc50_1_test.csv").is_file()  # the probed split, reused when resuming


def test_bad_inputs_fail_clearly(manifests, tmp_path, monkeypatch, capsys):
    from xdc.data.manifest import read_manifest

    cfg = load_config(TINY, schema=FinetuneConfig)
    train = read_manifest(manifests / "train.csv")
    test = [dict(r, label="unseen") for r in read_manifest(manifests / "test.csv")]
    with pytest.raises(FinetuneError, match="not among the training classes: unseen"):
        finetune(cfg, video_encoder("r2plus1d_18", 8), "video", train, None, test, tmp_path / "a")
    with pytest.raises(FinetuneError, match="no label"):
        finetune(cfg, video_encoder("r2plus1d_18", 8), "video", [dict(r, label=None) for r in train],
                 None, train, tmp_path / "b")
    # A file that went bad after the scan: recorded as skipped in results.json, the rest evaluated.
    broken = manifests.parent / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "bad.mp4").write_bytes(b"\x00not a video" * 100)
    rows = read_manifest(manifests / "test.csv")
    bad_test = rows + [dict(rows[0], path=str(broken / "bad.mp4"))]
    results = finetune(cfg, video_encoder("r2plus1d_18", 8), "video", train, None, bad_test, tmp_path / "d")
    assert results["test_videos"] == len(rows) and "bad.mp4" in results["skipped"]["test"][0]
    # --superv without the weights file: a clear message saying where to put it, no download.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    code = main(["finetune", "--superv", "--config", TINY, "--train", str(manifests / "train.csv"),
                 "--test", str(manifests / "test.csv"), "--out", str(tmp_path / "c"), "model.width=64"])
    assert code == 1 and "r2plus1d_18-91a641e6.pth" in capsys.readouterr().err


def test_hold_out_is_stratified_and_seeded():
    rows = [{"path": f"{c}{i}", "label": c} for c in "ab" for i in range(10)] + [{"path": "c0", "label": "c"}]
    train, val = hold_out(rows, 0.2, seed=3)
    assert sorted(r["label"] for r in val) == ["a", "a", "b", "b"]  # the single "c" video stays in train
    assert len(train) + len(val) == len(rows)
    assert hold_out(rows, 0.2, seed=3)[1] == val


def test_pretrain_checkpoint_sets_the_encoder_it_was_trained_with(manifests, tmp_path):
    from xdc.config import PretrainConfig, config_to_yaml
    from xdc.models import audio_encoder
    from xdc.training.checkpoint import save_checkpoint

    pre = PretrainConfig()
    pre.model.video_arch, pre.model.width = "r3d_18", 4
    torch.manual_seed(5)
    ckpt = save_checkpoint({"video_encoder": video_encoder("r3d_18", 4).state_dict(),
                            "audio_encoder": audio_encoder(4).state_dict(), "config": config_to_yaml(pre)},
                           tmp_path / "last.pt")
    out = tmp_path / "out"
    code = main(["finetune", "--checkpoint", str(ckpt), "--config", TINY, "--mode", "linear",
                 "--train", str(manifests / "train.csv"), "--test", str(manifests / "test.csv"),
                 "--out", str(out), "fc_lrs=[0.1]"])
    assert code == 0
    results = _results(out)
    assert (results["arch"], results["width"], results["checkpoint"]) == ("r3d_18", 4, str(ckpt))
    # The same checkpoint into an encoder of another width fails loudly, naming keys.
    from xdc.evaluation.weights import WeightsError, load_strict, read_state_dict
    with pytest.raises(WeightsError, match="shape mismatches"):
        load_strict(video_encoder("r3d_18", 8), read_state_dict(ckpt))


def test_superv_baseline_reads_torchvision_weights_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision

    from xdc.evaluation.finetune import load_encoder
    from xdc.evaluation.weights import superv_weights_path

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(7)
    state = torchvision.models.video.r3d_18(weights=None).state_dict()  # stands in for the Kinetics file
    superv_weights_path("r3d_18").parent.mkdir(parents=True)
    torch.save(state, superv_weights_path("r3d_18"))
    cfg = load_config(None, ["model.video_arch=r3d_18"], schema=FinetuneConfig)
    encoder, source = load_encoder("video", cfg, superv=True)
    assert source == "superv:r3d_18/KINETICS400_V1"
    assert torch.equal(encoder.state_dict()["layer1.0.conv1.0.weight"], state["layer1.0.conv1.0.weight"])
    cfg.model.width = 8
    with pytest.raises(FinetuneError, match="model.width=64"):
        load_encoder("video", cfg, superv=True)
