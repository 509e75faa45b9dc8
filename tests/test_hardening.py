"""Issue 10 (hardening): bad files, bad settings, hostile checkpoints, kills, a full disk and two runs
in one folder, each through the real command line: a user error is one line `xdc COMMAND: ...` on
stderr with exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from xdc.checkpoint import load_checkpoint
from xdc.cli import main
from xdc.config import resolve_config
from xdc.data.manifest import read_manifest, write_manifest
from xdc.data.scan import probe_file
from xdc.training.run_folder import RunFolder, RunFolderError

REPO = Path(__file__).resolve().parents[1]
TINY = str(resolve_config("tiny_cpu", "pretrain"))
# tiny_cpu made smaller still: one run takes seconds on a loaded 2-core machine.
SMALL = ["iterations=2", "optim.total_epochs=1", "optim.warmup_epochs=0", "optim.epoch_size=8",
         "optim.batch_size=4", "data.short_side=32", "data.crop=32", "model.width=4"]


def cli(capsys, *argv) -> tuple[int, str]:
    """`xdc ARGV` in this process: (exit code, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_user_error(rc: int, err: str, command: str, *words: str) -> str:
    """Exit code 2, no traceback, and the last stderr line is `xdc COMMAND: ...` naming `words`
    (progress bars and warnings may come before it)."""
    assert rc == 2, err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"xdc {command}: "), err
    for word in words:
        assert word in line, line
    return line


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


# ------------------------------------------------------------------------------ bad files

