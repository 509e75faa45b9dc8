"""Cluster report on a run folder built here (per DESIGN.md) from real clips, and filter pictures."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torchvision

from xdc.config import PretrainConfig, save_config
from xdc.data.manifest import read_manifest, write_manifest
from xdc.data.scan import probe_file
from xdc.reports.clusters import ReportError, cluster_report
from xdc.reports.filters import draw_filters, stem_filters

CLASSES = ["red_square", "red_square", "red_square", "blue_tone", "blue_tone", "blue_tone"]


@pytest.fixture
def run_dir(tmp_path, clip_factory):
    """A pretrain run folder: rows.csv, config.yaml, summary.json and two iterations of labels."""
    rows = []
    for i, label in enumerate(CLASSES):
        path = clip_factory(f"videos/{label}/{i}.mp4", seconds=1.5, seed=i, audio=i != 5,
                            tone_hz=300.0 if label == "red_square" else 1200.0)
        rows.append(probe_file(path))  # rows.csv of a run carries no label; the manifest does
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(rows, run / "rows.csv", relative=False)
    write_manifest([{**r, "label": label} for r, label in zip(rows, CLASSES)], tmp_path / "labels.csv")
    save_config(PretrainConfig(), run / "config.yaml")
    labels = {0: {"video": [0, 1, 0, 1, 0, 1], "audio": [2, 2, 2, 2, 2, 2]},
              1: {"video": [0, 0, 0, 1, 1, 2], "audio": [0, 1, 0, 1, 0, 1]}}
    summary = []
    for n, per_modality in labels.items():
        (run / "iterations" / f"{n:02d}").mkdir(parents=True)
        for modality, values in per_modality.items():
            np.save(run / "iterations" / f"{n:02d}" / f"labels_{modality}.npy", np.array(values))
        summary.append({"iteration": n, "video": {"num_clusters": 4}, "audio": {"num_clusters": 3}})
    (run / "summary.json").write_text(json.dumps({"method": "xdc", "iterations": summary}))
    return run


def test_cluster_report_tables_metrics_and_page(run_dir, tmp_path):
    out = tmp_path / "report"
    metrics = cluster_report(run_dir, out, tmp_path / "labels.csv", clips_per_cluster=2)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(on_disk) == {"video", "audio"} and on_disk == json.loads(json.dumps(metrics))
    video, audio = on_disk["video"], on_disk["audio"]
    # Last iteration (1): video clusters {0: 3 red}, {1: 2 blue}, {2: 1 blue}, cluster 3 empty.
    assert video["iteration"] == 1 and video["num_clusters"] == 4 and video["empty_clusters"] == 1
    assert video["purity"] == pytest.approx(1.0)
    assert video["accuracy"] == pytest.approx(5 / 6)  # one-to-one: cluster 2 cannot also be "blue"
    # Audio clusters {0: red, red, blue}, {1: red, blue, blue}.
    assert audio["purity"] == pytest.approx(4 / 6) and audio["empty_clusters"] == 1
    assert 0 <= audio["nmi"] < video["nmi"] <= 1 and audio["ari"] < video["ari"]

    table = (out / "clusters_video.md").read_text()
    assert "| 1 | 0 | 3 | 1.00 | red_square(1.00) |" in table
    assert "blue_tone(1.00)" in table
    assert "red_square(0.67), blue_tone(0.33)" in (out / "clusters_audio.md").read_text()
    assert len((out / "clusters_video.csv").read_text().splitlines()) == 1 + 3  # header + non-empty

    page = (out / "index.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert sources and all((out / s).is_file() for s in sources)  # self-contained, relative
    assert not any(s.startswith("/") for s in sources)
    assert page.count("<audio") >= 3 and "no audio" in page  # clip 5 has no audio track
    assert any(s.endswith(".jpg") for s in sources) and any(s.endswith("_mel.png") for s in sources)
    assert (out / sources[0]).stat().st_size > 500


def test_cluster_report_iteration_choice_and_bad_input(run_dir, tmp_path):
    metrics = cluster_report(run_dir, tmp_path / "it0", tmp_path / "labels.csv", iteration=0, media=False)
    assert metrics["audio"]["purity"] == pytest.approx(0.5)  # one cluster holds everything
    assert metrics["audio"]["empty_clusters"] == 2
    assert not (tmp_path / "it0" / "assets").exists()
    with pytest.raises(ReportError, match="iteration 7"):
        cluster_report(run_dir, tmp_path / "x", tmp_path / "labels.csv", iteration=7)
    with pytest.raises(ReportError, match="no row of the run matches a labelled row"):
        write_manifest([{**r, "label": "a", "id": "elsewhere"} for r in read_manifest(tmp_path / "labels.csv")[:1]],
                       tmp_path / "other" / "labels.csv", relative=False)
        (tmp_path / "other" / "labels.csv").write_text((tmp_path / "other" / "labels.csv").read_text()
                                                       .replace("/videos/", "/gone/"))
        cluster_report(run_dir, tmp_path / "x", tmp_path / "other" / "labels.csv", media=False)
    np.save(run_dir / "iterations" / "01" / "labels_video.npy", np.zeros(4, np.int64))
    with pytest.raises(ReportError, match="4 labels but rows.csv has 6"):
        cluster_report(run_dir, tmp_path / "x", tmp_path / "labels.csv", media=False)


def test_cluster_report_without_labels_ranks_by_size_and_compares_iterations(run_dir, tmp_path):
    out = tmp_path / "unlabelled"
    metrics = cluster_report(run_dir, out, clips_per_cluster=1)
    video = metrics["video"]
    assert video["purity"] is None and video["num_labelled"] == 0
    # Iteration 1's video clusters [0,0,0,1,1,2] against iteration 0's [0,1,0,1,0,1].
    from xdc.clustering.metrics import nmi

    assert video["nmi_prev"] == pytest.approx(nmi([0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 0, 1]))
    assert "| 1 | 0 | 3 | - |" in (out / "clusters_video.md").read_text()  # by size
    page = (out / "index.html").read_text()
    assert page.count('class="member"') == 3 + 2  # one per non-empty cluster, both modalities
    assert 'href="file://' in page and (out / "iterations.png").stat().st_size > 1000


def test_labels_match_by_id_when_the_run_trained_on_copies(run_dir, tmp_path):
    """The labelled manifest names the originals; the run's rows.csv names prepared copies."""
    rows = read_manifest(run_dir / "rows.csv")
    labelled = read_manifest(tmp_path / "labels.csv")
    copies = []
    for i, row in enumerate(rows):
        copy = tmp_path / "prepared" / f"{i}.mp4"
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(open(row["path"], "rb").read())
        copies.append({**row, "path": str(copy), "id": f"clip{i}"})
    write_manifest(copies, run_dir / "rows.csv", relative=False)
    write_manifest([{**r, "id": f"clip{i}"} for i, r in enumerate(labelled)], tmp_path / "labels.csv")
    metrics = cluster_report(run_dir, tmp_path / "by_id", tmp_path / "labels.csv", media=False)
    assert metrics["video"]["num_labelled"] == 6 and metrics["video"]["purity"] == pytest.approx(1.0)


