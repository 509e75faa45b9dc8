"""Standard benchmark splits (UCF101, HMDB51, ESC-50) turned into labelled manifests.

Each reader parses the dataset's own split files into `(path, label)` pairs per subset; the
pairs are then probed into manifest rows (`xdc.data.scan.probe_file`) with `label` set to the
class name. A file that a split lists but that is missing on disk becomes a `skip` row that says
so, rather than a crash later in a DataLoader worker. The benchmarks have no validation subset:
`finetune` holds out part of the train subset for choosing the learning rate
(`stratified_split`, also the demo's train / val / test split).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import av
import numpy as np

from xdc.data.manifest import empty_row, write_manifest
from xdc.data.scan import probe_file
from xdc.errors import XdcError
from xdc.progress import progress
from xdc.stamps import check_stamp, write_stamp

SPLITS = ("ucf101", "hmdb51", "esc50")

Pairs = list[tuple[Path, str]]


class SplitError(XdcError, ValueError):
    """Split files are missing or malformed."""


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise SplitError(f"split file not found: {path}")
    # UCF101's lists use CRLF line ends and sometimes trailing spaces.
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_ucf101(root: str | Path, split_dir: str | Path, fold: int) -> dict[str, Pairs]:
    """UCF101 `classInd.txt`, `trainlist0K.txt` (`Class/v_x.avi 5`) and `testlist0K.txt`.

    The label is the class folder of each listed path, matched to `classInd.txt` ignoring case
    (the official lists write "HandstandPushups" for files named v_HandStandPushups_*).
    """
    root, split_dir = Path(root), Path(split_dir)
    _check_fold(fold, 3)
    classes: dict[str, str] = {}
    for number, line in enumerate(_lines(split_dir / "classInd.txt"), start=1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise SplitError(f"{split_dir / 'classInd.txt'}:{number}: expected 'INDEX ClassName', got {line!r}")
        classes[parts[1].lower()] = parts[1]
    subsets: dict[str, Pairs] = {}
    for subset in ("train", "test"):
        list_file = split_dir / f"{subset}list{fold:02d}.txt"
        pairs: Pairs = []
        for number, line in enumerate(_lines(list_file), start=1):
            relative = line.split()[0].replace("\\", "/")
            folder = relative.split("/")[0] if "/" in relative else ""
            label = classes.get(folder.lower())
            if label is None:
                raise SplitError(f"{list_file}:{number}: class folder {folder!r} of {relative!r} "
                                 f"is not in classInd.txt")
            pairs.append((root / relative, label))
        subsets[subset] = pairs
    return subsets


HMDB_SPLIT_FILE = re.compile(r"^(?P<label>.+)_test_split(?P<fold>[123])\.txt$")
HMDB_SUBSETS = {"1": "train", "2": "test", "0": None}  # 0 = not used in this split


def read_hmdb51(root: str | Path, split_dir: str | Path, fold: int) -> dict[str, Pairs]:
    """HMDB51 `<class>_test_split<K>.txt` files: `video.avi ID` with 1 = train, 2 = test, 0 = unused.

    Videos are expected at `root/<class>/<video>`.
    """
    root, split_dir = Path(root), Path(split_dir)
    _check_fold(fold, 3)
    files = sorted(p for p in split_dir.glob(f"*_test_split{fold}.txt"))
    if not files:
        raise SplitError(f"no HMDB51 split files *_test_split{fold}.txt in {split_dir}")
    subsets: dict[str, Pairs] = {"train": [], "test": []}
    for list_file in files:
        label = HMDB_SPLIT_FILE.match(list_file.name).group("label")
        for number, line in enumerate(_lines(list_file), start=1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in HMDB_SUBSETS:
                raise SplitError(f"{list_file}:{number}: expected 'video.avi 0|1|2', got {line!r}")
            subset = HMDB_SUBSETS[parts[1]]
            if subset is not None:
                subsets[subset].append((root / label / parts[0], label))
    return subsets


ESC50_COLUMNS = ("filename", "fold", "category")


def read_esc50(root: str | Path, split_dir: str | Path | None, fold: int) -> dict[str, Pairs]:
    """ESC-50 `meta/esc50.csv` (filename, fold, target, category, ...): fold K is the test set,
    the other four train. Clips are at `root/audio/<filename>`; `split_dir` defaults to `root/meta`."""
    root = Path(root)
    meta = Path(split_dir) / "esc50.csv" if split_dir is not None else root / "meta" / "esc50.csv"
    _check_fold(fold, 5)
    if not meta.is_file():
        raise SplitError(f"ESC-50 metadata not found: {meta}")
    subsets: dict[str, Pairs] = {"train": [], "test": []}
    with open(meta, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in ESC50_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise SplitError(f"{meta}: missing column(s) {', '.join(absent)}")
        for number, raw in enumerate(reader, start=2):
            if not raw["fold"].strip().isdigit():
                raise SplitError(f"{meta}:{number}: fold {raw['fold']!r} is not a number")
            subset = "test" if int(raw["fold"]) == fold else "train"
            subsets[subset].append((root / "audio" / raw["filename"].strip(), raw["category"].strip()))
    return subsets


READERS = {"ucf101": read_ucf101, "hmdb51": read_hmdb51, "esc50": read_esc50}
AUDIO_ONLY = ("esc50",)  # sound files, no video: evaluated with the audio encoder only


def _check_fold(fold: int, folds: int) -> None:
    if not 1 <= fold <= folds:
        raise SplitError(f"fold {fold} is out of range: this benchmark has folds 1..{folds}")


def probe_audio_file(path: str | Path, label: str | None = None) -> dict:
    """A manifest row for a sound file (ESC-50's wavs): `probe_file` skips files without video,
    so an audio-only file is kept here as `ok` with its duration, rate and silence measured."""
    from xdc.data.scan import SILENCE_PEAK, _peak

    row = probe_file(path, label)
    if row["status"] == "ok" or row["reason"] != "no video stream" or not row["has_audio"]:
        return row
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            samples, peak = 0, 0.0
            for frame in container.decode(stream):
                samples += frame.samples
                peak = max(peak, _peak(frame))
            rate = stream.codec_context.sample_rate or stream.rate
    except Exception as err:  # a corrupt sound file is recorded, never raised
        return {**row, "reason": f"audio not decodable: {err}"}
    if samples == 0:
        return {**row, "reason": "audio stream without samples"}
    return {**row, "status": "ok", "reason": "audio only", "duration": samples / rate,
            "audio_silent": peak < SILENCE_PEAK}


def pairs_to_rows(pairs: Pairs, probe: bool = True, audio_only: bool = False) -> list[dict]:
    """Manifest rows for `(path, label)` pairs: probed with `xdc.data.scan.probe_file` (or
    `probe_audio_file` for sound files), or with `probe=False` only path and label."""
    rows = []
    for path, label in progress(pairs, desc="probe", unit="file", disable=not probe or len(pairs) < 100):
        if not path.exists():
            row = empty_row(path, "skip", "listed in the split file but not found on disk")
            row["label"] = label
        elif not probe:
            row = {**empty_row(path), "label": label}
        else:
            row = probe_audio_file(path, label) if audio_only else probe_file(path, label)
        rows.append(row)
    return rows


def split_rows(name: str, root: str | Path, split_dir: str | Path | None, fold: int = 1,
               probe: bool = True) -> dict[str, list[dict]]:
    """`{"train": rows, "test": rows}` of a standard split, labels set to class names."""
    if name not in READERS:
        raise SplitError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
    if split_dir is None and name != "esc50":
        raise SplitError(f"--split-dir is needed for {name} (the folder of its split files)")
    pairs = READERS[name](root, split_dir, fold)
    return {subset: pairs_to_rows(items, probe, audio_only=name in AUDIO_ONLY)
            for subset, items in pairs.items()}


def split_manifests(name: str, root: str | Path, split_dir: str | Path | None, fold: int,
                    out_dir: str | Path) -> dict[str, Path]:
    """Write `out_dir/<name>_<fold>_{train,test}.csv` (absolute paths), or reuse them when both
    exist and were made from the same dataset and split folders (`<name>_<fold>_split.json`; other
    folders: SettingsMismatch); returns their paths. Rows of files missing on disk are `skip` rows
    saying so (they come back from `read_manifest` only with `drop_missing=False`, which names them)."""
    out_dir = Path(out_dir)
    paths = {subset: out_dir / f"{name}_{fold}_{subset}.csv" for subset in ("train", "test")}
    made_from = {"split": name, "fold": fold, "root": str(Path(root).resolve()),
                 "split_dir": None if split_dir is None else str(Path(split_dir).resolve())}
    stamp = out_dir / f"{name}_{fold}_split.json"
    if not (check_stamp(stamp, made_from, "choose another --out for another dataset folder")
            and all(path.is_file() for path in paths.values())):
        rows = split_rows(name, root, split_dir, fold)
        for subset, path in paths.items():
            write_manifest(rows[subset], path, relative=False)
        write_stamp(stamp, made_from)
    return paths


def stratified_split(labels: list[str], fractions: dict[str, float], seed: int,
                     strict: bool = False) -> dict[str, list[int]]:
    """Row indices of a seeded per-class split: {"train": the rest, **one list per `fractions` key}.

    Class by class (in sorted order), the class's rows are permuted with one numpy generator
    seeded `seed`; each part in turn takes the next max(1, round(fraction · n)) of them, and
    "train" keeps what is left, which is at least one row: parts of a class too small for that
    get fewer (none for a class of one), or with `strict` the split raises SplitError. Indices
    come in that drawn order, class after class (sort them for the rows' own order).
    """
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    parts: dict[str, list[int]] = {"train": [], **{name: [] for name in fractions}}
    for label in sorted(by_class):
        members = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        for name, fraction in fractions.items():
            wanted = max(1, round(fraction * len(by_class[label])))
            if strict and wanted > len(members) - 1:
                raise SplitError(f"class {label!r} has {len(by_class[label])} videos: too few for a "
                                 f"{' / '.join(parts)} split")
            count = max(0, min(wanted, len(members) - 1))
            parts[name] += members[:count]
            members = members[count:]
        parts["train"] += members
    return parts
