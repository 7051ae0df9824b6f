"""The paper's experiments end to end: library protocol -> runner -> simulated cell -> store.

Everything runs in virtual time; the numbers asserted are those of experiments.md.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from cyclerd.analysis.cycles import average_ce
from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.runner import Runner, RunResult
from cyclerd.engine.sinks import StoreSink
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Store

LIBRARY = files("cyclerd.protocols") / "library"


@dataclass
class Finished:
    result: RunResult
    store: Store
    run_id: int
    hours: float


def run_experiment(tmp_path: Path, protocol: str, preset: str, seed: int = 1, **edit: str) -> Finished:
    text = (LIBRARY / protocol).read_text()
    for old, new in edit.items():
        text = text.replace(old, new)
    program = compile_protocol(loads(text, protocol))
    store = Store(tmp_path / f"{preset}.db")
    run_id = store.create_run(program.name, "sim", text, {}, {"preset": preset, "seed": seed})
    clock = VirtualClock()
    channel = SimulatedChannel(make_cell(preset, seed=seed), clock)
    result = asyncio.run(Runner(program, channel, clock, StoreSink(store, run_id)).run())
    return Finished(result, store, run_id, clock.now() / 3600)


@pytest.mark.parametrize(("preset", "ice"), [("mgagsn", 0.845), ("mg", 0.685), ("ag", 0.762), ("sn", 0.727)])
def test_e1_first_cycle_coulombic_efficiency(tmp_path: Path, preset: str, ice: float) -> None:
    run = run_experiment(tmp_path, "plating_stripping.yaml", preset)
    assert run.result.cycles[0].coulombic_efficiency == pytest.approx(ice, abs=0.01)


def test_e1_mgagsn_cycles_past_230_at_99_62_percent_for_470_hours(tmp_path: Path) -> None:
    run = run_experiment(tmp_path, "plating_stripping.yaml", "mgagsn")
    cycles = run.result.cycles
    assert len(cycles) >= 230
    assert run.result.short is None
    assert average_ce(cycles, first=2) == pytest.approx(0.9962, abs=0.0005)
    assert run.hours >= 470
    # The summary recomputed from the stored samples is the one the runner used live.
    from cyclerd.analysis.cycles import summarise

    stored = summarise(run.store.samples(run.run_id))
    assert [c.coulombic_efficiency for c in stored] == pytest.approx([c.coulombic_efficiency for c in cycles])
    table = run.store.cycles(run.run_id)
    assert table["cycle"].tolist() == [c.cycle for c in cycles]
    np.testing.assert_allclose(table["coulombic_efficiency"], [c.coulombic_efficiency for c in stored])
    # The runner checkpoints with every batch and step phase: the last one is where the run ended.
    t, state = run.store.checkpoint(run.run_id) or (0.0, {})
    assert state["cycle"] == len(cycles)
    assert state["phase"] == "done"
    assert state["step_number"] == run.store.steps(run.run_id)[-1]["number"]
    assert t == pytest.approx(run.hours * 3600)


@pytest.mark.parametrize("preset", ["mg", "ag", "sn"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_e1_single_seeds_short_circuit_before_cycle_100(tmp_path: Path, preset: str, seed: int) -> None:
    run = run_experiment(tmp_path, "plating_stripping.yaml", preset, seed=seed)
    assert run.result.short is not None
    assert run.result.short.cycle < 100
    assert len(run.result.cycles) == run.result.short.cycle  # the loop stopped at the short
    events = [e for e in run.store.events(run.run_id) if e["kind"] == "short_circuit"]
    assert len(events) == 1
    assert f"cycle {run.result.short.cycle}" in events[0]["message"]


def test_e3_first_plating_shows_sn_then_mg_then_ag_before_li(tmp_path: Path) -> None:
    # One cycle is enough; log every second so the plateaus are well sampled.
    run = run_experiment(
        tmp_path,
        "plating_stripping.yaml",
        "mgagsn",
        **{"count: 250": "count: 1", "every: 10 s": "every: 1 s"},
    )
    samples = run.store.samples(run.run_id)
    first_plate = next(s for s in run.store.steps(run.run_id) if s["kind"] == "plate")
    mask = samples["step"] == first_plate["number"]
    v, t = samples["voltage"][mask], samples["t"][mask]

    def first_below(volts: float) -> float:
        return float(t[np.argmax(v < volts)])

    def dwell(low: float, high: float) -> float:
        return float(np.sum(np.diff(t)[((v > low) & (v < high))[1:]]))

    # Under 1 mA/cm² every plateau sits ~40 mV below its open-circuit potential (cell-physics
    # 4(a)): Sn 0.76 -> 0.38 V, Mg 0.09 V, Ag 0.07 and 0.035 V, then Li below 0 V.
    sn, mg, ag, li = first_below(0.45), first_below(0.07), first_below(0.04), first_below(-0.02)
    assert 0 < sn < mg < ag < li
    # Each alloy holds its plateau for its share of the seed capacity (~0.05 mAh/cm², ~3 min).
    assert dwell(0.30, 0.70) > 60  # Li-Sn
    assert dwell(0.045, 0.07) > 60  # Li-Mg
    assert dwell(-0.015, 0.04) > 60  # Li-Ag
    assert v[-1] < -0.02  # and then lithium plates


@pytest.mark.parametrize("preset", ["mgagsn", "mgagsn-pvdf"])
def test_e5_in_situ_spectra_every_ten_minutes(tmp_path: Path, preset: str) -> None:
    run = run_experiment(tmp_path, "insitu_eis.yaml", preset)
    steps = run.store.steps(run.run_id)
    # The in-situ cycle follows conditioning cycles; its steps are the ones with every-blocks.
    plate = next(s for s in steps if s["label"] == "plate with EIS")
    strip = next(s for s in steps if s["label"] == "strip with EIS")
    spectra = run.store.spectra(run.run_id)
    plating = [s for s in spectra if plate["t_start"] <= s["t"] <= plate["t_end"]]
    stripping = [s for s in spectra if strip["t_start"] <= s["t"] <= strip["t_end"]]
    assert len(plating) == 6
    assert len(stripping) == 5
    # 1 mAh/cm² on 0.785 cm² = 2.826 A·s, exactly, despite six interruptions.
    assert abs(plate["charge_As"]) == pytest.approx(0.785e-3 * 3600, rel=1e-9)
    # 10 minutes of step time between spectra: test-time gaps are 600 s plus the EIS block.
    gaps = np.diff([s["t"] for s in plating])
    assert np.allclose(gaps, gaps[0])
    assert gaps[0] > 600


def _arcs(z: np.ndarray) -> int:
    """Local maxima of -Z'' that stand out of the noise (high-frequency side first)."""
    minus_imag = -z.imag
    peaks = 0
    for k in range(1, len(z) - 1):
        if minus_imag[k] > minus_imag[k - 1] and minus_imag[k] >= minus_imag[k + 1] and minus_imag[k] > 1.0:
            peaks += 1
    return peaks


def test_e5_pvdf_spectra_show_the_extra_high_frequency_arc(tmp_path: Path) -> None:
    elastane = run_experiment(tmp_path, "insitu_eis.yaml", "mgagsn").store
    pvdf = run_experiment(tmp_path, "insitu_eis.yaml", "mgagsn-pvdf").store
    z_e = elastane.spectra(1)[-1]
    z_p = pvdf.spectra(1)[-1]
    f = z_e["frequency_Hz"]
    high = f > 2e4  # the R_SEI arc sits near 75 kHz
    # Elastane: the high-frequency part is nearly on the real axis; PVDF: a resolved arc.
    assert (-z_p["impedance_ohm"].imag[high]).max() > 3 * (-z_e["impedance_ohm"].imag[high]).max()
    assert z_p["impedance_ohm"].real.min() == pytest.approx(z_e["impedance_ohm"].real.min(), rel=0.1)


def test_same_seed_gives_the_same_stored_data_byte_for_byte(tmp_path: Path) -> None:
    edit = {"count: 250": "count: 5"}
    a = run_experiment(tmp_path / "a", "insitu_eis.yaml", "mgagsn-pvdf", seed=3, **edit)
    b = run_experiment(tmp_path / "b", "insitu_eis.yaml", "mgagsn-pvdf", seed=3, **edit)
    c = run_experiment(tmp_path / "c", "insitu_eis.yaml", "mgagsn-pvdf", seed=4, **edit)
    dump = "SELECT * FROM {} ORDER BY 1, 2, 3"
    for table in ("sample_blocks", "spectra", "steps"):
        rows_a = a.store.read(dump.format(table))
        rows_b = b.store.read(dump.format(table))
        assert repr(rows_a).encode() == repr(rows_b).encode()
    assert a.store.samples(1)["voltage"].tobytes() != c.store.samples(1)["voltage"].tobytes()


def test_e7_formation_initial_coulombic_efficiency(tmp_path: Path) -> None:
    run = run_experiment(tmp_path, "formation.yaml", "ncm811-anodeless", seed=3)
    (formation,) = run.result.cycles
    assert formation.forward_sign == +1  # a full cell starts by charging
    assert formation.coulombic_efficiency == pytest.approx(0.85, abs=0.01)


def test_e8_retention_after_100_cycles_at_half_c(tmp_path: Path) -> None:
    # Seed 3 draws its short-circuit onset beyond cycle 120 (Weibull n0 = 400).
    run = run_experiment(tmp_path, "cycling.yaml", "ncm811-anodeless", seed=3)
    cycles = run.result.cycles
    assert len(cycles) == 101  # formation + 100 cycles at 0.5C
    after_formation = cycles[1:]
    retention = after_formation[-1].discharge_As / after_formation[0].discharge_As
    assert retention == pytest.approx(0.70, abs=0.02)
    assert run.result.short is None
