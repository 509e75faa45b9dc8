"""Where a pretraining run keeps its files: the one place that spells out the run-folder layout
(docs/DESIGN.md, "Run folder"). Pretraining writes it; reports, the demo and benchmarks read it.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from xdc.errors import XdcError
from xdc.files import atomic_file, holds_files, leftover_temporaries, write_text_atomic
from xdc.locks import folder_lock, lock_path

_ITERATION_CHECKPOINT = re.compile(r"^iteration_(\d+)\.pt$")


class RunFolderError(XdcError):
    """The run folder cannot be used: the path is a file or a folder of other files, or a file in
    it cannot be read (pseudo-labels). (Held by another process: xdc.locks.LockError.)"""


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.rows = self.root / "rows.csv"  # the usable manifest rows the run trains on
        self.log = self.root / "log.txt"  # what the console showed (rank 0); a resumed run appends
        self.summary = self.root / "summary.json"
        self.checkpoints = self.root / "checkpoints"
        # Written after clustering and after every epoch: where a resumed run continues from.
        self.last = self.checkpoints / "last.pt"
        self.features = self.root / "features"  # the last extraction's float16 memmaps, per rank
        self.tensorboard = self.root / "tb"
        self.lock_file = lock_path(self.root)  # held by the process that runs in the folder (xdc.locks)

    def iteration_checkpoint(self, iteration: int) -> Path:
        """Written when an iteration's training ends: its encoders, heads and labels."""
        return self.checkpoints / f"iteration_{iteration:02d}.pt"

    def iteration_checkpoints(self) -> list[tuple[int, Path]]:
        """(iteration, path) of every iteration checkpoint, newest first."""
        found = [(int(m.group(1)), p) for p in self.checkpoints.glob("iteration_*.pt")
                 if (m := _ITERATION_CHECKPOINT.match(p.name))]
        return sorted(found, reverse=True)

    def iteration_dir(self, iteration: int) -> Path:
        return self.root / "iterations" / f"{iteration:02d}"

    def iterations(self) -> list[int]:
        """Iterations whose labels were written, in order."""
        folder = self.root / "iterations"
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []

    def labels(self, iteration: int, modality: str) -> Path:
        """Pseudo-labels of every row of rows.csv, as the `modality` encoder's clusters."""
        return self.iteration_dir(iteration) / f"labels_{modality}.npy"

    def read_labels(self, iteration: int, modality: str) -> np.ndarray:
        """`labels(iteration, modality)` as int64; RunFolderError for a missing file or anything but
        a 1-d integer .npy (pickled objects are never loaded)."""
        path = self.labels(iteration, modality)
        try:
            labels = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise RunFolderError(f"cannot read pseudo-labels {path}: {str(err).splitlines()[0][:200]} "
                                 f"(not a labels file written by xdc pretrain)") from err
        if not isinstance(labels, np.ndarray) or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise RunFolderError(f"{path} is not a pseudo-labels file (1-d integers), "
                                 f"found {getattr(labels, 'dtype', type(labels).__name__)}")
        return labels.astype(np.int64)

    def holds_a_run(self) -> bool:
        """Whether the folder is empty or holds a run's files (config.yaml, rows.csv, checkpoints/
        or a lock): what `locked` may take."""
        if not holds_files(self.root):
            return True
        return any(p.exists() for p in (self.config, self.rows, self.checkpoints, self.lock_file))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this folder for one process (`xdc.locks.folder_lock`: the lock of docs/SCALE.md,
        "Which lock"). Creates the folder; RunFolderError when it is a file, or a folder of other
        files than a run's (never written into); LockError when another process holds it. Then
        removes the temporary files that a killed write of this run left (`stale_temporaries`)."""
        if self.root.exists() and not self.root.is_dir():
            raise RunFolderError(f"{self.root} is a file, not a run folder: choose another --out")
        if not self.holds_a_run():
            raise RunFolderError(f"{self.root} holds other files and no run (no config.yaml, rows.csv or "
                                 f"checkpoints/): choose another --out, e.g. a new folder inside it")
        self.root.mkdir(parents=True, exist_ok=True)
        with folder_lock(self.root, "run folder"):
            for path in self.stale_temporaries():  # only a dead writer leaves one: we hold the lock
                path.unlink(missing_ok=True)
            yield

    def stale_temporaries(self) -> list[Path]:
        """The temporary files (`xdc.files.atomic_file`) a killed write of a run leaves, where a
        run writes them: beside config.yaml, rows.csv and summary.json, and in checkpoints/,
        features/ and iterations/NN/. Nothing else: the folder may hold a user's own `.*.tmp`."""
        found = [p for p in leftover_temporaries(self.root)
                 if p.name.startswith(tuple(f".{f.name}." for f in (self.config, self.rows, self.summary)))]
        for folder in [self.checkpoints, self.features] + [self.iteration_dir(n) for n in self.iterations()]:
            found += leftover_temporaries(folder)
        return found

    def write_summary(self, method: str, iterations: list[dict]) -> None:
        """summary.json: the method and one record per iteration."""
        write_text_atomic(self.summary, json.dumps({"method": method, "iterations": iterations}, indent=2))

    def save_labels(self, iteration: int, labels: dict) -> None:
        """iterations/NN/labels_<modality>.npy, one array per modality."""
        for modality, values in labels.items():
            with atomic_file(self.labels(iteration, modality)) as handle:
                np.save(handle, values)
