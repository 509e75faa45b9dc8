"""xdc.data.manifest and its CSV reader xdc.data.manifest_csv: typed round trip, relative paths,
missing files, atomic writes, usable rows."""

from __future__ import annotations

import csv
import logging
import pickle
import shutil

import numpy as np
import pytest

from xdc.data import manifest as manifest_module
from xdc.data import manifest_csv
from xdc.data.manifest import (
    Manifest,
    describe_dropped,
    empty_row,
    read_manifest,
    usable_rows,
    write_manifest,
)
from xdc.data.manifest_csv import COLUMNS, ManifestError
from xdc.data.shards import ShardMember


def _row(path, **values):
    row = empty_row(path)
    row.update(values)
    return row


def test_columns_match_design_contract():
    assert ",".join(COLUMNS) == ("path,status,reason,duration,fps,num_frames,width,height,rotation,"
                                 "video_codec,has_audio,audio_rate,audio_channels,audio_silent,label,id")


def test_round_trip_types_and_relative_paths(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.mp4").write_bytes(b"x")
    (folder / "b.mp4").write_bytes(b"x")
    rows = [
        _row(folder / "sub" / "a.mp4", duration=10.01, fps=29.97003, num_frames=300, width=426,
             height=240, rotation=90, video_codec="h264", has_audio=True, audio_rate=48000,
             audio_channels=2, audio_silent=False, label="cooking"),
        _row(folder / "b.mp4", status="skip", reason="no video stream", has_audio=False),
    ]
    manifest = write_manifest(rows, folder / "m.csv")
    with open(manifest, newline="") as handle:
        lines = list(csv.reader(handle))
    assert tuple(lines[0]) == COLUMNS
    assert lines[1][0] == "sub/a.mp4"  # written relative to the manifest's folder
    assert lines[1][COLUMNS.index("has_audio")] == "true"
    assert lines[2][COLUMNS.index("duration")] == ""  # None is an empty cell

    # The folder can move as a whole: relative paths resolve against the manifest's new place.
    moved = shutil.move(str(folder), str(tmp_path / "moved"))
    back = read_manifest(f"{moved}/m.csv")
    assert back[0]["path"] == str(tmp_path / "moved" / "sub" / "a.mp4")
    assert back[0]["duration"] == pytest.approx(10.01) and isinstance(back[0]["duration"], float)
    assert back[0]["num_frames"] == 300 and isinstance(back[0]["num_frames"], int)
    assert back[0]["has_audio"] is True and back[0]["audio_silent"] is False
    assert back[0]["label"] == "cooking" and back[0]["rotation"] == 90
    assert back[1]["status"] == "skip" and back[1]["reason"] == "no video stream"
    assert back[1]["duration"] is None and back[1]["label"] is None and back[1]["has_audio"] is False


def test_missing_files_raise_listing_them(tmp_path):
    rows = [_row(tmp_path / f"gone_{i:02d}.mp4") for i in range(13)]
    (tmp_path / "here.mp4").write_bytes(b"x")
    rows.append(_row(tmp_path / "here.mp4"))
    manifest = write_manifest(rows, tmp_path / "m.csv")
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    message = str(info.value)
    assert "13 of 14" in message and "gone_00.mp4" in message and "and 3 more" in message
    assert "here.mp4" not in message


def test_drop_missing_warns_with_count(tmp_path, caplog):
    (tmp_path / "here.mp4").write_bytes(b"x")
    manifest = write_manifest([_row(tmp_path / "gone.mp4"), _row(tmp_path / "here.mp4")],
                              tmp_path / "m.csv")
    with caplog.at_level(logging.WARNING):
        rows = read_manifest(manifest, drop_missing=True)
    # The row stays, as a skip row saying why, so that usable_rows reports it.
    assert [(r["path"], r["status"], r["reason"]) for r in rows] == [
        (str(tmp_path / "gone.mp4"), "skip", "file not found"), (str(tmp_path / "here.mp4"), "ok", None)]
    assert "dropped 1 of 2" in caplog.text
    kept, dropped = usable_rows(rows, require_audio=False)
    assert [r["path"] for r in kept] == [str(tmp_path / "here.mp4")]
    assert dropped == {"skip: file not found": 1}


def test_write_is_atomic(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    manifest = write_manifest([_row(tmp_path / "a.mp4", label="first")], tmp_path / "m.csv")
    before = manifest.read_text()
    with pytest.raises(ManifestError):  # the second row has no path: fails half-way through
        write_manifest([_row(tmp_path / "a.mp4", label="second"), _row(None)], manifest)
    assert manifest.read_text() == before  # the old manifest is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "m.csv"]  # no temp left


def test_bad_cells_and_columns_are_clear_errors(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    bad_bool = tmp_path / "bad.csv"
    bad_bool.write_text(",".join(COLUMNS) + "\na.mp4,ok,,1.0,,,,,,,maybe,,,,\n")
    with pytest.raises(ManifestError, match=r"bad.csv:2: column 'has_audio'"):
        read_manifest(bad_bool)
    no_status = tmp_path / "nostatus.csv"
    no_status.write_text("path\na.mp4\n")
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(no_status)
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "absent.csv")


def test_usable_rows_counts_reasons():
    rows = [
        _row("a", has_audio=True, audio_silent=False),
        _row("b", has_audio=False),
        _row("c", has_audio=True, audio_silent=True),
        _row("d", status="skip", reason="zero bytes"),
        _row("e", status="skip", reason="zero bytes"),
    ]
    kept, dropped = usable_rows(rows, require_audio=True)
    assert [r["path"] for r in kept] == ["a"]
    assert dropped == {"no audio": 1, "silent audio": 1, "skip: zero bytes": 2}
    assert describe_dropped(dropped).startswith("4 dropped (2 skip: zero bytes")
    kept, dropped = usable_rows(rows, require_audio=False)
    assert [r["path"] for r in kept] == ["a", "b", "c"] and dropped == {"skip: zero bytes": 2}
    assert describe_dropped({}) == "none dropped"


def _csv(path, lines, encoding="utf-8"):
    path.write_text(",".join(COLUMNS) + "\n" + "".join(line + "\n" for line in lines), encoding=encoding)
    return path


def _line(path, status="ok", reason="", duration="1.0", label=""):
    return f"{path},{status},{reason},{duration},,,,,,,true,,,false,{label}"


def test_skip_rows_are_not_checked_and_links_keep_their_path(tmp_path):
    """Issue 10: a scan manifest with a dangling symlink (a skip row) is accepted, and a row
    reached through a symlink keeps the link's path, not its target's."""
    (tmp_path / "real.mp4").write_bytes(b"x")
    (tmp_path / "link.mp4").symlink_to(tmp_path / "real.mp4")
    (tmp_path / "dangling.mp4").symlink_to(tmp_path / "gone.mp4")
    rows = [_row(tmp_path / "link.mp4"), _row(tmp_path / "dangling.mp4", status="skip", reason="not found")]
    back = read_manifest(write_manifest(rows, tmp_path / "m.csv"))
    assert [r["path"] for r in back] == [str(tmp_path / "link.mp4"), str(tmp_path / "dangling.mp4")]
    assert (tmp_path / "m.csv").read_text().splitlines()[1].startswith("link.mp4,")


def test_bom_and_latin1(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    bom = _csv(tmp_path / "bom.csv", [_line("a.mp4")], encoding="utf-8-sig")
    assert bom.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [r["path"] for r in read_manifest(bom)] == [str(tmp_path / "a.mp4")]
    (tmp_path / "caf\u00e9.mp4").write_bytes(b"x")
    latin = _csv(tmp_path / "latin.csv", [_line("caf\u00e9.mp4")], encoding="latin-1")
    with pytest.raises(ManifestError, match="not UTF-8") as info:
        read_manifest(latin)
    assert "\n" not in str(info.value)


def test_bad_durations_become_skip_rows(tmp_path, caplog):
    names = ["nan", "neg", "inf", "huge", "zero", "fine", "unknown", "skipped"]
    for name in names:
        (tmp_path / f"{name}.mp4").write_bytes(b"x")
    lines = [_line("nan.mp4", duration="nan"), _line("neg.mp4", duration="-3"), _line("inf.mp4", duration="inf"),
             _line("huge.mp4", duration="1e12"), _line("zero.mp4", duration="0"), _line("fine.mp4", duration="2.5"),
             _line("unknown.mp4", duration=""),
             _line("skipped.mp4", status="skip", reason="zero bytes", duration="nan")]
    with caplog.at_level(logging.WARNING):
        rows = read_manifest(_csv(tmp_path / "m.csv", lines))
    by_name = {r["path"].rsplit("/", 1)[1][:-4]: r for r in rows}
    for name in ("nan", "neg", "inf", "huge", "zero"):
        assert by_name[name]["status"] == "skip" and by_name[name]["reason"].startswith("bad duration")
        assert by_name[name]["duration"] is None
    assert by_name["fine"]["status"] == "ok" and by_name["fine"]["duration"] == 2.5
    assert by_name["unknown"]["status"] == "ok" and by_name["unknown"]["duration"] is None
    assert by_name["skipped"]["reason"] == "zero bytes"  # a skip row keeps its own reason
    assert "5 row(s) with a bad duration" in caplog.text
    kept, dropped = usable_rows(rows, require_audio=True)
    assert len(kept) == 2 and sum(dropped.values()) == 6


def test_duplicate_paths_are_removed_with_a_warning(tmp_path, caplog):
    for name in ("a", "b"):
        (tmp_path / f"{name}.mp4").write_bytes(b"x")
    lines = [_line("a.mp4", label="x"), _line("b.mp4"), _line("./a.mp4", label="y"), _line(str(tmp_path / "b.mp4"))]
    with caplog.at_level(logging.WARNING):
        rows = read_manifest(_csv(tmp_path / "m.csv", lines))
    assert [(r["path"], r["label"]) for r in rows] == [(str(tmp_path / "a.mp4"), "x"), (str(tmp_path / "b.mp4"), None)]
    assert "2 duplicate row(s) removed" in caplog.text


def test_duplicates_are_found_across_chunks_of_other_widths(tmp_path, monkeypatch, caplog):
    """A manifest is parsed in chunks, each as wide as its longest path: a path seen again after
    a longer one is still a duplicate."""
    names = ["a1.mp4", "a_much_longer_name_than_the_first_one.mp4", "a1.mp4"]
    for name in names[:2]:
        (tmp_path / name).write_bytes(b"x")
    manifest = _csv(tmp_path / "m.csv", [_line(name) for name in names])
    monkeypatch.setattr(manifest_csv, "CHUNK_BYTES", 100)
    with caplog.at_level(logging.WARNING):
        rows = read_manifest(manifest)
    assert [r["path"] for r in rows] == [str(tmp_path / n) for n in names[:2]]
    assert "1 duplicate row(s) removed" in caplog.text


def test_check_files_modes(tmp_path, monkeypatch):
    (tmp_path / "here.mp4").write_bytes(b"x")
    lines = [_line("here.mp4")] + [_line(f"gone_{i}.mp4") for i in range(30)]
    manifest = _csv(tmp_path / "m.csv", lines)
    assert len(read_manifest(manifest, check_files="none")) == 31  # found later: a skipped sample
    with pytest.raises(ManifestError, match="check_files must be"):
        read_manifest(manifest, check_files="some")
    monkeypatch.setattr(manifest_module, "SAMPLE_ABOVE", 10)  # auto samples above 10 ok rows...
    monkeypatch.setattr(manifest_module, "SAMPLE_SIZE", 5)  # ... 5 of them
    with pytest.raises(ManifestError, match=r"5 of 5 file\(s\) checked \(a sample of 5 of the 31 ok rows\)") as info:
        read_manifest(manifest)
    assert "gone_" in str(info.value) and "--drop-missing" in str(info.value)
    with pytest.raises(ManifestError, match="30 of 31 file"):
        read_manifest(manifest, check_files="all")
    rows = read_manifest(manifest, check_files="sample", drop_missing=True)  # dropping checks them all
    assert int((rows.columns["status"] == rows.code("status", "ok")).sum()) == 1


def test_manifest_columns_behave_like_rows(tmp_path):
    """The columnar form gives back the same row dicts as the rows it was made of."""
    rows = [_row(f"/v/{i}.mp4", duration=1.5 + i, fps=25.0, num_frames=10 * i, width=320, height=240,
                 rotation=0, video_codec="h264", has_audio=bool(i % 2), audio_rate=16000, audio_channels=1,
                 audio_silent=False, label=["dog", "cat"][i % 2]) for i in range(5)]
    rows.append(_row("/v/skip.mp4", status="skip", reason="no video stream"))
    manifest = Manifest.from_rows(rows)
    assert len(manifest) == 6 and list(manifest) == rows and manifest[-1] == rows[-1]
    assert list(manifest[np.array([4, 1])]) == [rows[4], rows[1]] and list(manifest[1:3]) == rows[1:3]
    classes, codes = manifest[:5].class_labels()
    assert classes == ["cat", "dog"] and codes.tolist() == [1, 0, 1, 0, 1]
    assert manifest.text("label").tolist() == ["dog", "cat", "dog", "cat", "dog", None]
    kept, dropped = usable_rows(manifest, require_audio=True)
    assert isinstance(kept, Manifest) and list(kept) == usable_rows(rows, require_audio=True)[0]
    assert dropped == usable_rows(rows, require_audio=True)[1]
    back = read_manifest(write_manifest(manifest, tmp_path / "m.csv"), check_files="none")
    assert list(back) == rows
    with pytest.raises(TypeError, match="read-only"):  # a change to a copy would be lost silently
        back[0]["label"] = "bird"
    assert dict(back[0], label="bird")["label"] == "bird" and pickle.loads(pickle.dumps(back[0])) == rows[0]


def test_shard_columns_round_trip(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "shard-000000.tar").write_bytes(b"x")
    rows = [dict(_row("/src/a.mp4", duration=1.0), shard=str(shards / "shard-000000.tar"), offset=512, size=1000),
            dict(_row("/src/b.mp4", status="skip", reason="re-encode failed"), shard=None, offset=None, size=None)]
    path = write_manifest(rows, tmp_path / "m.csv")
    header, first = path.read_text().splitlines()[:2]
    assert header.endswith(",shard,offset,size") and first.endswith(",shards/shard-000000.tar,512,1000")
    back = read_manifest(path)
    assert back.has_shards and list(back) == rows
    assert back.source(0) == ShardMember(str(shards / "shard-000000.tar"), 512, 1000)
    assert back.source(1) == "/src/b.mp4"
    (shards / "shard-000000.tar").unlink()
    with pytest.raises(ManifestError, match="shard-000000.tar"):
        read_manifest(path)


def test_cells_that_need_quotes_round_trip(tmp_path):
    """Commas, quotes and line breaks in paths and labels (scan lists such file names)."""
    names = ['a,b.mp4', 'say "hi".mp4', 'two\nlines.mp4', 'plain.mp4']
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    rows = [_row(tmp_path / name, duration=1.0, label=f"class, {i}") for i, name in enumerate(names)]
    path = write_manifest(rows, tmp_path / "m.csv")
    with open(path, newline="") as handle:
        assert [line[0] for line in list(csv.reader(handle))[1:]] == names  # what the csv module reads
    back = read_manifest(path)
    assert [r["path"] for r in back] == [str(tmp_path / name) for name in names]
    assert [r["label"] for r in back] == [f"class, {i}" for i in range(4)]


def test_all_rows_unusable_says_why(tmp_path, capsys):
    """Issue 10: not "k_video=3 is more than the 0 usable videos" but why the rows went."""
    from xdc.cli import main as xdc_main

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.mp4").write_bytes(b"x")
    lines = [_line("a.mp4", status="skip", reason="cannot open"), _line("b.mp4", duration="nan"),
             _line("c.mp4", status="skip", reason="cannot open")]
    manifest = _csv(tmp_path / "m.csv", lines)
    assert xdc_main(["pretrain", "--config", "tiny_cpu", "--data", str(manifest), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "0 usable video(s) of 3" in err and "2 skip: cannot open" in err and "bad duration 'nan'" in err
    assert len(err.strip().splitlines()) == 1


def test_ids_kept_as_path_ends_or_text(tmp_path):
    """Ids are stored as "the path's last n characters" when they are (the usual case), as text
    otherwise; rows, the CSV, digests and slices see the same ids either way."""
    ids = ["sub/a.mp4", "other.mp4", None, "é/c.mp4", "./d.mp4", "x/e.mp4", "f.mp4"]
    paths = [tmp_path / "sub" / "a.mp4", tmp_path / "b.mp4", tmp_path / "n.mp4", tmp_path / "é" / "c.mp4",
             "./d.mp4", "./x/e.mp4", "rel/f.mp4"]
    rows = [_row(str(p), duration=1.0, id=i) for p, i in zip(paths, ids)]
    manifest = Manifest.from_rows(rows)
    assert list(manifest) == rows and [r["id"] for r in manifest[::-1]] == ids[::-1]
    codes = manifest.columns["id"]
    assert codes.dtype == np.int32 and codes[0] == len("sub/a.mp4") and codes[1] < 0 and codes[2] == 0
    path = write_manifest(manifest, tmp_path / "m.csv")
    with open(path, newline="") as handle:
        assert [line[-1] for line in list(csv.reader(handle))[1:]] == [i or "" for i in ids]
    back = read_manifest(path, check_files="none")
    assert [r["id"] for r in back] == ids and [r["id"] for r in back[np.array([6, 1, 3])]] == [ids[6], ids[1], ids[3]]
    assert back.columns["id"][0] == len("sub/a.mp4") and back.columns["id"][3] == len("é/c.mp4")
    assert back.columns["id"][1] < 0 and back.columns["id"][6] == len("f.mp4")
    by_hand = tmp_path / "hand.csv"  # "./d.mp4" is read as <folder>/d.mp4: its id no longer ends the path
    by_hand.write_text("path,status,id\n./d.mp4,ok,./d.mp4\n./x/e.mp4,ok,x/e.mp4\n")
    hand = read_manifest(by_hand, check_files="none")
    assert [r["id"] for r in hand] == ["./d.mp4", "x/e.mp4"] and hand[0]["path"] == str(tmp_path / "d.mp4")
    as_text = dict(back.columns, id=np.array([i or "" for i in ids], dtype=manifest_csv.STRINGS))
    assert Manifest(as_text, back.categories).digest() == back.digest()
    assert back.ids().tolist() == [i or "" for i in ids]
