"""`xdc demo` end to end at a tiny size, its settings and its probe split."""

from __future__ import annotations

import json

import pytest

from xdc.evaluation.splits import SplitError

from xdc.cli import main as xdc_main
from xdc.data.manifest import read_manifest
from xdc.demo import probe_split


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
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["scratch", "sdc", "xdc"]
    assert results["data"]["videos"] == 10 and results["data"]["probe"] == {"train": 6, "val": 2, "test": 2}
    for method, entry in results["methods"].items():
        for modality in ("video", "audio"):
            probe = entry["probe"][modality]
            assert 0.0 <= probe["top1_video"] <= 1.0 and probe["best_lr"] > 0
            assert entry["knn"][modality]["mode"] == "knn" and 0.0 <= entry["knn"][modality]["top1_video"] <= 1.0
            recall = entry["retrieval"][modality]
            assert 0.0 <= recall["recall@1"] <= recall["recall@5"] <= recall["recall@10"] <= 1.0
        if method == "scratch":
            assert "clusters" not in entry
            continue
        for modality in ("video", "audio"):
            clusters = entry["clusters"][modality]
            assert clusters["num_clusters"] == 3 and 0 <= clusters["empty_clusters"] < 3
            assert 0.5 <= clusters["purity"] <= 1.0  # 2 balanced classes: purity is at least 1/2
            assert 0.0 <= clusters["nmi_nuisance"] <= 1.0
        assert [r["iteration"] for r in entry["iterations"]] == [0, 1]
    diff = results["comparisons"]["xdc_minus_sdc"]["video"]
    assert diff == pytest.approx(results["methods"]["xdc"]["probe"]["video"]["top1_video"]
                                 - results["methods"]["sdc"]["probe"]["video"]["top1_video"], abs=1e-4)
    page = (out / "report.html").read_text()
    for text in ("scratch", "sdc", "xdc", "video acc", "video kNN", "audio R@1", "filters.png",
                 "clusters/xdc/index.html"):
        assert text in page
    assert (out / "filters.png").stat().st_size > 1000 and (out / "clusters" / "xdc" / "index.html").is_file()
    # Pictures, and a cluster browser with media for every pretrained method, linked from the report.
    plots = results["plots"]
    assert set(plots) == {"plot_probe.png", "plot_nmi_video.png", "plot_nmi_audio.png", "plot_maps.png"}
    for src in plots:
        assert f'src="{src}"' in page and (out / src).stat().st_size > 1000
    for method in ("sdc", "xdc"):
        assert f'href="clusters/{method}/index.html"' in page
        assert "<audio" in (out / "clusters" / method / "index.html").read_text()
    # The pretraining manifest never held the labels.
    assert all(row["label"] is None for row in read_manifest(out / "data" / "manifest.csv"))

    # Run again into the same folder: everything is reused (no file rewritten), and the numbers are the same.
    written = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    assert xdc_main(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["methods"]["xdc"]["probe"] == results["methods"]["xdc"]["probe"]
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == written
    # Other settings into the same folder: refused, rather than mixing old runs with new ones.
    capsys.readouterr()
    assert xdc_main(argv + ["pretrain.optim.lr=0.02"]) == 2
    assert "holds a demo run with other settings" in capsys.readouterr().err
