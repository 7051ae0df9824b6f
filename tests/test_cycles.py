"""Cycle summaries computed from sample columns, on data whose answers are known by construction."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyclerd.analysis.cycles import (
    ShortCircuit,
    average_ce,
    capacity_retention,
    cumulative_ce,
    detect_short,
    forward_voltage_stats,
    median,
    summarise,
)

I_A = 7.85e-4


def _half_cell(
    strip_fractions: list[float], plate_level_V: list[float] | None = None
) -> dict[str, np.ndarray]:
    """Samples of plate (1 h at -I) / strip (fraction of an hour at +I) cycles, 1 sample per 10 s."""
    columns: dict[str, list[np.ndarray]] = {
        k: [] for k in ("t", "step", "cycle", "voltage", "current", "charge", "energy")
    }
    t0, step = 0.0, 0
    levels = plate_level_V or [0.04] * len(strip_fractions)
    for n, (fraction, level) in enumerate(zip(strip_fractions, levels, strict=True), start=1):
        for sign, duration, volts in ((-1, 3600.0, -level), (+1, 3600.0 * fraction, 0.05)):
            step += 1
            t = np.linspace(0.0, duration, int(duration // 10) + 1)
            columns["t"].append(t0 + t)
            columns["step"].append(np.full(len(t), step))
            columns["cycle"].append(np.full(len(t), n))
            columns["voltage"].append(np.full(len(t), volts))
            columns["current"].append(np.full(len(t), sign * I_A))
            columns["charge"].append(sign * I_A * t)
            columns["energy"].append(volts * sign * I_A * t)
            t0 += duration
    return {k: np.concatenate(v) for k, v in columns.items()}


def test_ce_ice_cumulative_and_average() -> None:
    cycles = summarise(_half_cell([0.845, 0.99, 0.995, 1.0]))
    assert [c.cycle for c in cycles] == [1, 2, 3, 4]
    assert cycles[0].forward_sign == -1
    assert cycles[0].discharge_As == pytest.approx(I_A * 3600)
    assert cycles[0].coulombic_efficiency == pytest.approx(0.845)
    np.testing.assert_allclose(cumulative_ce(cycles), np.cumprod([0.845, 0.99, 0.995, 1.0]))
    assert average_ce(cycles, first=2) == pytest.approx((0.99 + 0.995 + 1.0) / 3)
    assert average_ce(cycles, first=2, last=3) == pytest.approx((0.99 + 0.995) / 2)
    assert cycles[0].forward_mean_V == pytest.approx(-0.04)
    assert cycles[0].reverse_mean_V == pytest.approx(0.05)


def test_retention_is_relative_to_the_reference_cycle() -> None:
    # A full cell: charge first (+), then discharge (-); build it by flipping a half-cell's signs.
    samples = _half_cell([0.9, 0.8, 0.7])
    for key in ("current", "charge", "voltage"):  # V·I, the energy, keeps its sign
        samples[key] = -samples[key]
    cycles = summarise(samples)
    assert cycles[0].forward_sign == +1
    assert [c.discharge_As for c in cycles] == pytest.approx([I_A * 3600 * f for f in (0.9, 0.8, 0.7)])
    np.testing.assert_allclose(capacity_retention(cycles), [1.0, 0.8 / 0.9, 0.7 / 0.9])
    np.testing.assert_allclose(capacity_retention(cycles, reference_cycle=2), [0.9 / 0.8, 1.0, 0.7 / 0.8])
    # Mean voltages are real voltages, whichever way the current flows.
    assert cycles[0].forward_mean_V == pytest.approx(0.04)
    assert cycles[0].reverse_mean_V == pytest.approx(-0.05)


def _short(
    samples: dict[str, np.ndarray], cutoff_missed: dict[int, bool] | None = None
) -> ShortCircuit | None:
    cycles = summarise(samples)
    stats = [forward_voltage_stats(samples, c) for c in cycles]
    return detect_short(cycles, stats, cutoff_missed)


def test_no_short_in_a_healthy_run() -> None:
    samples = _half_cell([0.845] + [0.996] * 8)
    assert _short(samples) is None


def test_ce_above_100_percent_is_a_short() -> None:
    samples = _half_cell([0.845, 0.996, 0.996, 1.6])
    short = _short(samples)
    assert short is not None
    assert short.cycle == 4
    assert "above 100 %" in short.reason


def test_a_collapsing_plating_voltage_is_a_short() -> None:
    samples = _half_cell([0.845] + [0.996] * 5, plate_level_V=[0.04] * 5 + [0.002])
    short = _short(samples)
    assert short is not None
    assert short.cycle == 6
    assert "collapsed" in short.reason


def test_a_missed_cut_off_is_a_short() -> None:
    samples = _half_cell([0.845, 0.996, 0.996])
    short = _short(samples, cutoff_missed={3: True})
    assert short is not None
    assert short.cycle == 3


def test_a_step_interrupted_by_an_every_block_counts_once() -> None:
    """Plating (step 1) is interrupted by a rest (step 2) and resumes with its charge carried
    over; the step's charge is its last sample's, not the sum of its two stretches."""
    from cyclerd.analysis.cycles import summarise

    step = np.array([1, 1, 2, 2, 1, 1, 3, 3])
    charge = np.array([0.0, -1.0, 0.0, 0.0, -1.0, -2.0, 0.0, 1.8])
    samples = {
        "t": np.arange(8.0),
        "step": step,
        "cycle": np.ones(8),
        "voltage": np.full(8, 0.1),
        "current": np.sign(charge),
        "charge": charge,
        "energy": charge * 0.1,
    }
    (cycle,) = summarise(samples)
    assert cycle.forward_As == pytest.approx(2.0)
    assert cycle.reverse_As == pytest.approx(1.8)
    assert cycle.coulombic_efficiency == pytest.approx(0.9)


def test_the_ledger_summarises_a_cycle_whose_batches_differ_in_temperature() -> None:
    """Only some instruments report temperature, and a channel may lose its sensor mid-cycle:
    the summary reads neither temperature nor seq, so a batch without them is no error."""
    from cyclerd.engine.ledger import CycleLedger
    from cyclerd.protocols.program import CycleLimits

    samples = _half_cell([0.98])
    half = len(samples["t"]) // 2
    ledger = CycleLedger()
    ledger.start_cycle()
    ledger.log({**{k: v[:half] for k, v in samples.items()}, "temperature": np.full(half, 298.0)})
    ledger.log({k: v[half:] for k, v in samples.items()})
    summary, why = ledger.close_cycle(CycleLimits(), first_cycle=1)
    assert summary == summarise(samples)[0]
    assert why == ""


@given(
    st.lists(
        st.floats(min_value=-1e3, max_value=1e3) | st.just(math.nan) | st.sampled_from([0.1, 0.2, 0.3]),
        max_size=60,
    )
)
def test_the_median_is_numpys_to_the_bit(values: list[float]) -> None:
    """The short-circuit check compares these medians with thresholds: the same bits as np.median."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # np.median of nothing warns
        expected = float(np.median(values)) if values else math.nan
    found = median(values)
    assert (math.isnan(found) and math.isnan(expected)) or found == expected
    assert median(np.asarray(values)) == found or math.isnan(found)
