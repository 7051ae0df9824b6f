"""Impedance: circuit elements, and the spectra the half-cell model shows as it cycles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray
from test_halfcell import CURRENT_DENSITY_A_PER_M2, plate_strip

from cyclerd.simulators.halfcell import HalfCell
from cyclerd.simulators.impedance import (
    CircuitParams,
    angular_frequency,
    characteristic_frequency_Hz,
    circuit_impedance,
    cpe,
    inductor,
    parallel,
    r_parallel_cpe,
    warburg_finite,
    warburg_semi_infinite,
)
from cyclerd.simulators.presets_halfcell import MAH_PER_CM2, OHM_CM2, PER_CM2

AREA_M2 = 0.785e-4
# The paper's protocol: 7 MHz to 0.1 Hz, 10 points per decade.
FREQUENCIES_HZ = np.logspace(math.log10(7e6), -1, 80)


def elastane_circuit(**changes: float) -> CircuitParams:
    """MgAgSn-Elastane after 5 cycles, from the areal values of cell-physics.md §7."""
    values = {
        "r_b_ohm_m2": 30 * OHM_CM2,
        "r_sei_ohm_m2": 0.0,
        "q_sei_per_m2": 1e-6 * PER_CM2,
        "alpha_sei": 0.85,
        "r_ct_ohm_m2": 10 * OHM_CM2,
        "q_dl_per_m2": 2e-5 * PER_CM2,
        "alpha_dl": 0.85,
        "sigma_w_ohm_m2_per_sqrt_s": 5 * OHM_CM2,
    } | changes
    return CircuitParams.from_areal(AREA_M2, **values)


def arc_count(frequencies_Hz: NDArray[np.float64], z: NDArray[np.complex128], lowest_Hz: float = 1.0) -> int:
    """Semicircles above `lowest_Hz`: apexes of −Z'' that stand out from their surroundings.

    An apex counts when it is at least a fifth of the tallest one and its prominence (how
    far −Z'' must fall, on the lower of its two sides, before climbing higher again) is at
    least 5 % of its height: measurement noise makes bumps, not prominent apexes, and the
    rising Warburg tail below the arcs has no apex of its own.
    """
    y = -z.imag[frequencies_Hz >= lowest_Hz]
    count = 0
    for i in range(1, len(y) - 1):
        if not (y[i - 1] < y[i] > y[i + 1] and y[i] > 0.2 * y.max()):
            continue
        higher_left = np.flatnonzero(y[:i] > y[i])
        higher_right = np.flatnonzero(y[i + 1 :] > y[i])
        left = y[higher_left[-1] : i] if higher_left.size else y[:i]
        right = y[i + 1 : i + 1 + higher_right[0] + 1] if higher_right.size else y[i + 1 :]
        if y[i] - max(left.min(), right.min()) > 0.05 * y[i]:
            count += 1
    return count


def arc_ohm(cell: HalfCell) -> float:
    """Re Z at 1 Hz minus the high-frequency intercept: the interfacial resistances."""
    z = cell.impedance(np.array([7e6, 1.0]))
    return float(z.real[1] - z.real[0])


# --- elements ---------------------------------------------------------------------------------


def test_cpe_has_constant_phase_and_power_law_magnitude() -> None:
    omega = angular_frequency(np.logspace(-1, 6, 15))
    z = cpe(omega, q=2e-5, alpha=0.8)
    np.testing.assert_allclose(np.angle(z), -0.8 * np.pi / 2)
    np.testing.assert_allclose(np.abs(z), 1 / (2e-5 * omega**0.8))


def test_ideal_cpe_is_a_capacitor() -> None:
    omega = angular_frequency([1.0, 1e3])
    np.testing.assert_allclose(cpe(omega, q=1e-6, alpha=1.0), 1 / (1j * omega * 1e-6))


def test_r_parallel_cpe_is_r_at_dc_and_zero_at_high_frequency() -> None:
    omega = angular_frequency([1e-4, 1e9])
    z = r_parallel_cpe(omega, 100.0, 1e-5, 0.9)
    assert z[0].real == pytest.approx(100.0, rel=1e-3)
    assert abs(z[1]) < 0.1
    np.testing.assert_allclose(
        r_parallel_cpe(omega, 100.0, 1e-5, 0.9),
        parallel(np.full(2, 100.0 + 0j), cpe(omega, 1e-5, 0.9)),
    )
    assert (r_parallel_cpe(omega, 0.0, 1e-5, 0.9) == 0).all()


def test_arc_apex_sits_at_the_characteristic_frequency() -> None:
    # cell-physics.md §2.2: R_ct 10 Ω·cm², Q 2e-5, α 0.85 -> f_c ≈ 3.5 kHz (area-independent).
    f_c = characteristic_frequency_Hz(10 * OHM_CM2 / AREA_M2, 2e-5 * PER_CM2 * AREA_M2, 0.85)
    assert f_c == pytest.approx(3.5e3, rel=0.1)
    f = np.logspace(1, 6, 501)
    z = r_parallel_cpe(angular_frequency(f), 10.0, 2e-5, 0.85)
    assert f[np.argmax(-z.imag)] == pytest.approx(characteristic_frequency_Hz(10.0, 2e-5, 0.85), rel=0.03)
    sei = characteristic_frequency_Hz(15 * OHM_CM2, 1e-6 * PER_CM2, 0.85)
    assert sei == pytest.approx(75e3, rel=0.1)


def test_warburg_is_a_45_degree_line_and_the_finite_one_stays_bounded() -> None:
    omega = angular_frequency(np.logspace(-2, 3, 11))
    z = warburg_semi_infinite(omega, 5.0)
    np.testing.assert_allclose(z.real, -z.imag)
    np.testing.assert_allclose(z.real, 5.0 / np.sqrt(omega))
    bounded = warburg_finite(angular_frequency([1e-6]), 20.0, 10.0)
    assert bounded[0].real == pytest.approx(20.0, rel=1e-3)


def test_inductor_and_parallel() -> None:
    omega = angular_frequency([1e6])
    assert inductor(omega, 1e-6)[0].imag == pytest.approx(2 * np.pi)
    z = parallel(np.array([10.0 + 0j, 0j]), np.array([10.0 + 0j, 5.0 + 0j]))
    np.testing.assert_allclose(z, [5.0, 0.0])


def test_areal_values_scale_to_the_pellet() -> None:
    circuit = elastane_circuit()
    assert circuit.r_b_ohm == pytest.approx(38.2, abs=0.1)  # 30 Ω·cm² / 0.785 cm²
    assert circuit.r_ct_ohm == pytest.approx(12.7, abs=0.1)
    assert circuit.q_dl == pytest.approx(2e-5 * 0.785)
    assert MAH_PER_CM2 == 10.0


def test_elastane_circuit_matches_the_numbers_checked_in_the_note() -> None:
    # §4(e): high-frequency intercept 38 Ω, apex ≈ 4 kHz, Re Z(1 Hz) ≈ 54 Ω.
    f = np.logspace(math.log10(7e6), -1, 400)
    z = circuit_impedance(f, elastane_circuit())
    assert z.real[0] == pytest.approx(38.2, abs=0.3)
    above_1Hz = f >= 100.0
    assert f[above_1Hz][np.argmax(-z.imag[above_1Hz])] == pytest.approx(3.5e3, rel=0.25)
    assert circuit_impedance([1.0], elastane_circuit()).real[0] == pytest.approx(54.0, abs=2.0)


def test_shunt_collapses_the_spectrum_and_leads_add_inductance() -> None:
    shorted = circuit_impedance(FREQUENCIES_HZ, elastane_circuit(shunt_ohm_m2=1 * OHM_CM2))
    assert np.abs(shorted).max() < 1.3  # 1 Ω·cm² on 0.785 cm²
    with_leads = circuit_impedance([7e6], elastane_circuit(inductance_H=0.5e-6))
    assert with_leads.imag[0] > 0
    assert with_leads.real[0] == pytest.approx(38.2, abs=0.3)


# --- the half-cell's spectra ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mg", "ag", "sn", "mgagsn", "mgagsn-pvdf"])
def test_high_frequency_intercept_is_the_bulk_resistance(name: str) -> None:
    z = HalfCell(name, seed=1).impedance(FREQUENCIES_HZ)
    assert z.real[0] == pytest.approx(30 * OHM_CM2 / AREA_M2, abs=1.0)


def test_pvdf_shows_an_extra_sei_arc_and_elastane_does_not() -> None:
    # Above 100 Hz: below it, a pristine (Li-free) electrode's blocking tail climbs to kΩ.
    for cycles in (0, 5):
        pvdf, elastane = HalfCell("mgagsn-pvdf", seed=1), HalfCell("mgagsn", seed=1)
        plate_strip(pvdf, cycles)
        plate_strip(elastane, cycles)
        assert arc_count(FREQUENCIES_HZ, pvdf.impedance(FREQUENCIES_HZ), lowest_Hz=100.0) == 2
        assert arc_count(FREQUENCIES_HZ, elastane.impedance(FREQUENCIES_HZ), lowest_Hz=100.0) == 1


def test_charge_transfer_grows_with_cycling_for_single_seeds_and_least_for_mgagsn() -> None:
    growth, after_10 = {}, {}
    for name in ("mg", "ag", "sn", "mgagsn"):
        cell = HalfCell(name, seed=1)  # seed 1: no single seed shorts before cycle 18
        plate_strip(cell, 5)
        r5 = arc_ohm(cell)
        plate_strip(cell, 5)
        after_10[name] = arc_ohm(cell)
        growth[name] = after_10[name] - r5
    for name in ("mg", "ag", "sn"):
        assert growth[name] > 5.0, growth
        assert after_10[name] > after_10["mgagsn"]
        assert growth[name] > growth["mgagsn"]
    assert growth["mgagsn"] < 3.0


def test_in_situ_arc_shrinks_while_li_covers_the_seeds() -> None:
    cell = HalfCell("mgagsn", seed=1)
    plate_strip(cell, 1)
    current_A = CURRENT_DENSITY_A_PER_M2 * cell.area_m2
    arcs = []
    for _ in range(6):  # plating sequences 1–6: a spectrum every 10 min of the 1 h plating
        arcs.append(arc_ohm(cell))
        cell.advance_at_current(-current_A, 600.0)
    assert arcs[0] > 1.5 * arcs[-1]
    assert (np.diff(arcs) < 0.2).all(), arcs  # never grows beyond noise


def test_pvdf_arc_is_larger_at_the_end_of_stripping() -> None:
    ends = {}
    for name in ("mgagsn", "mgagsn-pvdf"):
        cell = HalfCell(name, seed=1)
        plate_strip(cell, 2)
        ends[name] = arc_ohm(cell)
    assert ends["mgagsn-pvdf"] > 2 * ends["mgagsn"]


def test_a_shorted_cell_shows_a_small_real_impedance() -> None:
    cell = HalfCell("sn", seed=3)
    s = cell.short
    plate_strip(cell, s.reference_onset_cycle + s.fall_cycles + s.hold_cycles)
    z = cell.impedance(FREQUENCIES_HZ)
    assert np.abs(z).max() < 3.0  # ~1 Ω·cm² hard short on 0.785 cm²
