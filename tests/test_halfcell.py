"""Half-cell model: the paper's plating/stripping numbers come out of the charge bookkeeping."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from cyclerd.simulators.cell import CellModel
from cyclerd.simulators.halfcell import HalfCell
from cyclerd.simulators.presets_halfcell import (
    PRESETS,
    UnknownParameterError,
    UnknownPresetError,
    preset,
)

CURRENT_DENSITY_A_PER_M2 = 10.0  # 1 mA/cm²
PLATE_S = 3600.0  # 1 mAh/cm² at 1 mA/cm²
STRIP_LIMIT_S = 7200.0
CUTOFF_V = 1.0


@dataclass
class CycleLog:
    """Per-cycle charges of a plate/strip run, as the E1 analysis would see them."""

    plated_As: NDArray[np.float64]
    stripped_As: NDArray[np.float64]
    timed_out: NDArray[np.bool_]

    @property
    def ce(self) -> NDArray[np.float64]:
        return self.stripped_As / self.plated_As

    @property
    def shorted(self) -> NDArray[np.bool_]:
        """A short shows as CE above 100 % or a strip that never reaches its cut-off."""
        return (self.ce > 1.0) | self.timed_out


def plate_strip(
    cell: CellModel, cycles: int, *, stop_on_short: bool = False, chunk_s: float = 1800.0
) -> CycleLog:
    """E1: plate 1 mAh/cm² at 1 mA/cm², strip at 1 mA/cm² until V ≥ 1.0 V or 2 h.

    The cut-off is found on 1 s samples, one vectorised chunk at a time, like the simulated
    channel does; the plating trace is computed too, so the run costs what a real one would.
    """
    current_A = CURRENT_DENSITY_A_PER_M2 * cell.area_m2
    plated, stripped, timed_out = [], [], []
    chunk_t = np.arange(1.0, chunk_s + 1.0)
    for _ in range(cycles):
        cell.voltage_at_current(-current_A, np.arange(1.0, PLATE_S + 1.0))
        cell.advance_at_current(-current_A, PLATE_S)
        strip_s = 0.0
        while strip_s < STRIP_LIMIT_S:
            hit = np.flatnonzero(cell.voltage_at_current(current_A, chunk_t) >= CUTOFF_V)
            step_s = float(chunk_t[hit[0]]) if hit.size else chunk_s
            cell.advance_at_current(current_A, step_s)
            strip_s += step_s
            if hit.size:
                break
        plated.append(current_A * PLATE_S)
        stripped.append(current_A * strip_s)
        timed_out.append(strip_s >= STRIP_LIMIT_S)
        if stop_on_short and (stripped[-1] > plated[-1] or timed_out[-1]):
            break
    return CycleLog(np.array(plated), np.array(stripped), np.array(timed_out))


def test_half_cell_satisfies_the_cell_model_protocol() -> None:
    cell: CellModel = HalfCell(preset("mgagsn"), seed=0)
    assert cell.area_m2 == pytest.approx(0.785e-4)


@pytest.mark.parametrize(
    ("name", "ice"),
    [("mgagsn", 0.845), ("mg", 0.685), ("ag", 0.762), ("sn", 0.727), ("mgagsn-pvdf", 0.80)],
)
def test_first_cycle_ce_is_the_papers_ice(name: str, ice: float) -> None:
    log = plate_strip(HalfCell(name, seed=3), 1)
    assert not log.timed_out[0]
    assert log.ce[0] == pytest.approx(ice, abs=0.01)


def test_mgagsn_elastane_cycles_250_times_at_99_62_percent_average_ce() -> None:
    cell = HalfCell("mgagsn", seed=1)
    # Seed 1 draws its Weibull short onset at cycle 635 (n0 = 800, P(≤ 235) ≈ 2.5 %), so
    # this run sees conditioning and jitter only.
    assert cell.short.reference_onset_cycle > 250
    start = time.perf_counter()
    log = plate_strip(cell, 250)
    assert time.perf_counter() - start < 5.0
    assert not log.shorted.any()
    assert log.ce[1:235].mean() == pytest.approx(0.9962, abs=0.0005)
    # Conditioning: the early cycles are visibly lower, then CE settles near CE_ss.
    assert log.ce[1] < log.ce[20] - 0.005
    # The Li counter electrode is an excess reservoir: cumulative CE falls to ~0.35.
    assert np.prod(log.ce[:230]) == pytest.approx(0.845 * 0.9962**229, rel=0.05)


def test_elastane_binder_beats_pvdf_on_ce() -> None:
    elastane = plate_strip(HalfCell("mgagsn", seed=4), 30)
    pvdf = plate_strip(HalfCell("mgagsn-pvdf", seed=4), 30)
    assert elastane.ce[0] > pvdf.ce[0]
    assert elastane.ce[1:].mean() > pvdf.ce[1:].mean()


@pytest.mark.parametrize("name", ["mg", "ag", "sn"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_single_seeds_short_before_cycle_100(name: str, seed: int) -> None:
    log = plate_strip(HalfCell(name, seed=seed), 99, stop_on_short=True)
    assert log.shorted[-1], f"{name} seed {seed} ran 99 cycles without a short"
    assert log.ce[0] < 0.8  # ... and it was a working cell to begin with


def test_hard_short_collapses_plating_voltage_and_never_reaches_cutoff() -> None:
    cell = HalfCell("mg", seed=1)
    s = cell.short
    plate_strip(cell, s.reference_onset_cycle + s.fall_cycles + s.hold_cycles)
    assert cell.short_onset_cycle == s.reference_onset_cycle  # the reference protocol's onset
    current_A = CURRENT_DENSITY_A_PER_M2 * cell.area_m2
    t = np.arange(1.0, PLATE_S + 1.0)
    plating_V = cell.voltage_at_current(-current_A, t)
    assert abs(np.median(plating_V)) < 0.005  # vs ≈ −40 mV for a healthy cell
    assert plating_V.std() > 0.0009  # noisy: 1–5 mV rms once shorted
    cell.advance_at_current(-current_A, PLATE_S)
    stripping_V = cell.voltage_at_current(current_A, np.arange(1.0, STRIP_LIMIT_S + 1.0))
    assert stripping_V.max() < CUTOFF_V


def test_first_lithiation_meets_sn_then_mg_then_ag_then_li() -> None:
    # A slow first lithiation (0.02 mA/cm²) so that the IR drop (< 1 mV) does not blur the
    # plateaus: Sn 0.76 -> 0.12 V, Mg 0.09 V, Ag 0.07 and 0.035 V, then Li plating < 0 V.
    cell = HalfCell("mgagsn", seed=1)
    current_A = -0.02 * CURRENT_DENSITY_A_PER_M2 * cell.area_m2
    t = np.arange(10.0, 40_000.0, 10.0)
    v = cell.voltage_at_current(current_A, t)
    levels_V = (0.5, 0.08, 0.05, 0.0)
    assert all((v < level).any() for level in levels_V)
    first_below = [t[np.argmax(v < level)] for level in levels_V]
    gaps = np.diff(first_below)
    # Each plateau holds ≥ 0.01 mAh/cm² (1800 s at this current): well separated.
    assert (gaps > 1800.0).all(), gaps
    # The Mg plateau (0.08–0.10 V) lasts long after Sn is done and before Ag starts.
    on_mg = (v > 0.08) & (v < 0.10)
    assert on_mg.sum() * 10.0 > 3000.0
    assert t[on_mg].min() > first_below[0]
    assert t[on_mg].max() < first_below[2]


def test_second_plating_shows_small_plateaus_and_a_nucleation_dip() -> None:
    cell = HalfCell("sn", seed=2)
    plate_strip(cell, 1)
    current_A = CURRENT_DENSITY_A_PER_M2 * cell.area_m2
    v = cell.voltage_at_current(-current_A, np.arange(1.0, PLATE_S + 1.0))
    assert v[:60].max() > 0.3  # re-lithiating the reversible Sn
    steady_V = np.median(v[-600:])
    assert steady_V < -0.02
    assert v[:600].min() < steady_V - 0.005  # the Sn nucleation dip (10 mV)


def test_same_seed_same_calls_give_identical_outputs() -> None:
    def trace(seed: int) -> tuple[NDArray[np.float64], NDArray[np.complex128], CycleLog]:
        cell = HalfCell("mg", seed=seed)
        log = plate_strip(cell, 3)
        v = cell.voltage_at_current(-1e-4, np.arange(1.0, 100.0))
        return v, cell.impedance(np.logspace(6, -1, 50)), log

    v1, z1, log1 = trace(7)
    v2, z2, log2 = trace(7)
    v3, _, _ = trace(8)
    np.testing.assert_array_equal(v1, v2)
    np.testing.assert_array_equal(z1, z2)
    np.testing.assert_array_equal(log1.stripped_As, log2.stripped_As)
    assert not np.array_equal(v1, v3)


def test_splitting_a_step_changes_nothing_but_noise() -> None:
    whole, split = HalfCell("mgagsn", seed=5), HalfCell("mgagsn", seed=5)
    current_A = -CURRENT_DENSITY_A_PER_M2 * whole.area_m2
    whole.advance_at_current(current_A, 3000.0)
    for _ in range(6):
        split.advance_at_current(current_A, 500.0)
    assert split.state.x_As == pytest.approx(whole.state.x_As, rel=1e-12)
    assert split.state.seed_filled_As == pytest.approx(whole.state.seed_filled_As)


def test_asking_does_not_change_state() -> None:
    cell = HalfCell("ag", seed=1)
    before = cell.state
    cell.voltage_at_current(-1e-3, np.arange(1.0, 3601.0))
    cell.current_at_voltage(-0.05, np.arange(1.0, 3601.0))
    cell.impedance(np.logspace(6, -1, 20))
    assert cell.state == before


def test_a_cycle_starts_when_plating_follows_a_strip() -> None:
    cell = HalfCell("mgagsn", seed=1)
    current_A = CURRENT_DENSITY_A_PER_M2 * cell.area_m2
    assert cell.state.cycle == 0
    cell.advance_at_current(-current_A, 600.0)
    cell.advance_at_current(0.0, 600.0)  # a rest (e.g. EIS) inside the plating step
    cell.advance_at_current(-current_A, 600.0)
    assert cell.state.cycle == 1
    cell.advance_at_current(current_A, 600.0)
    cell.advance_at_current(-current_A, 600.0)
    assert cell.state.cycle == 2


def test_constant_voltage_is_the_inverse_of_constant_current() -> None:
    cell = HalfCell(preset("mgagsn").with_overrides(noise_V=0.0), seed=1)
    current_A = -CURRENT_DENSITY_A_PER_M2 * cell.area_m2
    cell.advance_at_current(current_A, 1800.0)  # well into Li plating
    t = np.arange(1.0, 61.0)
    plating_V = float(cell.voltage_at_current(current_A, t)[0])
    held_A = cell.current_at_voltage(plating_V, t)
    assert held_A.mean() == pytest.approx(current_A, rel=0.01)


def test_holding_above_the_emptied_electrode_lets_the_current_die_away() -> None:
    cell = HalfCell(preset("mgagsn").with_overrides(noise_V=0.0), seed=1)
    plate_strip(cell, 1)
    t = np.array([1.0, 60.0, 600.0, 3600.0])
    held_A = cell.current_at_voltage(1.0, t)
    assert abs(held_A[-1]) < 1e-3 * CURRENT_DENSITY_A_PER_M2 * cell.area_m2
    x_before = cell.state.x_As
    cell.advance_at_voltage(1.0, 3600.0)
    one_mAh_per_cm2_As = PLATE_S * CURRENT_DENSITY_A_PER_M2 * cell.area_m2
    assert abs(cell.state.x_As - x_before) < 0.002 * one_mAh_per_cm2_As


def test_voltage_of_3600_samples_is_one_vectorised_call() -> None:
    cell = HalfCell("mgagsn-pvdf", seed=1)
    current_A = -CURRENT_DENSITY_A_PER_M2 * cell.area_m2
    t = np.arange(1.0, 3601.0)
    start = time.perf_counter()
    for _ in range(20):
        cell.voltage_at_current(current_A, t)
    assert (time.perf_counter() - start) / 20 < 0.02


def test_presets_are_overridable_but_refuse_unknown_names() -> None:
    base = preset("mgagsn")
    assert base.with_overrides(ice=0.9).ice == 0.9
    assert base.ice == 0.845
    with pytest.raises(UnknownParameterError, match="ice_typo"):
        base.with_overrides(ice_typo=0.9)
    with pytest.raises(UnknownPresetError, match="mgagsn"):
        preset("cu")
    assert set(PRESETS) == {"mg", "ag", "sn", "mgagsn", "mgagsn-pvdf"}


@given(
    low=st.floats(-2.0, 2.0),
    span=st.floats(0.0, 2.0),
    width=st.floats(1e-3, 0.2),
    n=st.integers(1, 50),
    order=st.sampled_from(["rising", "falling", "shuffled"]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=300, deadline=None)
def test_the_staircase_skipping_saturated_edges_equals_every_edge_evaluated(
    low: float, span: float, width: float, n: int, order: str, seed: int
) -> None:
    """Plating moves u up, stripping down (tanh only near the edges); anything else takes the
    plain path. Each agrees with every edge evaluated everywhere, to float round-off."""
    from cyclerd.simulators.seed_electrode import staircase

    levels = np.array([0.8, 0.72, 0.59, 0.45, 0.27, 0.18, 0.15, 0.12, 0.0])
    edges = np.array([0.083, 0.167, 0.25, 0.333, 0.444, 0.556, 0.889, 1.0])
    u = np.linspace(low, low + span, n)
    if order == "falling":
        u = u[::-1]
    elif order == "shuffled":
        u = np.random.default_rng(seed).permutation(u)
    every_edge = levels[0] + ((1.0 + np.tanh((u[:, None] - edges[None, :]) / width)) / 2.0) @ np.diff(levels)
    np.testing.assert_allclose(
        staircase(u, levels, edges, width), every_edge, rtol=0, atol=4e-16 * len(edges)
    )


@settings(max_examples=25, deadline=None)
@given(
    volts=st.floats(min_value=-0.02, max_value=1.2),
    seconds=st.floats(min_value=1.0, max_value=600.0),
    plated_s=st.sampled_from([0.0, 600.0, 3600.0]),
)
def test_a_held_voltage_ends_in_one_place_however_it_is_asked_and_split(
    volts: float, seconds: float, plated_s: float
) -> None:
    """A hold advanced whole, in pieces, or after its current was asked for (as each point of
    a sweep is, at its own and at other voltages) ends with the same charge passed."""
    quiet = preset("mgagsn").with_overrides(noise_V=0.0)
    same, other, direct, pieces = (HalfCell(quiet, seed=2) for _ in range(4))
    for cell in (same, other, direct, pieces):
        cell.advance_at_current(-CURRENT_DENSITY_A_PER_M2 * cell.area_m2, plated_s)
    t = np.linspace(0.0, seconds, 101)
    same.current_at_voltage(volts, t)
    other.current_at_voltage(volts + 0.05, t)
    for cell in (same, other, direct):
        cell.advance_at_voltage(volts, seconds)
    for _ in range(4):
        pieces.advance_at_voltage(volts, seconds / 4)
    assert same.state == direct.state
    assert other.state == direct.state
    scale_As = CURRENT_DENSITY_A_PER_M2 * direct.area_m2 * 36.0  # 1 % of 1 mAh/cm²
    assert pieces.state.x_As == pytest.approx(direct.state.x_As, abs=0.01 * scale_As)


def test_a_fresh_cell_driven_past_its_critical_current_density_plates_and_shorts() -> None:
    """A filament across the terminals pulls ~9 mA/cm² out of the pristine cell: above the CCD,
    so the short starts at once and its leak carries nearly all of the current."""
    cell = HalfCell("mgagsn", seed=1)
    cell.advance_at_current(-0.007008746984652855, 1.0)
    assert cell.short_onset_cycle == 1
    assert cell.state.x_As > -0.0028259999999999995
