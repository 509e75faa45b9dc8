"""Manifest CSV: typed round trip, relative paths, missing files, atomic writes, usable rows."""

from __future__ import annotations

import csv
import logging
import shutil

import pytest

from xdc.data.manifest import (COLUMNS, ManifestError, describe_dropped, empty_row, read_manifest,
                               usable_rows, write_manifest)


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
    assert [r["path"] for r in rows] == [str(tmp_path / "here.mp4")]
    assert "dropped 1 of 2" in caplog.text


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
