"""xdc.data.prepare and xdc.data.transcode (`xdc prepare`): training copies of real clips (size,
rotation, keyframes, audio), resuming, one prepare per folder, a full disk, never a file outside --out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import on_a_small_disk, subprocess_env

from xdc.cli import main as xdc_main
from xdc.data.encode import write_video
from xdc.data.manifest import read_manifest, write_manifest
from xdc.data.manifest_csv import ManifestError
from xdc.data.prepare import output_path, prepare_manifest
from xdc.data.scan import probe_file, scan_paths
from xdc.data.transcode import PrepareOptions, output_size

# Rotation, Xvid with packed B-frames in AVI + mp3, VP9 + silent Opus without duration, VFR phone clip.
SHARED_PICKS = ["decord__video_90.mov", "mmaction2__test.avi", "moviepy__no_duration.webm",
                "moviepy__fire2.mp4"]


def _keyframe_gaps_and_order(path: Path) -> tuple[float, bool]:
    """Largest gap between keyframes (s) and whether packets come in display order (no B-frames)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        keys = [float(p.pts * p.time_base) for p in packets if p.is_keyframe]
        pts = [p.pts for p in packets]
    gaps = np.diff(keys + [float(packets[-1].pts * packets[-1].time_base)])
    return float(gaps.max()), pts == sorted(pts)


def _first_frame(path: Path, width: int | None = None, height: int | None = None) -> np.ndarray:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return frame.to_ndarray(format="rgb24", width=width, height=height).astype(np.float32)


@pytest.fixture(scope="module")
def prepared(shared_videos, tmp_path_factory):
    root = tmp_path_factory.mktemp("prepare")
    rows = scan_paths([shared_videos / name for name in SHARED_PICKS], progress=False)
    for row in rows:
        row["label"] = Path(row["path"]).stem.split("__")[0]
    (root / "empty.mp4").write_bytes(b"")
    rows += scan_paths([root / "empty.mp4"], progress=False)
    source = write_manifest(rows, root / "source.csv")
    summary = prepare_manifest(source, root / "out", workers=2, progress=False)
    return root, {Path(r["path"]).name: r for r in read_manifest(source)}, summary


def test_prepared_copies_are_training_friendly(prepared):
    root, sources, summary = prepared
    assert (summary["files"], summary["done"], summary["failed"], summary["carried_skips"]) == (4, 4, 0, 1)
    new = {Path(r["path"]).name: r for r in read_manifest(summary["manifest"])}
    assert new["empty.mp4"]["status"] == "skip" and new["empty.mp4"]["reason"] == "zero bytes"
    for name in SHARED_PICKS:
        src = sources[name]
        out = new[name if name.endswith(".mp4") else name + ".mp4"]
        assert out["status"] == "ok" and out["reason"] is None, name
        assert Path(out["path"]).parent == root / "out"
        assert out["video_codec"] == "h264" and out["rotation"] == 0, name
        assert min(out["width"], out["height"]) == 128 and out["width"] % 2 == 0 and out["height"] % 2 == 0
        # Aspect kept (within even-size rounding), and portrait stays portrait after rotation.
        assert out["width"] / out["height"] == pytest.approx(src["width"] / src["height"], rel=0.02), name
        assert out["duration"] == pytest.approx(src["duration"], abs=0.15), name
        assert abs(out["num_frames"] - src["num_frames"]) <= 1, name  # timestamps kept (Xvid: 163/164)
        assert out["has_audio"] == src["has_audio"] and out["label"] == src["label"], name
        if out["has_audio"]:
            assert (out["audio_rate"], out["audio_channels"]) == (16000, 1), name
            assert out["audio_silent"] == src["audio_silent"], name
        gap, in_order = _keyframe_gaps_and_order(Path(out["path"]))
        assert gap <= 0.5 + 1.5 / src["fps"], (name, gap)  # a keyframe every ~0.5 s
        assert in_order, name  # no B-frames
    assert new["decord__video_90.mov.mp4"]["height"] > new["decord__video_90.mov.mp4"]["width"]
    assert not list((root / "out").glob(".*.partial"))
    assert "out/" not in (root / "out" / "manifest.csv").read_text().split("\n", 2)[1]  # relative paths


