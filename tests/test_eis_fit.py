"""Equivalent-circuit fits: recovery of known values, honest uncertainties, refusals, and the
E4/E5 impedance trends of simulated runs (library protocol -> runner -> simulated cell -> store)."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from cyclerd.analysis.circuits import Circuit
from cyclerd.analysis.eis_trends import (
    NO_SEI,
    WITH_SEI,
    EisTrends,
    TrendCircuitError,
    choose_circuit,
    spectrum_trends,
)
from cyclerd.analysis.eisfit import (
    FitFailed,
    FitInputError,
    fit_spectrum,
    high_frequency_intercept,
    initial_guess,
)
from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import StoreSink
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Store

FREQUENCY_HZ = np.logspace(6, -1, 71)
NOISE = 1e-3  # rms of each of Z', Z'' relative to |Z|, as the simulator's eis_noise_fraction


def noisy(circuit: str, truth: dict[str, float], seed: int, f: np.ndarray = FREQUENCY_HZ) -> np.ndarray:
    z = Circuit(circuit)(2 * np.pi * f, truth)
    rng = np.random.default_rng(seed)
    return z + NOISE * np.abs(z) * (rng.normal(size=z.shape) + 1j * rng.normal(size=z.shape))


# One circuit per element type, with values of a 0.785 cm² solid-state half-cell.
ELEMENT_CASES = {
    "R": ("R0-p(R1,C1)", {"R0": 10.0, "R1": 100.0, "C1": 1e-6}),
    "C": ("R0-p(R1,CPE1)-C2", {"R0": 10.0, "R1": 30.0, "CPE1_Q": 1e-5, "CPE1_alpha": 0.85, "C2": 1e-2}),
    "L": ("L1-R0-p(R1,CPE1)", {"L1": 2e-7, "R0": 5.0, "R1": 50.0, "CPE1_Q": 1e-5, "CPE1_alpha": 0.9}),
    "CPE": (
        "R0-p(R1,CPE1)-CPE2",
        {"R0": 10.0, "R1": 30.0, "CPE1_Q": 1e-5, "CPE1_alpha": 0.85, "CPE2_Q": 1e-2, "CPE2_alpha": 0.7},
    ),
    "W": ("R0-p(R1,CPE1)-W1", {"R0": 10.0, "R1": 30.0, "CPE1_Q": 1e-5, "CPE1_alpha": 0.85, "W1_sigma": 20.0}),
    "Wo": (
        "R0-p(R1,CPE1)-Wo1",
        {"R0": 10.0, "R1": 30.0, "CPE1_Q": 1e-5, "CPE1_alpha": 0.85, "Wo1_R": 50.0, "Wo1_tau": 5.0},
    ),
    "Ws": (
        "R0-p(R1,CPE1)-Ws1",
        {"R0": 10.0, "R1": 30.0, "CPE1_Q": 1e-5, "CPE1_alpha": 0.85, "Ws1_R": 50.0, "Ws1_tau": 5.0},
    ),
}
TWO_ARCS = {  # the simulated MgAgSn-PVDF cell: R_b, SEI arc (~70 kHz), R_CT arc (~3 kHz), Warburg
    "R0": 38.0, "R1": 20.0, "CPE1_Q": 8e-7, "CPE1_alpha": 0.85,
    "R2": 15.0, "CPE2_Q": 1.5e-5, "CPE2_alpha": 0.85, "W1_sigma": 6.4,
}  # fmt: skip


@pytest.mark.parametrize("code", sorted(ELEMENT_CASES))
def test_every_element_is_recovered_within_three_standard_errors(code: str) -> None:
    circuit, truth = ELEMENT_CASES[code]
    fit = fit_spectrum(FREQUENCY_HZ, noisy(circuit, truth, seed=7), circuit)
    for name, value in truth.items():
        error = fit.uncertainty(name)
        assert np.isfinite(error), name
        assert 0 < error < 0.02 * value, name  # 0.1 % noise: a few % at most
        assert abs(fit[name] - value) < 3 * error, name


def test_standard_errors_are_calibrated_over_many_noisy_spectra() -> None:
    """~68 % of values within 1σ and ~99.7 % within 3σ, if the covariance is right."""
    pulls = []
    for seed in range(40):
        fit = fit_spectrum(FREQUENCY_HZ, noisy(WITH_SEI, TWO_ARCS, seed), WITH_SEI)
        truth = fit.circuit.vector(TWO_ARCS)
        pulls.append((fit.values - truth) / fit.stderr)
    inside_1 = np.mean(np.abs(pulls) < 1)
    assert 0.58 < inside_1 < 0.78
    assert np.mean(np.abs(pulls) < 3) > 0.97


def test_goodness_of_fit_reports_the_noise_level() -> None:
    z = noisy(WITH_SEI, TWO_ARCS, seed=3)
    fit = fit_spectrum(FREQUENCY_HZ, z, WITH_SEI)
    # 1/|Z| weights make each residual ~N(0, 0.001²): chi² per degree of freedom ≈ 1e-6.
    assert fit.chi2_reduced == pytest.approx(NOISE**2, rel=0.3)
    assert fit.residual_rms_rel == pytest.approx(np.sqrt(2) * NOISE, rel=0.2)
    assert fit.dof == 2 * FREQUENCY_HZ.size - 8
    np.testing.assert_allclose(
        fit.predict(FREQUENCY_HZ), Circuit(WITH_SEI)(2 * np.pi * FREQUENCY_HZ, fit.values)
    )
    assert fit["R1"] == fit.as_dict()["R1"]
    with pytest.raises(KeyError, match="has no parameter 'R3'"):
        fit.uncertainty("R3")


@pytest.mark.parametrize("weighting", ["unit", "proportional"])
def test_other_weightings_recover_the_values_too(weighting: str) -> None:
    circuit, truth = ELEMENT_CASES["W"]
    fit = fit_spectrum(FREQUENCY_HZ, noisy(circuit, truth, seed=11), circuit, weighting=weighting)  # type: ignore[arg-type]
    for name, value in truth.items():
        assert fit[name] == pytest.approx(value, rel=0.05), name
        assert abs(fit[name] - value) < 4 * fit.uncertainty(name), name


def test_automatic_initial_guesses_are_read_off_the_spectrum() -> None:
    guess = initial_guess(FREQUENCY_HZ, noisy(WITH_SEI, TWO_ARCS, seed=1), WITH_SEI)
    for name in ("R0", "R1", "R2", "W1_sigma"):
        assert TWO_ARCS[name] / 2 < guess[name] < TWO_ARCS[name] * 2, name
    for name in ("CPE1_Q", "CPE2_Q"):  # apex frequencies: within a factor 10
        assert TWO_ARCS[name] / 10 < guess[name] < TWO_ARCS[name] * 10, name


def test_given_initial_values_and_bounds_are_used() -> None:
    circuit, truth = ELEMENT_CASES["R"]
    z = noisy(circuit, truth, seed=2)
    fit = fit_spectrum(FREQUENCY_HZ, z, circuit, initial={"R1": 500.0}, bounds={"R0": (0, 1e3)})
    assert fit["R1"] == pytest.approx(100.0, rel=0.01)
    with pytest.raises(FitFailed, match="R1 ran into the search bounds"):
        fit_spectrum(FREQUENCY_HZ, z, circuit, bounds={"R1": (1.0, 50.0)})


def test_high_frequency_intercept_interpolates_the_real_axis_crossing() -> None:
    truth = {"L1": 2e-7, "R0": 5.0, "R1": 50.0, "CPE1_Q": 1e-5, "CPE1_alpha": 0.9}
    f = np.logspace(7, -1, 81)
    z = Circuit("L1-R0-p(R1,CPE1)")(2 * np.pi * f, truth)
    assert (-z.imag)[0] < 0  # inductive at 10 MHz
    r_b = high_frequency_intercept(f, z)
    assert r_b == pytest.approx(5.0, rel=0.02)
    assert high_frequency_intercept(f[::-1], z[::-1]) == r_b  # either frequency order
    # Without a crossing (no inductance) it is the real part at the highest frequency.
    z_no_l = Circuit("R0-p(R1,CPE1)")(2 * np.pi * f, {k: v for k, v in truth.items() if k != "L1"})
    assert high_frequency_intercept(f, z_no_l) == z_no_l.real[0]


# --- refusals -----------------------------------------------------------------------------------


def test_pure_noise_cannot_be_fitted() -> None:
    rng = np.random.default_rng(5)
    z = 10 + rng.normal(size=FREQUENCY_HZ.size) + 1j * rng.normal(size=FREQUENCY_HZ.size)
    with pytest.raises(FitFailed):
        fit_spectrum(FREQUENCY_HZ, z, WITH_SEI)


def test_more_parameters_than_the_spectrum_holds() -> None:
    f = FREQUENCY_HZ[::20]  # 4 points, 8 numbers, 8 parameters
    with pytest.raises(FitFailed, match="8 parameters but the spectrum only 4 points"):
        fit_spectrum(f, noisy(WITH_SEI, TWO_ARCS, 1, f), WITH_SEI)


def test_an_element_the_spectrum_does_not_contain_is_refused() -> None:
    circuit, truth = ELEMENT_CASES["W"]
    z = noisy(circuit, truth, seed=4)
    with pytest.raises(FitFailed, match="L1"):  # no inductance in the data
        fit_spectrum(FREQUENCY_HZ, z, "L1-" + circuit)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frequency_Hz": FREQUENCY_HZ[:-1]}, "same length"),
        ({"frequency_Hz": -FREQUENCY_HZ}, "frequencies must be positive"),
        ({"weighting": "sqrt"}, "choose one of modulus, unit, proportional"),
        ({"bounds": {"R0": (-1.0, 5.0)}}, "need 0 ≤ low < high"),
        ({"bounds": {"R9": (1.0, 5.0)}}, "bounds for 'R9'"),
        ({"initial": {"R0": -3.0}}, "need a positive value"),
    ],
)
def test_bad_input_is_refused_with_advice(kwargs: dict[str, object], message: str) -> None:
    circuit, truth = ELEMENT_CASES["R"]
    args: dict[str, object] = {
        "frequency_Hz": FREQUENCY_HZ,
        "impedance_ohm": noisy(circuit, truth, seed=1),
        "circuit": circuit,
    }
    with pytest.raises(FitInputError, match=message):
        fit_spectrum(**{**args, **kwargs})  # type: ignore[arg-type]


def test_model_choice_keeps_the_sei_arc_only_when_the_spectrum_has_one() -> None:
    one_arc = {k: v for k, v in TWO_ARCS.items() if k not in ("R2", "CPE2_Q", "CPE2_alpha")}
    assert not choose_circuit(FREQUENCY_HZ, noisy(NO_SEI, one_arc, seed=2)).with_sei
    z = noisy(WITH_SEI, TWO_ARCS, seed=2)
    two = choose_circuit(FREQUENCY_HZ, z)
    assert two.with_sei
    assert 0 < two.p_value < 1e-10
    assert "needs the SEI arc" in two.note
    # The decision is the F-test's: demand more than this spectrum offers and the arc is dropped.
    strict = choose_circuit(FREQUENCY_HZ, z, significance=two.p_value / 10)
    assert not strict.with_sei
    assert strict.p_value == two.p_value
    assert "does not need the SEI arc" in strict.note
    assert np.isnan(strict.r_sei[0])
    assert two.r_sei[0] == pytest.approx(20.0, rel=0.05)  # the high-frequency arc, whatever its number
    assert two.r_ct[0] == pytest.approx(15.0, rel=0.05)
    with pytest.raises(TrendCircuitError, match="at least one arc"):
        choose_circuit(FREQUENCY_HZ, noisy(NO_SEI, one_arc, seed=2), without="R0-W1")


def test_a_glitched_spectrum_gets_its_own_no_fit_row_and_the_others_are_fitted(tmp_path: Path) -> None:
    one_arc = {k: v for k, v in TWO_ARCS.items() if k not in ("R2", "CPE2_Q", "CPE2_alpha")}
    good = noisy(NO_SEI, one_arc, seed=9)
    glitched = good.copy()
    glitched[30] = 0  # a lead lost contact for one point
    with Store(tmp_path / "glitch.db") as store:
        run_id = store.create_run("EIS", "sim", "", {}, {})
        store.begin_step(run_id, 1, 1, "eis", "EIS", 0, 0.0)
        store.append_spectrum(run_id, 1, 0.0, 1, 0, FREQUENCY_HZ, good)
        store.append_spectrum(run_id, 2, 60.0, 1, 0, FREQUENCY_HZ, glitched)
        store.end_step(run_id, 1, 120.0, "spectrum", 0.0, 0.0)
        trends = spectrum_trends(store, run_id)
    assert trends.circuit.tolist() == [NO_SEI, ""]
    assert trends.step_kind.tolist() == ["rest", "rest"]
    assert trends.R_CT_ohm[0] == pytest.approx(20.0, rel=0.01)
    assert np.isnan(trends.R_CT_ohm[1])
    assert trends.note[1].startswith("unusable spectrum: |Z| = 0 at")
    assert trends.fits[1] is None


# --- E4 and E5 on simulated cells ---------------------------------------------------------------


def simulate(db: Path, protocol: str, preset: str, seed: int = 1) -> EisTrends:
    text = (files("cyclerd.protocols") / "library" / protocol).read_text()
    program = compile_protocol(loads(text, protocol))
    store = Store(db)
    run_id = store.create_run(program.name, "sim", text, {}, {"preset": preset, "seed": seed})
    clock = VirtualClock()
    asyncio.run(
        Runner(
            program, SimulatedChannel(make_cell(preset, seed=seed), clock), clock, StoreSink(store, run_id)
        ).run()
    )
    return spectrum_trends(store, run_id)


@pytest.fixture(scope="module")
def e4(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EisTrends]:
    folder = tmp_path_factory.mktemp("e4")
    return {
        p: simulate(folder / f"{p}.db", "eis_after_cycling.yaml", p) for p in ("mg", "ag", "sn", "mgagsn")
    }


@pytest.fixture(scope="module")
def e5(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EisTrends]:
    folder = tmp_path_factory.mktemp("e5")
    return {p: simulate(folder / f"{p}.db", "insitu_eis.yaml", p) for p in ("mgagsn", "mgagsn-pvdf")}


def test_e4_charge_transfer_resistance_is_lowest_and_flattest_for_mgagsn(e4: dict[str, EisTrends]) -> None:
    for trends in e4.values():
        assert trends.cycle.tolist() == [5, 10]
        assert trends.step_kind.tolist() == ["rest", "rest"]
        assert set(trends.circuit) == {NO_SEI}  # Elastane binder: no SEI arc
        assert np.all(trends.R_CT_stderr_ohm < 0.01 * trends.R_CT_ohm)
        # R_b from the fit is the high-frequency intercept of the pellet, ~38 Ω.
        np.testing.assert_allclose(trends.R_b_ohm, trends.R_b_intercept_ohm, rtol=0.01)
    growth = {p: t.R_CT_ohm[1] / t.R_CT_ohm[0] for p, t in e4.items()}
    for single in ("mg", "ag", "sn"):
        assert np.all(e4["mgagsn"].R_CT_ohm < e4[single].R_CT_ohm)
        assert growth[single] > 1.2  # R_CT grows with cycling for single seeds
        assert growth["mgagsn"] < growth[single]
    assert growth["mgagsn"] < 1.1


def test_e5_pvdf_needs_and_gets_an_sei_arc_and_elastane_does_not(e5: dict[str, EisTrends]) -> None:
    elastane, pvdf = e5["mgagsn"], e5["mgagsn-pvdf"]
    for trends in (elastane, pvdf):
        plate, strip = trends.step_kind == "plate", trends.step_kind == "strip"
        assert trends.step_sequence[plate].tolist() == [1, 2, 3, 4, 5, 6]  # plating sequences 1-6
        assert trends.step_sequence[strip].tolist() == [1, 2, 3, 4, 5]  # stripping sequences 1-5
    assert set(pvdf.circuit) == {WITH_SEI}
    assert np.all(pvdf.sei_p_value < 1e-10)
    # The simulated PVDF cell's SEI: (15 + 0.3 Ω·cm² per cycle × 4 cycles) / 0.785 cm² = 20.6 Ω.
    np.testing.assert_allclose(pvdf.R_SEI_ohm, 20.6, rtol=0.05)
    assert np.all(pvdf.R_SEI_stderr_ohm < 0.05 * pvdf.R_SEI_ohm)
    assert set(elastane.circuit) == {NO_SEI}
    assert np.all(np.isnan(elastane.R_SEI_ohm))
    # R_CT rises as the plated Li is used up and voids open; more so with PVDF.
    end_of_strip = -1
    assert pvdf.step_kind[end_of_strip] == elastane.step_kind[end_of_strip] == "strip"
    assert pvdf.R_CT_ohm[end_of_strip] > 1.5 * elastane.R_CT_ohm[end_of_strip]
    for trends in (elastane, pvdf):
        strip = trends.R_CT_ohm[trends.step_kind == "strip"]
        assert strip[-1] > strip[0]
