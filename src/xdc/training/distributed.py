"""The few torch.distributed helpers the project needs, in one place.

Launched by torchrun the usual environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...)
are set; launched as a plain process everything here degrades to a single rank.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from xdc.errors import XdcError


class DeviceError(XdcError):
    """The device asked for is not on this machine."""


def init_distributed(device: str = "auto") -> torch.device:
    """Join the process group when launched by torchrun (NCCL on GPU, gloo on CPU); pick the device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise DeviceError("device=cuda was asked for, but CUDA is not available on this machine: "
                          "use device=cpu (or device=auto)")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


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


def broadcast_array(array: np.ndarray | None, src: int = 0) -> np.ndarray:
    """Send a numpy array from rank `src` to every rank (others pass None)."""
    if not is_distributed():
        return array
    header = [None]
    if rank() == src:
        header = [(array.shape, str(array.dtype))]
    dist.broadcast_object_list(header, src=src)
    shape, dtype = header[0]
    if rank() == src:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(_comm_device())
    else:
        tensor = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype,
                             device=_comm_device())
    dist.broadcast(tensor, src=src)
    return tensor.cpu().numpy()


def all_gather_arrays(array: np.ndarray) -> list[np.ndarray]:
    """Every rank's array (first axes may differ in length), in rank order, on every rank."""
    if not is_distributed():
        return [array]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, np.ascontiguousarray(array))
    return gathered


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy) and return it."""
    if not is_distributed():
        return values
    out = values.detach().clone().to(_comm_device())
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)
