"""Where a pretraining run keeps its files: the one place that spells out the run-folder layout
(docs/DESIGN.md, "Run folder"). Pretraining writes it; reports, the demo and benchmarks read it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from xdc.errors import XdcError
from xdc.files import write_text_atomic

_ITERATION_CHECKPOINT = re.compile(r"^iteration_(\d+)\.pt$")


class RunFolderError(XdcError):
    """The run folder cannot be used: another process holds it, the path is not a folder, or a
    file in it cannot be read (pseudo-labels)."""


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
        self.lock_file = self.root / ".lock"  # flock'ed by the process that runs in the folder

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

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold this folder for one process: an exclusive `flock` on `lock_file`, which the OS
        releases when the process ends however it ends, so a lock is never stale. Creates the
        folder; raises RunFolderError when it is a file or another process holds it. Then removes
        the temporary files (`.NAME.*.tmp`, see checkpoint.atomic_file) a killed run left."""
        if self.root.exists() and not self.root.is_dir():
            raise RunFolderError(f"{self.root} is a file, not a run folder: choose another --out")
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.lock_file, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise RunFolderError(f"run folder {self.root} in use by PID {holder}: wait until that "
                                     f"run ends (or stop it), or choose another folder") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            for tmp in self.root.rglob(".*.tmp"):  # only a dead writer leaves one: we hold the lock
                tmp.unlink(missing_ok=True)
            yield  # the lock goes with the handle's close

    def write_summary(self, method: str, iterations: list[dict]) -> None:
        """summary.json (rank 0 only: the other ranks' records lack the cluster statistics)."""
        from xdc import distributed as dist_utils

        if dist_utils.is_main():
            write_text_atomic(self.summary, json.dumps({"method": method, "iterations": iterations}, indent=2))

    def save_labels(self, iteration: int, labels: dict) -> None:
        """iterations/NN/labels_<modality>.npy, one array per modality."""
        self.iteration_dir(iteration).mkdir(parents=True, exist_ok=True)
        for modality, values in labels.items():
            np.save(self.labels(iteration, modality), values)
