"""Files written whole or not at all: the one atomic-write helper (checkpoints, summaries, caches,
manifests). A reader, or a run killed mid-write, sees the old file or the new one, never half."""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

# atomic_file's temporary names: mkstemp's `.NAME.` + 8 random characters + `.tmp`.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


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


def leftover_temporaries(folder: str | Path) -> list[Path]:
    """Files of `folder` (not below) named as `atomic_file` names its temporary files: what a
    writer killed mid-write leaves. Only the folder's owner, holding its lock, may remove them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TEMPORARY.match(p.name) and p.is_file())
