"""xdc.training.resume: a real `xdc pretrain` killed with SIGKILL mid-epoch, then `--resume`d to
the weights of an uninterrupted run; `IterationState` round trips; `--resume` falling back to the
newest readable iteration checkpoint, or one line when none is; `same_run` on an unreadable
recorded config; `take_run_folder` stopping every rank when rank 0 cannot take the folder, and a
full disk said in one line with the last checkpoint intact."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    SMALL,
    TINY,
    assert_user_error,
    cli,
    free_port,
    on_a_small_disk,
    subprocess_env,
)

from xdc.checkpoint import load_checkpoint
from xdc.stamps import SettingsMismatch
from xdc.training.run_folder import RunFolder

# Epochs of 8 steps (batch 4), so there is time to land the kill inside one.
SETTINGS = ["iterations=2", "optim.epoch_size=32", "optim.batch_size=4", "optim.total_epochs=2",
            "optim.early_stop=false"]


def read_checkpoint(path: Path) -> dict | None:
    try:
        return torch.load(path, weights_only=True)
    except (FileNotFoundError, EOFError, RuntimeError):
        return None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(av_manifest, tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "xdc.pretrain", "--config", str(TINY), "--data", str(av_manifest),
               "--out", str(out), *SETTINGS]
    log = open(tmp_path / "first.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    killed_at = None
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            state = read_checkpoint(last) if last.exists() else None
            # After the first epoch of iteration 0, the second epoch is running: kill inside it.
            if state is not None and state["iteration"] == 0 and state["epoch"] == 1:
                time.sleep(0.3)
                killed_at = read_checkpoint(last)
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        process.wait(timeout=60)
        log.close()
    first_log = (tmp_path / "first.log").read_text()
    assert killed_at is not None, f"never saw a mid-run checkpoint:\n{first_log[-3000:]}"
    assert process.returncode == -signal.SIGKILL
    assert killed_at["epoch"] == 1 and "labels" in killed_at  # the kill landed inside epoch 2
    assert "iteration 0 epoch 2/2" not in first_log

    resumed = subprocess.run([sys.executable, "-m", "xdc.pretrain", "--resume", str(out)], env=env,
                             capture_output=True, text=True, timeout=240)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-4000:]
    assert "resumed" in text and "at iteration 0, epoch 1" in text
    assert "iteration 0 epoch 1/2" not in text  # epoch 1 was not redone
    assert "iteration 0 epoch 2/2" in text and "iteration 1 epoch 2/2" in text
    # The labels of iteration 0 are the checkpoint's, not a re-clustering.
    for key, values in killed_at["labels"].items():
        np.testing.assert_array_equal(np.load(out / "iterations" / "00" / f"labels_{key}.npy"),
                                      values.numpy())
    summary = json.loads((out / "summary.json").read_text())
    assert [r["epochs"] for r in summary["iterations"]] == [2, 2]
    final = read_checkpoint(last)
    assert (final["iteration"], final["epoch"]) == (2, 0)  # the run is complete
    # The scheduler went on from the checkpoint's step count: 2 iterations × 2 epochs × 8 steps.
    assert final["global_step"] == 2 * 2 * 8
    final = read_checkpoint(out / "checkpoints" / "iteration_01.pt")

    # Exactly as far as a run that was never interrupted (same crops, order, momentum, lr).
    from xdc.cli import main as xdc_main

    reference = tmp_path / "reference"
    assert xdc_main(["pretrain", "--config", str(TINY), "--data", str(av_manifest), "--out",
                     str(reference), *SETTINGS]) == 0
    expected = read_checkpoint(reference / "checkpoints" / "iteration_01.pt")
    for part in ("video_encoder", "audio_encoder", "heads"):
        for name, value in expected[part].items():
            torch.testing.assert_close(final[part][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_iteration_state_round_trip(tmp_path):
    from xdc.checkpoint import save_checkpoint
    from xdc.methods import HeadSpec
    from xdc.training.resume import IterationState
    from xdc.training.schedule import EarlyStopping

    heads = torch.nn.ModuleDict({"video_to_true": torch.nn.Linear(4, 3)})
    optimizer = torch.optim.SGD(heads.parameters(), lr=0.1, momentum=0.9)
    heads["video_to_true"](torch.randn(2, 4)).sum().backward()
    optimizer.step()
    stop = EarlyStopping(2)
    stop.step(1.5)
    state = IterationState(iteration=3, epoch=2, global_step=40,
                           labels={"video": np.array([0, 2, -1]), "true": np.array([[1, 0], [0, 1], [1, 1]])},
                           heads=heads.state_dict(), head_specs=[HeadSpec("video", "true", 2, multilabel=True)],
                           optimizer=optimizer.state_dict(), early_stop=stop.state_dict())
    save_checkpoint(state.to_checkpoint(), tmp_path / "state.pt")  # weights_only loading below
    loaded = IterationState.from_checkpoint(load_checkpoint(tmp_path / "state.pt"))
    assert (loaded.iteration, loaded.epoch, loaded.global_step, loaded.head_specs) == \
        (3, 2, 40, [HeadSpec("video", "true", 2, multilabel=True)])
    for key, values in state.labels.items():
        np.testing.assert_array_equal(loaded.labels[key], values)
    for name, value in state.heads.items():
        assert torch.equal(loaded.heads[name], value)
    momentum = [s["momentum_buffer"] for s in loaded.optimizer["state"].values()]
    assert len(momentum) == 2 and all(m.abs().sum() > 0 for m in momentum)
    assert loaded.early_stop == stop.state_dict()
    # The start of an iteration (what last.pt holds once the previous one ended): no labels, no training.
    start = state.next_iteration()
    assert (start.iteration, start.epoch, start.global_step, start.labels, start.heads) == (4, 0, 40, None, None)
    assert IterationState.from_checkpoint(start.to_checkpoint()) == start
    assert set(start.to_checkpoint()) == {"iteration", "epoch", "global_step"}


def test_digests_equal_after_a_resume_at_an_iteration_boundary(av_manifest, tmp_path, capsys):
    """Issue 22 item 8: summary.json's digests are those of the encoders (not the previous
    iteration's heads, which a resumed run does not hold), so a run resumed where iteration 1
    starts records what an uninterrupted run records, beside the same labels and weights."""
    from xdc.cli import main as xdc_main

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert xdc_main(["pretrain", "--config", str(TINY), "--data", str(av_manifest), "--out", str(reference),
                     *SMALL]) == 0
    shutil.copytree(reference, resumed)
    # Back to the end of iteration 0: last.pt unreadable, iteration_01.pt gone, so --resume starts
    # iteration 1 from iteration_00.pt (what last.pt held right after it was written).
    (resumed / "checkpoints" / "iteration_01.pt").unlink()
    (resumed / "checkpoints" / "last.pt").write_bytes(b"")
    capsys.readouterr()
    assert xdc_main(["pretrain", "--resume", str(resumed)]) == 0
    assert "resuming from iteration_00.pt" in capsys.readouterr().err

    def digests(run: Path) -> list:
        return [record["digests"] for record in json.loads((run / "summary.json").read_text())["iterations"]]

    assert digests(resumed) == digests(reference) and len(digests(reference)) == 2
    for modality in ("video", "audio"):
        np.testing.assert_array_equal(np.load(resumed / "iterations/01" / f"labels_{modality}.npy"),
                                      np.load(reference / "iterations/01" / f"labels_{modality}.npy"))
    expected = read_checkpoint(reference / "checkpoints" / "iteration_01.pt")
    got = read_checkpoint(resumed / "checkpoints" / "iteration_01.pt")
    for part in ("video_encoder", "audio_encoder", "heads"):
        for name, value in expected[part].items():
            assert torch.equal(got[part][name], value), name


def test_an_iteration_ends_its_loader_workers(av_manifest, tmp_path):
    """Issue 20 item 6: the training and validation loaders' worker processes end with their
    iteration, before the next clustering starts its own."""
    import multiprocessing

    from xdc.config import load_config
    from xdc.data.datasets import as_manifest
    from xdc.data.manifest import read_manifest, usable_rows
    from xdc.pretrain import Pretraining, run_iteration
    from xdc.training.resume import IterationState

    cfg = load_config(TINY, [*SMALL, "data.num_workers=1"])
    run = RunFolder(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    rows = as_manifest(usable_rows(read_manifest(av_manifest), require_audio=True)[0])
    setup = Pretraining.set_up(cfg, rows, run, torch.device("cpu"))
    assert multiprocessing.active_children() == []
    state, summary = run_iteration(setup, IterationState(), [])
    assert multiprocessing.active_children() == []
    assert (state.iteration, state.labels, len(summary), summary[0]["epochs"]) == (1, None, 1, 1)
    assert read_checkpoint(run.last)["iteration"] == 1 and run.iteration_checkpoint(0).is_file()


@pytest.mark.parametrize("damage", ["truncated", "zero bytes"])
def test_unreadable_last_falls_back_to_the_newest_readable_iteration(run_copy, capsys, damage):
    """last.pt unreadable and iteration_01.pt gone: `--resume` says so, goes on from iteration_00.pt
    (iteration 1 starts from its encoders) and finishes the run."""
    data = run_copy.last.read_bytes()
    run_copy.last.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"")
    run_copy.iteration_checkpoint(1).unlink()
    before = load_checkpoint(run_copy.iteration_checkpoint(0))
    rc, err = cli(capsys, "pretrain", "--resume", run_copy.root)
    assert rc == 0, err
    assert "cannot read checkpoint" in err and "resuming from iteration_00.pt" in err
    last = load_checkpoint(run_copy.last)
    assert last["iteration"] == 2 and load_checkpoint(run_copy.iteration_checkpoint(1))["iteration"] == 1
    summary = json.loads(run_copy.summary.read_text())["iterations"]
    assert [r["iteration"] for r in summary] == [0, 1]
    assert summary[0] == json.loads(before["summary"])[0]  # iteration 0's record kept as it was


def test_last_without_what_resuming_reads_falls_back(run_copy, capsys):
    """A last.pt that loads safely but is no pretraining checkpoint counts as unreadable."""
    torch.save({"video_encoder": {}, "audio_encoder": {}}, run_copy.last)
    rc, err = cli(capsys, "pretrain", "--resume", run_copy.root)
    assert rc == 0, err
    assert "is not a pretraining checkpoint: it has no iteration, epoch, rng, summary" in err
    assert "resuming from iteration_01.pt" in err  # iteration 2 of 2: the run is complete


def test_no_readable_checkpoint_is_one_line(run_copy, capsys):
    for path in [run_copy.last, *run_copy.checkpoints.glob("iteration_*.pt")]:
        path.write_bytes(b"PK\x03\x04 not really")
    rc, err = cli(capsys, "pretrain", "--resume", run_copy.root)
    line = assert_user_error(rc, err, "pretrain", "last.pt", "no readable iteration checkpoint")
    assert err.strip() == line


@pytest.mark.parametrize("text", ["", "optim: [lr\n", "just a string\n"])
def test_an_unreadable_recorded_config_is_one_clear_error(tmp_path, text):
    from xdc.config import load_config
    from xdc.training.resume import same_run

    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    run.config.write_text(text)
    with pytest.raises(SettingsMismatch, match=r"config.yaml is not a readable record of settings: choose another"):
        same_run(run, load_config("tiny_cpu"), rows=None)


@pytest.mark.slow
def test_torchrun_into_a_held_folder_stops_every_rank(tmp_path, av_manifest):
    """Only rank 0 takes the lock; when it cannot, every rank stops (none waits at a barrier)."""
    port = free_port()
    run = RunFolder(tmp_path / "run")
    with run.locked():
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "xdc.pretrain",
                               "--config", TINY, "--data", str(av_manifest), "--out", str(run.root), *SMALL],
                              env={**subprocess_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                              timeout=300)
    assert done.returncode != 0
    assert f"xdc pretrain: run folder {run.root} in use by PID {os.getpid()}" in done.stderr
    assert f"xdc pretrain: rank 0 could not take the run folder {run.root}" in done.stderr
    assert not run.config.exists()


@pytest.mark.slow
def test_full_disk_says_so_and_keeps_the_last_checkpoint(tmp_path, av_manifest):
    """A 9 MiB tmpfs as the run folder's disk: the run stops with one line saying the disk is full
    and that the last checkpoint is intact, which then loads."""
    mount = tmp_path / "disk"
    # The run and a copy-out of last.pt happen inside the private mount namespace.
    script = (f"{sys.executable} -m xdc.pretrain --config {TINY} "
              f"--data {av_manifest} --out {mount}/run {' '.join(SMALL)} model.width=8; rc=$?; "
              f"cp {mount}/run/checkpoints/last.pt {tmp_path}/last.pt; ls -a {mount}/run/checkpoints; exit $rc")
    done = on_a_small_disk(mount, "9m", script, timeout=400)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("xdc pretrain: the disk holding") and "is full" in line and "is intact" in line
    assert ".tmp" not in done.stdout  # atomic_file removed its partial file
    assert "video_encoder" in load_checkpoint(tmp_path / "last.pt")
