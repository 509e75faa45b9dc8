"""Atomic checkpoints that load with `torch.load(weights_only=True)`.

weights_only loading refuses arbitrary pickled objects, so a checkpoint holds only tensors and
plain containers of numbers and strings: state dicts, the config as YAML text, labels as tensors,
and every RNG state converted to tensors (`rng_state` / `set_rng_state`).
"""

from __future__ import annotations

import pickle
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xdc import distributed as dist_utils
from xdc.errors import XdcError
from xdc.files import atomic_file, disk_full_names


class CheckpointError(XdcError, FileNotFoundError):
    """A checkpoint that is missing, or that cannot be read (truncated, not a checkpoint, or
    holding objects that weights_only loading refuses)."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` atomically (`atomic_file`); a full disk is `xdc.files.DiskFullError` naming
    `path` (the temporary file removed, an older file at `path` intact)."""
    with disk_full_names(path), atomic_file(path) as handle:
        torch.save(state, handle)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Always onto the CPU: `load_state_dict` moves weights and optimiser state to the parameters'
    device, and RNG states must stay CPU tensors (numpy's cannot come from CUDA)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated, not a checkpoint, or "
                              f"holds objects that safe loading (weights_only) refuses ({load_error_reason(err)})") from err


def load_error_reason(err: BaseException) -> str:
    """One line from torch.load's error: for a refused object the line naming it, not torch's advice
    to load with weights_only=False (which would run the file's code)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    if lines[0].startswith("Weights only load failed"):
        named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
        return f"refused by weights_only loading: {(named or [lines[-1]])[0][:200]}"
    return lines[0][:200]


def rng_state() -> dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states, as tensors and plain numbers. CUDA: the generator of
    this process's own device only (None when it never used CUDA), like the CPU one: a rank saves
    what it draws from, so a checkpoint of 8 GPUs resumes on 1 or 4 (`set_rng_state`)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def cuda_state_for(saved: torch.Tensor | list[torch.Tensor] | None, device: int) -> torch.Tensor | None:
    """The CUDA generator state for CUDA device `device` from a checkpoint's `rng["cuda"]`: one
    tensor (one device's, as `rng_state` writes it) or, in older checkpoints, a list of every GPU
    the process saw: the entry of `device` when the list has one, else the first. None: no state."""
    if saved is None or isinstance(saved, torch.Tensor):
        return saved
    if not saved:
        return None
    return saved[device] if device < len(saved) else saved[0]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured; the CUDA state (onto this process's current device) only
    where CUDA is present."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and len(state["cuda"]) and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_state_for(state["cuda"], torch.cuda.current_device()).cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))


def rank_rng_states() -> list[dict[str, Any]]:
    """Every rank's `rng_state`, in rank order (a collective: every rank calls it), so that each
    rank resumes its own random streams."""
    if not dist_utils.is_distributed():
        return [rng_state()]
    states = [None] * dist_utils.world_size()
    torch.distributed.all_gather_object(states, rng_state())
    return states


def restore_rank_rng(states: list[dict[str, Any]]) -> None:
    """This rank's state of `rank_rng_states`; rank 0's when the world size changed."""
    if len(states) != dist_utils.world_size():
        print(f"rank {dist_utils.rank()}: the checkpoint was written by {len(states)} rank(s); "
              "random streams restart from rank 0's state", file=sys.stderr, flush=True)
    set_rng_state(states[dist_utils.rank() if len(states) == dist_utils.world_size() else 0])