def make_bad_files(folder: Path, good: Path) -> dict[str, Path]:
    """The reliability probe's bad files, made from the real clip `good`."""
    data = good.read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    files = {"zero": folder / "zero.mp4", "truncated": folder / "truncated.mp4", "bitflip": folder / "bitflip.mp4",
             "text": folder / "text.mp4", "random": folder / "random.mp4", "unicode": folder / "vidéo_ü_日本.mp4",
             "newline": folder / "new\nline.mp4", "huge_header": folder / "huge_header.mp4",
             "hls": folder / "playlist.mp4"}
    files["zero"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 4, len(data), 200):
        flipped[i] ^= 0xFF
    files["bitflip"].write_bytes(bytes(flipped))
    files["text"].write_text("this is not a video\n")
    files["random"].write_bytes(rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    files["unicode"].write_bytes(data)
    files["newline"].write_bytes(data)
    # A header claiming 16000×16000 (the avc1 sample entry's width and height fields).
    huge = bytearray(data)
    at = huge.find(b"avc1", huge.find(b"stsd"))  # the sample entry, not the ftyp brand
    assert at > 0
    huge[at + 28:at + 32] = (16000).to_bytes(2, "big") * 2
    files["huge_header"].write_bytes(bytes(huge))
    files["hls"].write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nsegment0.ts\n#EXT-X-ENDLIST\n")
    (folder / "dir.mp4").mkdir()
    return files


@pytest.mark.slow
def test_scan_then_pretrain_over_real_and_bad_files(tmp_path, capsys, clip_factory):
    """Must show: a folder of real clips mixed with the probe's bad files -> `xdc scan` lists every
    file; `xdc pretrain` (tiny) over that manifest finishes and says what it skipped and why. (The
    dangling symlink is left to test_dangling_symlink_row_does_not_stop_pretraining: issue 10 item 1.)"""
    folder = tmp_path / "videos"
    for i in range(6):
        clip_factory(f"videos/real_{i}.mp4", seconds=2.0, seed=i, tone_hz=300.0 + 200 * i)
    clip_factory("videos/one_frame.mp4", seconds=1 / 16, fps=16.0)  # 1 frame of video...
    make_bad_files(folder, folder / "real_0.mp4")
    manifest = tmp_path / "manifest.csv"
    rc, err = cli(capsys, "scan", folder, "-o", manifest, "--workers", 1)
    assert rc == 0, err
    rows = read_manifest(manifest)
    files = {p for p in folder.rglob("*") if p.is_file()}
    assert {Path(r["path"]) for r in rows} == files  # every file, one row each
    status = {Path(r["path"]).name: (r["status"], r["reason"]) for r in rows}
    for name in ("zero.mp4", "truncated.mp4", "text.mp4", "random.mp4", "playlist.mp4"):
        assert status[name][0] == "skip" and status[name][1], name
    for name in ("vidéo_ü_日本.mp4", "new\nline.mp4", "real_3.mp4"):
        assert status[name] == ("ok", None), name

    run = tmp_path / "run"
    capsys.readouterr()
    rc = main(["pretrain", "--config", TINY, "--data", str(manifest), "--out", str(run), *SMALL,
               "cluster.k_video=2", "cluster.k_audio=2"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "Traceback" not in out.err
    skipped = sum(1 for s, _ in status.values() if s == "skip")
    usable = len(rows) - skipped
    assert f"{usable} usable videos, {skipped} dropped (" in out.out, out.out
    assert load_checkpoint(RunFolder(run).last)["iteration"] == 2


def test_dangling_symlink_row_does_not_stop_pretraining(tmp_path, av_manifest):
    from xdc.pretrain import setup

    link = tmp_path / "gone.mp4"
    link.symlink_to(tmp_path / "nowhere.mp4")
    rows = read_manifest(av_manifest) + [probe_file(link)]
    assert rows[-1]["status"] == "skip"
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    args = argparse.Namespace(resume=None, config=TINY, data=manifest, out=tmp_path / "run", method=None,
                              overrides=SMALL)
    cfg, usable, _ = setup(args)
    assert len(usable) == 8
    assert read_manifest(manifest)[-1]["path"] == str(link)  # the link as given, not its target


def test_one_frame_video_with_longer_audio_is_complete(tmp_path):
    """A complete 1-frame video over 2 s of audio is not `truncated`: the container's duration is
    the audio's, the video stream declares its own. (test_scan: a cut file still is.)"""
    from xdc.data.encode import write_video

    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)
    path = write_video(tmp_path / "one_frame.mp4", np.zeros((1, 48, 64, 3), np.uint8), 16.0, wave, 16000)
    row = probe_file(path)
    assert row["status"] == "ok" and row["num_frames"] == 1 and row["has_audio"]
    assert row["reason"] is None and row["duration"] == pytest.approx(2.0, abs=0.1)


# ------------------------------------------------------------------------------ the run folder lock

@pytest.mark.parametrize("lock", ["flock", "file"])
def test_second_run_into_a_held_folder_exits_at_once(tmp_path, capsys, av_manifest, monkeypatch, lock):
    """Both locks (issue 20.3): flock, and the O_EXCL lock file of filesystems without flock."""
    monkeypatch.setenv("XDC_LOCK", lock)
    run = RunFolder(tmp_path / "run")
    with run.locked():
        rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", av_manifest, "--out", run.root, *SMALL)
        assert_user_error(rc, err, "pretrain", f"in use by PID {os.getpid()} on {socket.gethostname()}")
        assert err.count("\n") == 1
        assert not run.config.exists()  # it wrote nothing
        assert json.loads(run.lock_file.read_text())["lock"] == lock
    assert not run.lock_file.exists()  # the holder removes it at its end
    with run.locked():  # a later run can take it
        assert json.loads(run.lock_file.read_text())["pid"] == os.getpid()


def test_the_run_folder_removes_only_its_own_temporary_files(tmp_path):
    """Issue 22.1: what a killed write of the run left goes (atomic_file's names, where the run writes
    them); a user's own hidden `.tmp` files anywhere, even under atomic_file's pattern, stay."""
    run = RunFolder(tmp_path / "run")
    for folder in (run.checkpoints, run.features, run.iteration_dir(1)):
        folder.mkdir(parents=True)
    # Made as atomic_file makes them.
    ours = [Path(tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)[1]) for folder, name in
            [(run.checkpoints, "last.pt"), (run.root, "summary.json"), (run.root, "rows.csv"),
             (run.features, "present.npy"), (run.iteration_dir(1), "labels_video.npy")]]
    (run.root / "docs" / "deep").mkdir(parents=True)
    theirs = [run.root / ".session.tmp", run.root / "docs" / "deep" / ".draft.tmp", run.checkpoints / "notes.tmp",
              Path(tempfile.mkstemp(prefix=".notes.md.", suffix=".tmp", dir=run.root)[1]),
              Path(tempfile.mkstemp(prefix=".draft.", suffix=".tmp", dir=run.root / "docs" / "deep")[1])]
    for path in theirs:
        path.write_text("mine")
    with run.locked():
        assert not any(p.exists() for p in ours)
        assert all(p.read_text() == "mine" for p in theirs)


def test_pretrain_refuses_a_folder_of_other_files(tmp_path, capsys, av_manifest):
    """Issue 22.1: a non-empty --out that holds no run is refused with one line; nothing in it is
    touched or added."""
    folder = tmp_path / "my_project"
    (folder / "docs" / "deep").mkdir(parents=True)
    (folder / "docs" / "deep" / ".draft.tmp").write_text("draft")
    (folder / ".session.tmp").write_text("session")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", av_manifest, "--out", folder, *SMALL)
    line = assert_user_error(rc, err, "pretrain", str(folder), "holds other files and no run", "another --out")
    assert err.strip() == line
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    assert (folder / ".session.tmp").read_text() == "session"


def test_pretrain_into_its_run_folder_keeps_a_users_hidden_files(run_copy, capsys):
    """Issue 22.1, end to end: the run folder also holds a user's `.draft.tmp` files; the relaunched
    command (the run is complete: it says so) leaves them, and clears a killed save's leftover."""
    drafts = [run_copy.root / ".session.tmp", run_copy.root / "docs" / "deep" / ".draft.tmp"]
    drafts[1].parent.mkdir(parents=True)
    for path in drafts:
        path.write_text("mine")
    leftover = Path(tempfile.mkstemp(prefix=".last.pt.", suffix=".tmp", dir=run_copy.checkpoints)[1])
    rc, err = cli(capsys, "pretrain", "--resume", run_copy.root)
    assert rc == 0, err
    assert all(p.read_text() == "mine" for p in drafts) and not leftover.exists()


def test_out_naming_a_file(tmp_path, capsys, av_manifest):
    target = tmp_path / "a_file"
    target.write_text("not a folder")
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", av_manifest, "--out", target, *SMALL)
    assert_user_error(rc, err, "pretrain", str(target), "is a file")
    assert target.read_text() == "not a folder"
    with pytest.raises(RunFolderError):
        with RunFolder(target).locked():
            pass


@pytest.mark.slow
def test_two_runs_at_once_then_kill_during_a_save_then_resume(tmp_path, capsys, av_manifest):
    """Must show: a real `python -m xdc.pretrain` holds the folder, a second one is refused naming
    its PID; SIGKILL while it writes a checkpoint leaves a partial temporary file, which the next
    `--resume` clears before it finishes the run."""
    run = RunFolder(tmp_path / "run")
    first = subprocess.Popen([sys.executable, "-m", "xdc.pretrain", "--config", TINY, "--data", str(av_manifest),
                              "--out", str(run.root), *SMALL, "iterations=1", "optim.total_epochs=2"],
                             env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run.lock_file.is_file() and f'"pid": {first.pid},' in run.lock_file.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", av_manifest, "--out", run.root, *SMALL)
        assert_user_error(rc, err, "pretrain", f"in use by PID {first.pid}")

        partial = []
        while not partial:  # catch it inside a checkpoint write, once there is a last.pt to resume from
            assert first.poll() is None and time.monotonic() < deadline, "no checkpoint write was caught"
            partial = list(run.checkpoints.glob(".*.tmp")) if run.last.is_file() else []
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    assert list(run.checkpoints.glob(".*.tmp")), "the kill left no partial file: nothing to clear"

    rc, err = cli(capsys, "pretrain", "--resume", run.root)
    assert rc == 0, err
    assert not list(run.root.rglob(".*.tmp"))
    assert load_checkpoint(run.last)["iteration"] == 1


@pytest.mark.slow
def test_torchrun_into_a_held_folder_stops_every_rank(tmp_path, av_manifest):
    """Only rank 0 takes the lock; when it cannot, every rank stops (none waits at a barrier)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = RunFolder(tmp_path / "run")
    with run.locked():
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "xdc.pretrain",
                               "--config", TINY, "--data", str(av_manifest), "--out", str(run.root), *SMALL],
                              env={**subprocess_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode != 0
    assert f"xdc pretrain: run folder {run.root} in use by PID {os.getpid()}" in done.stderr
    assert f"xdc pretrain: rank 0 could not take the run folder {run.root}" in done.stderr
    assert not run.config.exists()


# ------------------------------------------------------------------------------ a finished run to damage

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, av_manifest) -> Path:
    """A complete 2-iteration tiny run (pretrain() in this process)."""
    from xdc.config import load_config
    from xdc.data.manifest import usable_rows
    from xdc.pretrain import pretrain

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    rows, _ = usable_rows(read_manifest(av_manifest), require_audio=True)
    pretrain(load_config(TINY, SMALL), rows, run_dir)
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> RunFolder:
    shutil.copytree(finished_run, tmp_path / "run")
    return RunFolder(tmp_path / "run")


@pytest.mark.parametrize("damage", ["truncated", "zero bytes"])
def test_unreadable_last_falls_back_to_the_newest_readable_iteration(run_copy, capsys, damage):
    """last.pt unreadable and iteration_01.pt gone: `--resume` says so, goes on from iteration_00.pt
    (iteration 1 starts from its encoders) and finishes the run."""
    data = run_copy.last.read_bytes()
    run_copy.last.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"")
    run_copy.iteration_checkpoint(1).unlink()
    before = load_checkpoint(run_copy.iteration_checkpoint(0))
    rc, err = cli(capsys, "pretrain", "--resume", run_copy.root)
    assert rc == 0, err
    assert "cannot read checkpoint" in err and "resuming from iteration_00.pt" in err
    last = load_checkpoint(run_copy.last)
    assert last["iteration"] == 2 and load_checkpoint(run_copy.iteration_checkpoint(1))["iteration"] == 1
    summary = json.loads(run_copy.summary.read_text())["iterations"]
    assert [r["iteration"] for r in summary] == [0, 1]
    assert summary[0] == json.loads(before["summary"])[0]  # iteration 0's record kept as it was


def test_last_without_what_resuming_reads_falls_back(run_copy, capsys):
    """A last.pt that loads safely but is no pretraining checkpoint counts as unreadable."""
    torch.save({"video_encoder": {}, "audio_encoder": {}}, run_copy.last)
    rc, err = cli(capsys, "pretrain", "--resume", run_copy.root)
    assert rc == 0, err
    assert "is not a pretraining checkpoint: it has no iteration, epoch, rng, summary" in err
    assert "resuming from iteration_01.pt" in err  # iteration 2 of 2: the run is complete


def test_no_readable_checkpoint_is_one_line(run_copy, capsys):
    for path in [run_copy.last, *run_copy.checkpoints.glob("iteration_*.pt")]:
        path.write_bytes(b"PK\x03\x04 not really")
    rc, err = cli(capsys, "pretrain", "--resume", run_copy.root)
    line = assert_user_error(rc, err, "pretrain", "last.pt", "no readable iteration checkpoint")
    assert err.strip() == line


class Hostile:
    """Unpickling it would run a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_files_refused_at_every_entry_point(run_copy, tmp_path, capsys, av_manifest):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"video_encoder": Hostile(marker), "audio_encoder": Hostile(marker), "config": "x"}, evil)
    finetune = ["--train", av_manifest, "--test", av_manifest, "--config", "tiny", "--out", tmp_path / "ft"]
    cases = [("finetune", ["--checkpoint", evil, *finetune]), ("finetune", ["--weights", evil, *finetune]),
             ("export", [evil, "-o", tmp_path / "x.pth"]), ("filters", [evil, "-o", tmp_path / "f.png"]),
             ("pretrain", ["--config", TINY, "--data", av_manifest, "--out", tmp_path / "r2", *SMALL,
                           f"init_from={evil}"])]
    for command, argv in cases:
        rc, err = cli(capsys, command, *argv)
        assert_user_error(rc, err, command, str(evil))
    # --resume: a hostile last.pt and hostile iteration checkpoints.
    for path in [run_copy.last, *run_copy.checkpoints.glob("iteration_*.pt")]:
        shutil.copy(evil, path)
    rc, err = cli(capsys, "pretrain", "--resume", run_copy.root)
    assert_user_error(rc, err, "pretrain", "last.pt")
    # xdc clusters: a damaged summary.json, then a pickled object array and random bytes as labels.
    run_copy.summary.write_text('{"iterations": [')
    rc, err = cli(capsys, "clusters", run_copy.root, "-o", tmp_path / "report", "--no-media")
    assert_user_error(rc, err, "clusters", str(run_copy.summary))
    labels = run_copy.labels(1, "video")
    np.save(labels, np.array([Hostile(marker)] * 8, dtype=object), allow_pickle=True)
    rc, err = cli(capsys, "clusters", run_copy.root, "-o", tmp_path / "report", "--no-media")
    assert_user_error(rc, err, "clusters", str(labels))
    labels.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    rc, err = cli(capsys, "clusters", run_copy.root, "-o", tmp_path / "report", "--no-media")
    assert_user_error(rc, err, "clusters", str(labels))
    assert not marker.exists()


