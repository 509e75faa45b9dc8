"""xdc.training.run_folder: the run folder's lock (a second run is refused at once, naming the
holder; both kinds of lock), what killed writes left is cleared and nothing of the user's, a --out
that is a file or a folder of other files is refused with one line. Through `xdc pretrain`, in this
process and as real processes killed mid-save. (Taking the folder on every rank: test_resume.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import SMALL, TINY, assert_user_error, cli, subprocess_env

from xdc.checkpoint import load_checkpoint
from xdc.training.run_folder import RunFolder, RunFolderError


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
