"""The manifest's file format: its columns and their types, and the byte-level CSV reader.

A manifest CSV (`COLUMNS`, plus `SHARD_COLUMNS` for a sharded one; docs/DESIGN.md, "Manifest") is
parsed in chunks of whole lines (`CHUNK_BYTES`): separator positions found by numpy, cells
gathered as fixed-width bytes, each distinct text cell decoded and checked once (`ColumnBuilder`); the
csv module only for chunks with quoted cells. `read_csv` gives the typed columns that
`xdc.data.manifest.Manifest` holds; `read_manifest` there is what callers use.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from xdc.errors import XdcError

log = logging.getLogger("xdc.data.manifest")

COLUMNS = ("path", "status", "reason", "duration", "fps", "num_frames", "width", "height",
           "rotation", "video_codec", "has_audio", "audio_rate", "audio_channels", "audio_silent",
           "label", "id")
SHARD_COLUMNS = ("shard", "offset", "size")  # a sharded manifest's rows point into tar shards

FLOAT_COLUMNS = ("duration", "fps")
BOOL_COLUMNS = ("has_audio", "audio_silent")
CODED_COLUMNS = ("status", "reason", "video_codec", "label", "shard")  # few distinct values: int32 codes
# Narrow where the values allow (bytes per video count at 65M videos); other ints are int32.
INT_DTYPES = {"offset": np.int64, "size": np.int64, "width": np.int16, "height": np.int16,
              "rotation": np.int16, "audio_channels": np.int16}
CODE_DTYPES = {"status": np.int8, "video_codec": np.int16}  # other coded columns: int32
STRINGS = np.dtypes.StringDType()
ID_DTYPE = np.int32  # the `id` column's codes (`encode_ids`)
MAX_DURATION = 7 * 24 * 3600.0  # seconds; a longer "video" is a broken header
CHUNK_BYTES = 16 << 20  # bytes parsed at a time: bounds the memory of the cells being parsed


class ManifestError(XdcError, ValueError):
    """A manifest is malformed or points at files that are gone."""


def encode_ids(paths: np.ndarray, ids: np.ndarray, first_other: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(codes, other ids) for the `id` column (`paths`, `ids`: both numpy strings or both UTF-8
    bytes). An id is usually the end of its row's path (`xdc scan` writes the path relative to
    the scanned folder): code n >= 0 stands for the path's last n characters (0: no id), 4 bytes
    a row instead of a second string (~47 bytes a row at 65M rows: the manifest's memory target
    met or missed). Other ids (e.g. prepared copies) get code -1 - k, k counting from
    `first_other`, and are returned in order (`categories["id"]`)."""
    suffix = np.strings.endswith(paths, ids)  # an empty id is a suffix: code 0
    if ids.dtype.kind == "S" and ids.view(np.uint8).max(initial=0) >= 128:  # UTF-8 bytes: count characters
        ids = ids.astype(STRINGS)
    codes = np.strings.str_len(ids).astype(ID_DTYPE)
    others = ids[~suffix].astype(STRINGS)
    codes[~suffix] = -1 - (first_other + np.arange(len(others), dtype=ID_DTYPE))
    return codes, others