def test_out_naming_a_file_in_other_commands(run_copy, tmp_path, capsys):
    """Outside pretrain (whose RunFolder says it itself), an OSError the user fixes is one line."""
    target = tmp_path / "a_file"
    target.write_text("x")
    rc, err = cli(capsys, "clusters", run_copy.root, "-o", target, "--no-media")
    line = assert_user_error(rc, err, "clusters", "File exists", str(target))
    assert err.strip() == line


def test_markdown_cluster_table_escapes_labels():
    from xdc.reports.clusters import markdown_table

    ranked = [{"rank": 1, "cluster": 0, "size": 3, "purity": 1.0, "top": [("a|b\nc", 1.0)]}]
    table = markdown_table(ranked, "video")
    body = table.splitlines()[-1]
    assert body == "| 1 | 0 | 3 | 1.00 | a\\|b c(1.00) |"
    assert body.count("|") - body.count("\\|") == 6  # five cells


# ------------------------------------------------------------------------------ settings and inputs

@pytest.mark.parametrize("override, words", [
    ("data.sample_rate=1", ["data.sample_rate=1", "data.win_ms"]),
    ("data.win_ms=0.01", ["data.win_ms=0.01"]),
    ("data.n_mels=300", ["data.n_mels=300", "257 frequency bins"]),
    ("cluster.pca_dim=33", ["cluster.pca_dim=33", "<= 32"]),  # width 4: 32-d features
    ("device=cuda", ["device=cuda", "device=cpu"]),
])
def test_settings_refused_before_any_work(tmp_path, capsys, av_manifest, override, words):
    if override == "device=cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "run"
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", av_manifest, "--out", out, *SMALL, override)
    line = assert_user_error(rc, err, "pretrain", *words)
    assert err.strip() == line and not out.exists()


