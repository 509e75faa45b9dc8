"""The few torch.distributed helpers the project needs, in one place.

Launched by torchrun the usual environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...)
are set; launched as a plain process everything here degrades to a single rank.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from xdc.errors import XdcError


class DeviceError(XdcError):
    """The device asked for is not on this machine."""


DEVICES = ("auto", "cpu", "cuda")  # the `device` setting: auto = CUDA when present


def init_distributed(device: str = "auto", timeout_minutes: float | None = None) -> torch.device:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU); pick the device.

    `timeout_minutes` bounds how long a collective waits for the slowest rank (torch's default
    when None); at scale rank 0 fits PCA and k-means while the others wait in a broadcast."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise DeviceError("device=cuda was asked for, but CUDA is not available on this machine: "
                          "use device=cpu (or device=auto)")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        timeout = None if timeout_minutes is None else timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout)
        warn_shared_store()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        # A run's clip shapes are fixed (frames, crop, batch): cuDNN times its kernels once per
        # shape and keeps the fastest (benchmarks/gpu_check.sh measures on against off).
        torch.backends.cudnn.benchmark = True
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def warn_shared_store() -> None:
    """torchrun on several nodes with --max-restarts and the agents' shared store: after a failure
    the agents count restarts differently and the relaunched ranks read the dead ranks' addresses
    (pytorch/pytorch#135712). Said once, by rank 0."""
    env = os.environ
    if (env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and int(env.get("TORCHELASTIC_MAX_RESTARTS", 0)) > 0
            and int(env.get("GROUP_WORLD_SIZE", 1)) > 1 and rank() == 0):
        print("warning: torchrun --max-restarts over several nodes needs TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
              "where torchrun starts, or a restart may fail to connect (docs/SCALE.md)",
              file=sys.stderr, flush=True)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# Arrays travel as tensors, never as pickles (all_gather_object stages a pickled copy of every
# rank's array on every rank): a small fixed-size header first (dtype, shape), then the data.
_DTYPES = (np.float32, np.float64, np.int64, np.int32, np.float16, np.bool_)
_MAX_DIMS = 6


def _header(array: np.ndarray) -> torch.Tensor:
    if array.dtype.type not in _DTYPES or array.ndim > _MAX_DIMS:
        raise ValueError(f"cannot send an array of dtype {array.dtype} with {array.ndim} dims")
    shape = list(array.shape) + [-1] * (_MAX_DIMS - array.ndim)
    return torch.tensor([_DTYPES.index(array.dtype.type), array.ndim, *shape], dtype=torch.int64)


def _read_header(header: torch.Tensor) -> tuple[np.dtype, tuple[int, ...]]:
    values = header.tolist()
    return np.dtype(_DTYPES[values[0]]), tuple(values[2:2 + values[1]])


def broadcast_array(array: np.ndarray | None, src: int = 0) -> np.ndarray:
    """Send a numpy array from rank `src` to every rank (others pass None)."""
    if not is_distributed():
        return array
    device = _comm_device()
    header = _header(np.asarray(array)) if rank() == src else torch.zeros(2 + _MAX_DIMS, dtype=torch.int64)
    header = header.to(device)
    dist.broadcast(header, src=src)
    dtype, shape = _read_header(header)
    if rank() == src:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
    else:
        tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, device=device)
    dist.broadcast(tensor, src=src)
    return tensor.cpu().numpy()


def _shapes_and_padded(array: np.ndarray) -> tuple[list[tuple[int, ...]], torch.Tensor]:
    """Every rank's array shape (all-gathered headers) and this rank's array padded to the longest
    first axis, on the communication device."""
    device = _comm_device()
    headers = [torch.empty(2 + _MAX_DIMS, dtype=torch.int64, device=device) for _ in range(world_size())]
    dist.all_gather(headers, _header(array).to(device))
    shapes = [_read_header(h)[1] for h in headers]
    if any(shape[1:] != array.shape[1:] for shape in shapes) or any(_read_header(h)[0] != array.dtype
                                                                    for h in headers):
        raise ValueError(f"ranks hold arrays of different dtypes or trailing shapes: {shapes}")
    padded = np.zeros((max(shape[0] for shape in shapes), *array.shape[1:]), array.dtype)
    padded[:len(array)] = array
    return shapes, torch.from_numpy(padded).to(device)


def all_gather_arrays(array: np.ndarray) -> list[np.ndarray]:
    """Every rank's array, in rank order, on every rank. The arrays share dtype and trailing axes;
    their first axes may differ: each is padded to the longest, then cut back."""
    array = np.ascontiguousarray(array)
    if not is_distributed():
        return [array]
    shapes, mine = _shapes_and_padded(array)
    gathered = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(gathered, mine)
    return [g[:shape[0]].cpu().numpy() for g, shape in zip(gathered, shapes)]


def gather_arrays(array: np.ndarray, dst: int = 0) -> list[np.ndarray] | None:
    """`all_gather_arrays`, received by rank `dst` only (the others get None): for data one rank
    uses, such as k-means' sample, which would otherwise be copied onto every rank."""
    array = np.ascontiguousarray(array)
    if not is_distributed():
        return [array]
    shapes, mine = _shapes_and_padded(array)
    if rank() != dst:
        dist.gather(mine, None, dst=dst)
        return None
    gathered = [torch.empty_like(mine) for _ in range(world_size())]
    dist.gather(mine, gathered, dst=dst)
    return [g[:shape[0]].cpu().numpy() for g, shape in zip(gathered, shapes)]


def every_rank(flag: bool) -> bool:
    """True when `flag` is True on every rank (a collective: every rank calls it). Loops whose
    body holds collectives use it to stop on all ranks at the same step."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy) and return it."""
    if not is_distributed():
        return values
    out = values.detach().clone().to(_comm_device())
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)
