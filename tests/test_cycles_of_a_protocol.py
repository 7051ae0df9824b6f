"""What a cycle is, for any protocol: one pass of an innermost loop. Steps outside loops (a rest
before, a discharge or a CV after) belong to no cycle (cycle 0), so no cycle's CE mixes steps of
different loops; the engine's cycle table and the summary recomputed from samples agree."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from cyclerd.analysis.cycles import CycleSummary, retention_against_references, summarise
from cyclerd.drivers.base import StepProgress
from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.cursor import Cursor, Phase
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import StoreSink
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.protocols.program import Loop
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Store

AREA_CM2 = 0.785
TWO_LOOPS_AND_STEPS_AROUND = """
name: cycles and the steps around them
cell: {area: 0.785 cm^2}
record: {every: 1 min}
steps:
  - rest: 10 min
  - repeat:
      count: 3
      steps:
        - plate: {current: 1 mA/cm^2, until: {charge: 1 mAh/cm^2}}
        - strip: {current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 2 h}}
  - plate: {current: 1 mA/cm^2, until: {duration: 30 min}}
  - rest: 10 min
  - repeat:
      count: 2
      steps:
        - plate: {current: 1 mA/cm^2, until: {charge: 1 mAh/cm^2}}
        - strip: {current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 2 h}}
  - sweep: {start: 1.0 V, vertices: [0.2 V, 1.0 V], scan_rate: 1 mV/s}