def test_a_bad_override_is_blamed_on_the_override(capsys, av_manifest, tmp_path):
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", av_manifest, "--out", tmp_path / "r",
                  "optim.lr=abc")
    line = assert_user_error(rc, err, "pretrain", "bad config (override optim.lr=abc)")
    assert "tiny_cpu" not in line


def test_pca_limit_follows_the_features_clustered():
    from xdc.clustering.handcrafted import (
        audio_descriptor,
        descriptor_sizes,
        video_descriptor,
    )
    from xdc.config import ConfigError, load_config, smallest_feature_size

    assert video_descriptor(torch.rand(2, 1, 3, 4, 16, 16)).shape[1] == descriptor_sizes(40)["video"]
    assert audio_descriptor(torch.rand(2, 1, 1, 40, 9)).shape[1] == descriptor_sizes(40)["audio"]
    assert smallest_feature_size(load_config(TINY, ["model.width=64", "method=cdc"])) == 1024
    hand = ["model.width=64", "cluster.first_features=handcrafted"]
    assert smallest_feature_size(load_config(TINY, hand)) == 120  # 3 × 40 mel bands
    assert smallest_feature_size(load_config(TINY, hand + ["method=cdc"])) == 208 + 120
    with pytest.raises(ConfigError, match="cluster.pca_dim=121"):
        load_config(TINY, hand + ["cluster.pca_dim=121"])
    load_config(TINY, ["cluster.pca_dim=500", "method=rand"])  # RAND clusters nothing