def test_clusters_command_line(run_dir, tmp_path, capsys):
    from xdc.cli import main

    out = tmp_path / "cli"
    assert main(["clusters", str(run_dir), "--labels", str(tmp_path / "labels.csv"), "-o", str(out),
                 "--no-media"]) == 0
    assert json.loads((out / "metrics.json").read_text())["video"]["purity"] == 1.0
    assert (out / "index.html").is_file()
    assert main(["clusters", str(tmp_path), "-o", str(out)]) == 2  # not a run folder
    assert "no iterations/NN/labels_*.npy" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["r2plus1d_18", "r3d_18"])
def test_filters_png_for_torchvision_and_our_checkpoints(tmp_path, arch):
    from PIL import Image

    from xdc.checkpoint import save_checkpoint
    from xdc.models import video_encoder

    torch.manual_seed(0)
    tv_file = tmp_path / "tv.pth"
    torch.save(getattr(torchvision.models.video, arch)(weights=None).state_dict(), tv_file)
    ours = save_checkpoint({"video_encoder": video_encoder(arch, width=16).state_dict()}, tmp_path / "last.pt")
    filters = stem_filters(torch.load(tv_file, weights_only=True))
    if arch == "r2plus1d_18":
        assert filters["spatial"].shape == (45, 3, 7, 7) and filters["temporal"].shape == (64, 45, 3)
    else:
        assert filters["kernels"].shape == (64, 3, 3, 7, 7)
    one = draw_filters([tv_file], tmp_path / "one.png")
    two = draw_filters([tv_file, ours], tmp_path / "two.png")
    w1, _ = Image.open(one).size
    w2, _ = Image.open(two).size
    assert w2 > 1.8 * w1  # two checkpoints side by side
    pixels = np.asarray(Image.open(two).convert("L"), np.float32)
    assert pixels.std() > 10  # drawn filters, not a blank canvas


def test_filters_rejects_an_audio_checkpoint(tmp_path):
    from xdc.models import audio_encoder
    from xdc.models.weights import WeightsError

    torch.save(audio_encoder(width=8).state_dict(), tmp_path / "audio.pth")
    with pytest.raises(WeightsError, match="no video stem"):
        draw_filters([tmp_path / "audio.pth"], tmp_path / "x.png")


def test_unclustered_and_unlabelled_rows_are_left_out_of_the_label_metrics():
    from xdc.reports.clusters import modality_report

    clusters = np.array([0, 0, 1, 1, -1, 1])  # row 4 had no features in the run
    names = ["a", "a", "b", "b", "a", None]  # row 5 has no true label
    metrics, ranked = modality_report(clusters, names, k=3)
    assert metrics["num_unclustered"] == 1 and metrics["num_labelled"] == 5
    assert metrics["purity"] == 1.0 and metrics["empty_clusters"] == 1
    assert [(r["cluster"], r["size"]) for r in ranked] == [(0, 2), (1, 2)]
