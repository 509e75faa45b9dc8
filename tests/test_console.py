"""xdc.console: log.txt is the console: every line a command printed (rank 0), from its first,
warnings as one line each, once."""

from __future__ import annotations

import signal
import subprocess
import sys
import warnings

from conftest import subprocess_env

from xdc.console import console_log, run_log


def test_early_lines_reach_the_log_and_warnings_are_one_line_once(tmp_path, capsys):
    log = tmp_path / "run" / "log.txt"
    with console_log():
        print("before the folder is ours", file=sys.stderr)
        for _ in range(3):  # as a warning raised every iteration
            warnings.warn("only 8 videos\n  to fit the PCA")
        with run_log(log):
            print("inside")
        print("after the run, before the command ends")
    assert log.read_text() == ("before the folder is ours\nwarning: only 8 videos to fit the PCA\ninside\n"
                               "after the run, before the command ends\n")
    printed = capsys.readouterr()
    assert printed.err.count("warning: only 8 videos to fit the PCA") == 1 and ".py:" not in printed.err


def test_nothing_written_when_no_folder_is_taken(tmp_path, capsys):
    with console_log():
        print("refused before any folder")
    assert not list(tmp_path.iterdir())
    assert capsys.readouterr().out == "refused before any folder\n"


def test_runs_one_after_the_other_each_get_their_lines(tmp_path):
    """As `xdc demo` runs several: the lines after a run (how to resume it, an error) are its log's
    until the next run starts."""
    with console_log():
        print("first line of the command")
        with run_log(tmp_path / "a.txt"):
            print("run a")
        print("after a")
        with run_log(tmp_path / "b.txt"):
            print("run b")
        print("the end")
    assert (tmp_path / "a.txt").read_text() == "first line of the command\nrun a\nafter a\n"
    assert (tmp_path / "b.txt").read_text() == "run b\nthe end\n"


def test_a_second_log_inside_a_written_one_gets_its_own_lines(tmp_path):
    with run_log(tmp_path / "outer.txt"):
        print("outer")
        with run_log(tmp_path / "inner.txt"):
            print("both")
    assert (tmp_path / "outer.txt").read_text() == "outer\nboth\n"
    assert (tmp_path / "inner.txt").read_text() == "both\n"


def test_log_txt_holds_every_line_the_console_showed(av_manifest, tmp_path):
    """`xdc pretrain` without --config (the CPU preset, shrunk), interrupted in its third iteration
    by SIGTERM: the lines printed before the run folder existed, the plan, the warning raised in
    every iteration, the epochs and the line that says how to continue are all in log.txt."""
    run = tmp_path / "run"
    env = {**subprocess_env(), "CUDA_VISIBLE_DEVICES": ""}
    argv = [sys.executable, "-m", "xdc.cli", "pretrain", "--data", str(av_manifest), "--out", str(run),
            "model.width=8", "data.frames=4", "data.eval_clips=1", "data.num_workers=0", "iterations=5",
            "optim.total_epochs=1"]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout = []
    for line in process.stdout:  # until the second iteration has trained: the third is under way
        stdout.append(line)
        if line.startswith("iteration 1 epoch 1/1"):
            process.send_signal(signal.SIGTERM)
            break
    rest, stderr = process.communicate(timeout=300)
    console = [line.rstrip("\n") for line in [*stdout, *rest.splitlines(True), *stderr.splitlines(True)]]
    assert process.returncode == 130, stderr
    log = (run / "log.txt").read_text().splitlines()
    missing = [line for line in console if line.strip() and line not in log]
    assert not missing, missing
    assert any(line.startswith("no --config given: using") for line in log)
    assert any(line.endswith("8 usable videos, none dropped") for line in log)
    assert f"interrupted; continue with: xdc pretrain --resume {run}" in log
    pca = [line for line in log if "to fit the PCA" in line]  # raised in each of the iterations
    assert len(pca) == 1 and pca[0].startswith("warning: cluster.pca_dim=32, but only 8 videos")
    assert stderr.count("to fit the PCA") == 1 and "UserWarning" not in stderr


def test_a_stream_kept_past_the_command_still_writes_to_the_console(tmp_path, capsys):
    """A handler that took sys.stderr during the command (logging, tqdm) may write after it."""
    with console_log(), run_log(tmp_path / "log.txt"):
        kept = sys.stderr
        print("inside", file=kept)
    print("after", file=kept, flush=True)
    assert (tmp_path / "log.txt").read_text() == "inside\n"
    assert capsys.readouterr().err == "inside\nafter\n"
