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

import ctypes
import hashlib
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from xdc.data.manifest_csv import (BOOL_COLUMNS, CODED_COLUMNS, COLUMNS, FLOAT_COLUMNS, ID_DTYPE, INT_DTYPES,
                                   SHARD_COLUMNS, STRINGS, ColumnBuilder, ManifestError, encode_cells, encode_ids,
                                   quote_cells, read_csv, text_cell)
from xdc.data.shards import ShardMember
from xdc.files import atomic_file

log = logging.getLogger(__name__)

MAX_LISTED = 10  # missing paths named in an error before "... and N more"
CHUNK_ROWS = 100_000  # rows written at a time
CHECK_FILES = ("auto", "all", "sample", "none")
SAMPLE_ABOVE = 100_000  # check_files=auto: every file up to this many ok rows, a sample above
SAMPLE_SIZE = 1_000


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
        builder = ColumnBuilder(names, "rows", base=None)
        for start in range(0, len(rows), CHUNK_ROWS):
            part = rows[start:start + CHUNK_ROWS]
            for row in part:
                if row.get("path") in (None, ""):
                    raise ManifestError(f"a manifest row has no path: {row}")
            builder.add({name: encode_cells([text_cell(row.get(name)) for row in part]) for name in names})
        return cls(*builder.finish())

    def cells(self, name: str, base: str | None) -> np.ndarray:
        """Column `name` as CSV cells (numpy strings, quoted where CSV needs it); paths under
        `base` (a folder ending in a separator) are written relative to it, others absolute."""
        values = self.columns[name]
        if name == "shard":  # few distinct shards: make their names relative, then index
            names = [_relative(c, base) for c in self.categories["shard"]]
            return quote_cells(np.array(names + [""], dtype=STRINGS))[values]
        if name == "id":
            return quote_cells(self.ids())
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
            return quote_cells(values)
        if name in CODED_COLUMNS:
            return quote_cells(np.array(list(self.categories[name]) + [""], dtype=STRINGS))[values]
        if name in BOOL_COLUMNS:
            return np.array(["false", "true", ""], dtype=STRINGS)[np.where(values < 0, 2, values)]
        # Numbers: each distinct value formatted once (as Python writes it: repr, floats to 6 decimals).
        distinct, inverse = np.unique(values, return_inverse=True)
        if name in FLOAT_COLUMNS:
            text = ["" if math.isnan(v) else repr(round(v, 6)) for v in distinct.tolist()]
        else:
            text = ["" if v == _none_int(name) else str(v) for v in distinct.tolist()]
        return np.array(text, dtype=STRINGS)[inverse.reshape(-1)]


def _relative(path: str, base: str | None) -> str:
    path = os.path.abspath(path)
    return path[len(base):] if base is not None and path.startswith(base) else path


def _category(categories: list[str], value: str) -> int:
    try:
        return categories.index(value)
    except ValueError:
        categories.append(value)
        return len(categories) - 1


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
            columns, categories, hashes = read_csv(handle, str(path), base)
        manifest = Manifest(columns, categories)
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err.reason}: byte 0x{err.object[err.start]:02x}); "
                            f"save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8.csv`") from None
    manifest = _drop_duplicates(manifest, hashes, path)
    del hashes
    release_free_memory()
    return _check_files(manifest, path, check_files, drop_missing)


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
