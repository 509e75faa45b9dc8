"""Files written whole or not at all: the one atomic-write helper (checkpoints, summaries, caches,
manifests). A reader, or a run killed mid-write, sees the old file or the new one, never half.
And the one word for a write that failed for want of space: DiskFullError, naming the path."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from xdc.errors import XdcError

# atomic_file's temporary names: mkstemp's `.NAME.` + 8 random characters + `.tmp`.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class DiskFullError(XdcError, OSError):
    """A write failed for want of space (or quota); the message names where. An OSError, so that a
    caller that turns a full disk into its own advice (pretrain: how to resume) sees it as one."""


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, or torch.save's zip writer failing on a short write: it raises a RuntimeError
    "enforce fail at inline_container.cc ..." ("file write failed" to a path, "unexpected pos" to a
    file handle) without the errno."""
    if isinstance(err, OSError):
        return isinstance(err, DiskFullError) or err.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    return isinstance(err, RuntimeError) and "inline_container.cc" in text and \
        ("file write failed" in text or "unexpected pos" in text)


@contextmanager
def disk_full_names(path: str | Path, remedy: str = "free some space and run the same command again") -> Iterator[None]:
    """A full disk inside the block becomes DiskFullError naming `path` (what was being written)
    and `remedy`; other errors, and a DiskFullError raised inside, pass unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        reason = getattr(err, "strerror", None) or "out of space"
        raise DiskFullError(f"the disk holding {path} is full ({reason}): {remedy}") from err


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary handle on a temp file in `path`'s folder, renamed over `path` when the block ends
    without error: a reader (or a run killed mid-write) sees the old file or the new one, never
    half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would (colleagues read runs).
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_file(path) as handle:
        handle.write(text.encode("utf-8"))
    return Path(path)


def holds_files(folder: str | Path, besides: tuple[str, ...] = ()) -> bool:
    """Whether `folder` is a folder holding anything but the names in `besides`: an output folder
    without its settings record that is not empty is someone else's (never written into)."""
    folder = Path(folder)
    return folder.is_dir() and any(p.name not in besides for p in folder.iterdir())


def leftover_temporaries(folder: str | Path) -> list[Path]:
    """Files of `folder` (not below) named as `atomic_file` names its temporary files: what a
    writer killed mid-write leaves. Only the folder's owner, holding its lock, may remove them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TEMPORARY.match(p.name) and p.is_file())
