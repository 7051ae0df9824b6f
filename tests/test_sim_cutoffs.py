"""The simulated channel ends a step on its cut-off: the crossing is found between two grid samples."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from linear_cell import LinearCell

from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import StoreSink
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.cell import CellModel
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Store

E1 = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
CUTOFF_V = 1.0  # E1's stripping cut-off
WITHIN_V = 5e-3


def _run(path: Path, text: str, cell: CellModel) -> tuple[Store, int, VirtualClock]:
    program = compile_protocol(loads(text))
    store = Store(path)
    run_id = store.create_run(program.name, "sim", text, {}, {})
    clock = VirtualClock()
    runner = Runner(program, SimulatedChannel(cell, clock), clock, StoreSink(store, run_id))
    assert asyncio.run(runner.run()).state in (RunState.COMPLETED, RunState.STOPPED)
    return store, run_id, clock


def _step_ends(store: Store, run_id: int, reason: str) -> list[tuple[dict[str, float], float, float]]:
    """Each step that ended for `reason`: the step, its last stored sample's time and voltage."""
    samples = store.samples(run_id)
    last = np.flatnonzero(np.diff(samples["step"], append=-1) != 0)  # each step's last sample
    by_step = {int(samples["step"][k]): (float(samples["t"][k]), float(samples["voltage"][k])) for k in last}
    return [(s, *by_step[s["number"]]) for s in store.steps(run_id) if s["end_reason"] == reason]


@pytest.mark.parametrize(("preset", "seed"), [("mgagsn", 1), ("mg", 2), ("ag", 3), ("mgagsn-pvdf", 4)])
def test_every_strip_of_an_e1_run_ends_on_its_cut_off(tmp_path: Path, preset: str, seed: int) -> None:
    # The voltage rises 0.3 V within a second as an emptied electrode blocks: the 1 s grid alone
    # ended strips anywhere between 1.002 and 1.32 V.
    store, run_id, _ = _run(tmp_path / "e1.db", E1, make_cell(preset, seed=seed))
    strips = _step_ends(store, run_id, "voltage_above")
    assert len(strips) > 20
    for step, t_last, v_last in strips:
        assert CUTOFF_V <= v_last < CUTOFF_V + WITHIN_V, f"step {step['number']} ended at {v_last:.4f} V"
        assert step["t_end"] == pytest.approx(t_last, abs=1e-6)  # the clock moved by as much


STEEP = """
name: steep
record: {every: 1 min}
steps:
  - cc: {current: 1 mA, until: {voltage_above: 3.5 V, duration: 1 h}}
  - cc: {current: -1 mA, until: {voltage_below: 3.2 V, duration: 1 h}}
"""


def test_a_cut_off_between_two_grid_samples_ends_the_step_at_the_crossing(tmp_path: Path) -> None:
    # V = 3 V + q / 0.01 F ± 10 mV (IR): 0.1 V/s, so 3.5 V at 4.9 s, and 3.2 V 2.8 s later; the
    # 1 s grid has samples 100 mV apart.
    cell = LinearCell(capacitance_F=0.01, noise_V=1e-4, seed=3)
    store, run_id, clock = _run(tmp_path / "steep.db", STEEP, cell)
    ((up, t_up, v_up),) = _step_ends(store, run_id, "voltage_above")
    ((down, t_down, v_down),) = _step_ends(store, run_id, "voltage_below")
    assert 3.5 <= v_up < 3.5 + WITHIN_V
    assert 3.2 - WITHIN_V < v_down <= 3.2
    assert t_up == pytest.approx(4.9, abs=0.05)
    assert t_down - t_up == pytest.approx(2.8, abs=0.05)
    # The cell moved by exactly the step times the run recorded.
    assert cell.charge_As == pytest.approx(1e-3 * (t_up - (t_down - t_up)), rel=1e-12, abs=1e-15)
    assert clock.now() == pytest.approx(t_down, abs=1e-9)
    assert up["t_end"] == pytest.approx(t_up, abs=1e-9)
    assert down["t_end"] == pytest.approx(t_down, abs=1e-9)


def test_finding_crossings_keeps_a_seed_s_data_the_same(tmp_path: Path) -> None:
    text = E1.replace("count: 250", "count: 20")
    a, run_a, _ = _run(tmp_path / "a.db", text, make_cell("mgagsn", seed=5))
    b, run_b, _ = _run(tmp_path / "b.db", text, make_cell("mgagsn", seed=5))
    for key in ("t", "voltage", "current", "charge", "energy"):
        assert a.samples(run_a)[key].tobytes() == b.samples(run_b)[key].tobytes()