def text_cell(value: Any) -> str:
    """A typed value as the text cell `ColumnBuilder` parses (floats exactly)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def quote_cells(cells: np.ndarray) -> np.ndarray:
    """Cells with a comma, quote or line break quoted as the csv module does (rare: in Python)."""
    joined = "".join(cells.tolist())  # one C scan first: almost every column needs no quotes
    if not any(char in joined for char in (",", '"', "\n", "\r")):
        return cells
    special = np.zeros(cells.shape, dtype=bool)
    for char in (",", '"', "\n", "\r"):
        special |= np.strings.find(cells, char) >= 0
    if not special.any():
        return cells
    cells = cells.copy()
    cells[special] = ['"' + cell.replace('"', '""') + '"' for cell in cells[special].tolist()]
    return cells


class ColumnBuilder:
    """Typed columns parsed from chunks of cells, one bytes array (numpy `S`) per column.

    numpy parses the numbers; texts (status, codec, sizes as written, labels) go through their
    distinct values, so each distinct cell is decoded and checked once, not once per row."""

    def __init__(self, names: tuple[str, ...], source: str, base: Path | None):
        self.names, self.source, self.base = names, source, base
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        self.categories: dict[str, list[str]] = {name: [] for name in CODED_COLUMNS if name in names}
        self._codes: dict[str, dict[str, int]] = {name: {} for name in self.categories}
        self.rows = 0
        self.bad_durations = 0
        self.hashes: list[np.ndarray] = []
        self.other_ids: list[np.ndarray] = []  # ids that are not the end of their path (encode_ids)
        self.num_other_ids = 0

    def add(self, cells: dict[str, np.ndarray]) -> None:
        first_line = self.rows + 2  # the header is line 1
        for name in self.names:
            self.parts[name].append(self._parse(name, cells[name], first_line))
        self.rows += len(cells["path"])

    def _error(self, line: int, name: str, message: str) -> ManifestError:
        return ManifestError(f"{self.source}:{line}: column {name!r}: {message}")

    def _map(self, name: str, cells: np.ndarray, parse, dtype, first_line: int) -> np.ndarray:
        """`parse` each distinct cell (decoded, stripped; "" for empty) once, then map every row."""
        distinct, inverse = _distinct(cells)
        values = []
        for at, raw in enumerate(distinct.tolist()):
            try:
                values.append(parse(raw.decode("utf-8").strip()))
            except ValueError as err:
                line = first_line + int(np.argmax(inverse == at))
                raise self._error(line, name, str(err)) from None
        return np.array(values, dtype=dtype)[inverse]

    def _parse(self, name: str, cells: np.ndarray, first_line: int) -> np.ndarray:
        if name == "path":
            self._raw_paths = np.strings.strip(cells)  # bytes: numpy's string ops are several times faster
            empty = self._raw_paths == b""
            if empty.any():
                raise ManifestError(f"{self.source}:{first_line + int(np.argmax(empty))}: empty path")
            text = self._raw_paths if self.base is None else _resolve(self._raw_paths, self.base)
            # Hashes find duplicate paths without sorting strings (_drop_duplicates).
            self.hashes.append(_hashes(text))
            return text.astype(STRINGS)  # decodes UTF-8
        if name == "id":  # one per video: a code for the end of the path (parsed first, see COLUMNS)
            # Compared as bytes to the path as written; resolving only adds a prefix, except that it
            # drops a leading "./": such rows keep their id as text (rare).
            raw = np.where(np.strings.startswith(self._raw_paths, b"./"), b"", self._raw_paths)
            codes, others = encode_ids(raw, np.strings.strip(cells), self.num_other_ids)
            if len(others):
                self.other_ids.append(others)
                self.num_other_ids += len(others)
            return codes
        if name in CODED_COLUMNS:
            return self._map(name, cells, lambda text: self._code(name, text) if text else -1,
                             CODE_DTYPES.get(name, np.int32), first_line)
        if name in BOOL_COLUMNS:
            return self._map(name, cells, _parse_bool, np.int8, first_line)
        empty = cells == b""  # no strip (a pass over every cell): float() strips; a blank cell fails below
        try:
            if cells.dtype.itemsize == 8:  # short cells (rates, sizes, durations): each distinct one once
                distinct, inverse = _distinct(cells)
                numbers = np.where(distinct == b"", b"nan", distinct).astype(np.float64)[inverse]
            else:
                numbers = np.where(empty, b"nan", cells).astype(np.float64)
        except ValueError:  # blank cells, or a bad one: the slow way parses them, names the culprit
            empty = np.strings.strip(cells) == b""
            numbers = self._map(name, cells, _parse_number, np.float64, first_line)
        if name == "duration":
            self._check_durations(numbers, cells, empty)
        if name in FLOAT_COLUMNS:
            return numbers
        info = np.iinfo(INT_DTYPES.get(name, np.int32))
        out = np.clip(np.nan_to_num(numbers, nan=info.min), info.min, info.max).astype(info.dtype)
        out[np.isnan(numbers)] = info.min
        return out

    def _check_durations(self, numbers: np.ndarray, cells: np.ndarray, empty: np.ndarray) -> None:
        """A duration given but not finite and positive (or over MAX_DURATION) turns an ok row
        into a skip row with the reason; the cell becomes empty (unknown)."""
        with np.errstate(invalid="ignore"):
            bad = ~empty & ~((numbers > 0) & (numbers <= MAX_DURATION))  # NaN compares False
        if not bad.any():
            return
        status, reasons = self.parts["status"][-1], self.parts["reason"][-1]
        ok = status == self._codes["status"].get("ok", -2)
        for at in np.flatnonzero(bad & ok).tolist():  # few rows: said one by one
            text = cells[at].decode("utf-8", "replace").strip()
            reasons[at] = self._code("reason", f"bad duration {text!r} (needs finite, > 0, <= 7 days)")
            status[at] = self._code("status", "skip")
        self.bad_durations += int((bad & ok).sum())
        numbers[bad] = np.nan

    def _code(self, name: str, value: str) -> int:
        lookup = self._codes[name]
        if value not in lookup:
            lookup[value] = len(lookup)
            self.categories[name].append(value)
        return lookup[value]

    def finish(self) -> tuple[dict[str, np.ndarray], dict]:
        columns = {}
        for name in self.names:
            parts = self.parts.pop(name)
            columns[name] = np.concatenate(parts) if parts else _empty_column(name)
        if self.base is not None and "shard" in self.categories:
            self.categories["shard"] = [c if os.path.isabs(c) else os.path.join(self.base, c)
                                        for c in self.categories["shard"]]
        self.categories["id"] = (np.concatenate(self.other_ids) if self.other_ids
                                 else np.array([], dtype=STRINGS))
        if self.bad_durations:
            log.warning("%s: %d row(s) with a bad duration (NaN, inf, <= 0 or over 7 days) skipped",
                        self.source, self.bad_durations)
        return columns, self.categories


def _parse_bool(text: str) -> int:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return 1
    if lowered in ("false", "0", "no"):
        return 0
    if not text:
        return -1
    raise ValueError(f"not a boolean: {text!r}")


def _parse_number(text: str) -> float:
    if not text:
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None


def _empty_column(name: str) -> np.ndarray:
    if name == "path":
        return np.array([], dtype=STRINGS)
    if name == "id":
        return np.array([], dtype=ID_DTYPE)
    if name in CODED_COLUMNS:
        return np.array([], dtype=CODE_DTYPES.get(name, np.int32))
    if name in BOOL_COLUMNS:
        return np.array([], dtype=np.int8)
    if name in FLOAT_COLUMNS:
        return np.array([], dtype=np.float64)
    return np.array([], dtype=INT_DTYPES.get(name, np.int32))


def _resolve(paths: np.ndarray, base: Path) -> np.ndarray:
    """Relative paths joined to `base` (a leading "./" dropped); absolute ones as given. UTF-8
    bytes in and out (numpy's string ops are several times faster on bytes)."""
    relative = ~np.strings.startswith(paths, b"/")
    if not relative.any():
        return paths
    rel = paths[relative]
    rel = np.where(np.strings.startswith(rel, b"./"), np.strings.slice(rel, 2, None), rel)
    joined = np.strings.add((str(base) + os.sep).encode("utf-8"), rel)
    paths = paths.astype(f"S{max(paths.dtype.itemsize, joined.dtype.itemsize)}")  # a copy, wide enough
    paths[relative] = joined
    return paths


def read_csv(handle, source: str, base: Path) -> tuple[dict[str, np.ndarray], dict, np.ndarray]:
    """(columns, categories, path hashes) of a binary file handle, parsed in chunks of whole lines;
    `source` names the file in errors, relative paths are resolved against `base`."""
    first = handle.readline().removeprefix(b"\xef\xbb\xbf")  # UTF-8 with or without a BOM
    header = [name.strip() for name in next(csv.reader([first.decode("utf-8")]), [])]
    absent = [c for c in ("path", "status") if c not in header]
    if absent:
        raise ManifestError(f"{source}: missing column(s) {', '.join(absent)}; "
                            f"expected columns {','.join(COLUMNS)}")
    names = COLUMNS + (SHARD_COLUMNS if "shard" in header else ())
    where = {name: header.index(name) for name in names if name in header}
    builder = ColumnBuilder(names, source, base)
    while chunk := handle.read(CHUNK_BYTES):
        chunk += handle.readline()  # whole lines
        while chunk.count(b'"') % 2 and (more := handle.readline()):
            chunk += more  # a quoted cell goes on in the next line
        if not chunk.endswith(b"\n"):
            chunk += b"\n"
        chunk.decode("utf-8")  # raises UnicodeDecodeError on a file in another encoding
        columns = _split(chunk, len(header))
        if columns is None:
            continue
        blank = np.zeros(len(columns[0]), dtype="S1")
        builder.add({name: columns[where[name]] if name in where else blank for name in names})
    hashes = np.concatenate(builder.hashes) if builder.hashes else np.array([], dtype=np.uint64)
    return (*builder.finish(), hashes)


def _split(chunk: bytes, width: int) -> list[np.ndarray] | None:
    """The cells of whole CSV lines, one bytes array per column. Fast path (no quote, no blank
    line, `width` cells on every line): separator positions found by numpy, cells gathered as
    fixed-width bytes. Otherwise the csv module."""
    buf = np.frombuffer(chunk, dtype=np.uint8)
    if b'"' not in chunk:  # a C scan, no array of the chunk's size
        seps = np.flatnonzero((buf == ord(",")) | (buf == ord("\n")))
        if len(seps) % width == 0:
            ends = seps.reshape(-1, width)
            if (buf[ends[:, -1]] == ord("\n")).all() and not (buf[ends[:, :-1]] == ord("\n")).any():
                starts = np.empty_like(ends)
                starts.reshape(-1)[0] = 0
                starts.reshape(-1)[1:] = seps[:-1] + 1
                ends = ends.copy()
                ends[:, -1] -= buf[np.maximum(ends[:, -1] - 1, 0)] == ord("\r")  # CRLF line ends
                padded = np.concatenate([buf, np.zeros(NARROW, dtype=np.uint8)])
                return [_cells(padded, starts[:, j], ends[:, j]) for j in range(width)]
    rows = [row + [""] * (width - len(row)) for row in csv.reader(io.StringIO(chunk.decode("utf-8"), newline=""))
            if row]
    return [encode_cells(column) for column in zip(*rows)] if rows else None


NARROW = 128  # cells up to this many bytes are gathered by numpy (typical paths too), wider ones sliced


WORD_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype="<u8")  # the first n bytes of a word


