"""Where a pretraining run keeps its files: the one place that spells out the run-folder layout
(docs/DESIGN.md, "Run folder"). Pretraining writes it; reports, the demo and benchmarks read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ITERATION_CHECKPOINT = re.compile(r"^iteration_(\d+)\.pt$")


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def rows(self) -> Path:
        return self.root / "rows.csv"

    @property
    def log(self) -> Path:
        """What the console showed (rank 0), progress bars left out; a resumed run appends."""
        return self.root / "log.txt"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        """Written after clustering and after every epoch: where `--resume` continues from."""
        return self.checkpoints / "last.pt"

    def iteration_checkpoint(self, iteration: int) -> Path:
        """Written when an iteration's training ends: its encoders, heads and labels."""
        return self.checkpoints / f"iteration_{iteration:02d}.pt"

    def final_checkpoint(self) -> Path | None:
        """The newest iteration checkpoint, or None before the first iteration ends."""
        found = [(int(m.group(1)), p) for p in self.checkpoints.glob("iteration_*.pt")
                 if (m := _ITERATION_CHECKPOINT.match(p.name))]
        return max(found)[1] if found else None

    def iteration_dir(self, iteration: int) -> Path:
        return self.root / "iterations" / f"{iteration:02d}"

    def iterations(self) -> list[int]:
        """Iterations whose labels were written, in order."""
        folder = self.root / "iterations"
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []

    def labels(self, iteration: int, modality: str) -> Path:
        """Pseudo-labels of every row of rows.csv, as the `modality` encoder's clusters."""
        return self.iteration_dir(iteration) / f"labels_{modality}.npy"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"
