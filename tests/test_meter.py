"""xdc.training.meter: running sums on the device, reduced on demand; non-finite values found; timing."""

from __future__ import annotations

import time

import pytest
import torch

from xdc.training.meter import MetricMeter


def test_sums_weights_counts_and_intervals():
    meter = MetricMeter({"loss": (2,)}, counts=("skipped",))
    meter.update(3, loss=torch.tensor([1.0, 2.0]))
    meter.count(skipped=1)
    first = meter.reduce(recent=True)
    meter.update(1, loss=torch.tensor([5.0, 6.0]))
    meter.count(skipped=2)
    recent, total = meter.reduce(recent=True), meter.reduce()
    torch.testing.assert_close(first.mean("loss"), torch.tensor([1.0, 2.0], dtype=torch.float64))
    # The second interval holds only what came after the first reduce; the totals hold everything.
    torch.testing.assert_close(recent.mean("loss"), torch.tensor([5.0, 6.0], dtype=torch.float64))
    assert (recent.weights, recent.counts) == ({"loss": 1.0}, {"skipped": 2.0})
    torch.testing.assert_close(total.sums["loss"], torch.tensor([8.0, 12.0], dtype=torch.float64))
    assert (total.weights, total.counts, meter.updates) == ({"loss": 4.0}, {"skipped": 3.0}, 2)
    torch.testing.assert_close(total.mean("loss"), torch.tensor([2.0, 3.0], dtype=torch.float64))


def test_a_meter_that_saw_nothing_reduces_to_zeros():
    """A rank whose batches all failed still takes part in the reduce with the same layout."""
    totals = MetricMeter({"loss": (3,)}, counts=("skipped",)).reduce()
    assert totals.sums["loss"].tolist() == [0.0, 0.0, 0.0] and totals.mean("loss").tolist() == [0.0, 0.0, 0.0]
    assert totals.weights == {"loss": 0.0} and totals.counts == {"skipped": 0.0}


def test_the_first_non_finite_value_is_found():
    meter = MetricMeter({"loss": (3,)})
    meter.update(loss=torch.tensor([1.0, 1.0, 1.0]))
    assert meter.first_nonfinite_update("loss") is None
    meter.update(loss=torch.tensor([1.0, 1.0, float("inf")]))  # update 1, element 2
    meter.update(loss=torch.tensor([float("nan"), float("nan"), float("nan")]))
    assert meter.first_nonfinite_update("loss") == (1, 2)
    assert not torch.isfinite(meter.reduce().sums["loss"]).all()


def test_data_wait_is_the_time_spent_waiting_for_items():
    def slow_items():
        for i in range(3):
            time.sleep(0.05)  # "loading"
            yield i

    meter = MetricMeter({})
    for _ in meter.timed(slow_items()):
        pass  # no "compute"
    assert meter.data_seconds >= 0.15 and 0 < meter.data_wait <= 1  # time.sleep waits at least that long
    with pytest.raises(KeyError):
        meter.update(loss=torch.tensor(1.0))  # values are declared up front