def test_videos_undecodable_after_scan(tmp_path, capsys, clip_factory):
    """Rows that scanned ok but no longer decode: one line saying how many videos had features and
    why the others were skipped."""
    from xdc.data.scan import scan_paths

    paths = [clip_factory(f"v/clip_{i}.mp4", seconds=1.0, seed=i) for i in range(6)]
    manifest = write_manifest(scan_paths([tmp_path / "v"], progress=False), tmp_path / "manifest.csv")
    noise = np.random.default_rng(1).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    for path in paths[2:]:  # 2 of 6 still decode: too few for k = 4
        path.write_bytes(noise)
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", manifest, "--out", tmp_path / "r1", *SMALL,
                  "optim.val_fraction=0.5")
    assert_user_error(rc, err, "pretrain", "only 2 of the 6", "cluster.k_", "clip_")
    for path in paths[:2]:  # none decodes
        path.write_bytes(noise)
    rc, err = cli(capsys, "pretrain", "--config", TINY, "--data", manifest, "--out", tmp_path / "r2", *SMALL,
                  "optim.val_fraction=0.5")
    assert_user_error(rc, err, "pretrain", "no video could be decoded", "6 skipped")


def test_prepare_refuses_to_write_outside_out(tmp_path, clip_factory):
    """A manifest path with `..` is normalised: the copy lands under --out, never beside it."""
    from xdc.data.manifest_csv import ManifestError
    from xdc.data.prepare import output_path, prepare_manifest

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


