"""The manifest: one CSV row per media file, the input of every command after `xdc scan`.

On disk it is a CSV (`COLUMNS`, plus `SHARD_COLUMNS` for a sharded manifest): `None` is an empty
cell and booleans are `true`/`false`. `id` names a video whatever file holds it (`xdc scan`
writes its path relative to the scanned folder; `xdc prepare` carries it to the copies and
shards), so labels of the originals match rows of prepared copies. In the program it is a
`Manifest`: one numpy array per column (paths as numpy variable-width strings, numbers as
float64/int32/int16/int8, repeated texts such as `status`, `reason`, `label` as codes into a list
of their values, ids as codes for "the path's last n characters": see `encode_ids`), read in
chunks without building a dict per row. A `Manifest` still behaves as the list of row dicts the
callers knew (`len`, `m[i]` -> dict built on demand, iteration); the hot paths (reading, usable
rows, writing, the dataset's per-item lookups) use the columns.

`read_manifest` resolves relative paths against the manifest's folder (so a manifest can travel
with its videos) without resolving symlinks (a row keeps the path the user gave), validates the
cells, removes duplicate paths and checks that the files of `ok` rows exist (`check_files`).
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import io
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from xdc.data.shards import ShardMember
from xdc.errors import XdcError
from xdc.files import atomic_file

log = logging.getLogger(__name__)

COLUMNS = ("path", "status", "reason", "duration", "fps", "num_frames", "width", "height",
           "rotation", "video_codec", "has_audio", "audio_rate", "audio_channels", "audio_silent",
           "label", "id")
SHARD_COLUMNS = ("shard", "offset", "size")  # a sharded manifest's rows point into tar shards

FLOAT_COLUMNS = ("duration", "fps")
INT_COLUMNS = ("num_frames", "width", "height", "rotation", "audio_rate", "audio_channels", "offset", "size")
BOOL_COLUMNS = ("has_audio", "audio_silent")
CODED_COLUMNS = ("status", "reason", "video_codec", "label", "shard")  # few distinct values: int32 codes
# Narrow where the values allow (bytes per video count at 65M videos); other ints are int32.
INT_DTYPES = {"offset": np.int64, "size": np.int64, "width": np.int16, "height": np.int16,
              "rotation": np.int16, "audio_channels": np.int16}
CODE_DTYPES = {"status": np.int8, "video_codec": np.int16}  # other coded columns: int32
STRINGS = np.dtypes.StringDType()
ID_DTYPE = np.int32  # the `id` column's codes (`encode_ids`)

MAX_LISTED = 10  # missing paths named in an error before "... and N more"
MAX_DURATION = 7 * 24 * 3600.0  # seconds; a longer "video" is a broken header
CHUNK_ROWS = 100_000  # rows written at a time
CHUNK_BYTES = 16 << 20  # bytes parsed at a time: bounds the memory of the cells being parsed
CHECK_FILES = ("auto", "all", "sample", "none")
SAMPLE_ABOVE = 100_000  # check_files=auto: every file up to this many ok rows, a sample above
SAMPLE_SIZE = 1_000

class ManifestError(XdcError, ValueError):
    """A manifest is malformed or points at files that are gone."""


def empty_row(path: str | Path, status: str = "ok", reason: str | None = None) -> dict[str, Any]:
    """A row with every column present and unknown values `None`."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(path=None if path is None else str(path), status=status, reason=reason)
    return row


