"""xdc.reports.clusters (`xdc clusters`) on a run folder built here (per DESIGN.md) from real clips,
its markdown tables, and xdc.reports.filters' filter pictures."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torchvision
from conftest import on_a_small_disk

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
    assert (out / "iterations.png").stat().st_size > 1000


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


# ------------------------------------------------------------------------- issue 22.7, 22.13, 21.6

def test_duplicate_ids_with_different_labels_are_refused(run_dir, tmp_path):
    """Issue 22.7: rows of one id (a video listed under two paths) with different labels: which is
    true cannot be told (the last row used to win: every cluster "purity 1.00")."""
    labelled = [{**r, "id": f"clip{i}"} for i, r in enumerate(read_manifest(tmp_path / "labels.csv"))]
    elsewhere = [{**r, "path": str(tmp_path / "elsewhere" / f"{i}.mp4")} for i, r in enumerate(labelled)]
    write_manifest(labelled + elsewhere, tmp_path / "same.csv", relative=False)  # same labels: fine
    assert cluster_report(run_dir, tmp_path / "ok", tmp_path / "same.csv", media=False)["video"]["purity"] == 1.0
    flipped = [{**r, "label": "blue_tone" if r["label"] == "red_square" else "red_square"} for r in elsewhere]
    write_manifest(labelled + flipped, tmp_path / "twice.csv", relative=False)
    with pytest.raises(ReportError, match=r"twice.csv: 6 id\(s\) appear on several rows with different labels "
                                          r"\(clip0, clip1, clip2, clip3, clip4 and 1 more\): keep one label per id"):
        cluster_report(run_dir, tmp_path / "x", tmp_path / "twice.csv", media=False)


def test_labels_are_text_in_the_markdown_tables(run_dir, tmp_path):
    """Issue 22.13: a label with HTML is written as text (Markdown renders raw HTML; index.html escapes)."""
    labelled = read_manifest(tmp_path / "labels.csv")
    write_manifest([{**r, "label": "<script>alert(1)</script>"} for r in labelled], tmp_path / "evil.csv",
                   relative=False)
    out = tmp_path / "report"
    cluster_report(run_dir, out, tmp_path / "evil.csv", media=False)
    for name in ("clusters_video.md", "clusters_audio.md", "index.html"):
        text = (out / name).read_text()
        assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text, name


def test_member_links_are_relative_so_a_moved_folder_works(run_dir, tmp_path):
    """Issue 21.6: a member's name links its file relative to the report, not as file:///..."""
    import shutil
    from urllib.parse import unquote

    (tmp_path / "videos" / "a dir#").mkdir()  # a name that must be quoted in a link
    shutil.move(tmp_path / "videos" / "red_square", tmp_path / "videos" / "a dir#" / "red_square")
    rows = read_manifest(run_dir / "rows.csv", check_files="none")
    write_manifest([{**r, "path": r["path"].replace("/videos/red_square/", "/videos/a dir#/red_square/")}
                    for r in rows], run_dir / "rows.csv", relative=False)
    cluster_report(run_dir, tmp_path / "report", clips_per_cluster=1)
    shutil.move(tmp_path, tmp_path.parent / (tmp_path.name + "_moved"))
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    page = (moved / "report" / "index.html").read_text()
    links = [unquote(h) for h in re.findall(r'<a href="([^"#]+)">', page)
             if not h.startswith(("clusters_", "metrics.json"))]
    assert len(links) == 3 + 2 and not any(":" in h for h in links)  # one per shown member
    assert all((moved / "report" / h).resolve().is_file() for h in links)
    shutil.move(moved, tmp_path)  # give pytest its folder back


def test_a_full_disk_names_the_report_folder(run_dir, tmp_path):
    import sys

    mount = tmp_path / "disk"
    script = (f"{sys.executable} -m xdc.cli clusters {run_dir} --labels {tmp_path / 'labels.csv'} "
              f"-o {mount}/report; echo rc=$?")
    done = on_a_small_disk(mount, "16k", script, timeout=300)
    assert "rc=2" in done.stdout and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (f"xdc clusters: the disk holding {mount}/report is full (No "
                                                    f"space left on device): free some space and run the same "
                                                    f"command again")


def test_metrics_json_is_written_last_so_a_killed_report_is_made_again(run_dir, tmp_path, monkeypatch):
    """The experiment runner takes a folder with metrics.json for a finished report: a report that
    dies before its page is written leaves none."""
    from xdc.reports import clusters

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(clusters.html, "page", killed)
    with pytest.raises(KeyboardInterrupt):
        cluster_report(run_dir, tmp_path / "report", tmp_path / "labels.csv", media=False)
    assert (tmp_path / "report" / "clusters_video.md").is_file()  # it had begun
    assert not (tmp_path / "report" / "metrics.json").exists()
    monkeypatch.undo()
    cluster_report(run_dir, tmp_path / "report", tmp_path / "labels.csv", media=False)
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["video"]["iteration"] == 1
    assert [p.name for p in (tmp_path / "report").iterdir() if p.name.endswith(".tmp")] == []


def test_markdown_cluster_table_escapes_labels():
    from xdc.reports.clusters import markdown_table

    ranked = [{"rank": 1, "cluster": 0, "size": 3, "purity": 1.0, "top": [("a|b\nc", 1.0)]}]
    table = markdown_table(ranked, "video")
    body = table.splitlines()[-1]
    assert body == "| 1 | 0 | 3 | 1.00 | a\\|b c(1.00) |"
    assert body.count("|") - body.count("\\|") == 6  # five cells
