"""One vocabulary across commands: every option explained, an example per command, `-o/--out`
for what a command writes, the old spellings still accepted."""

from __future__ import annotations

import argparse

import pytest

from xdc.cli import COMMANDS, command_parser


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_option_has_help_and_every_command_an_example(name):
    _, parser = command_parser(name)
    assert parser.epilog.startswith("example:\n  xdc " + name)
    for action in parser._actions:
        assert action.help, f"xdc {name}: {action.dest} has no help"
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            assert "(default: " in parser._get_formatter()._get_help_string(action), action.dest
    outs = [a for a in parser._actions if "--out" in a.option_strings]
    assert outs, f"xdc {name} has no --out"
    assert "-o" in outs[0].option_strings


def test_old_and_new_spellings_mean_the_same():
    _, scan = command_parser("scan")
    assert scan.parse_args(["v", "--output", "a.csv"]).output == scan.parse_args(["v", "-o", "a.csv"]).output \
        == scan.parse_args(["v", "--out", "a.csv"]).output == "a.csv"
    _, prepare = command_parser("prepare")
    assert prepare.parse_args(["m.csv", "-o", "d"]).out == prepare.parse_args(["m.csv", "--out", "d"]).out == "d"
    assert prepare.parse_args(["m.csv", "-o", "d", "--out-manifest", "n.csv"]).output == "n.csv"
    _, export = command_parser("export")
    assert export.parse_args(["c.pt", "-o", "f.pth"]).checkpoint == "c.pt"
    assert export.parse_args(["--checkpoint", "c.pt", "-o", "f.pth"]).checkpoint_option == "c.pt"


def test_pretrain_method_help_names_every_method():
    from xdc.methods import METHODS

    _, parser = command_parser("pretrain")
    method = next(a for a in parser._actions if a.dest == "method")
    assert all(name in method.help for name in METHODS) and len(METHODS) == 6


def test_export_takes_the_checkpoint_once(tmp_path, capsys):
    from xdc.cli import main

    assert main(["export", "-o", str(tmp_path / "f.pth")]) == 2
    assert "give the checkpoint once" in capsys.readouterr().err