class Row(dict):
    """A manifest row built from the columns: a copy, so changing it would change nothing; it
    refuses instead (build a new dict: `dict(row, label=...)`)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("manifest rows are read-only copies: build a new dict, e.g. dict(row, label=...)")

    __setitem__ = __delitem__ = __ior__ = update = pop = popitem = setdefault = clear = _refuse

    def __reduce__(self):  # pickled (to a worker process) or copied: a plain dict
        return dict, (dict(self),)


def _none_int(name: str) -> int:
    return int(np.iinfo(INT_DTYPES.get(name, np.int32)).min)


class Manifest:
    """Manifest rows as columns (see the module docstring); `m[i]` is row i as a dict,
    `m[indices]` (a slice, index array or boolean mask) a new Manifest of those rows."""

    def __init__(self, columns: dict[str, np.ndarray], categories: dict[str, Any]):
        if "id" in columns and columns["id"].dtype != ID_DTYPE:  # ids as text (e.g. benchmarks/scale.py)
            columns = dict(columns)
            columns["id"], others = encode_ids(columns["path"], np.asarray(columns["id"], dtype=STRINGS))
            categories = dict(categories, id=others)
        categories.setdefault("id", np.array([], dtype=STRINGS))
        self.columns, self.categories = columns, categories

    @property
    def has_shards(self) -> bool:
        return "shard" in self.columns

    @property
    def column_names(self) -> tuple[str, ...]:
        return COLUMNS + (SHARD_COLUMNS if self.has_shards else ())

    def __len__(self) -> int:
        return len(self.columns["path"])

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.row(int(key))
        return self.take(key)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.row(i) for i in range(len(self)))

    def __add__(self, other) -> list[dict[str, Any]]:  # as lists do: `rows + [row]` (small manifests)
        return list(self) + list(other)

    def __radd__(self, other) -> list[dict[str, Any]]:
        return list(other) + list(self)

    def __repr__(self) -> str:
        return f"Manifest({len(self)} rows{', sharded' if self.has_shards else ''})"

    def digest(self, chunk: int = 1_000_000) -> str:
        """A hash of the rows' values, column by column in chunks (millions of rows never become
        one string): equal for two manifests with the same rows, however their columns are coded."""
        digest = hashlib.sha1()
        for name in self.column_names:
            digest.update(name.encode())
            for start in range(0, len(self), chunk):
                if name in CODED_COLUMNS:
                    part = self.text(name)[start:start + chunk]
                elif name == "id":
                    part = self.take(slice(start, start + chunk)).ids()
                else:
                    part = self.columns[name][start:start + chunk]
                if part.dtype.kind in "biuf":
                    digest.update(np.ascontiguousarray(part).tobytes())
                else:
                    digest.update("\x1f".join(map(str, part.tolist())).encode())
        return digest.hexdigest()

    def take(self, index) -> "Manifest":
        return Manifest({name: values[index] for name, values in self.columns.items()}, self.categories)

    def row(self, i: int) -> dict[str, Any]:
        if i < 0:
            i += len(self)
        return Row((name, self.value(name, i)) for name in self.column_names)

    def value(self, name: str, i: int) -> Any:
        """Row i's cell of column `name`, typed as in a row dict (None when empty)."""
        cell = self.columns[name][i]
        if name == "path":
            return str(cell)
        if name == "id":
            return self._id(int(cell), i) or None
        if name in CODED_COLUMNS:
            return self.categories[name][cell] if cell >= 0 else None
        if name in FLOAT_COLUMNS:
            return None if math.isnan(cell) else float(cell)
        if name in BOOL_COLUMNS:
            return None if cell < 0 else bool(cell)
        return None if cell == _none_int(name) else int(cell)

    def path(self, i: int) -> str:
        return str(self.columns["path"][i])

    def _id(self, code: int, i: int) -> str:
        if code >= 0:  # the path's last `code` characters
            path = self.path(i)
            return path[len(path) - code:]
        return str(self.categories["id"][-1 - code])

    def ids(self) -> np.ndarray:
        """The `id` column as text (numpy strings, "" for none), decoded from its codes."""
        codes, paths = self.columns["id"], self.columns["path"]
        suffix = codes >= 0
        out = np.strings.slice(paths, np.strings.str_len(paths) - np.where(suffix, codes, 0), None)
        out[~suffix] = self.categories["id"][-1 - codes[~suffix]]
        return out

    def source(self, i: int) -> str | ShardMember:
        """What a decoder opens for row i: its file, or its member of a shard."""
        if self.has_shards and self.columns["shard"][i] >= 0:
            return ShardMember(self.categories["shard"][self.columns["shard"][i]],
                               int(self.columns["offset"][i]), int(self.columns["size"][i]))
        return self.path(i)

    def code(self, name: str, value: str) -> int:
        """The code of `value` in a coded column (-2 when no row has it)."""
        try:
            return self.categories[name].index(value)
        except ValueError:
            return -2

    def text(self, name: str) -> np.ndarray:
        """A coded column's values, one per row (object array, None for empty cells)."""
        lookup = np.array(list(self.categories[name]) + [None], dtype=object)
        return lookup[self.columns[name]]  # code -1 picks the trailing None

    def class_labels(self) -> tuple[list[str], np.ndarray | None]:
        """(sorted class names, each row's index among them), or ([], None) without labels;
        raises ManifestError when only some rows have a label."""
        codes = self.columns["label"]
        if len(codes) == 0 or (codes < 0).all():
            return [], None
        if (codes < 0).any():
            raise ManifestError(f"{int((codes < 0).sum())} of {len(codes)} rows have no label: label every "
                                "row (e.g. `xdc scan --labels-from-dirs`) or none")
        used = np.unique(codes)
        names = [self.categories["label"][c] for c in used]
        order = np.argsort(np.array(names, dtype=STRINGS), kind="stable")
        remap = np.empty(len(self.categories["label"]), dtype=np.int64)
        remap[used[order]] = np.arange(len(used))
        return [names[j] for j in order], remap[codes]

    def set_skip(self, rows: np.ndarray, reason: str) -> None:
        """Mark `rows` (indices or mask) as `skip` rows with `reason`."""
        self.columns["status"][rows] = _category(self.categories["status"], "skip")
        self.columns["reason"][rows] = _category(self.categories["reason"], reason)

    @classmethod
    def from_rows(cls, rows: Iterable[dict[str, Any]]) -> "Manifest":
        """Columns of row dicts (paths kept as given); a row without a path is an error."""
        rows = list(rows)
        sharded = any(row.get("shard") for row in rows)
        names = COLUMNS + (SHARD_COLUMNS if sharded else ())
        builder = _Builder(names, "rows", base=None)
        for start in range(0, len(rows), CHUNK_ROWS):
            part = rows[start:start + CHUNK_ROWS]
            for row in part:
                if row.get("path") in (None, ""):
                    raise ManifestError(f"a manifest row has no path: {row}")
            builder.add({name: _encoded([_cell(row.get(name)) for row in part]) for name in names})
        return builder.finish()

    def cells(self, name: str, base: str | None) -> np.ndarray:
        """Column `name` as CSV cells (numpy strings, quoted where CSV needs it); paths under
        `base` (a folder ending in a separator) are written relative to it, others absolute."""
        values = self.columns[name]
        if name == "shard":  # few distinct shards: make their names relative, then index
            names = [_relative(c, base) for c in self.categories["shard"]]
            return _quoted(np.array(names + [""], dtype=STRINGS))[values]
        if name == "id":
            return _quoted(self.ids())
        if name == "path":
            relative = ~np.strings.startswith(values, "/")
            if relative.any():  # paths given relative to the working directory
                values = values.copy()
                values[relative] = np.strings.add(os.getcwd() + os.sep, values[relative])
            if base is not None:
                under = np.strings.startswith(values, base)
                if under.any():
                    values = values.copy()
                    values[under] = np.strings.slice(values[under], len(base), None)
            return _quoted(values)
        if name in CODED_COLUMNS:
            return _quoted(np.array(list(self.categories[name]) + [""], dtype=STRINGS))[values]
        if name in BOOL_COLUMNS:
            return np.array(["false", "true", ""], dtype=STRINGS)[np.where(values < 0, 2, values)]
        # Numbers: each distinct value formatted once (as Python writes it: repr, floats to 6 decimals).
        distinct, inverse = np.unique(values, return_inverse=True)
        if name in FLOAT_COLUMNS:
            text = ["" if math.isnan(v) else repr(round(v, 6)) for v in distinct.tolist()]
        else:
            text = ["" if v == _none_int(name) else str(v) for v in distinct.tolist()]
        return np.array(text, dtype=STRINGS)[inverse.reshape(-1)]


