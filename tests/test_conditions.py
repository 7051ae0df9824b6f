"""End conditions and charge counting on sample arrays, as every channel uses them."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyclerd.drivers.base import SAFETY, StepProgress
from cyclerd.drivers.conditions import Counter, EndWatch, safety_end, safety_end_one
from cyclerd.protocols.program import CurrentCommand, EndConditions, RecordRule, SafetyLimits


def _command(**end: float) -> CurrentCommand:
    return CurrentCommand(
        index=1, kind="cc", label="cc", source="steps[0].cc", end=EndConditions(**end), record=RecordRule(),
        current_A=1e-3,
    )  # fmt: skip


def test_counter_carries_charge_over_a_resumed_step() -> None:
    counter = Counter(StepProgress(t_s=600.0, charge_As=0.6, energy_J=1.8))
    t = np.array([601.0, 602.0, 603.0])
    q, e = counter.add(t, np.full(3, 3.0), np.full(3, 1e-3))
    assert q.tolist() == pytest.approx([0.601, 0.602, 0.603])
    assert e.tolist() == pytest.approx([1.803, 1.806, 1.809])


def test_the_first_condition_in_time_wins_and_safety_wins_ties() -> None:
    t = np.arange(1.0, 11.0)
    v = 3.0 + 0.01 * t
    i = np.full(10, 1e-3)
    q = 1e-3 * t
    watch = EndWatch(_command(voltage_above_V=3.055, charge_As=0.008), SafetyLimits())
    assert watch.check(t, v, i, q)[:2] == (5, "voltage_above")
    unsafe = EndWatch(_command(voltage_above_V=3.055), SafetyLimits(voltage_max_V=3.055))
    index, reason, detail = unsafe.check(t, v, i, q)
    assert (index, reason) == (5, SAFETY)
    assert "above 3.055 V" in detail


def test_dvdt_is_judged_over_a_window_that_spans_chunks() -> None:
    watch = EndWatch(_command(dvdt_below_V_per_s=1e-5), SafetyLimits())
    t = np.arange(0.0, 3600.0, 10.0)
    relaxing = 3.0 + 0.1 * np.exp(-t / 600.0)  # dV/dt = 0.1/600·exp(-t/600) V/s
    first, second = np.split(np.arange(len(t)), [100])  # chunks of 0-990 s and 1000-3590 s
    assert watch.check(t[first], relaxing[first], np.zeros(100), np.zeros(100))[0] == -1
    index, reason, _ = watch.check(t[second], relaxing[second], np.zeros(len(second)), np.zeros(len(second)))
    assert reason == "dvdt_below"
    # Below 1e-5 V/s once exp(-t/600) < 0.06, t > 1688 s; the 60 s window lags a little.
    assert 1680 <= t[second][index] <= 1760


def test_one_at_a_time_agrees_with_the_array_checks() -> None:
    rng = np.random.default_rng(5)
    t = np.arange(1.0, 2001.0)
    v = 3.0 + 0.05 * (1 - np.exp(-t / 300)) + rng.normal(0, 1e-4, len(t))
    i = 1e-3 * np.exp(-t / 800)
    q = np.cumsum(i)
    for end in (
        {"voltage_above_V": 3.04},
        {"current_below_A": 2e-4},
        {"charge_As": 0.5},
        {"dvdt_below_V_per_s": 2e-6},
        {"duration_s": 1234.0},
    ):
        array_watch, scalar_watch = (
            EndWatch(_command(**end), SafetyLimits()),
            EndWatch(_command(**end), SafetyLimits()),
        )
        expected = array_watch.check(t, v, i, q)
        found = next(
            (k, r) for k in range(len(t)) if (r := scalar_watch.check_one(t[k], v[k], i[k], q[k])[1])
        )
        assert found == expected[:2], end


@given(
    st.floats(-5.0, 5.0),
    st.floats(-2e-3, 2e-3),
    st.sampled_from(
        [SafetyLimits(), SafetyLimits(voltage_max_V=3.0, voltage_min_V=-0.5, current_max_A=1e-3)]
    ),
)
def test_the_one_sample_safety_check_agrees_with_the_array_check(
    voltage_V: float, current_A: float, limits: SafetyLimits
) -> None:
    """The simulated channel checks a step's first sample with the scalar form."""
    array = safety_end(limits, np.array([voltage_V]), np.array([current_A]))
    assert safety_end_one(limits, voltage_V, current_A) == array
