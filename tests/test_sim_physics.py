"""The half-cell answers the protocol: charge is conserved, outcomes follow current density and
areal capacity, and the contact a binder loses under a growing deposit shows in in-situ EIS."""

from __future__ import annotations

import numpy as np
import pytest
from test_experiments import run_experiment

from cyclerd.analysis.eis_trends import spectrum_trends
from cyclerd.engine.states import RunState
from cyclerd.simulators.halfcell import HalfCell
from cyclerd.simulators.presets_halfcell import PRESETS, preset

MA_PER_CM2 = 10.0  # A/m²
AS_PER_MAH_CM2 = 36_000.0  # A·s per m² in one mAh/cm²
SINGLE_SEEDS = ("mg", "ag", "sn")


def cycle(cell: HalfCell, j_mA_cm2: float, q_mAh_cm2: float, cycles: int) -> list[float]:
    """Plate q at j, strip at j to 1.0 V (or twice the plating time); the CEs, up to the short."""
    current_A = j_mA_cm2 * MA_PER_CM2 * cell.area_m2
    plate_s = q_mAh_cm2 / j_mA_cm2 * 3600.0
    chunk = np.arange(1.0, 1801.0)
    ces = []
    for _ in range(cycles):
        cell.advance_at_current(-current_A, plate_s)
        strip_s = 0.0
        while strip_s < 2 * plate_s:
            hit = np.flatnonzero(cell.voltage_at_current(current_A, chunk) >= 1.0)
            step_s = float(chunk[hit[0]]) if hit.size else float(chunk[-1])
            cell.advance_at_current(current_A, step_s)
            strip_s += step_s
            if hit.size:
                break
        ces.append(strip_s / plate_s)
        if cell.short_onset_cycle is not None:
            break
    return ces


# --- 1. charge conservation ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_li_free_electrode_held_at_2_V_charges_its_double_layer_and_stops(name: str) -> None:
    """Before: a steady 8.9 mA and ~11 mAh/cm² of Li that does not exist."""
    cell = HalfCell(preset(name).with_overrides(noise_V=0.0), seed=1)
    current_A = cell.current_at_voltage(2.0, np.array([1.0, 60.0, 3600.0]))
    assert np.all(np.abs(current_A[1:]) < 1e-3 * MA_PER_CM2 * cell.area_m2)  # < 1 µA/cm²
    x0 = cell.state.x_As
    cell.advance_at_voltage(2.0, 3600.0)
    passed_mAh_cm2 = (x0 - cell.state.x_As) / cell.area_m2 / AS_PER_MAH_CM2
    # Only the double layer: C·ΔV = 1 mF/cm² × ~0.5 V ≈ 0.00014 mAh/cm²; there is no Li to strip.
    assert 0 < passed_mAh_cm2 < 0.0005


def test_stripping_past_the_last_lithium_runs_into_the_cut_off_within_seconds() -> None:
    cell = HalfCell("mgagsn", seed=1)
    current_A = MA_PER_CM2 * cell.area_m2
    cycle(cell, 1.0, 1.0, 1)  # plated, then stripped to 1.0 V: nothing strippable is left
    v = cell.voltage_at_current(current_A, np.arange(1.0, 11.0))
    assert v[-1] > 2.0  # the double layer charges at 1 V/s: no current without Li
    # ... until LPSCl oxidises (~2.5 V vs Li) and carries the current: not hundreds of volts,
    # which an instrument sampling every few seconds would report past any safety limit.
    longer = cell.voltage_at_current(current_A, np.arange(1.0, 601.0))
    assert longer.max() < 2.7


def test_a_li_free_electrode_shows_a_blocking_spectrum_and_a_plated_one_does_not() -> None:
    f = np.array([0.1])
    pristine = HalfCell("mgagsn", seed=1)
    phase_deg = np.degrees(np.angle(pristine.impedance(f)))[0]
    assert phase_deg < -75  # capacitive: the double layer, not a diffusion tail
    # A seed layer that gives all its Li back (f_rev = 1) is Li-free again after a strip.
    emptied = HalfCell(preset("mgagsn").with_overrides(f_rev=1.0), seed=1)
    cycle(emptied, 1.0, 1.0, 1)
    assert np.degrees(np.angle(emptied.impedance(f)))[0] < -75
    plated = HalfCell("mgagsn", seed=1)
    plated.advance_at_current(-MA_PER_CM2 * plated.area_m2, 1800.0)
    tail_ohm = -plated.impedance(f).imag[0]
    assert 0 < tail_ohm < 20  # the Warburg's σ/√ω (6.4 Ω·s^-½ at 0.63 rad/s), not 1/(ωC) ≈ 2 kΩ
    assert -pristine.impedance(f).imag[0] > 1000


def test_a_spectrum_held_at_the_ocv_mid_plating_starts_no_new_cycle() -> None:
    """A potentiostatic EIS (MethodSCRIPT) holds the OCV and strips a few nA·s: no strip step, so
    the plating it interrupts goes on in the same cycle and forms no second SEI."""
    cell = HalfCell(preset("mgagsn-pvdf").with_overrides(noise_V=0.0), seed=3)
    current_A = -MA_PER_CM2 * cell.area_m2
    cell.advance_at_current(current_A, 1200.0)
    cell.advance_at_current(0.0, 30.0)
    ocv_V = float(cell.voltage_at_current(0.0, np.array([1.0]))[0]) + 5e-4  # just above: strips
    x_before = cell.state.x_As
    cell.advance_at_voltage(ocv_V, 60.0)
    assert cell.state.x_As < x_before  # it did strip a little
    sei_before = cell.state.sei_As
    cell.advance_at_current(current_A, 600.0)
    assert cell.state.cycle == 1
    assert cell.state.sei_As >= sei_before > 0


