"""Standard split readers on small split files written here in the datasets' real formats."""

from __future__ import annotations

import numpy as np
import pytest

from xdc.data.manifest import read_manifest
from xdc.evaluation.splits import SplitError, read_hmdb51, read_ucf101, split_manifests, split_rows
from xdc.reports.html import write_wav


def _write_wav(path, seconds=0.5, rate=8000, tone=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return write_wav(0.3 * np.sin(2 * np.pi * tone * t), rate, path)  # 16-bit PCM, as ESC-50's


def test_ucf101_lists_become_labelled_rows(tmp_path, clip_factory):
    root, lists = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    # The real files: CRLF ends, train lines carry the class index, test lines do not.
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n")
    (lists / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\nHandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n")
    (lists / "testlist01.txt").write_bytes(b"HandstandPushups/v_HandStandPushups_g01_c01.avi\r\n")
    clip_factory("UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", seed=1)
    clip_factory("UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi", seed=2)

    pairs = read_ucf101(root, lists, 1)
    assert [label for _, label in pairs["train"]] == ["ApplyEyeMakeup", "HandstandPushups"]
    rows = split_rows("ucf101", root, lists, 1)
    train, test = rows["train"], rows["test"]
    assert train[0]["status"] == "ok" and train[0]["num_frames"] > 0 and train[0]["label"] == "ApplyEyeMakeup"
    # A listed file that is not on disk is a recorded skip, not a crash later.
    assert train[1]["status"] == "skip" and "not found" in train[1]["reason"]
    assert test[0]["status"] == "ok" and test[0]["label"] == "HandstandPushups"
    # Written as manifests once, then reused (a resumed run does not probe again).
    paths = split_manifests("ucf101", root, lists, 1, tmp_path / "out")
    back = read_manifest(paths["test"])
    assert back[0]["label"] == "HandstandPushups" and back[0]["path"] == test[0]["path"]
    assert [r["path"] for r in read_manifest(paths["train"], drop_missing=True)] == [train[0]["path"]]
    stamp = paths["train"].stat().st_mtime_ns
    assert split_manifests("ucf101", root, lists, 1, tmp_path / "out")["train"].stat().st_mtime_ns == stamp


def test_ucf101_unknown_class_and_bad_fold_fail_clearly(tmp_path):
    (tmp_path / "classInd.txt").write_text("1 Archery\n")
    (tmp_path / "trainlist01.txt").write_text("Bowling/v_Bowling_g01_c01.avi 2\n")
    (tmp_path / "testlist01.txt").write_text("")
    with pytest.raises(SplitError, match="Bowling"):
        read_ucf101(tmp_path, tmp_path, 1)
    with pytest.raises(SplitError, match="fold 4"):
        read_ucf101(tmp_path, tmp_path, 4)


def test_hmdb51_ids_select_train_test_and_unused(tmp_path, clip_factory):
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a_brush_hair_0.avi 1 \nb_brush_hair_1.avi 2 \nc_brush_hair_2.avi 0 \n")
    (splits / "brush_hair_test_split2.txt").write_text("a_brush_hair_0.avi 2 \n")
    (splits / "pick_test_split1.txt").write_text("d_pick_0.avi 1 \n")
    pairs = read_hmdb51(tmp_path / "hmdb51", splits, 1)
    assert [(p.name, label) for p, label in pairs["train"]] == [("a_brush_hair_0.avi", "brush_hair"),
                                                                ("d_pick_0.avi", "pick")]
    assert [(p.parent.name, p.name) for p, _ in pairs["test"]] == [("brush_hair", "b_brush_hair_1.avi")]
    assert [p.name for p, _ in read_hmdb51(tmp_path / "hmdb51", splits, 2)["test"]] == ["a_brush_hair_0.avi"]
    (splits / "pick_test_split1.txt").write_text("d_pick_0.avi 7\n")
    with pytest.raises(SplitError, match="pick_test_split1.txt:1"):
        read_hmdb51(tmp_path, splits, 1)


def test_esc50_fold_is_test_and_audio_only_rows_are_usable(tmp_path):
    root = tmp_path / "ESC-50-master"
    (root / "meta").mkdir(parents=True)
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for i, (fold, category, tone) in enumerate([(1, "dog", 300.0), (2, "rain", 900.0), (3, "dog", 320.0)]):
        name = f"{fold}-{1000 + i}-A-{i}.wav"
        _write_wav(root / "audio" / name, tone=tone)
        lines.append(f"{name},{fold},{i},{category},False,{1000 + i},A")
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
    rows = split_rows("esc50", root, None, fold=2)
    assert [r["label"] for r in rows["test"]] == ["rain"]
    assert [r["label"] for r in rows["train"]] == ["dog", "dog"]
    row = rows["test"][0]
    assert row["status"] == "ok" and row["has_audio"] and row["video_codec"] is None
    assert row["duration"] == pytest.approx(0.5, abs=0.01) and row["audio_silent"] is False
    with pytest.raises(SplitError, match="fold 6"):
        split_rows("esc50", root, None, fold=6)
