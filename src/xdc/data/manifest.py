"""The manifest: one CSV row per media file, the input of every command after `xdc scan`.

Rows are plain dicts keyed by `COLUMNS`. `id` names a video whatever file holds it (`xdc scan`
writes its path relative to the scanned folder; `xdc prepare` carries it to the copies), so
labels of the originals match rows of prepared copies. On disk, `None` is an empty cell and
booleans are `true`/`false`; `read_manifest` turns cells back into floats/ints/bools and resolves relative
paths against the manifest's folder, so a manifest can travel with its videos.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from xdc.errors import XdcError

log = logging.getLogger(__name__)

COLUMNS = ("path", "status", "reason", "duration", "fps", "num_frames", "width", "height",
           "rotation", "video_codec", "has_audio", "audio_rate", "audio_channels", "audio_silent",
           "label", "id")

FLOAT_COLUMNS = ("duration", "fps")
INT_COLUMNS = ("num_frames", "width", "height", "rotation", "audio_rate", "audio_channels")
BOOL_COLUMNS = ("has_audio", "audio_silent")

MAX_LISTED = 10  # missing paths named in an error before "... and N more"


class ManifestError(XdcError, ValueError):
    """A manifest is malformed or points at files that are gone."""


def empty_row(path: str | Path, status: str = "ok", reason: str | None = None) -> dict[str, Any]:
    """A row with every column present and unknown values `None`."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(path=None if path is None else str(path), status=status, reason=reason)
    return row


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_cell(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in FLOAT_COLUMNS:
        return float(text)
    if column in INT_COLUMNS:
        return int(float(text))  # tolerate "1920.0" written by other tools
    if column in BOOL_COLUMNS:
        return _parse_bool(text)
    return text


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(round(value, 6))
    return str(value)


def read_manifest(path: str | Path, drop_missing: bool = False) -> list[dict[str, Any]]:
    """Typed rows of a manifest CSV; `path`s come back absolute.

    Rows whose file no longer exists raise `ManifestError` naming them, or with
    `drop_missing=True` are dropped with a warning saying how many.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    base = path.resolve().parent
    rows: list[dict[str, Any]] = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        absent = [c for c in ("path", "status") if c not in header]
        if absent:
            raise ManifestError(f"{path}: missing column(s) {', '.join(absent)}; "
                                f"expected columns {','.join(COLUMNS)}")
        for line_no, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {}
            for column in COLUMNS:
                text = (raw.get(column) or "").strip()
                try:
                    row[column] = _parse_cell(column, text)
                except ValueError as err:
                    raise ManifestError(f"{path}:{line_no}: column {column!r}: {err}") from None
            if not row["path"]:
                raise ManifestError(f"{path}:{line_no}: empty path")
            file_path = Path(row["path"])
            row["path"] = str(file_path if file_path.is_absolute() else base / file_path)
            rows.append(row)
    missing = [row["path"] for row in rows if not os.path.exists(row["path"])]
    if missing:
        if not drop_missing:
            listed = "\n  ".join(missing[:MAX_LISTED])
            more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
            raise ManifestError(f"{path}: {len(missing)} of {len(rows)} file(s) no longer exist:\n  "
                                f"{listed}{more}\n(re-run `xdc scan`, or drop them with drop_missing)")
        log.warning("%s: dropped %d of %d row(s) whose file no longer exists",
                    path, len(missing), len(rows))
        gone = set(missing)
        rows = [row for row in rows if row["path"] not in gone]
    return rows


def write_manifest(rows: Iterable[dict[str, Any]], path: str | Path, relative: bool = True) -> Path:
    """Write rows atomically (temp file + rename). Paths under the manifest's folder are written
    relative to it when `relative`, so the folder can be moved as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    handle = tempfile.NamedTemporaryFile("w", newline="", encoding="utf-8", dir=path.parent,
                                         prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for row in rows:
                cells = dict(row)
                if not cells.get("path"):
                    raise ManifestError(f"a manifest row has no path: {row}")
                if relative:
                    cells["path"] = _relative_path(cells["path"], base)
                writer.writerow([_format_cell(cells.get(column)) for column in COLUMNS])
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return path


def _relative_path(file_path: Any, base: Path) -> str:
    resolved = Path(file_path).resolve()
    try:
        return str(resolved.relative_to(base))
    except ValueError:
        return str(resolved)  # outside the manifest's folder: keep it absolute


def usable_rows(rows: Iterable[dict[str, Any]], require_audio: bool) -> tuple[list[dict], dict[str, int]]:
    """Rows a dataset can train on, and how many were dropped for each reason.

    Skipped rows are counted under `skip: <reason>`; with `require_audio` (pretraining), rows
    without audio or with silent audio are dropped too.
    """
    kept: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    for row in rows:
        if row.get("status") != "ok":
            dropped[f"skip: {row.get('reason') or 'unknown'}"] += 1
        elif require_audio and not row.get("has_audio"):
            dropped["no audio"] += 1
        elif require_audio and row.get("audio_silent"):
            dropped["silent audio"] += 1
        else:
            kept.append(row)
    return kept, dict(dropped)


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
