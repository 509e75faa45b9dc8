"""xdc.evaluation.finetune (`xdc finetune`) and the protocols it drives (classifier: full / fc /
linear; sweep; feature_cache; knn and retrieval modes; weights.load_encoder) on small labelled
manifests of real files made here: three classes that differ visibly (background colour) and
audibly (tone), labels from their folders (conftest's `labelled_manifests`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from xdc.cli import main
from xdc.config import FinetuneConfig, load_config
from xdc.evaluation.finetune import finetune
from xdc.evaluation.labelled import FinetuneError
from xdc.evaluation.weights import load_encoder
from xdc.models import audio_encoder, encode, video_encoder
from xdc.models.weights import WeightsError
from xdc.reports.html import write_wav

TINY = "tiny"


def _results(out):
    results = json.loads((out / "results.json").read_text())
    for key in ("best_lr", "val", "top1_clip", "top1_video", "mode", "modality", "checkpoint", "chance", "majority",
                "warnings"):
        assert key in results, key
    assert results["best_lr"] in results["lrs"] and len(results["val"]) == len(results["lrs"])
    assert all(0 <= results[k] <= 1 for k in ("top1_clip", "top1_video"))
    assert "top5_video" not in results  # 5 classes or fewer: the true one is always among the top 5
    assert results["chance"] == 1 / len(results["classes"])
    return results


def test_encode_takes_clip_batches_to_features_per_clip():
    # Every batch carries a clip axis (B×N×clip; N = 1 for training items); the encoder sees one
    # batch of B·N clips, and its features come back B×N×D in the clips' order. On CUDA the
    # video then goes channels_last_3d, which only a 5-D tensor can (found on an H200).
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    video, audio = video_encoder("r2plus1d_18", 4).eval(), audio_encoder(4).eval()
    clips = {"video": torch.randn(2, 3, 3, 4, 16, 16), "audio": torch.randn(2, 3, 1, 40, 20)}
    with torch.no_grad():
        for modality, encoder in (("video", video), ("audio", audio)):
            features = encode(encoder, clips[modality], modality, cpu, amp=False)
            assert features.shape == (2, 3, encoder.feature_dim) and features.dtype == torch.float32
            torch.testing.assert_close(features[1, 2], encoder(clips[modality][1, 2:3])[0])
            train_batch = clips[modality][:, :1]  # N = 1
            assert encode(encoder, train_batch, modality, cpu, amp=False).shape == (2, 1, encoder.feature_dim)
        with pytest.raises(ValueError, match="expected B×N×clip"):  # a batch without its clip axis
            encode(video, clips["video"][:, 0], "video", cpu)


def test_linear_mode_cli_learns_the_classes(labelled_manifests, tmp_path):
    out = tmp_path / "linear"
    code = main(["finetune", "--scratch", "--config", TINY, "--mode", "linear",
                 "--train", str(labelled_manifests / "train.csv"), "--test", str(labelled_manifests / "test.csv"),
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
def test_fc_and_full_modes_sweep_and_resume(labelled_manifests, tmp_path, mode):
    out = tmp_path / mode
    args = ["finetune", "--scratch", "--config", TINY, "--mode", mode,
            "--train", str(labelled_manifests / "train.csv"), "--val", str(labelled_manifests / "test.csv"),
            "--test", str(labelled_manifests / "test.csv"), "--out", str(out),
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
    assert main(args[:-1] + ["optim.epoch_size=16"]) == 2


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


def test_bad_inputs_fail_clearly(labelled_manifests, tmp_path, monkeypatch, capsys):
    from xdc.data.manifest import read_manifest

    cfg = load_config(TINY, schema=FinetuneConfig)
    train = read_manifest(labelled_manifests / "train.csv")
    test = [dict(r, label="unseen") for r in read_manifest(labelled_manifests / "test.csv")]
    with pytest.raises(FinetuneError, match="not among the training classes: unseen"):
        finetune(cfg, video_encoder("r2plus1d_18", 8), "video", train, None, test, tmp_path / "a")
    with pytest.raises(FinetuneError, match="no label"):
        finetune(cfg, video_encoder("r2plus1d_18", 8), "video", [dict(r, label=None) for r in train],
                 None, train, tmp_path / "b")
    # A file that went bad after the scan: recorded as skipped in results.json, the rest evaluated.
    broken = labelled_manifests.parent / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "bad.mp4").write_bytes(b"\x00not a video" * 100)
    rows = read_manifest(labelled_manifests / "test.csv")
    bad_test = rows + [dict(rows[0], path=str(broken / "bad.mp4"))]
    results = finetune(cfg, video_encoder("r2plus1d_18", 8), "video", train, None, bad_test, tmp_path / "d")
    assert results["test_videos"] == len(rows) and "bad.mp4" in results["skipped"]["test"][0]
    # --superv without the weights file: a clear message saying where to put it, no download.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    code = main(["finetune", "--superv", "--config", TINY, "--train", str(labelled_manifests / "train.csv"),
                 "--test", str(labelled_manifests / "test.csv"), "--out", str(tmp_path / "c"), "model.width=64"])
    assert code == 2 and "r2plus1d_18-91a641e6.pth" in capsys.readouterr().err


def test_pretrain_checkpoint_sets_the_encoder_it_was_trained_with(labelled_manifests, tmp_path):
    from xdc.checkpoint import save_checkpoint
    from xdc.config import PretrainConfig, config_to_yaml
    from xdc.models import audio_encoder

    pre = PretrainConfig()
    pre.model.video_arch, pre.model.width = "r3d_18", 4
    torch.manual_seed(5)
    ckpt = save_checkpoint({"video_encoder": video_encoder("r3d_18", 4).state_dict(),
                            "audio_encoder": audio_encoder(4).state_dict(), "config": config_to_yaml(pre)},
                           tmp_path / "last.pt")
    out = tmp_path / "out"
    code = main(["finetune", "--checkpoint", str(ckpt), "--config", TINY, "--mode", "linear",
                 "--train", str(labelled_manifests / "train.csv"), "--test", str(labelled_manifests / "test.csv"),
                 "--out", str(out), "fc_lrs=[0.1]"])
    assert code == 0
    results = _results(out)
    assert (results["arch"], results["width"], results["checkpoint"]) == ("r3d_18", 4, str(ckpt))
    # The same checkpoint into an encoder of another width fails loudly, naming the width.
    from xdc.models.weights import WeightsError, load_strict, read_state_dict
    with pytest.raises(WeightsError, match="holds a width-4 encoder"):
        load_strict(video_encoder("r3d_18", 8), read_state_dict(ckpt))


def test_superv_baseline_reads_torchvision_weights_from_the_hub_cache(tmp_path, monkeypatch):
    import torchvision

    from xdc.models.weights import superv_weights_path

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    torch.manual_seed(7)
    state = torchvision.models.video.r3d_18(weights=None).state_dict()  # stands in for the Kinetics file
    superv_weights_path("r3d_18").parent.mkdir(parents=True)
    torch.save(state, superv_weights_path("r3d_18"))
    cfg = load_config(None, ["model.video_arch=r3d_18"], schema=FinetuneConfig)
    loaded = load_encoder("video", cfg.model, superv=True)
    assert loaded.source == "superv:r3d_18/KINETICS400_V1" and loaded.model == cfg.model
    assert torch.equal(loaded.encoder.state_dict()["layer1.0.conv1.0.weight"], state["layer1.0.conv1.0.weight"])
    cfg.model.width = 8
    with pytest.raises(WeightsError, match="model.width=64"):
        load_encoder("video", cfg.model, superv=True)
    with pytest.raises(WeightsError, match="--modality video"):
        load_encoder("audio", load_config(None, schema=FinetuneConfig).model, superv=True)


def test_load_encoder_reads_a_checkpoint_and_leaves_the_config_alone(tmp_path, capsys):
    from xdc.checkpoint import save_checkpoint
    from xdc.config import PretrainConfig, config_to_yaml

    pre = PretrainConfig()
    pre.model.video_arch, pre.model.width, pre.data.n_mels = "r3d_18", 4, 32
    torch.manual_seed(3)
    video = video_encoder("r3d_18", 4)
    ckpt = save_checkpoint({"video_encoder": video.state_dict(), "audio_encoder": audio_encoder(4).state_dict(),
                            "config": config_to_yaml(pre)}, tmp_path / "last.pt")
    cfg = load_config(TINY, schema=FinetuneConfig)
    before = config_to_yaml(cfg)
    loaded = load_encoder("video", cfg.model, checkpoint=ckpt, data=cfg.data)
    assert (loaded.model.video_arch, loaded.model.width, loaded.source) == ("r3d_18", 4, str(ckpt))
    assert loaded.pretrain.data.n_mels == 32 and config_to_yaml(cfg) == before  # nothing written back
    assert torch.equal(loaded.encoder.state_dict()["stem.0.weight"], video.state_dict()["stem.0.weight"])
    assert "warning: data.n_mels=40 differs from the pretraining's 32" in capsys.readouterr().out
    # The checkpoint's config is validated like a config file: out of range, or an unknown key.
    pre.model.width = 0
    bad = save_checkpoint({"video_encoder": video.state_dict(), "config": config_to_yaml(pre)}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="model.width=0 is out of range"):
        load_encoder("video", cfg.model, checkpoint=bad)
    odd = save_checkpoint({"video_encoder": video.state_dict(), "config": "model:\n  depth: 3\n"}, tmp_path / "odd.pt")
    with pytest.raises(WeightsError, match="depth"):
        load_encoder("video", cfg.model, checkpoint=odd)


@pytest.mark.parametrize("mode", ["knn", "retrieval"])
def test_knn_and_retrieval_modes_cli(labelled_manifests, tmp_path, mode):
    out = tmp_path / mode
    args = ["finetune", "--scratch", "--config", TINY, "--mode", mode, "--train", str(labelled_manifests / "train.csv"),
            "--test", str(labelled_manifests / "test.csv"), "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == mode and results["checkpoint"] == "scratch" and results["test_videos"] == 6
    # No lr to choose: nothing held out, no sweep; the features are cached as in linear mode.
    assert results["videos"] == {"train": 12, "test": 6} and "best_lr" not in results and "val" not in results
    assert (out / "features.pt").is_file() and not list(out.glob("lr_*"))
    if mode == "knn":
        assert (results["knn_k"], results["knn_temperature"]) == (20, 0.07)
        assert "top5_video" not in results and results["top1_video"] >= 0.8  # solid colours, as in linear
    else:
        assert results["recall@1"] <= results["recall@5"] <= results["recall@10"]
        assert results["recall@10"] == 1.0  # 10 of the 12 training videos always include one of 4 per class
        assert results["recall@1"] >= 0.8
    # A val manifest is scored too; other settings into the same folder are refused.
    with_val = tmp_path / f"{mode}_val"
    assert main(args[:-1] + [str(with_val), "--val", str(labelled_manifests / "test.csv"), "knn_k=3"]) == 0
    results = json.loads((with_val / "results.json").read_text())
    assert results["val"]["videos"] == 6 and results["val_source"] == "val manifest"
    key = "top1_video" if mode == "knn" else "recall@1"
    assert results["val"][key] == results[key]  # val and test are the same videos here
    assert main(args + ["knn_k=5"]) == 2


def test_without_config_a_cpu_uses_the_cpu_preset_and_warns_about_the_inputs(labelled_manifests, tmp_path, monkeypatch):
    """No --config on a machine without a GPU: the CPU-scale linear probe, not UCF101's schedule;
    train = test and a held-out val of one video per class are said, and kept in results.json."""
    from xdc.checkpoint import save_checkpoint
    from xdc.config import PretrainConfig, config_to_yaml, resolve_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pre = PretrainConfig()
    pre.model.width = 16
    pre.data = load_config(resolve_config("cpu", "finetune"), schema=FinetuneConfig).data
    ckpt = save_checkpoint({"video_encoder": video_encoder("r2plus1d_18", 16).state_dict(),
                            "audio_encoder": audio_encoder(16).state_dict(), "config": config_to_yaml(pre)},
                           tmp_path / "ckpt.pt")
    out = tmp_path / "out"
    train = str(labelled_manifests / "train.csv")
    assert main(["finetune", "--checkpoint", str(ckpt), "--train", train, "--test", train, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["mode"] == "linear" and results["eval_clips"] == 3 and results["width"] == 16
    assert results["lrs"] == [0.01, 0.1, 1.0] and results["videos"] == {"train": 9, "val": 3, "test": 12}
    shared, few = results["warnings"]
    assert shared.startswith("12 of the 12 test videos are also train/val videos")
    assert few.startswith("the lr is chosen on 3 validation video(s) for 3 classes")


def test_one_class_test_set_is_warned_and_scores_sit_beside_chance_and_majority(labelled_manifests, tmp_path,
                                                                               capsys):
    from xdc.data.manifest import read_manifest, write_manifest

    rows = [row for row in read_manifest(labelled_manifests / "test.csv") if row["label"] == "red_low"]
    one_class = write_manifest(rows, tmp_path / "one_class.csv", relative=False)
    out = tmp_path / "knn"
    assert main(["finetune", "--scratch", "--config", TINY, "--mode", "knn", "--train",
                 str(labelled_manifests / "train.csv"), "--test", str(one_class), "--out", str(out)]) == 0
    console = capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    assert (results["chance"], results["majority"]) == (1 / 3, 1.0)
    warning = "the test videos are all of one class (red_low)"
    assert [w for w in results["warnings"] if w.startswith(warning)] and f"warning: {warning}" in console.err
    assert console.out.strip().splitlines()[-1].endswith(f"on 2 videos (chance 0.333, majority 1.000) -> {out}/results.json")


def test_an_lr_that_diverges_is_left_out_and_when_all_do_it_is_one_line(labelled_manifests, tmp_path, capsys):
    args = ["finetune", "--scratch", "--config", TINY, "--mode", "linear", "--train",
            str(labelled_manifests / "train.csv"), "--test", str(labelled_manifests / "test.csv")]
    assert main([*args, "--out", str(tmp_path / "some"), "fc_lrs=[0.1,1e30]"]) == 0
    results = json.loads((tmp_path / "some" / "results.json").read_text())
    assert results["best_lr"] == 0.1 and results["val"]["1e+30"]["diverged"].startswith("training loss nan")
    assert "lr 1e+30: diverged (training loss nan at epoch " in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "all"), "fc_lrs=[1e30]"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("xdc finetune: every lr diverged (lr 1e+30")