def _cells(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Bytes [start, end) of each cell as a fixed-width `S` array (numpy drops the zero padding);
    at least 8 wide, so that `_distinct` can compare short cells as integers. `buf` ends with
    NARROW padding bytes."""
    lengths = ends - starts
    size = max(8, int(lengths.max(initial=0)))
    if size > NARROW:  # very wide cells (long paths): slicing the bytes costs less than a size-wide gather
        data = buf.tobytes()
        return np.array([data[a:b] for a, b in zip(starts.tolist(), ends.tolist())], dtype=f"S{size}")
    if size == 8:  # most columns: one unaligned 8-byte load per cell, the bytes after it masked off
        words = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))[starts]
        words &= WORD_MASKS[lengths]
        return words.view("S8")
    cells = np.lib.stride_tricks.sliding_window_view(buf, size)[starts]  # rows copied whole
    keep = np.arange(size + 1)[:, None] > np.arange(size)  # keep[n]: the first n bytes
    cells *= keep[lengths]  # zero what follows the cell (a gather of masks: no int64 compare per byte)
    return cells.view(f"S{size}").reshape(-1)


def _hashes(cells: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each bytes cell, from its 8-byte words (vectorised: no Python str per cell).
    All-zero words (the padding of a wider array: cells hold no NUL) are skipped, so a cell hashes
    the same in arrays of any width: chunks of one manifest are read at different widths."""
    words = max(1, -(-cells.dtype.itemsize // 8))
    padded = np.ascontiguousarray(cells.astype(f"S{8 * words}")).view(np.uint64).reshape(len(cells), words)
    hashes = padded[:, 0].copy()
    for k in range(1, words):  # wraps around modulo 2**64
        word = padded[:, k]
        hashes = np.where(word != 0, (hashes * np.uint64(0x9E3779B97F4A7C15)) ^ word, hashes)
    return hashes


def _distinct(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(cells, return_inverse=True), without sorting the cells as strings (slow in
    numpy): 8-byte cells as integers, wider ones (labels, reasons) by their `_hashes`, checked
    against the cells (a collision falls back to np.unique)."""
    if cells.dtype.itemsize == 8:
        values, inverse = np.unique(cells.view(np.uint64), return_inverse=True)
        return values.view("S8"), inverse.reshape(-1)
    _, first, inverse = np.unique(_hashes(cells), return_index=True, return_inverse=True)
    values = cells[first]
    if not (values[inverse] == cells).all():  # a collision
        values, inverse = np.unique(cells, return_inverse=True)
        return values, inverse.reshape(-1)
    order = np.argsort(values)  # few values: sorted as np.unique gives them
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return values[order], rank[inverse.reshape(-1)]


def encode_cells(cells) -> np.ndarray:
    """Text cells as the `S` array `ColumnBuilder` takes."""
    return np.array([cell.encode("utf-8") for cell in cells], dtype=bytes) if cells else np.zeros(0, dtype="S1")

