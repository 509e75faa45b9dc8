"""Tar shards of prepared clips, in WebDataset's layout: `<key>.mp4` and `<key>.json` per sample.

A sharded manifest row points into a shard with three extra columns: `shard` (the tar file),
`offset` (byte offset of the member's data in it) and `size` (its length in bytes). A sample is
read by opening the shard at that offset: `open_member` gives PyAV a bounded, seekable file
object over those bytes, so seeking (temporal jittering, several windows in one pass) works as on
a plain file. Any tar tool or WebDataset reads the same shards.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHARD_PATTERN = "shard-{:06d}.tar"
BLOCK = tarfile.BLOCKSIZE  # tar pads each member's data to 512 bytes


@dataclass(frozen=True)
class ShardMember:
    """Where a sample's bytes lie: `size` bytes at `offset` of the tar file `shard`."""

    shard: str
    offset: int
    size: int

    def __str__(self) -> str:  # how errors and skip reasons name it
        return f"{self.shard}@{self.offset}+{self.size}"


class MemberReader(io.RawIOBase):
    """Read-only, seekable view of bytes [offset, offset + size) of an open file."""

    def __init__(self, member: ShardMember):
        super().__init__()
        self._file = open(member.shard, "rb", buffering=0)
        self._start, self._size, self._pos = member.offset, member.size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = min(max(0, base + offset), self._size)
        return self._pos

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._size - self._pos)
        if count <= 0:
            return 0
        data = os.pread(self._file.fileno(), count, self._start + self._pos)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def open_member(member: ShardMember) -> io.BufferedReader:
    """A buffered file object over the member's bytes (what `av.open` takes)."""
    return io.BufferedReader(MemberReader(member), buffer_size=256 * 1024)


class ShardWriter:
    """Appends samples to one tar file (written as `NAME.partial`, renamed by `close`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._tar = tarfile.open(self.partial, "w", format=tarfile.USTAR_FORMAT)

    @property
    def bytes_written(self) -> int:
        return self._tar.offset

    def add(self, key: str, video: Path, meta: dict[str, Any]) -> tuple[int, int]:
        """Add `<key>.mp4` (the file `video`) and `<key>.json`; returns the mp4's (offset, size)."""
        size = os.path.getsize(video)
        with open(video, "rb") as handle:
            self._tar.addfile(self._info(f"{key}.mp4", size), handle)
        # The data ends the member: its start is the padded data size back from the tar's end.
        offset = self._tar.offset - -(-size // BLOCK) * BLOCK
        text = json.dumps(meta).encode()
        self._tar.addfile(self._info(f"{key}.json", len(text)), io.BytesIO(text))
        return offset, size

    @staticmethod
    def _info(name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        return info

    def close(self) -> Path:
        self._tar.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        self._tar.close()
        self.partial.unlink(missing_ok=True)


def parse_size(text: str) -> int:
    """`1GB`, `500MB`, `64M`, `1048576` -> bytes (powers of 1024)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    cleaned = str(text).strip().upper().removesuffix("B").removesuffix("I")
    number = cleaned.rstrip("KMGT")
    unit = cleaned[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise ValueError(f"not a size: {text!r} (e.g. 1GB, 500MB)") from None
    if value < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return int(value)
