"""One process per output folder (xdc.locks, issue 20.3): flock where the filesystem has it, else a
lock file created with O_EXCL (forced here with XDC_LOCK=file: what Lustre without `-o flock` and
some FUSE mounts get); a second run is refused naming the holder, a stale lock file is never taken
over, and the message gives the exact `rm` that clears it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from xdc.locks import LockError, folder_lock, lock_path

HOLD = "import sys, time\nfrom xdc.locks import folder_lock\nwith folder_lock(sys.argv[1], 'run folder'):\n" \
       "    print('held', flush=True)\n    time.sleep(120)\n"
KILLED = "import os, sys\nfrom xdc.locks import folder_lock\nwith folder_lock(sys.argv[1]):\n    os._exit(0)\n"


def python(code: str, folder: Path, mode: str, **kwargs):
    env = {**subprocess_env(), "XDC_LOCK": mode}
    return subprocess.Popen([sys.executable, "-c", code, str(folder)], env=env, text=True,
                            stdout=subprocess.PIPE, **kwargs)


@pytest.mark.parametrize("holder_mode, mode", [("file", "file"), ("file", "flock"), ("flock", "file")])
def test_a_second_process_is_refused_naming_the_holder(tmp_path, monkeypatch, holder_mode, mode):
    """Either lock refuses the other's holder too: a node without flock and one with it, on one folder."""
    holder = python(HOLD, tmp_path, holder_mode)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("XDC_LOCK", mode)
        with pytest.raises(LockError, match=f"run folder {tmp_path} in use by PID {holder.pid} on "
                                            f"{socket.gethostname()} since "):
            with folder_lock(tmp_path, "run folder"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_file_is_said_with_the_rm_that_clears_it(tmp_path, monkeypatch):
    """A holder killed without cleaning up (os._exit, as SIGKILL or a dead node) leaves its lock file:
    the next run is refused, told it is stale and the exact command; after it, the folder is free."""
    monkeypatch.setenv("XDC_LOCK", "file")
    folder = tmp_path / "my run"  # a space: the rm command quotes it
    folder.mkdir()
    killed = python(KILLED, folder, "file")
    killed.wait()
    with pytest.raises(LockError) as refused:
        with folder_lock(folder, "run folder"):
            pass
    message = str(refused.value)
    assert f"PID {killed.pid} on {socket.gethostname()}" in message and "has a stale lock" in message
    command = message.split("`")[1]
    assert command == f"rm {shlex.quote(str(lock_path(folder)))}"
    subprocess.run(command, shell=True, check=True)
    with folder_lock(folder, "run folder"):
        pass


def test_a_lock_file_of_another_host_is_never_taken(tmp_path, monkeypatch):
    """Whether a process on another node lives cannot be told from here: refused, with the rm to run
    once that run is known to have ended; flock does not take it either."""
    record = {"host": "node-17", "pid": 1234, "started": "2026-12-01 10:00:00 +0000", "lock": "file"}
    lock_path(tmp_path).write_text(json.dumps(record))
    for mode in ("file", "flock"):
        monkeypatch.setenv("XDC_LOCK", mode)
        with pytest.raises(LockError, match=r"in use by PID 1234 on node-17 .*ended .*`rm .*\.lock`"):
            with folder_lock(tmp_path):
                pass
    assert json.loads(lock_path(tmp_path).read_text()) == record


def test_flock_takes_over_from_a_dead_flock_holder(tmp_path, monkeypatch):
    """flock's lock dies with its process: the record a killed holder left is no obstacle."""
    monkeypatch.setenv("XDC_LOCK", "flock")
    killed = python(KILLED, tmp_path, "flock")
    killed.wait()
    assert json.loads(lock_path(tmp_path).read_text())["pid"] == killed.pid
    with folder_lock(tmp_path):
        assert json.loads(lock_path(tmp_path).read_text())["pid"] == os.getpid()
    assert not lock_path(tmp_path).exists()


def test_the_lock_is_released_when_the_block_fails(tmp_path, monkeypatch):
    for mode in ("flock", "file"):
        monkeypatch.setenv("XDC_LOCK", mode)
        with pytest.raises(ZeroDivisionError):
            with folder_lock(tmp_path):
                1 / 0
        assert not lock_path(tmp_path).exists()
        with folder_lock(tmp_path):  # free again
            pass


def test_where_flock_is_unsupported_the_lock_file_is_taken(tmp_path, monkeypatch):
    """Lustre without `-o flock` answers flock with ENOSYS (here: flock made to fail so, the one
    stand-in for a filesystem this machine lacks): the O_EXCL lock file is taken, not refused
    because of the file the flock attempt opened; a second taker is refused naming the holder."""
    def unsupported(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setenv("XDC_LOCK", "flock")
    monkeypatch.setattr(fcntl, "flock", unsupported)
    with folder_lock(tmp_path, "run folder"):
        record = json.loads(lock_path(tmp_path).read_text())
        assert record["lock"] == "file" and record["pid"] == os.getpid()
        with pytest.raises(LockError, match=f"run folder {tmp_path} in use by PID {os.getpid()} on "):
            with folder_lock(tmp_path, "run folder"):
                pass
        assert json.loads(lock_path(tmp_path).read_text()) == record  # the refused taker left it
    assert not lock_path(tmp_path).exists()
