"""The one base of xdc's user errors (bad config, manifest, split, weights, ...).

Library code raises a subclass with a message that names the bad input; only the command line
(`xdc.cli.main`) catches `XdcError`, prints `xdc COMMAND: message` and exits with code 2. Anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class XdcError(Exception):
    """A user error: the message says what is wrong and how to fix it."""
