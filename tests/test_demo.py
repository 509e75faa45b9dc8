"""xdc.demo: `xdc demo` end to end at a tiny size (the experiment runner, xdc.experiments.runner,
in-process), its settings and its probe split."""

from __future__ import annotations

import json

import pytest

from xdc.cli import main as xdc_main
from xdc.data.manifest import read_manifest
from xdc.demo import probe_split
from xdc.evaluation.splits import SplitError


def test_probe_split_is_stratified_and_disjoint():
    rows = [{"path": f"v{i}.mp4", "label": "ab"[i % 2]} for i in range(20)]
    parts = probe_split(rows, 0.2, 0.2, seed=0)
    paths = [r["path"] for part in parts.values() for r in part]
    assert sorted(paths) == sorted(r["path"] for r in rows)  # a partition
    for part in parts.values():
        assert {r["label"] for r in part} == {"a", "b"}
    assert len(parts["test"]) == 4 and len(parts["val"]) == 4
    with pytest.raises(SplitError, match="too few"):
        probe_split(rows[:4], 0.3, 0.3, seed=0)


def test_bad_demo_settings_give_a_clear_message(tmp_path, capsys):
    assert xdc_main(["demo", "--out", str(tmp_path), "pretrain.model.width=0"]) == 2
    assert "xdc demo: config value pretrain.model.width=0 is out of range" in capsys.readouterr().err
    assert xdc_main(["demo", "--out", str(tmp_path), "synthetic.colour=red"]) == 2
    err = capsys.readouterr().err
    assert "Key 'colour' not in 'SyntheticConfig'" in err and len(err.splitlines()) == 1
    assert xdc_main(["demo", "--out", str(tmp_path), "synthetic.num_classes=1"]) == 2
    assert "xdc demo: synthetic: num_classes must be in" in capsys.readouterr().err
    assert not (tmp_path / "data" / "videos").exists()  # refused before writing anything