def _quoted(cells: np.ndarray) -> np.ndarray:
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


def _relative(path: str, base: str | None) -> str:
    path = os.path.abspath(path)
    return path[len(base):] if base is not None and path.startswith(base) else path


def _category(categories: list[str], value: str) -> int:
    try:
        return categories.index(value)
    except ValueError:
        categories.append(value)
        return len(categories) - 1


def _cell(value: Any) -> str:
    """A typed value as the text cell `_Builder` parses (floats exactly)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Builder:
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

    def finish(self) -> Manifest:
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
        return Manifest(columns, self.categories)


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


def read_manifest(path: str | Path, drop_missing: bool = False, check_files: str = "auto") -> Manifest:
    """The manifest CSV at `path` as a `Manifest`; `path`s come back absolute.

    Cells are validated: a bad duration (NaN, inf, <= 0, over 7 days) makes its row a skip row
    with the reason; duplicate paths are removed (first kept) with a warning. Files of `ok` rows
    (their shard, for a sharded manifest) are checked per `check_files`: `all`, `sample` (a
    random `SAMPLE_SIZE` of them), `none`, or `auto` (all up to `SAMPLE_ABOVE` ok rows, a sample
    above). Missing files raise `ManifestError` naming them, or with `drop_missing=True` (which
    checks all) become skip rows with reason `file not found`, with a warning saying how many.
    A missing file not checked here is a skipped sample when training reaches it.
    """
    if check_files not in CHECK_FILES:
        raise ManifestError(f"check_files must be one of {' | '.join(CHECK_FILES)}, got {check_files!r}")
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    base = Path(os.path.abspath(path)).parent  # not resolve(): keep the user's symlinked folders
    try:
        with open(path, "rb") as handle:
            manifest, hashes = _read_csv(handle, str(path), base)
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err.reason}: byte 0x{err.object[err.start]:02x}); "
                            f"save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8.csv`") from None
    manifest = _drop_duplicates(manifest, hashes, path)
    del hashes
    release_free_memory()
    return _check_files(manifest, path, check_files, drop_missing)


def _read_csv(handle, source: str, base: Path) -> tuple[Manifest, np.ndarray]:
    """Parse a binary file handle in chunks of whole lines."""
    first = handle.readline().removeprefix(b"\xef\xbb\xbf")  # UTF-8 with or without a BOM
    header = [name.strip() for name in next(csv.reader([first.decode("utf-8")]), [])]
    absent = [c for c in ("path", "status") if c not in header]
    if absent:
        raise ManifestError(f"{source}: missing column(s) {', '.join(absent)}; "
                            f"expected columns {','.join(COLUMNS)}")
    names = COLUMNS + (SHARD_COLUMNS if "shard" in header else ())
    where = {name: header.index(name) for name in names if name in header}
    builder = _Builder(names, source, base)
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
    return builder.finish(), hashes


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
    return [_encoded(column) for column in zip(*rows)] if rows else None


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


def _encoded(cells) -> np.ndarray:
    """Text cells as the `S` array `_Builder` takes."""
    return np.array([cell.encode("utf-8") for cell in cells], dtype=bytes) if cells else np.zeros(0, dtype="S1")


def release_free_memory() -> None:
    """Give the parse's freed scratch memory back to the OS (glibc keeps freed heap pages
    resident otherwise: at millions of rows, several times the manifest's own size)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _drop_duplicates(manifest: Manifest, hashes: np.ndarray, source: Path) -> Manifest:
    """First row of each path: a video listed twice would land in both training and validation.
    Rows whose path hashes collide are compared as text (few)."""
    order = np.argsort(hashes, kind="stable")
    same = hashes[order[1:]] == hashes[order[:-1]]
    if not same.any():
        return manifest
    paths = manifest.columns["path"]
    keep = np.ones(len(manifest), dtype=bool)
    seen: set[str] = set()
    for i in np.unique(np.concatenate([order[1:][same], order[:-1][same]])).tolist():  # in row order
        path = str(paths[i])
        keep[i] = path not in seen
        seen.add(path)
    if keep.all():
        return manifest
    repeated = np.unique(paths[~keep]).tolist()
    log.warning("%s: %d duplicate row(s) removed (a path listed twice would be in both training and "
                "validation; the first row of each is kept): %s%s", source, int((~keep).sum()),
                ", ".join(repeated[:3]), " ..." if len(repeated) > 3 else "")
    return manifest.take(keep)


