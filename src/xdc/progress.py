"""Progress bars only where someone watches them: on a terminal. Piped into a file (a log, a
batch scheduler) a bar is carriage returns and cursor codes; the commands print a line per epoch
or per step instead."""

from __future__ import annotations

import sys

from tqdm import tqdm


def on_terminal() -> bool:
    return sys.stderr.isatty()


def progress(iterable=None, **kwargs) -> tqdm:
    """`tqdm(iterable, **kwargs)`, disabled off a terminal (and wherever `disable` says so)."""
    kwargs["disable"] = kwargs.get("disable", False) or not on_terminal()
    return tqdm(iterable, **kwargs)
