"""What a pretraining run says: the epoch line, its TensorBoard scalars, the closing summary, and
digests that show the ranks agree. Per-head losses sit beside chance (ln k): a mean over heads
hides a head that learns nothing.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from xdc.methods import MODALITIES, HeadSpec
from xdc.training import distributed as dist_utils
from xdc.training.loop import weights_digest

# A head whose loss stays within this fraction of chance (ln k) learned (next to) nothing.
CHANCE_MARGIN = 0.05


def tensorboard_writer(folder: Path):
    """TensorBoard's writer on rank 0, None elsewhere (imported here: it is slow to import)."""
    if not dist_utils.is_main():
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(folder))


def log_clusters(writer, record: dict) -> None:
    """An iteration's cluster statistics as TensorBoard scalars (step: the iteration)."""
    for modality in MODALITIES:
        for key in ("empty_clusters", "nmi_prev", "purity", "nmi"):
            if record.get(modality, {}).get(key) is not None:
                writer.add_scalar(f"cluster/{modality}/{key}", record[modality][key], record["iteration"])


def rank_digests(labels: dict[str, np.ndarray], model: torch.nn.Module) -> list[dict[str, str]]:
    """Per rank, short hashes of the labels and the model it holds: equal when the ranks agree."""
    digest = hashlib.sha1()
    for name in sorted(labels):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(labels[name], dtype=np.int64).tobytes())
    mine = {"labels": digest.hexdigest()[:16], "weights": weights_digest(model)}
    if not dist_utils.is_distributed():
        return [mine]
    every = [None] * dist_utils.world_size()
    torch.distributed.all_gather_object(every, mine)
    return every



def log_epoch(writer, record: dict, train: dict, val: dict, specs: list[HeadSpec], epoch: int, epochs: int,
              step: int, stop: bool) -> None:
    """The epoch's line on the console and its scalars in TensorBoard (rank 0): the loss that
    trains, and each head's loss beside its chance level ln k."""
    if writer is None:
        return
    if val is not None:  # None: no validation pass (early stopping off)
        writer.add_scalar("val/loss", val["loss"], step)
    writer.add_scalar("train/epoch_loss", train["loss"], step)
    writer.add_scalar("train/data_wait", train["data_wait"], step)
    for s in specs:
        writer.add_scalar(f"heads/{s.name}/train_loss", train["heads"][s.name], step)
        if val is not None:
            writer.add_scalar(f"heads/{s.name}/val_loss", val["heads"][s.name], step)
        writer.add_scalar(f"heads/{s.name}/chance", s.chance_loss, step)
    heads = ", ".join(f"{s.name} {train['heads'][s.name]:.3f}/{_num(val and val['heads'][s.name])} "
                      f"(chance {s.chance_loss:.3f})" for s in specs)
    print(f"iteration {record['iteration']} epoch {epoch + 1}/{epochs}: train loss {train['loss']:.4f}, "
          f"val loss {_num(val and val['loss'], 4)}, {train['clips']} clips, skipped {train['skipped']} train / "
          f"{val['skipped'] if val else 0} val, data wait {train['data_wait']:.0%}; heads train/val {heads}"
          + (" -> early stop" if stop else ""), flush=True)


def _num(value: float | None, digits: int = 3) -> str:
    """A loss for the console; "n/a" when there was no validation pass."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def heads_at_chance(summary: dict) -> list[str]:
    """Heads whose validation loss stayed within CHANCE_MARGIN of ln k in every iteration."""
    seen: dict[str, bool] = {}
    for record in summary["iterations"]:
        for name, head in record.get("heads", {}).items():
            loss = head["train_loss"] if head.get("val_loss") is None else head["val_loss"]  # no val pass
            at_chance = loss >= (1 - CHANCE_MARGIN) * head["chance"]
            seen[name] = seen.get(name, True) and at_chance
    return [name for name, stayed in seen.items() if stayed]


def print_closing_summary(summary: dict, run_dir: Path, seconds: float, device: torch.device) -> None:
    print(f"\n{summary['method']} pretraining done in {seconds:.0f} s on {device}: {run_dir}")
    for r in summary["iterations"]:
        parts = [f"iteration {r['iteration']}: {r.get('epochs', 0)} epochs",
                 f"train {r.get('train_loss', float('nan')):.3f}",
                 f"val {_num(r.get('val_loss'))}"]
        for m in MODALITIES:
            s = r[m]
            text = f"{m} empty {s['empty_clusters']}/{s['num_clusters']}"
            if s.get("nmi_prev") is not None:
                text += f" nmi_prev {s['nmi_prev']:.2f}"
            if s.get("nmi") is not None:
                text += f" nmi {s['nmi']:.2f} purity {s['purity']:.2f}"
            parts.append(text)
        parts.append(f"skipped {r.get('skipped', 0)}")
        print("  " + ", ".join(parts))
        for name, head in r.get("heads", {}).items():
            print(f"    {name}: train {head['train_loss']:.3f}, val {_num(head.get('val_loss'))}, "
                  f"chance {head['chance']:.3f}")
    stuck = heads_at_chance(summary)
    if stuck:
        print(f"  heads that never left chance (val loss within {CHANCE_MARGIN:.0%} of ln k): {', '.join(stuck)}")
    sys.stdout.flush()
