"""xdc.evaluation.finetune_folder, the finetune output folder (issue 22): a rerun reuses work only
when it is made from the same content, every file is written whole, what killed writes left is
cleared (and nothing else), a full disk is one line; the folder keeps its own log.txt and
config.yaml (issue 21). Real videos (conftest's `labelled_manifests`), real encoders, a real tmpfs
for the full disk."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import on_a_small_disk

from xdc.cli import main
from xdc.models import video_encoder


def save_weights(path: Path, seed: int) -> Path:
    """A random video encoder of the tiny config's shape, as a state-dict file (`--weights`)."""
    torch.manual_seed(seed)
    torch.save(video_encoder("r2plus1d_18", 8).state_dict(), path)
    return path


def finetune_args(manifests: Path, weights: Path, out: Path, mode: str, *extra: str, train: str = "train.csv",
                  test: str = "test.csv") -> list[str]:
    return ["finetune", "--weights", str(weights), "--config", "tiny", "--mode", mode,
            "--train", str(manifests / train), "--test", str(manifests / test), "--out", str(out), *extra]


def run(capsys, args: list[str]) -> tuple[int, str, str]:
    """`xdc ARGS` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def scores(result: dict) -> dict:
    """Everything but the run's own facts (time taken, the folder's device)."""
    return {key: value for key, value in result.items() if key not in ("seconds", "device")}


def test_other_weights_under_the_same_path_are_refused(labelled_manifests, tmp_path, capsys):
    weights = save_weights(tmp_path / "enc.pth", seed=1)
    args = finetune_args(labelled_manifests, weights, tmp_path / "out", "linear", "fc_lrs=[0.1]")
    assert run(capsys, args)[0] == 0
    save_weights(weights, seed=2)  # the same file name, other weights
    code, _, err = run(capsys, args)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("xdc finetune: ") and "(encoder_weights: " in err


def test_features_are_reused_only_for_the_same_encoder_and_rows(labelled_manifests, tmp_path, capsys):
    """The demo copies a linear probe's features.pt into its kNN folder: reused when made from the
    same encoder and rows, extracted again otherwise (never another encoder's features)."""
    first, second = save_weights(tmp_path / "a.pth", seed=1), save_weights(tmp_path / "b.pth", seed=2)
    assert run(capsys, finetune_args(labelled_manifests, first, tmp_path / "probe", "knn"))[0] == 0
    made = torch.load(tmp_path / "probe" / "features.pt", weights_only=True)
    for name in ("same", "other_weights", "other_rows"):
        (tmp_path / name).mkdir()
        shutil.copy(tmp_path / "probe" / "features.pt", tmp_path / name / "features.pt")

    code, out, _ = run(capsys, finetune_args(labelled_manifests, first, tmp_path / "same", "retrieval"))
    assert code == 0 and "reusing features.pt (same encoder, rows and clip settings)" in out

    code, out, _ = run(capsys, finetune_args(labelled_manifests, second, tmp_path / "other_weights", "knn"))
    assert code == 0 and "features.pt was made from another encoder" in out
    assert run(capsys, finetune_args(labelled_manifests, second, tmp_path / "fresh", "knn"))[0] == 0
    redone = torch.load(tmp_path / "other_weights" / "features.pt", weights_only=True)
    assert torch.equal(redone["test"], torch.load(tmp_path / "fresh" / "features.pt", weights_only=True)["test"])
    assert not torch.equal(redone["test"], made["test"])
    assert scores(results(tmp_path / "other_weights")) == scores(results(tmp_path / "fresh"))

    swapped = finetune_args(labelled_manifests, first, tmp_path / "other_rows", "knn", train="test.csv",
                            test="train.csv")
    code, out, _ = run(capsys, swapped)
    assert code == 0 and "extracting again" in out
    assert torch.load(tmp_path / "other_rows" / "features.pt", weights_only=True)["train"].shape[0] == 6


def test_a_rerun_reuses_finished_work_says_so_and_logs_the_console(labelled_manifests, tmp_path, capsys):
    weights = save_weights(tmp_path / "enc.pth", seed=1)
    out = tmp_path / "out"
    args = finetune_args(labelled_manifests, weights, out, "linear", "fc_lrs=[0.01,0.1]")
    code, first_out, first_err = run(capsys, args)
    assert code == 0
    first = results(out)
    assert yaml.safe_load((out / "config.yaml").read_text())["fc_lrs"] == [0.01, 0.1]
    code, again, again_err = run(capsys, args)
    assert code == 0 and "reusing the finished results (same encoder, rows and settings)" in again
    assert results(out) == first
    # Killed after the sweep, before results.json: the finished lrs and the features are read back.
    (out / "results.json").unlink()
    code, resumed, resumed_err = run(capsys, args)
    assert code == 0 and "reusing features.pt" in resumed
    assert "lr 0.01: reusing lr_0.01/" in resumed and "lr 0.1: reusing lr_0.1/" in resumed
    assert scores(results(out)) == scores(first)
    # log.txt holds every line the console showed (stdout and stderr), of every run.
    console = [line for text in (first_out, first_err, again, again_err, resumed, resumed_err)
               for line in text.splitlines()]
    logged = (out / "log.txt").read_text().splitlines()
    assert sorted(console) == sorted(logged)
    assert logged[-1].startswith("finetune linear video done") and "(chance 0.333, majority 0.333)" in logged[-1]


def test_an_unreadable_val_json_is_done_again(labelled_manifests, tmp_path, capsys):
    weights = save_weights(tmp_path / "enc.pth", seed=1)
    out = tmp_path / "out"
    args = finetune_args(labelled_manifests, weights, out, "linear", "fc_lrs=[0.01,0.1]")
    assert run(capsys, args)[0] == 0
    first = results(out)
    (out / "results.json").unlink()
    (out / "lr_0.1" / "val.json").write_text('{"top1_cl')  # truncated by hand: xdc writes it whole
    code, resumed, err = run(capsys, args)
    assert code == 0 and "Traceback" not in err
    assert "lr_0.1/val.json is unreadable: doing its work again" in resumed and "lr 0.1: val top1_clip" in resumed
    assert scores(results(out)) == scores(first)


def test_a_rerun_clears_what_killed_writes_left_and_nothing_else(labelled_manifests, tmp_path, capsys):
    weights = save_weights(tmp_path / "enc.pth", seed=1)
    out = tmp_path / "out"
    args = finetune_args(labelled_manifests, weights, out, "fc", "fc_lrs=[0.1]", "optim.total_epochs=1")
    assert run(capsys, args)[0] == 0
    (out / "results.json").unlink()
    partial = [out / "lr_0.1" / ".last.pt.k2j3h4ab.tmp", out / "lr_0.1" / ".model.pt.x8f7e6d5.tmp",
               out / ".features.pt.abcd1234.tmp", out / ".results.json.q1w2e3r4.tmp"]
    mine = [out / ".draft.tmp", out / "lr_0.1" / ".notes.tmp", out / "notes" / ".last.pt.k2j3h4ab.tmp"]
    for path in partial + mine:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")
    assert run(capsys, args)[0] == 0
    assert not any(path.exists() for path in partial)
    assert all(path.read_bytes() == b"partial" for path in mine)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_same_command_then_finishes(labelled_manifests, tmp_path):
    """A 512 KiB tmpfs with 40 KiB free: the run stops with one line naming the folder; after
    making room the same command reuses what was finished and gives the scores of a run that
    had room."""
    disk = tmp_path / "disk"
    weights = save_weights(tmp_path / "enc.pth", seed=1)
    command = " ".join([sys.executable, "-m", "xdc.cli",
                        *finetune_args(labelled_manifests, weights, disk / "out", "linear", "fc_lrs=[0.01,0.1]")])
    script = (f"head -c {472 * 1024} /dev/zero > {disk}/filler && "
              f"{command} > /dev/null 2> {tmp_path}/full.txt; echo $? > {tmp_path}/full_rc; rm {disk}/filler && "
              f"{command} > /dev/null 2> {tmp_path}/room.txt; echo $? > {tmp_path}/room_rc; "
              f"cp {disk}/out/results.json {tmp_path}/results.json")
    done = on_a_small_disk(disk, "512k", script)
    assert done.returncode == 0, done.stderr
    full = (tmp_path / "full.txt").read_text()
    assert (tmp_path / "full_rc").read_text().strip() == "2" and "Traceback" not in full
    last = full.strip().splitlines()[-1]  # names the file being written, in the run's folder
    assert last.startswith(f"xdc finetune: the disk holding {disk / 'out'}/") and " is full (" in last
    assert (tmp_path / "room_rc").read_text().strip() == "0", (tmp_path / "room.txt").read_text()
    assert main(finetune_args(labelled_manifests, weights, tmp_path / "roomy", "linear", "fc_lrs=[0.01,0.1]")) == 0
    kept = json.loads((tmp_path / "results.json").read_text())
    assert scores(kept) == scores(results(tmp_path / "roomy"))
