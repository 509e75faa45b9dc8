"""Running metrics of a training loop that must not wait for its GPU every step (as torchvision's and
DINO's `MetricLogger`, with the sums kept on the device).

A step adds its values (tensors, on whatever device computed them) to running sums without
reading them: no `.item()`, no collective. `reduce()` sums them over ranks and brings them to the
host in one all-reduce, once per log interval and at the end. Numbers the host already knows
(clips in a batch, skipped samples) are counted on the host and travel in the same all-reduce.
The meter also says where the time went: waiting for the next batch (data) or the rest (compute;
on a GPU, the time to queue the work, and the waits for it at each reduce).

Nothing here knows what is trained: pretraining's and fine-tuning's loops can both use it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from xdc import distributed as dist_utils

NONE = np.iinfo(np.int64).max  # "no non-finite value yet", the largest update index


@dataclass
class Totals:
    """Reduced sums over every rank, on the host: `sums[name]` (float64, the value's shape) of
    value × weight, `weights[name]` the summed weights, `counts[name]` the host counters."""

    sums: dict[str, torch.Tensor]
    weights: dict[str, float]
    counts: dict[str, float]

    def mean(self, name: str) -> torch.Tensor:
        """The weighted mean of `name` (0 where nothing was added)."""
        return self.sums[name] / (self.weights[name] or 1)


class _Sums:
    """The running sums of one span: since the meter started, or since the latest interval did."""

    def __init__(self, values: dict[str, tuple[int, ...]], counts: tuple[str, ...], device: torch.device | str):
        self.values = {name: torch.zeros(shape, dtype=torch.float64, device=device) for name, shape in values.items()}
        self.weights = dict.fromkeys(values, 0.0)
        self.counts = dict.fromkeys(counts, 0.0)
        self.device = device

    def reduce(self) -> Totals:
        """Summed over every rank: one all-reduce, one copy to the host."""
        host = [*self.weights.values(), *self.counts.values()]
        flat = torch.cat([v.reshape(-1) for v in self.values.values()]
                         + [torch.tensor(host, dtype=torch.float64, device=self.device)])
        flat = dist_utils.all_reduce_sum(flat).cpu()
        sums, at = {}, 0
        for name, value in self.values.items():
            sums[name] = flat[at:at + value.numel()].reshape(value.shape)
            at += value.numel()
        host = flat[at:].tolist()
        return Totals(sums, dict(zip(self.weights, host)), dict(zip(self.counts, host[len(self.weights):])))


class MetricMeter:
    """Running sums of `values` (name -> shape) and host `counts` (names), declared up front so
    that every rank reduces the same layout, also a rank that added nothing."""

    def __init__(self, values: dict[str, tuple[int, ...]], counts: tuple[str, ...] = (),
                 device: torch.device | str = "cpu"):
        self.span = (values, counts, device)
        self.total = _Sums(*self.span)  # since the start
        self.recent = _Sums(*self.span)  # since the last `reduce(recent=True)`
        # Per element of each value: the first update whose value was not finite (NONE: none yet).
        self.first_nonfinite = {name: torch.full(shape, NONE, dtype=torch.int64, device=device)
                                for name, shape in values.items()}
        self.updates = 0
        self.data_seconds = self.compute_seconds = 0.0

    def update(self, weight: float = 1.0, **values: torch.Tensor) -> None:
        """Add each value × `weight` to its running sums; nothing waits for the device."""
        for name, value in values.items():
            value = value.detach().double()
            weighted = value * weight
            for sums in (self.total, self.recent):
                sums.values[name] += weighted
                sums.weights[name] += weight
            first = self.first_nonfinite[name]
            first.copy_(torch.where(torch.isfinite(value), first, first.clamp(max=self.updates)))
        self.updates += 1

    def count(self, **numbers: float) -> None:
        """Add host numbers (e.g. samples skipped) to their counters."""
        for name, number in numbers.items():
            self.total.counts[name] += number
            self.recent.counts[name] += number

    def reduce(self, recent: bool = False) -> Totals:
        """The sums since the start, or with `recent` since the last recent reduce (which starts a
        new interval), over every rank. A collective: every rank calls it at the same point."""
        if not recent:
            return self.total.reduce()
        sums, self.recent = self.recent, _Sums(*self.span)
        return sums.reduce()

    def first_nonfinite_update(self, name: str) -> tuple[int, int] | None:
        """(update, element) of the first value of `name` that was not finite on any rank (updates
        counted from 0, elements in flat order), None when all were finite. A collective."""
        mine = self.first_nonfinite[name].reshape(-1).cpu().numpy()
        first = np.min(np.stack(dist_utils.all_gather_arrays(mine)), axis=0)
        if first.min() == NONE:
            return None
        element = int(np.argmin(first))
        return int(first[element]), element

    def timed(self, items: Iterable) -> Iterator:
        """`items` one by one, timing the wait for each (data) apart from the time until the
        next one is asked for (compute)."""
        asked = time.perf_counter()
        for item in items:
            got = time.perf_counter()
            self.data_seconds += got - asked
            yield item
            asked = time.perf_counter()
            self.compute_seconds += asked - got

    @property
    def data_wait(self) -> float:
        """The fraction of the time spent waiting for data."""
        total = self.data_seconds + self.compute_seconds
        return self.data_seconds / total if total > 0 else 0.0
