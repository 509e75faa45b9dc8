"""Where `xdc finetune` keeps its files: the one place that spells out its output folder
(docs/DESIGN.md, "Finetune output"), what a rerun may reuse there, and what a killed run leaves.

A rerun into the same folder reuses finished work (features, each lr's model and val scores,
results) only when it was made from the same content: `stamp.json` records the digest of the
encoder's weights, of each subset's rows (paths and labels), and the config, modality and source
(`xdc.stamps`); a rerun from other content is refused, naming what differs. `features.pt`
carries its own key as well (`evaluation.feature_cache`): it may be copied in from another folder.
Every file is written whole or not at all (`xdc.files`); a killed write leaves a `.NAME.*.tmp`,
removed on the next run for the names written here only.
"""

from __future__ import annotations

import json
from pathlib import Path

from xdc.config import FinetuneConfig, save_config
from xdc.evaluation.splits import SPLITS
from xdc.files import write_text_atomic
from xdc.stamps import SettingsMismatch, check_stamp, write_stamp
from xdc.training.monitor import tensorboard_writer

FEATURES_FILE = "features.pt"  # the frozen encoder's clip features (linear, knn, retrieval)
WRITTEN = ("stamp.json", "config.yaml", "results.json", FEATURES_FILE)  # atomic writes, in the folder
WRITTEN_PER_LR = ("model.pt", "last.pt", "val.json")  # atomic writes, in each lr_<lr>/
REMEDY = "choose another --out (or delete it)"


class FinetuneFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.stamp = self.root / "stamp.json"  # what the folder's work was made from
        self.config = self.root / "config.yaml"
        self.log = self.root / "log.txt"  # what the console showed; a rerun appends
        self.results = self.root / "results.json"
        self.features = self.root / FEATURES_FILE
        self.tensorboard = self.root / "tb"

    def lr_dir(self, lr: float) -> Path:
        """One lr's work: `model.pt` (the trained classifier, and the encoder in full mode),
        `val.json` (its validation scores: the lr is finished), `last.pt` while it trains."""
        return self.root / f"lr_{lr:g}"

    def take(self, settings: dict, cfg: FinetuneConfig) -> bool:
        """Make the folder this run's: SettingsMismatch when it holds work made from other content
        (or results without a stamp); else clear what killed writes left, then record the stamp and
        config.yaml. True when the folder already held this run: its finished work is reused."""
        same = check_stamp(self.stamp, settings, REMEDY)
        if not same and (self.results.exists() or any(self.root.glob("lr_*"))):
            raise SettingsMismatch(f"{self.root} holds fine-tuning results without a record of what they were "
                                   f"made from ({self.stamp.name}): {REMEDY}")
        for partial in self.partial_files():
            partial.unlink(missing_ok=True)
        write_stamp(self.stamp, settings)
        save_config(cfg, self.config)
        return same

    def partial_files(self) -> list[Path]:
        """What killed atomic writes of this code's files left (`xdc.files.atomic_file` names them
        `.NAME.*.tmp`), where it writes them; nothing else."""
        names = [*WRITTEN, *(f"{split}_*" for split in SPLITS)]  # and evaluation.splits' manifests, stamps
        found = [path for name in names for path in self.root.glob(f".{name}.*.tmp")]
        for folder in self.root.glob("lr_*"):
            found += [path for name in WRITTEN_PER_LR for path in folder.glob(f".{name}.*.tmp")]
        return found

    def read_json(self, path: Path) -> dict | None:
        """A JSON object this folder holds; None when missing or unreadable (said on the console:
        the work it records is done again)."""
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            value = None
        if not isinstance(value, dict):
            print(f"  {path.relative_to(self.root)} is unreadable: doing its work again", flush=True)
            return None
        return value

    def write_json(self, path: Path, value: dict) -> None:
        write_text_atomic(path, json.dumps(value, indent=2))

    def writer(self, name: str):
        """A TensorBoard writer for tb/<name>."""
        return tensorboard_writer(self.tensorboard / name)
