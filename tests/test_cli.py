"""xdc.cli: one vocabulary across commands (every option explained with its default shown once, an
example per command, `-o/--out` for what a command writes, one metavar style, and `xdc --help` that
starts with what the tool does for its user), and what every command makes of hostile or misplaced
files: one line `xdc COMMAND: ...` on stderr with exit code 2, never a traceback, nothing unpickled."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMALL, TINY, assert_user_error, cli

from xdc.cli import COMMANDS, command_parser, main


def rendered_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """An option's help as `--help` prints it (defaults appended by the formatter)."""
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_has_help_and_every_command_an_example(name):
    _, parser = command_parser(name)
    assert parser.epilog.startswith("example:\n  xdc " + name)
    for action in parser._actions:
        assert action.help, f"xdc {name}: {action.dest} has no help"
        text = rendered_help(parser, action)
        assert text.count("default:") <= 1, f"xdc {name} {action.dest}: default shown twice: {text}"
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            assert "(default: " in text, action.dest
        if action.metavar is not None and action.dest != "overrides" and name != "demo":  # demo: M1,M2 lists
            assert re.fullmatch(r"[A-Z_]+", action.metavar), f"xdc {name}: metavar {action.metavar}"
        if action.choices and action.option_strings:  # the values in the help, one metavar in the usage
            assert action.metavar and all(str(choice) in text for choice in action.choices), action.dest


@pytest.mark.parametrize("name", [name for name in COMMANDS if name != "demo"])
def test_out_is_what_every_command_writes(name):
    _, parser = command_parser(name)
    usage = parser.format_help()
    assert "-o OUT, --out OUT" in usage, usage
    assert "--output" not in usage and "OUTPUT" not in usage


@pytest.mark.parametrize(("name", "dest", "default"), [("pretrain", "method", "xdc"), ("finetune", "mode", "linear")])
def test_options_that_default_to_the_config_say_so(name, dest, default):
    _, parser = command_parser(name)
    action = next(a for a in parser._actions if a.dest == dest)
    text = rendered_help(parser, action)
    assert "default: the config's" in text and default in text.split("default:")[1]


def test_pretrain_method_help_names_every_method():
    from xdc.methods import METHODS

    _, parser = command_parser("pretrain")
    method = next(a for a in parser._actions if a.dest == "method")
    assert all(name in method.help for name in METHODS) and len(METHODS) == 6


def test_export_takes_the_checkpoint_as_finetune_does(tmp_path, capsys):
    _, export = command_parser("export")
    assert export.parse_args(["--checkpoint", "c.pt", "-o", "f.pth"]).checkpoint == "c.pt"
    with pytest.raises(SystemExit) as exit_:  # the positional spelling is gone: argparse says what is missing
        main(["export", "c.pt", "-o", str(tmp_path / "f.pth")])
    assert exit_.value.code == 2
    assert "the following arguments are required: --checkpoint" in capsys.readouterr().err


def test_top_level_help_starts_with_what_the_tool_does(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    description = text.split("\n\n", 2)[1]
    assert description.startswith("Learn video and audio encoders from your own unlabelled videos")
    assert "add_arguments" not in text and "module" not in text
    for name in ("scan", "prepare", "pretrain", "clusters", "finetune", "export", "demo"):
        assert f"xdc {name} " in text


class Hostile:
    """Unpickling it would run a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_hostile_files_refused_at_every_entry_point(run_copy, tmp_path, capsys, av_manifest):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"video_encoder": Hostile(marker), "audio_encoder": Hostile(marker), "config": "x"}, evil)
    finetune = ["--train", av_manifest, "--test", av_manifest, "--config", "tiny", "--out", tmp_path / "ft"]
    cases = [("finetune", ["--checkpoint", evil, *finetune]), ("finetune", ["--weights", evil, *finetune]),
             ("export", ["--checkpoint", evil, "-o", tmp_path / "x.pth"]), ("filters", [evil, "-o", tmp_path / "f.png"]),
             ("pretrain", ["--config", TINY, "--data", av_manifest, "--out", tmp_path / "r2", *SMALL,
                           f"init_from={evil}"])]
    for command, argv in cases:
        rc, err = cli(capsys, command, *argv)
        assert_user_error(rc, err, command, str(evil))
    # --resume: a hostile last.pt and hostile iteration checkpoints.
    for path in [run_copy.last, *run_copy.checkpoints.glob("iteration_*.pt")]:
        shutil.copy(evil, path)
    rc, err = cli(capsys, "pretrain", "--resume", run_copy.root)
    assert_user_error(rc, err, "pretrain", "last.pt")
    # xdc clusters: a damaged summary.json, then a pickled object array and random bytes as labels.
    run_copy.summary.write_text('{"iterations": [')
    rc, err = cli(capsys, "clusters", run_copy.root, "-o", tmp_path / "report", "--no-media")
    assert_user_error(rc, err, "clusters", str(run_copy.summary))
    labels = run_copy.labels(1, "video")
    np.save(labels, np.array([Hostile(marker)] * 8, dtype=object), allow_pickle=True)
    rc, err = cli(capsys, "clusters", run_copy.root, "-o", tmp_path / "report", "--no-media")
    assert_user_error(rc, err, "clusters", str(labels))
    labels.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    rc, err = cli(capsys, "clusters", run_copy.root, "-o", tmp_path / "report", "--no-media")
    assert_user_error(rc, err, "clusters", str(labels))
    assert not marker.exists()


def test_out_naming_a_file_in_other_commands(run_copy, tmp_path, capsys):
    """Outside pretrain (whose RunFolder says it itself), an OSError the user fixes is one line."""
    target = tmp_path / "a_file"
    target.write_text("x")
    rc, err = cli(capsys, "clusters", run_copy.root, "-o", target, "--no-media")
    line = assert_user_error(rc, err, "clusters", "File exists", str(target))
    assert err.strip() == line