def test_rotation_is_applied_clockwise(prepared, shared_videos):
    _, _, summary = prepared
    out = Path(summary["manifest"]).parent / "decord__video_90.mov.mp4"
    copy = _first_frame(out)
    h, w = copy.shape[:2]
    raw = _first_frame(shared_videos / "decord__video_90.mov", width=h, height=w)  # stored landscape
    clockwise = np.abs(np.rot90(raw, -1) - copy).mean()
    counter = np.abs(np.rot90(raw, 1) - copy).mean()
    assert clockwise < 12 and counter > 2 * clockwise, (clockwise, counter)


def test_resume_reuses_good_copies_and_redoes_broken_ones(prepared):
    root, _, summary = prepared
    broken = Path(summary["manifest"]).parent / "moviepy__fire2.mp4"
    broken.write_bytes(broken.read_bytes()[:200])  # as if a previous run died mid-write
    again = prepare_manifest(root / "source.csv", root / "out", workers=1, progress=False)
    assert (again["reused"], again["done"], again["failed"]) == (3, 1, 0)
    rows = read_manifest(again["manifest"])
    assert [Path(r["path"]).name for r in rows][3:] == ["moviepy__fire2.mp4", "empty.mp4"]  # source order
    assert rows[3]["status"] == "ok" and rows[3]["num_frames"] == 25


