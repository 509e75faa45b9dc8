"""The `xdc` command: a table of subcommands, each one a module with `add_arguments` and `run`.

Modules are imported only when their subcommand is used, so `xdc --help` stays fast. Options mean
the same in every command: `-o/--out` is what the command writes (a file or a folder, as its help
says), `--config` a YAML file or packaged name, `--checkpoint` a pretrain checkpoint. A user error
(`xdc.errors.XdcError`) from any command ends as one line `xdc COMMAND: message` on stderr and
exit code 2; see docs/DESIGN.md.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from xdc.console import console_log
from xdc.errors import XdcError

COMMANDS = {
    "scan": ("xdc.data.scan", "probe media files into a manifest CSV"),
    "prepare": ("xdc.data.prepare", "re-encode a manifest's videos for fast training"),
    "pretrain": ("xdc.pretrain", "deep-clustering pretraining (XDC, SDC, MDC, CDC, RAND, Superv)"),
    "finetune": ("xdc.evaluation.finetune", "fine-tune or probe an encoder with lr cross-validation"),
    "clusters": ("xdc.reports.clusters", "cluster tables, metrics and an HTML browser of a run's clusters"),
    "filters": ("xdc.reports.filters", "picture of conv1 filters of one or two checkpoints"),
    "export": ("xdc.evaluation.weights", "write a checkpoint's encoder with its architecture and input settings"),
    "demo": ("xdc.demo", "generate built-in data and compare all methods on it"),
}
# What `xdc --help` says first: what the tool does for its user, and the path through it.
ABOUT = """\
Learn video and audio encoders from your own unlabelled videos: each modality's clusters
teach the other (XDC, Alwassel et al., NeurIPS 2020; baselines SDC, MDC, CDC and the RAND
control), then see what they learned and take the weights to any PyTorch code.

From a folder of videos (README.md, "Your own videos"):
  xdc scan my_videos --labels-from-dirs -o labelled.csv   list and probe the files
  xdc prepare labelled.csv -o prepared                    optional: copies that decode fast
  xdc pretrain --data prepared/manifest.csv -o runs/xdc   prints its plan and time first
  xdc clusters runs/xdc --labels labelled.csv -o report   what went together, with purity
  xdc finetune --checkpoint CHECKPOINT ... -o probe       a probe's accuracy beside chance
  xdc export --checkpoint CHECKPOINT -o xdc_video.pth     weights for torch.hub, torchvision
Or everything on built-in data: xdc demo -o demo_out

-o/--out is what every command writes; `xdc COMMAND --help` shows its options and defaults."""
# One example per command, shown at the end of its --help (README.md has the whole path).
EXAMPLES = {
    "scan": "xdc scan my_videos --labels-from-dirs -o manifest.csv",
    "prepare": "xdc prepare manifest.csv --out prepared   # writes prepared/manifest.csv",
    "pretrain": "xdc pretrain --data prepared/manifest.csv --out runs/xdc --method xdc\n"
                "  xdc pretrain --resume runs/xdc",
    "finetune": "xdc finetune --checkpoint runs/xdc/checkpoints/iteration_02.pt --mode linear \\\n"
                "      --train train.csv --val val.csv --test test.csv --out results/xdc",
    "clusters": "xdc clusters runs/xdc --labels manifest.csv --out report/xdc",
    "filters": "xdc filters runs/xdc/checkpoints/iteration_02.pt runs/sdc/checkpoints/iteration_02.pt -o filters.png",
    "export": "xdc export --checkpoint runs/xdc/checkpoints/iteration_02.pt --modality video -o xdc_video.pth",
    "demo": "xdc demo --quick --out demo_out",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help (unless None or False: nothing to show, or the help
    says it); the example epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


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


def command_parser(name: str) -> tuple[object, argparse.ArgumentParser]:
    """(the command's module, its argument parser)."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"xdc {name}", description=COMMANDS[name][1],
                                     epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return module, parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="xdc", description=ABOUT,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"xdc {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Parse the command name first, then let its module define the rest of the arguments.
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --help, --version, or an error: exits
        return USER_ERROR
    name = argv[0]
    module, command = command_parser(name)
    args = command.parse_args(argv[1:])
    with console_log():  # from the first line on: a command's log.txt holds what the console showed
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
