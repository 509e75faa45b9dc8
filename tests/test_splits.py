"""xdc.evaluation.splits: standard split readers on small split files written here in the datasets'
real formats."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from xdc.data.manifest import read_manifest, usable_rows
from xdc.evaluation.splits import (SplitError, read_hmdb51, read_ucf101, split_manifests, split_rows,
                                   stratified_split)
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
    # The missing file is a skip row (never stat'ed again), which usable_rows leaves out.
    kept, dropped = usable_rows(read_manifest(paths["train"], drop_missing=True), require_audio=False)
    assert [r["path"] for r in kept] == [train[0]["path"]] and sum(dropped.values()) == 1
    stamp = paths["train"].stat().st_mtime_ns
    assert split_manifests("ucf101", root, lists, 1, tmp_path / "out")["train"].stat().st_mtime_ns == stamp
    # Another dataset folder into the same --out: refused, not answered with the first folder's rows.
    from xdc.stamps import SettingsMismatch
    shutil.copytree(root, tmp_path / "UCF-copy")
    with pytest.raises(SettingsMismatch, match=r"\(root: \S+ there, \S+UCF-copy asked\)"):
        split_manifests("ucf101", tmp_path / "UCF-copy", lists, 1, tmp_path / "out")


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


# Copies of the two splits `stratified_split` replaced (finetune's `hold_out`, the demo's
# `probe_split`, as of commit 14ecb98): the demo's numbers and resumed fine-tuning runs depend on
# getting the very same rows for the same seed.
def _old_hold_out(rows, fraction, seed):
    rng = np.random.default_rng(seed)
    by_class = {}
    for i, row in enumerate(rows):
        by_class.setdefault(row["label"], []).append(i)
    val = set()
    for label in sorted(by_class):
        members = by_class[label]
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        val.update(int(i) for i in rng.permutation(members)[:count])
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]


def _old_probe_split(rows, val_fraction, test_fraction, seed):
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    by_class = {}
    for row in rows:
        by_class.setdefault(row["label"], []).append(row)
    for label in sorted(by_class):
        members = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        n_val = max(1, round(val_fraction * len(members)))
        n_test = max(1, round(test_fraction * len(members)))
        if len(members) < n_val + n_test + 1:
            raise SystemExit("too few")
        parts["val"] += members[:n_val]
        parts["test"] += members[n_val:n_val + n_test]
        parts["train"] += members[n_val + n_test:]
    return parts


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_split_draws_the_rows_the_old_splits_drew(seed):
    rng = np.random.default_rng(100 + seed)
    # Classes of 1 to 12 videos, shuffled together, labels as digits (the demo's) and names.
    labels = [str(c) for c in range(10) for _ in range(c + 3)] + ["x"] + ["yy"] * 2
    rows = [{"path": f"v{i}.mp4", "label": label} for i, label in enumerate(rng.permutation(labels))]
    for fraction in (0.1, 0.25, 0.5, 0.9):
        parts = stratified_split([r["label"] for r in rows], {"val": fraction}, seed)
        train, val = _old_hold_out(rows, fraction, seed)
        assert [rows[i] for i in sorted(parts["val"])] == val
        assert [rows[i] for i in sorted(parts["train"])] == train
    big = [r for r in rows if r["label"] not in ("x", "yy", "0")]  # classes of 4+ videos
    for fractions in ((0.2, 0.2), (0.25, 0.1), (0.1, 0.3)):
        parts = stratified_split([r["label"] for r in big], dict(zip(("val", "test"), fractions)), seed,
                                 strict=True)
        old = _old_probe_split(big, *fractions, seed)
        assert list(parts) == list(old) == ["train", "val", "test"]
        assert {name: [big[i] for i in part] for name, part in parts.items()} == old  # same order too


def test_stratified_split_small_classes_give_less_or_raise():
    labels = ["a"] * 10 + ["b"] * 2 + ["c"]
    parts = stratified_split(labels, {"val": 0.2, "test": 0.2}, seed=0)
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(len(labels)))
    assert [labels[i] for i in parts["val"]] == ["a", "a", "b"]  # b: one left for train, so no test
    assert [labels[i] for i in parts["test"]] == ["a", "a"]
    assert [labels[i] for i in parts["train"]].count("c") == 1
    with pytest.raises(SplitError, match="class 'b' has 2 videos: too few"):
        stratified_split(labels, {"val": 0.2, "test": 0.2}, seed=0, strict=True)
    assert stratified_split(labels, {"val": 0.2}, seed=4) == stratified_split(labels, {"val": 0.2}, seed=4)
    assert stratified_split(labels, {"val": 0.2}, seed=4) != stratified_split(labels, {"val": 0.2}, seed=5)
