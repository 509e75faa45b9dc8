"""Deep-clustering methods, one file each on `base.Method`, found by name with `get_method`."""

from __future__ import annotations

from typing import Sequence

from xdc.methods.base import HEAD_REDUCTIONS, MODALITIES, HeadSpec, Method, head_losses, reduce_heads
from xdc.methods.cdc import CDC
from xdc.methods.mdc import MDC
from xdc.methods.rand import RAND
from xdc.methods.sdc import SDC
from xdc.methods.superv import Superv
from xdc.methods.xdc import XDC

METHODS = {m.name: m for m in (XDC, SDC, MDC, CDC, RAND, Superv)}


def get_method(name: str, true_labels: Sequence | None = None) -> Method:
    """The method called `name`; `superv` also needs the rows' labels (label texts, `a|b` for
    several classes, or class indices)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: expected one of {', '.join(METHODS)}")
    return Superv(true_labels) if name == "superv" else METHODS[name]()


__all__ = ["HEAD_REDUCTIONS", "MODALITIES", "HeadSpec", "Method", "head_losses", "reduce_heads", "get_method",
           "METHODS"]