"""


def _run(tmp_path: Path) -> tuple[Store, int]:
    program = compile_protocol(loads(TWO_LOOPS_AND_STEPS_AROUND))
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(program.name, "sim", TWO_LOOPS_AND_STEPS_AROUND, {}, {})
    clock = VirtualClock()
    channel = SimulatedChannel(make_cell("mgagsn", seed=1, area_m2=AREA_CM2 * 1e-4), clock)
    result = asyncio.run(Runner(program, channel, clock, StoreSink(store, run_id)).run())
    assert result.state is RunState.COMPLETED
    return store, run_id


def test_steps_outside_loops_belong_to_no_cycle_and_each_loop_numbers_on(tmp_path: Path) -> None:
    store, run_id = _run(tmp_path)
    steps = [(s["label"], s["cycle"]) for s in store.steps(run_id)]
    assert steps[0] == ("rest", 0)
    assert [c for label, c in steps[1:7]] == [1, 1, 2, 2, 3, 3]
    assert steps[7:9] == [("plate", 0), ("rest", 0)]  # after the first loop
    assert [c for label, c in steps[9:13]] == [4, 4, 5, 5]
    assert steps[13] == ("sweep", 0)
    samples = store.samples(run_id)
    assert set(np.unique(samples["cycle"]).astype(int)) == {0, 1, 2, 3, 4, 5}


def test_no_cycle_takes_in_the_steps_after_its_loop_and_the_engine_agrees_with_show(tmp_path: Path) -> None:
    store, run_id = _run(tmp_path)
    recomputed = summarise(store.samples(run_id))
    stored = store.cycles(run_id)
    assert [c.cycle for c in recomputed] == stored["cycle"].astype(int).tolist() == [1, 2, 3, 4, 5]
    for summary, forward, reverse in zip(recomputed, stored["forward_As"], stored["reverse_As"], strict=True):
        assert summary.forward_As == pytest.approx(forward, rel=1e-12)
        assert summary.reverse_As == pytest.approx(reverse, rel=1e-12)
        # Each cycle plated exactly its 1 mAh/cm^2: the 30 min plate after the loop is not in it.
        assert summary.forward_As == pytest.approx(AREA_CM2 * 3.6, rel=1e-3)
    # The first loop's last cycle ends with its own strip, not with the plate after the loop.
    assert recomputed[2].coulombic_efficiency < 1.0


def test_a_cursor_outside_loops_keeps_the_count_of_cycles_begun() -> None:
    """Taken up after a crash between two loops, the next loop numbers its cycles on."""
    cursor = Cursor(
        command=9,
        phase=Phase.STEP,
        step_number=8,
        progress=StepProgress(60.0, 0.0, 0.0),
        pause_at_s=None,
        loops={},
        cycle=0,
        t_s=100.0,
        cycles_begun=3,
    )
    back = Cursor.from_state(100.0, cursor.as_state())
    assert back == cursor
    assert back.cycles_begun == 3


def test_each_cycle_keeps_the_first_cycle_of_its_loop_as_its_retention_reference(tmp_path: Path) -> None:
    store, run_id = _run(tmp_path)
    assert store.cycle_references(run_id) == {1: 1, 2: 1, 3: 1, 4: 4, 5: 4}
    cycles = summarise(store.samples(run_id))
    retention, references = retention_against_references(cycles, store.cycle_references(run_id))
    assert references == [1, 1, 1, 4, 4]
    assert retention[0] == retention[3] == 1.0  # each loop starts at 100 %
    named, _ = retention_against_references(cycles, store.cycle_references(run_id), reference_cycle=2)
    assert named[1] == 1.0


def _summary(cycle: int, discharge_As: float) -> CycleSummary:
    return CycleSummary(cycle, +1, 10.0, discharge_As, 1.0, 1.0, 4.0, 3.6, 3600.0)


def test_a_rate_change_between_loops_is_not_a_capacity_loss() -> None:
    """0.1C formation (cycles 1-2), then 0.5C cycling from cycle 3: the loop's own rule and the
    summary measure the same retention, against cycle 3, not cycle 2."""
    cycles = [_summary(1, 8.0), _summary(2, 9.0), _summary(3, 7.8), _summary(4, 7.4), _summary(5, 6.6)]
    references = {1: 1, 2: 1, 3: 3, 4: 3, 5: 3}
    retention, used = retention_against_references(cycles, references)
    assert used[-1] == 3
    assert retention[-1] == pytest.approx(6.6 / 7.8)
    # Without the loop's reference the same cell reads 73 %: the rate step counted as a loss.
    assert 6.6 / 9.0 < 0.74
    missing, _ = retention_against_references(cycles, {}, reference_cycle=9)
    assert np.isnan(missing).all()


def test_show_measures_retention_against_the_loops_first_cycle_or_the_one_named(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cyclerd.cli.main import app

    text = (
        (files("cyclerd.protocols") / "library" / "cycling.yaml")
        .read_text()
        .replace("count: 100", "count: 4")
    )
    protocol = tmp_path / "e8.yaml"
    protocol.write_text(text)
    db = str(tmp_path / "e8.db")
    cli = CliRunner()
    ran = cli.invoke(app, ["run", str(protocol), "--sim", "ncm811-anodeless", "--seed", "3", "--db", db])
    assert ran.exit_code == 0, ran.output
    assert "retention at cycle 5 (vs cycle 2)" in ran.output  # the 0.5C loop's first, not formation
    named = cli.invoke(app, ["show", "1", "--db", db, "--reference-cycle", "1"])
    assert "retention at cycle 5 (vs cycle 1)" in named.output


def test_show_averages_ce_only_over_the_cycles_before_the_short(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cyclerd.cli.main import app

    text = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
    protocol = tmp_path / "e1.yaml"
    protocol.write_text(text.replace("count: 250", "count: 30"))
    db = str(tmp_path / "e1.db")
    args = ["run", str(protocol), "--sim", "sn", "--seed", "2", "--set", "short_n0_cycles=5", "--db", db]
    ran = CliRunner().invoke(app, args)
    assert ran.exit_code == 0, ran.output
    store = Store(Path(db))
    short = next(e for e in store.events(1) if e["kind"] == "short_circuit")["data"]["cycle"]
    assert f"average CE, cycles 2–{short - 1}, before the short" in ran.output


def test_a_loop_can_name_the_cycle_its_retention_is_measured_against(tmp_path: Path) -> None:
    """`retention_reference: 1`: the cycling loop's retention (its stop rule, show, the plot)
    counts from the formation cycle instead of its own first."""
    text = """
name: formation then cycling against the formation cycle
cell: {area: 0.785 cm^2}
record: {every: 1 min}
steps:
  - repeat:
      count: 1
      steps:
        - plate: {current: 0.1 mA/cm^2, until: {charge: 1 mAh/cm^2}}
        - strip: {current: 0.1 mA/cm^2, until: {voltage_above: 1 V, duration: 20 h}}
  - repeat:
      count: 3
      retention_reference: 1
      steps:
        - plate: {current: 1 mA/cm^2, until: {charge: 1 mAh/cm^2}}
        - strip: {current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 2 h}}
"""
    program = compile_protocol(loads(text))
    assert [node.retention_reference for node in program.body if isinstance(node, Loop)] == [None, 1]
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(program.name, "sim", text, {}, {})
    clock = VirtualClock()
    channel = SimulatedChannel(make_cell("mgagsn", seed=1, area_m2=AREA_CM2 * 1e-4), clock)
    assert (
        asyncio.run(Runner(program, channel, clock, StoreSink(store, run_id)).run()).state
        is RunState.COMPLETED
    )
    assert store.cycle_references(run_id) == {1: 1, 2: 1, 3: 1, 4: 1}