@pytest.mark.slow
def test_full_disk_says_so_and_keeps_the_last_checkpoint(tmp_path, av_manifest):
    """A 9 MiB tmpfs as the run folder's disk: the run stops with one line saying the disk is full
    and that the last checkpoint is intact, which then loads."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a private tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=9m tmpfs {mount}"],
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here: {probe.stderr.strip()}")
    # The run and a copy-out of last.pt happen inside the private mount namespace.
    script = (f"mount -t tmpfs -o size=9m tmpfs {mount} && {sys.executable} -m xdc.pretrain --config {TINY} "
              f"--data {av_manifest} --out {mount}/run {' '.join(SMALL)} model.width=8; rc=$?; "
              f"cp {mount}/run/checkpoints/last.pt {tmp_path}/last.pt; ls -a {mount}/run/checkpoints; exit $rc")
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                          env=subprocess_env(), timeout=400)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("xdc pretrain: the disk holding") and "is full" in line and "is intact" in line
    assert ".tmp" not in done.stdout  # atomic_file removed its partial file
    assert "video_encoder" in load_checkpoint(tmp_path / "last.pt")


@pytest.mark.parametrize("text", ["", "optim: [lr\n", "just a string\n"])
def test_an_unreadable_recorded_config_is_one_clear_error(tmp_path, text):
    from xdc.config import load_config
    from xdc.training.resume import same_run

    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    run.config.write_text(text)
    with pytest.raises(RunFolderError, match=r"config.yaml is not a readable config: choose another --out"):
        same_run(run, load_config("tiny_cpu"), rows=None)