@pytest.mark.slow
@pytest.mark.parametrize(("name", "seed"), [("mgagsn", 1), ("mg", 2), ("ag", 3), ("sn", 1)])
def test_the_library_cv_sweeps_to_its_end_on_every_seed(tmp_path, name: str, seed: int) -> None:  # type: ignore[no-untyped-def]
    """E10 as the library has it: three scans, 2.0 V -> 0 V -> 2.0 V, ~34 h of test time."""
    run = run_experiment(tmp_path, "cv.yaml", name, seed=seed)
    assert run.result.state is RunState.COMPLETED, run.result.reason
    samples = run.store.samples(run.run_id)
    assert samples["voltage"].min() == pytest.approx(0.0, abs=0.002)
    assert samples["t"][-1] == pytest.approx(34.33 * 3600, rel=0.01)


# --- 2. outcomes answer the protocol ----------------------------------------------------------


@pytest.mark.parametrize("name", SINGLE_SEEDS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_3_mA_and_3_mAh_short_earlier_than_1_mA_and_1_mAh(name: str, seed: int) -> None:
    at_reference = HalfCell(name, seed=seed)
    cycle(at_reference, 1.0, 1.0, 150)
    harder = HalfCell(name, seed=seed)
    cycle(harder, 3.0, 3.0, 150)
    assert at_reference.short_onset_cycle == at_reference.short.reference_onset_cycle
    assert harder.short_onset_cycle is not None
    assert at_reference.short_onset_cycle is not None
    assert harder.short_onset_cycle < at_reference.short_onset_cycle


def test_mgagsn_at_3_mA_and_3_mAh_no_longer_runs_250_cycles_at_the_papers_ce() -> None:
    ces = cycle(HalfCell("mgagsn", seed=1), 3.0, 3.0, 250)
    assert len(ces) < 250  # it shorted
    assert np.mean(ces[1:20]) < 0.99


@pytest.mark.parametrize("name", list(PRESETS))
def test_ce_falls_with_current_density_and_rises_with_areal_capacity(name: str) -> None:
    reference = np.mean(cycle(HalfCell(name, seed=2), 1.0, 1.0, 6)[1:])
    faster = np.mean(cycle(HalfCell(name, seed=2), 2.0, 1.0, 6)[1:])
    thicker = np.mean(cycle(HalfCell(name, seed=2), 1.0, 2.0, 6)[1:])
    assert faster < reference < thicker


def test_voids_from_more_capacity_per_cycle_bring_the_short_forward() -> None:
    """Same current density, three times the areal capacity: three times the voids per cycle."""
    reference, thicker = HalfCell("mg", seed=1), HalfCell("mg", seed=1)
    cycle(reference, 1.0, 1.0, 100)
    cycle(thicker, 1.0, 3.0, 100)
    assert reference.short_onset_cycle is not None
    assert thicker.short_onset_cycle is not None
    assert thicker.short_onset_cycle < reference.short_onset_cycle / 2


def test_above_the_critical_current_density_the_first_plating_shorts() -> None:
    cell = HalfCell("sn", seed=1)
    cycle(cell, 1.2 * preset("sn").ccd_A_per_m2 / MA_PER_CM2, 1.0, 1)
    assert cell.short_onset_cycle == 1


def test_presets_draw_apart_with_one_seed() -> None:
    """Before: seed 1 gave every preset its onset at 1.40 × n0 (and the same soft-short level)."""
    soft = {name: HalfCell(name, seed=1).short.soft_ohm_m2 for name in PRESETS}
    assert len(set(soft.values())) == len(soft), soft
    ratios = {
        name: HalfCell(name, seed=1).short.reference_onset_cycle / p.short_n0_cycles
        for name, p in PRESETS.items()
    }
    assert len({round(r, 3) for r in ratios.values()}) > 1, ratios


# --- 3. E5: the contact a rigid binder loses while Li plates ----------------------------------


@pytest.fixture(scope="module")
def in_situ(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    rises = {}
    for name in ("mgagsn", "mgagsn-pvdf"):
        run = run_experiment(tmp_path_factory.mktemp(name), "insitu_eis.yaml", name, seed=1)
        trends = spectrum_trends(run.store, run.run_id)
        rises[name] = trends.R_CT_ohm[trends.step_kind == "plate"]
    return rises


def test_in_situ_r_ct_rises_during_plating_more_with_pvdf_than_with_elastane(
    in_situ: dict[str, np.ndarray],
) -> None:
    """Fig. S15: a larger resistance rise during plating for PVDF. Before: R_CT fell for both."""
    elastane, pvdf = in_situ["mgagsn"], in_situ["mgagsn-pvdf"]
    assert len(elastane) == len(pvdf) == 6  # plating sequences 1-6
    assert not np.isnan(elastane).any()
    assert not np.isnan(pvdf).any()
    rise_pvdf, rise_elastane = pvdf[-1] - pvdf[0], elastane[-1] - elastane[0]
    assert rise_pvdf > 5.0  # Ω: the rigid binder loses contact under ~5 µm of Li
    assert (np.diff(pvdf) > 0).all(), pvdf
    assert rise_pvdf > 5 * max(rise_elastane, 0.0)
    assert abs(rise_elastane) < 2.0
