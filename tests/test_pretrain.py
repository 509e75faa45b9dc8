"""xdc.pretrain (`xdc pretrain`) end to end on CPU on real clips: one run per method, shipped
configs, bad inputs and undecodable videos (one line, or counted and skipped), a scan -> pretrain
over bad files, continuing a run launched again."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, TINY, assert_user_error, broken_copy, cli

from xdc.checkpoint import load_checkpoint
from xdc.cli import main as xdc_main
from xdc.config import load_config, packaged_configs
from xdc.data.manifest import read_manifest, write_manifest
from xdc.data.scan import probe_file
from xdc.methods import get_method
from xdc.training.run_folder import RunFolder

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


def test_superv_predicts_the_manifest_labels_in_rows_order(av_manifest, tmp_path):
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
    assert "holds work made with other settings (iterations: 1 there, 2 asked;" in capsys.readouterr().err
    assert pretrain("--resume", tmp_path / "missing") == 2
    assert "nothing to resume" in capsys.readouterr().err


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
    assert "holds work made with other settings (optim.lr: 0.01 there, 0.02 asked): choose another --out, or " \
        "continue it" in capsys.readouterr().err
    fewer = av_manifest.parent / "fewer.csv"
    fewer.write_text("\n".join(av_manifest.read_text().splitlines()[:-1]) + "\n")
    assert pretrain("--config", TINY, "--data", fewer, "--out", out, *command[6:]) == 2
    assert "holds a run on other manifest rows" in capsys.readouterr().err


def make_bad_files(folder: Path, good: Path) -> dict[str, Path]:
    """The reliability probe's bad files, made from the real clip `good`."""
    data = good.read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    files = {"zero": folder / "zero.mp4", "truncated": folder / "truncated.mp4", "bitflip": folder / "bitflip.mp4",
             "text": folder / "text.mp4", "random": folder / "random.mp4", "unicode": folder / "vidéo_ü_日本.mp4",
             "newline": folder / "new\nline.mp4", "huge_header": folder / "huge_header.mp4",
             "hls": folder / "playlist.mp4"}
    files["zero"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 4, len(data), 200):
        flipped[i] ^= 0xFF
    files["bitflip"].write_bytes(bytes(flipped))
    files["text"].write_text("this is not a video\n")
    files["random"].write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    files["unicode"].write_bytes(data)
    files["newline"].write_bytes(data)
    # A header claiming 16000×16000 (the avc1 sample entry's width and height fields).
    huge = bytearray(data)
    at = huge.find(b"avc1", huge.find(b"stsd"))  # the sample entry, not the ftyp brand
    assert at > 0
    huge[at + 28:at + 32] = (16000).to_bytes(2, "big") * 2
    files["huge_header"].write_bytes(bytes(huge))
    files["hls"].write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nsegment0.ts\n#EXT-X-ENDLIST\n")
    (folder / "dir.mp4").mkdir()
    return files


@pytest.mark.slow
def test_scan_then_pretrain_over_real_and_bad_files(tmp_path, capsys, clip_factory):
    """Must show: a folder of real clips mixed with the probe's bad files -> `xdc scan` lists every
    file; `xdc pretrain` (tiny) over that manifest finishes and says what it skipped and why. (The
    dangling symlink is left to test_dangling_symlink_row_does_not_stop_pretraining: issue 10 item 1.)"""
    folder = tmp_path / "videos"
    for i in range(6):
        clip_factory(f"videos/real_{i}.mp4", seconds=2.0, seed=i, tone_hz=300.0 + 200 * i)
    clip_factory("videos/one_frame.mp4", seconds=1 / 16, fps=16.0)  # 1 frame of video...
    make_bad_files(folder, folder / "real_0.mp4")
    manifest = tmp_path / "manifest.csv"
    rc, err = cli(capsys, "scan", folder, "-o", manifest, "--workers", 1)
    assert rc == 0, err
    rows = read_manifest(manifest)
    files = {p for p in folder.rglob("*") if p.is_file()}
    assert {Path(r["path"]) for r in rows} == files  # every file, one row each
    status = {Path(r["path"]).name: (r["status"], r["reason"]) for r in rows}
    for name in ("zero.mp4", "truncated.mp4", "text.mp4", "random.mp4", "playlist.mp4"):
        assert status[name][0] == "skip" and status[name][1], name
    for name in ("vidéo_ü_日本.mp4", "new\nline.mp4", "real_3.mp4"):
        assert status[name] == ("ok", None), name

    run = tmp_path / "run"
    capsys.readouterr()
    rc = xdc_main(["pretrain", "--config", TINY, "--data", str(manifest), "--out", str(run), *SMALL,
               "cluster.k_video=2", "cluster.k_audio=2"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "Traceback" not in out.err
    skipped = sum(1 for s, _ in status.values() if s == "skip")
    usable = len(rows) - skipped
    assert f"{usable} usable videos, {skipped} dropped (" in out.out, out.out
    assert load_checkpoint(RunFolder(run).last)["iteration"] == 2


def test_dangling_symlink_row_does_not_stop_pretraining(tmp_path, av_manifest):
    from xdc.pretrain import setup

    link = tmp_path / "gone.mp4"
    link.symlink_to(tmp_path / "nowhere.mp4")
    rows = read_manifest(av_manifest) + [probe_file(link)]
    assert rows[-1]["status"] == "skip"
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    args = argparse.Namespace(resume=None, config=TINY, data=manifest, out=tmp_path / "run", method=None,
                              overrides=SMALL)
    cfg, usable, _ = setup(args)
    assert len(usable) == 8
    assert read_manifest(manifest)[-1]["path"] == str(link)  # the link as given, not its target


def test_videos_undecodable_after_scan(tmp_path, capsys, clip_factory):
    """Rows that scanned ok but no longer decode: one line saying how many videos had features and
    why the others were skipped."""
    from xdc.data.scan import scan_paths

    paths = [clip_factory(f"v/clip_{i}.mp4", seconds=1.0, seed=i) for i in range(6)]
    manifest = write_manifest(scan_paths([tmp_path / "v"], progress=False), tmp_path / "manifest.csv")
    noise = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    for path in paths[2:]:  # 2 of 6 still decode: too few for k = 4
        path.write_bytes(noise)
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", manifest, "--out", tmp_path / "r1", *SMALL,
                  "optim.val_fraction=0.5")
    assert_user_error(rc, err, "pretrain", "only 2 of the 6", "cluster.k_", "clip_")
    for path in paths[:2]:  # none decodes
        path.write_bytes(noise)
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", manifest, "--out", tmp_path / "r2", *SMALL,
                  "optim.val_fraction=0.5")
    assert_user_error(rc, err, "pretrain", "no video could be decoded", "6 skipped")
