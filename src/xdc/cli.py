"""The `xdc` command: a table of subcommands, each one a module with `add_arguments` and `run`.

Modules are imported only when their subcommand is used, so `xdc --help` stays fast. A user error
(`xdc.errors.XdcError`) from any command ends as one line `xdc COMMAND: message` on stderr and
exit code 2; see docs/DESIGN.md.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from xdc.errors import XdcError

COMMANDS = {
    "scan": ("xdc.data.scan", "probe media files into a manifest CSV"),
    "prepare": ("xdc.data.prepare", "re-encode a manifest's videos for fast training"),
    "pretrain": ("xdc.pretrain", "deep-clustering pretraining (XDC, SDC, MDC, CDC, RAND)"),
    "finetune": ("xdc.evaluation.finetune", "fine-tune or probe an encoder with lr cross-validation"),
    "clusters": ("xdc.reports.clusters", "cluster purity tables, metrics and an HTML browser"),
    "filters": ("xdc.reports.filters", "picture of conv1 filters of one or two checkpoints"),
    "export": ("xdc.evaluation.weights", "write a checkpoint's encoder as a plain torchvision state dict"),
    "demo": ("xdc.demo", "generate built-in data and compare all methods on it"),
}
USER_ERROR = 2  # the exit code of every user error, as argparse's for a bad command line
# OS errors that the user fixes (an output path that is a file, no permission, a read-only or full
# disk) end like a user error; any other OSError is a bug and keeps its traceback.
USER_OS_ERRORS = {errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                  errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG}


def version() -> str:
    """The installed distribution's version; the source tree's when it is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("xdc")
    except PackageNotFoundError:
        from xdc import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="xdc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"xdc {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Parse the command name first, then let its module define the rest of the arguments.
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --help, --version, or an error: exits
        return USER_ERROR
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    command_parser = argparse.ArgumentParser(prog=f"xdc {name}", description=COMMANDS[name][1])
    module.add_arguments(command_parser)
    args = command_parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except XdcError as err:
        message = str(err)
    except OSError as err:
        if err.errno not in USER_OS_ERRORS:
            raise
        message = f"{err.strerror}: {err.filename}" if err.filename else str(err)
    lines = [line.strip() for line in message.splitlines() if line.strip()]  # one line, always
    print(f"xdc {name}: {' / '.join(lines)}", file=sys.stderr)
    return USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
