"""What a command shows on the console, and the log file that keeps it.

`xdc.cli` runs every command inside `console_log()`: from its first line, what the process prints
(stdout and stderr) is recorded, and Python warnings are printed as one line each, once per
command. A run that owns an output folder calls `run_log(FOLDER/log.txt)` once the folder is its
own: the lines printed so far are written there first, then every later one, up to the next
run's `run_log` or the end of the command (the "interrupted; continue with" line, the error line
`xdc.cli` prints on failure). A command refused before that (bad input, a folder holding another
run) writes no log. Only rank 0 records (torchrun sets RANK before anything runs);
progress-bar redraws (carriage returns, cursor codes) stay on the console.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class _Record:
    """The recorded lines: in memory until `open(path)`, then appended to `path` (to the next
    path from the next `open` on)."""

    def __init__(self):
        self.early: io.StringIO | None = io.StringIO()
        self.file = None
        self.in_run = False  # inside a run_log block

    def write(self, text: str) -> None:
        target = self.file or self.early  # neither once closed: a stream kept past the command
        if target is not None:
            target.write(text)

    def open(self, path: Path) -> None:
        self.close()  # a previous run's log, in a command that runs several
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a", encoding="utf-8")
        if self.early is not None:
            self.file.write(self.early.getvalue())
            self.file.flush()
            self.early = None

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class _Tee(io.TextIOBase):
    """Writes to the console stream and to the record; progress-bar redraws to the console only."""

    def __init__(self, console, record: _Record):
        self.console, self.record = console, record

    def write(self, text: str) -> int:
        # The record first: a Ctrl-C between the two writes leaves no line shown but not recorded.
        if "\r" not in text and "\x1b[" not in text:
            self.record.write(text)
        self.console.write(text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.record.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()


def _one_line_warnings():
    """A `warnings.showwarning` that prints `warning: MESSAGE` on one line (no source line), each
    message once: a warning raised every iteration of a run is said once."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"warning: {text}", file=sys.stderr, flush=True)
    return show


def is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def console_log() -> Iterator[None]:
    """Inside the block, what this process prints is recorded for `run_log` (rank 0), and
    warnings are one line each, once."""
    with warnings.catch_warnings():  # puts showwarning back at the end
        warnings.showwarning = _one_line_warnings()
        if not is_rank_zero():
            yield
            return
        record, streams = _Record(), (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Tee(sys.stdout, record), _Tee(sys.stderr, record)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = streams
            record.close()
            record.early = None


@contextmanager
def run_log(path: Path) -> Iterator[None]:
    """What this process prints goes to `path` too (rank 0; appended: a rerun or resume adds to
    it). Inside a `console_log`: from its first line if no run logged before (else from here) to
    the next run's `run_log` or the end of the command, so that the lines said after the run (how
    to resume it, the error that ended it) are in its log. Inside another run's block, or without
    a `console_log`: from here until this block ends."""
    record = sys.stdout.record if isinstance(sys.stdout, _Tee) else None
    if record is None or record.in_run:
        with console_log():
            if is_rank_zero():
                sys.stdout.record.open(Path(path))
                sys.stdout.record.in_run = True
            yield
        return
    record.open(Path(path))
    record.in_run = True
    try:
        yield
    finally:
        record.in_run = False
