"""xdc.checkpoint: atomic writes (through xdc.files), weights_only loading, exact RNG restore,
one clear error for a missing, truncated or hostile file."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from xdc.checkpoint import (
    cuda_state_for,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from xdc.training.schedule import EarlyStopping


def test_round_trip_with_weights_only(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.BatchNorm1d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 8)).sum().backward()
    opt.step()
    stop = EarlyStopping()
    stop.step(1.0)
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": 2, "epoch": 1,
             "labels": {"video": torch.arange(5)}, "early_stop": stop.state_dict(),
             "rng": rng_state(), "config": "method: xdc\n"}
    path = save_checkpoint(state, tmp_path / "checkpoints" / "last.pt")
    loaded = load_checkpoint(path)  # torch.load(weights_only=True) inside
    torch.load(path, weights_only=True)  # and plainly so
    restored = torch.nn.Sequential(torch.nn.Conv1d(1, 4, 3), torch.nn.BatchNorm1d(4))
    restored.load_state_dict(loaded["model"])
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = torch.optim.SGD(restored.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(loaded["optimizer"])
    momentum = [s["momentum_buffer"] for s in opt2.state.values()]
    assert len(momentum) == 4 and all(m.abs().sum() > 0 for m in momentum)
    assert loaded["iteration"] == 2 and loaded["config"] == "method: xdc\n"
    assert torch.equal(loaded["labels"]["video"], torch.arange(5))
    assert loaded["early_stop"]["history"] == [1.0]


def test_rng_state_restores_every_generator(tmp_path):
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], got[0])
    np.testing.assert_array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_rng_state_holds_this_device_only_and_old_lists_still_restore(tmp_path):
    state = rng_state()
    # One CUDA state, this process's device's, as for the CPU generator; none without CUDA in use.
    assert isinstance(state["cuda"], torch.Tensor) if torch.cuda.is_initialized() else state["cuda"] is None
    # A checkpoint written before by a rank that saw 2 GPUs: every GPU's state, in a list.
    states = [torch.tensor([seed, 0], dtype=torch.int64).view(torch.uint8) for seed in (1, 2)]  # seed, offset
    save_checkpoint({"rng": state | {"cuda": states}}, tmp_path / "two_gpus.pt")
    loaded = load_checkpoint(tmp_path / "two_gpus.pt")["rng"]
    expected = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(loaded)  # on this machine (no GPU): the CPU generators come back, no IndexError
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    # Which state a device takes: its own entry where the list has one, else the first (a rank on
    # the 4th GPU resuming a 2-GPU checkpoint); a current checkpoint's single state as it is.
    first, second = loaded["cuda"]
    assert cuda_state_for(loaded["cuda"], 0) is first and cuda_state_for(loaded["cuda"], 1) is second
    assert cuda_state_for(loaded["cuda"], 3) is first
    assert cuda_state_for(second, 5) is second
    assert cuda_state_for(None, 0) is None and cuda_state_for([], 0) is None


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot save this")

    with pytest.raises(RuntimeError, match="cannot save"):
        save_checkpoint({"epoch": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_arbitrary_objects_are_refused_on_load(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": EarlyStopping()}, path)
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_checkpoint(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_or_garbage_checkpoint_is_one_clear_error(tmp_path):
    from xdc.errors import XdcError

    good = save_checkpoint({"epoch": 1, "w": torch.zeros(1000)}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (truncated, empty):
        with pytest.raises(XdcError, match=f"cannot read checkpoint {path}"):
            load_checkpoint(path)
