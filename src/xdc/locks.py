"""One process per output folder: the lock of pretrain's run folder and of prepare's output.

The lock is a file, `FOLDER/.lock`, holding its holder's host, PID and start time (JSON). Two
ways to hold it, by filesystem (docs/SCALE.md, "Which lock"):
- `flock` (local disks, NFS v4, Lustre mounted with `-o flock`): the OS drops the lock when the
  holder dies, however it dies, so a lock is never stale;
- where `flock` is not supported (Lustre without `-o flock`, some FUSE mounts: ENOSYS, EOPNOTSUPP,
  ENOLCK), the file itself is the lock: created with O_EXCL, removed when the holder ends. A holder
  killed with SIGKILL, or a node that died, leaves it behind; it is then never taken over silently:
  the error names the holder and the `rm` that clears it (on the holder's own host, only once its
  PID has ended).
`XDC_LOCK=file` picks the second way everywhere (tests, or a filesystem whose flock is not shared
between nodes).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shlex
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from xdc.errors import XdcError

LOCK_NAME = ".lock"
MODE_VARIABLE = "XDC_LOCK"  # "file": the O_EXCL lock file even where flock works
# What flock raises on filesystems that do not support it.
FLOCK_UNSUPPORTED = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOLCK, errno.EINVAL}


class LockError(XdcError):
    """Another process holds the folder, or a lock file its holder left behind must be removed."""


def lock_path(folder: str | Path) -> Path:
    return Path(folder) / LOCK_NAME


@contextmanager
def folder_lock(folder: str | Path, what: str = "folder") -> Iterator[Path]:
    """Hold `folder` (which must exist) for this process until the block ends; yields the lock
    file. LockError names the holder when another process holds it (`what` names the folder's
    kind in messages: "run folder", "prepare folder")."""
    path = lock_path(folder)
    if os.environ.get(MODE_VARIABLE, "").lower() != "file":
        try:
            handle = _flock(path, what)
        except OSError as err:
            if err.errno not in FLOCK_UNSUPPORTED:
                raise
        else:
            try:
                yield path
            finally:
                path.unlink(missing_ok=True)  # before the unlock: a newcomer finds no file or a new one
                os.close(handle)
            return
    record = _create_exclusive(path, what)
    try:
        yield path
    finally:
        if _read_record(path) == record:  # still ours (nobody removed it by hand and took the folder)
            path.unlink(missing_ok=True)


def _holder_record(mode: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "lock": mode}


def _flock(path: Path, what: str) -> int:
    """An open descriptor of `path`, flock'ed; OSError (ENOSYS...) where flock is unsupported, the
    file removed again if this call created it (the O_EXCL lock that follows must find none)."""
    while True:
        try:
            handle, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            try:
                handle, created = os.open(path, os.O_RDWR), False
            except FileNotFoundError:  # its holder ended and removed it in between: again
                continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise LockError(_in_use(path, what, _read_record(path))) from None
        except BaseException:
            if created:
                path.unlink(missing_ok=True)
            os.close(handle)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(handle).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder ended and removed the file between our open and flock: again
            os.close(handle)
            continue
        record = _read_record(path)
        if record and record.get("lock") == "file":  # held by a process that uses the file itself
            os.close(handle)
            raise LockError(_file_lock_message(path, what, record))
        os.ftruncate(handle, 0)
        os.pwrite(handle, (json.dumps(_holder_record("flock")) + "\n").encode(), 0)
        return handle


def _create_exclusive(path: Path, what: str) -> dict:
    """Create `path` with O_EXCL holding this process's record (the record), or LockError."""
    record = _holder_record("file")
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise LockError(_file_lock_message(path, what, _read_record(path))) from None
    with os.fdopen(handle, "w") as out:
        out.write(json.dumps(record) + "\n")
        out.flush()
        os.fsync(out.fileno())
    return record


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict | None) -> str:
    if not record:
        return "an unknown process (the lock file is empty or unreadable)"
    return f"PID {record.get('pid')} on {record.get('host')} since {record.get('started')}"


def _in_use(path: Path, what: str, record: dict | None) -> str:
    return (f"{what} {path.parent} in use by {_describe(record)}: wait until that run ends (or stop it), "
            f"or choose another folder")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _file_lock_message(path: Path, what: str, record: dict | None) -> str:
    """Why a lock file found in place is not taken: its holder runs, has ended, or cannot be told."""
    remove = f"rm {shlex.quote(str(path))}"
    here = record is not None and record.get("host") == socket.gethostname()
    if here and isinstance(record.get("pid"), int) and not _alive(record["pid"]):
        return (f"{what} {path.parent} has a stale lock: {_describe(record)} held it and has ended "
                f"(killed?). If no other run uses the folder, clear it with `{remove}` and run again")
    if here:
        return _in_use(path, what, record)
    return (f"{what} {path.parent} in use by {_describe(record)} (lock file {path}): wait until that run "
            f"ends; if it has ended without removing it (a node that died), clear it with `{remove}`")