def _check_files(manifest: Manifest, source: Path, check_files: str, drop_missing: bool) -> Manifest:
    ok = np.flatnonzero(manifest.columns["status"] == manifest.code("status", "ok"))
    mode = "all" if drop_missing else check_files
    if mode == "auto":
        mode = "all" if len(ok) <= SAMPLE_ABOVE else "sample"
    if mode == "none" or not len(ok):
        return manifest
    checked = ok
    if mode == "sample" and len(ok) > SAMPLE_SIZE:
        checked = np.sort(np.random.default_rng(0).choice(ok, SAMPLE_SIZE, replace=False))
    if manifest.has_shards:  # one stat per shard, not per row
        codes = manifest.columns["shard"]
        gone = [c for c in np.unique(codes[checked]).tolist()
                if c >= 0 and not os.path.exists(manifest.categories["shard"][c])]
        missing = checked[np.isin(codes[checked], gone)]
        names = [manifest.categories["shard"][c] for c in gone]
    else:
        exists = np.fromiter(map(os.path.exists, manifest.columns["path"][checked].tolist()), dtype=bool,
                             count=len(checked))
        missing = checked[~exists]
        names = manifest.columns["path"][missing].tolist()
    if not len(missing):
        return manifest
    if drop_missing:
        manifest.set_skip(missing, "file not found")
        log.warning("%s: dropped %d of %d row(s) whose file no longer exists (now skip rows)",
                    source, len(missing), len(manifest))
        return manifest
    listed = "\n  ".join(names[:MAX_LISTED])
    more = f"\n  ... and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    sampled = f" (a sample of {len(checked)} of the {len(ok)} ok rows)" if len(checked) < len(ok) else ""
    raise ManifestError(f"{source}: {len(missing)} of {len(checked)} file(s) checked{sampled} no longer exist:\n  "
                        f"{listed}{more}\n(pass --drop-missing to skip such rows, or re-run `xdc scan`)")