def test_failures_become_skip_rows_and_the_batch_goes_on(tmp_path, clip_factory, capsys):
    good = clip_factory("videos/good.mp4", seconds=1.0)
    bad = clip_factory("videos/bad.mp4", seconds=1.0, seed=1)
    rows = scan_paths([tmp_path / "videos"], progress=False)
    bad.write_text("overwritten after the scan\n")  # the manifest says ok, the file is now junk
    write_manifest(rows, tmp_path / "m.csv")
    code = xdc_main(["prepare", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"),
                     "--out-manifest", str(tmp_path / "prepared.csv"), "--workers", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "1 encoded" in printed and "1 failed" in printed and "bad.mp4" in printed
    new = {Path(r["path"]).name: r for r in read_manifest(tmp_path / "prepared.csv")}
    assert new["bad.mp4"]["status"] == "skip" and new["bad.mp4"]["reason"].startswith("re-encode failed")
    assert new["good.mp4"]["status"] == "ok" and Path(new["good.mp4"]["path"]).parent == tmp_path / "out"
    assert good.exists()
    # The id the scan gave (the path under the scanned folder) names the copy too.
    assert [r["id"] for r in rows] == ["bad.mp4", "good.mp4"]
    assert new["good.mp4"]["id"] == "good.mp4" and new["bad.mp4"]["id"] == "bad.mp4"


def test_fps_resampling_and_audio_alignment(tmp_path):
    """A white flash and a beep at the same time stay together through resampling."""
    fps, seconds, flash = 25.0, 3.0, 1.52
    frames = np.full((int(fps * seconds), 96, 160, 3), 40, np.uint8)
    lit = slice(round(flash * fps), round((flash + 0.12) * fps))  # 3 frames: a 10 fps tick lands in it
    frames[lit] = 255
    rate = 44100  # resampled to 16 kHz by prepare
    wave = np.zeros(int(seconds * rate), np.float32)
    beep = slice(round(flash * rate), round((flash + 0.05) * rate))
    wave[beep] = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(beep.stop - beep.start) / rate)
    write_video(tmp_path / "v" / "flash.mp4", frames, fps, wave, rate)
    write_manifest(scan_paths([tmp_path / "v"], progress=False), tmp_path / "m.csv")
    summary = prepare_manifest(tmp_path / "m.csv", tmp_path / "out", options=PrepareOptions(fps=10.0),
                               progress=False)
    row = read_manifest(summary["manifest"])[0]
    assert row["fps"] == pytest.approx(10.0) and abs(row["num_frames"] - 30) <= 1
    assert (row["width"], row["height"]) == (214, 128)
    with av.open(row["path"]) as container:
        brightness = [(f.time, f.to_ndarray(format="gray").mean()) for f in container.decode(video=0)]
    with av.open(row["path"]) as container:
        audio = [(f.time, f.to_ndarray()[0]) for f in container.decode(audio=0)]
    flash_time = max(brightness, key=lambda tb: tb[1])[0]
    samples = np.concatenate([a for _, a in audio])
    onset = audio[0][0] + np.argmax(np.abs(samples) > 0.1) / 16000
    assert onset == pytest.approx(flash, abs=0.02)  # audio kept its timing
    assert flash <= flash_time < flash + 0.12  # the 10 fps tick that falls in the flash shows it


def test_output_size():
    assert output_size(1920, 1080, 128) == (228, 128)
    assert output_size(320, 568, 128) == (128, 228)
    assert output_size(176, 144, 128) == (156, 128)


# ------------------------------------------------------------------------- nothing lost (issue 22)

FRAME_COLUMNS = ("shard", "offset", "size")  # where a sample lies: shard layout, not content


def _small_manifest(folder: Path, clips: int = 6) -> Path:
    from conftest import make_av_manifest

    return make_av_manifest(folder, per_class=clips // 2)


@pytest.mark.parametrize("first, second", [(["--shards"], []), ([], ["--shards"])])
def test_two_prepares_into_one_folder_one_is_refused(shared_videos, tmp_path, capsys, first, second):
    """Issue 22.2: the second prepare (with or without --shards) is refused with one line while the
    first runs; the first loses no row."""
    rows = scan_paths([shared_videos / name for name in SHARED_PICKS], progress=False)
    manifest = write_manifest(rows, tmp_path / "m.csv")
    out = tmp_path / "p"
    running = subprocess.Popen([sys.executable, "-m", "xdc.cli", "prepare", str(manifest), "--out", str(out),
                                "--workers", "1", *first], env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / ".lock").is_file() or f'"pid": {running.pid},' not in (out / ".lock").read_text():
            assert running.poll() is None and time.monotonic() < deadline, "the first prepare never took the folder"
            time.sleep(0.02)
        capsys.readouterr()
        assert xdc_main(["prepare", str(manifest), "--out", str(out), "--workers", "1", *second]) == 2
        err = capsys.readouterr().err
        assert err.strip() == f"xdc prepare: prepare folder {out} in use by PID {running.pid} on " \
                              f"{socket.gethostname()} since " + err.split(" since ", 1)[1].strip()
        assert running.wait(300) == 0, running.stderr.read()
    finally:
        if running.poll() is None:
            running.kill()
    prepared = read_manifest(out / "manifest.csv")
    assert [r["status"] for r in prepared] == ["ok"] * len(rows) and not (out / ".lock").exists()


@pytest.mark.parametrize("shards", [False, True])
def test_full_disk_stops_keeps_what_was_done_and_a_rerun_finishes(tmp_path, shards):
    """Issue 22.3 on a real full disk (a 1 MiB tmpfs, 64 KiB left): the first prepare stops with one
    line naming the path, marks no video `skip` (writes no manifest), keeps its finished copies or
    shards; after freeing space the same command finishes with what a roomy disk gives."""
    mount = tmp_path / "disk"
    manifest = _small_manifest(tmp_path / "clips")
    flags = "--workers 1" + (" --shards --shard-size 1" if shards else "")  # one sample per shard
    command = f"{sys.executable} -m xdc.cli prepare {manifest} --out {mount}/p {flags}"
    script = (f"dd if=/dev/zero of={mount}/filler bs=4k 2>/dev/null; "
              f"truncate -s -64k {mount}/filler; {command}; echo first=$?; test -e {mount}/p/manifest.csv "
              f"&& echo wrote-a-manifest; rm {mount}/filler; {command}; echo second=$?; "
              f"cp {mount}/p/manifest.csv {tmp_path}/full.csv")
    done = on_a_small_disk(mount, "1m", script)
    assert "first=2" in done.stdout and "second=0" in done.stdout, done.stdout + done.stderr
    assert "wrote-a-manifest" not in done.stdout and "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"xdc prepare: the disk holding {mount}/p/") and "is full (No space left on device)" \
        in line and "run the same command again" in line, line
    reused = int(done.stdout.split(" reused")[0].rsplit(" ", 1)[1])
    assert reused >= 1  # what the first run finished was kept

    assert xdc_main(["prepare", str(manifest), "--out", str(tmp_path / "roomy"), *flags.split()]) == 0

    def content(path: Path) -> list[dict]:
        """Rows as written: copies' paths relative to the manifest, shard places left out."""
        rows = [{k: v for k, v in row.items() if k not in FRAME_COLUMNS}
                for row in read_manifest(path, check_files="none")]
        for row in rows if not shards else []:
            row["path"] = os.path.relpath(row["path"], path.parent)
        return rows
    full, expected = content(tmp_path / "full.csv"), content(tmp_path / "roomy" / "manifest.csv")
    assert [r["status"] for r in full] == ["ok"] * len(full)
    assert full == expected


def test_other_settings_are_refused_and_the_same_ones_resume(tmp_path, capsys):
    """Issue 22.5: prepare records its settings (prepare.json, xdc.stamps); copies made with other
    settings are never reused. Piped (not a terminal), it draws no progress bar (issue 21.5)."""
    manifest = _small_manifest(tmp_path / "clips", clips=2)
    out = tmp_path / "p"
    capsys.readouterr()
    assert xdc_main(["prepare", str(manifest), "-o", str(out), "--short-side", "64", "--workers", "1"]) == 0
    assert capsys.readouterr().err == ""  # no bar in a piped log
    copies = sorted(out.rglob("*.mp4"))
    before = [p.stat().st_mtime_ns for p in copies]
    assert xdc_main(["prepare", str(manifest), "-o", str(out), "--short-side", "160", "--fps", "5",
                     "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"xdc prepare: {out} holds work made with other settings "
                                                   f"(fps: None there, 5.0 asked; short_side: 64 there, 160 asked): choose another --out")
    assert [p.stat().st_mtime_ns for p in copies] == before
    assert all(min(r["width"], r["height"]) == 64 for r in read_manifest(out / "manifest.csv"))
    assert xdc_main(["prepare", str(manifest), "-o", str(out), "--short-side", "64", "--workers", "1"]) == 0
    assert "0 encoded, 2 reused" in capsys.readouterr().out
    # Copies without the record (a folder of files, or of an older prepare): settings unknown, refused.
    (out / "prepare.json").unlink()
    assert xdc_main(["prepare", str(manifest), "-o", str(out), "--short-side", "64", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files but no prepare.json" in err
    assert [p.stat().st_mtime_ns for p in copies] == before


def test_o_is_the_output_folder_and_a_manifest_name_there_is_refused(tmp_path, capsys):
    """Issue 21.5: -o/--out is the output folder as in every command; `-o new.csv` (what -o meant
    before) is one line pointing to --out-manifest, not a folder named new.csv."""
    manifest = _small_manifest(tmp_path / "clips", clips=2)
    capsys.readouterr()
    assert xdc_main(["prepare", str(manifest), "--out", str(tmp_path / "p"), "-o", str(tmp_path / "new.csv")]) == 2
    assert "give the new manifest with --out-manifest" in capsys.readouterr().err
    assert not (tmp_path / "new.csv").exists() and not (tmp_path / "p").exists()


def test_shard_size_help_shows_its_default_once():
    from xdc.cli import command_parser

    text = " ".join(command_parser("prepare")[1].format_help().split())
    assert text.count("default: 1GB") == 1 and "(default 1GB)" not in text


def test_prepare_refuses_to_write_outside_out(tmp_path, clip_factory):
    """A manifest path with `..` is normalised: the copy lands under --out, never beside it."""
    clip_factory("data/a/x.mp4", seconds=1.0)
    clip_factory("data/b/y.mp4", seconds=1.0, seed=1)
    rows = list(read_manifest(write_manifest([probe_file(tmp_path / "data/a/x.mp4")], tmp_path / "m.csv")))
    rows.append({**rows[0], "path": str(tmp_path / "data/a/../../data/b/y.mp4")})
    manifest = write_manifest(rows, tmp_path / "data/a/manifest.csv")
    out = tmp_path / "out"
    prepare_manifest(manifest, out, progress=False)
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.mp4") if "data" not in p.parts)
    assert written == [Path("out/a/x.mp4"), Path("out/b/y.mp4")]
    with pytest.raises(ManifestError, match="outside --out"):
        output_path(tmp_path / "elsewhere/z.mp4", tmp_path / "data", out)
    assert output_path(tmp_path / "data/a/../b/y.mp4", tmp_path / "data", out) == out / "b/y.mp4"