TINY = ["synthetic.num_classes=2", "synthetic.videos_per_class=5", "synthetic.seconds=1.0",
        "synthetic.size=24", "pretrain.iterations=2", "pretrain.data.frames=4", "pretrain.data.short_side=24",
        "pretrain.data.crop=20", "pretrain.model.width=4", "pretrain.optim.epoch_size=16",
        "pretrain.optim.batch_size=8", "pretrain.cluster.k_video=3", "pretrain.cluster.k_audio=3",
        "pretrain.cluster.k_joint=3", "pretrain.optim.val_fraction=0.2", "finetune.optim.epoch_size=40",
        "finetune.optim.total_epochs=1", "finetune.optim.step_epochs=1", "pretrain.device=cpu",
        "finetune.device=cpu", "probe.val_fraction=0.2", "probe.test_fraction=0.2"]


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--out", str(out), "--methods", "scratch,sdc,xdc", *TINY]
    assert xdc_main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["methods"] == ["scratch", "sdc", "xdc"] and results["seeds"] == [0]
    assert [(r["seed"], r["method"]) for r in results["runs"]] == [(0, "scratch"), (0, "sdc"), (0, "xdc")]
    assert results["data"]["videos"] == 10 and results["data"]["probe"] == {"train": 6, "val": 2, "test": 2}
    assert results["chance"] == {"classes": 2, "test_videos": 2, "chance": 0.5, "majority": 0.5}
    for entry in results["runs"]:
        for modality in ("video", "audio"):
            probe = entry["probes"]["linear"][modality]
            assert 0.0 <= probe["top1_video"] <= 1.0 and probe["best_lr"] > 0
            knn = entry["probes"]["knn"][modality]
            assert knn["mode"] == "knn" and 0.0 <= knn["top1_video"] <= 1.0
            recall = entry["probes"]["retrieval"][modality]
            assert 0.0 <= recall["recall@1"] <= recall["recall@5"] <= recall["recall@10"] <= 1.0
        if entry["method"] == "scratch":
            assert "clusters" not in entry
            continue
        for modality in ("video", "audio"):
            clusters = entry["clusters"][modality]
            assert clusters["num_clusters"] == 3 and 0 <= clusters["empty_clusters"] < 3
            assert 0.5 <= clusters["purity"] <= 1.0  # 2 balanced classes: purity is at least 1/2
            assert 0.0 <= clusters["nmi_nuisance"] <= 1.0
        assert [r["iteration"] for r in entry["iterations"]] == [0, 1]
    xdc_run, sdc_run = results["runs"][2], results["runs"][1]
    diff = results["comparisons"]["xdc_minus_sdc"]["linear"]["video"]
    assert diff["interval"] is None and not diff["beats"]  # one seed: no interval, no verdict
    assert diff["mean"] == pytest.approx(xdc_run["probes"]["linear"]["video"]["top1_video"]
                                         - sdc_run["probes"]["linear"]["video"]["top1_video"])
    # One table: printed, in table.md, and in the report, with chance and the majority rate beside the scores.
    table = (out / "table.md").read_text()
    assert table in printed and "| chance (1/2)" in table and "| majority class" in table
    assert "One seed: no interval" in table and "t-interval" in table
    page = (out / "report.html").read_text()
    for text in ("scratch", "sdc", "xdc", "video linear", "video kNN", "audio R@1", "filters.png",
                 "seed0/xdc/clusters/index.html", "chance 1/2 = 0.500", "2 test videos", "1 seed (0)",
                 "one seed, so no error marks", "video: 3 of 3 clusters shown"):
        assert text in page, text
    assert (out / "filters.png").stat().st_size > 1000
    # Pictures, and a cluster browser with media for every pretrained method, linked from the report.
    plots = results["plots"]
    assert set(plots) == {"plot_probe.png", "plot_nmi_video.png", "plot_nmi_audio.png", "plot_maps.png"}
    for src in plots:
        assert f'src="{src}"' in page and (out / src).stat().st_size > 1000
    for method in ("sdc", "xdc"):
        assert f'href="seed0/{method}/clusters/index.html"' in page
        assert "<audio" in (out / "seed0" / method / "clusters" / "index.html").read_text()
    # The pretraining manifest never held the labels.
    assert all(row["label"] is None for row in read_manifest(out / "data" / "manifest.csv"))

    # Run again into the same folder: everything is reused (no file rewritten), and the numbers are the same.
    runs = list(out.glob("seed0/*/run"))
    written = {p: p.stat().st_mtime_ns for run in runs for p in run.rglob("*") if p.is_file()}
    assert xdc_main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["runs"][2]["probes"] == xdc_run["probes"]
    assert {p: p.stat().st_mtime_ns for run in runs for p in run.rglob("*") if p.is_file()} == written
    # A second seed adds its pieces: the first seed's are reused, and the comparisons get an interval.
    assert xdc_main(argv + ["--seeds", "0", "1"]) == 0
    capsys.readouterr()
    two = json.loads((out / "results.json").read_text())
    assert [(r["seed"], r["method"]) for r in two["runs"]][3:] == [(1, "scratch"), (1, "sdc"), (1, "xdc")]
    assert two["runs"][2]["probes"] == xdc_run["probes"]
    assert two["runs"][5]["pretrain_summary"] != xdc_run["pretrain_summary"]  # another initialisation
    low, high = two["comparisons"]["xdc_minus_sdc"]["linear"]["video"]["interval"]
    assert low <= two["comparisons"]["xdc_minus_sdc"]["linear"]["video"]["mean"] <= high
    assert "±" in (out / "table.md").read_text() and "error marks span" in (out / "report.html").read_text()
    # Other settings into the same folder: refused, rather than mixing old runs with new ones.
    assert xdc_main(argv + ["pretrain.optim.lr=0.02"]) == 2
    assert "holds work made with other settings (pretrain.optim.lr: 0.01 there, 0.02 asked)" in capsys.readouterr().err