def write_manifest(rows: Manifest | Iterable[dict[str, Any]], path: str | Path, relative: bool = True) -> Path:
    """Write rows atomically (xdc.files.atomic_file), column by column (no Python loop over rows).
    Paths under the manifest's folder are written relative to it when `relative`, so the folder
    can be moved as a whole; symlinks are kept as given."""
    manifest = rows if isinstance(rows, Manifest) else Manifest.from_rows(rows)
    path = Path(path)
    base = os.path.abspath(path.parent) + os.sep if relative else None
    with atomic_file(path) as handle:
        handle.write((",".join(manifest.column_names) + "\n").encode("utf-8"))
        for start in range(0, len(manifest), CHUNK_ROWS):
            part = manifest.take(slice(start, start + CHUNK_ROWS))
            lines = None
            for name in manifest.column_names:  # lines built column by column, in numpy
                cells = part.cells(name, base)
                lines = cells if lines is None else np.strings.add(np.strings.add(lines, ","), cells)
            if lines is not None and len(lines):
                handle.write(("\n".join(lines.tolist()) + "\n").encode("utf-8"))
    return path


def usable_rows(rows: Manifest | Iterable[dict[str, Any]], require_audio: bool):
    """Rows a dataset can train on, and how many were dropped for each reason.

    Skipped rows are counted under `skip: <reason>`; with `require_audio` (pretraining), rows
    without audio or with silent audio are dropped too. A Manifest gives a Manifest, a list of
    dicts a list of the same dicts.
    """
    if not isinstance(rows, Manifest):
        rows = list(rows)
    manifest = rows if isinstance(rows, Manifest) else Manifest.from_rows(rows)
    ok = manifest.columns["status"] == manifest.code("status", "ok")
    dropped: Counter[str] = Counter()
    codes, counts = np.unique(manifest.columns["reason"][~ok], return_counts=True)
    for code, count in zip(codes.tolist(), counts.tolist()):
        reason = manifest.categories["reason"][code] if code >= 0 else None
        dropped[f"skip: {reason or 'unknown'}"] += count
    keep = ok
    if require_audio:
        no_audio = ok & (manifest.columns["has_audio"] != 1)
        silent = ok & ~no_audio & (manifest.columns["audio_silent"] == 1)
        dropped["no audio"] += int(no_audio.sum())
        dropped["silent audio"] += int(silent.sum())
        keep = ok & ~no_audio & ~silent
    dropped = Counter({reason: n for reason, n in dropped.items() if n})
    kept = np.flatnonzero(keep)
    if isinstance(rows, Manifest):
        return rows.take(kept), dict(dropped)
    return [rows[i] for i in kept], dict(dropped)

def describe_dropped(dropped: dict[str, int]) -> str:
    """`3 dropped (2 no audio, 1 silent audio)` or `none dropped`."""
    total = sum(dropped.values())
    if not total:
        return "none dropped"
    parts = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items(), key=lambda kv: -kv[1]))
    return f"{total} dropped ({parts})"


def class_indices(labels: Iterable[str], classes: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(class names, each label's index among them as int64). The classes are the sorted distinct
    labels, or `classes` when given (e.g. the training set's, for val and test labels); a label
    not among them raises ManifestError."""
    labels = list(labels)
    classes = sorted(set(labels)) if classes is None else list(classes)
    lookup = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(labels) - lookup.keys(), key=str)
    if unknown:
        raise ManifestError(f"labels not among the classes: {', '.join(map(str, unknown[:MAX_LISTED]))}")
    return classes, np.array([lookup[name] for name in labels], dtype=np.int64)
