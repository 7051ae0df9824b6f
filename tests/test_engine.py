"""The runner on a simulated channel in virtual time, checked against exact numbers."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import sys
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from linear_cell import LinearCell
from watch import stored_and_watched

from cyclerd.drivers.base import Batch, StepEnd, StepProgress, hold_after_switch
from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.cursor import Cursor
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import Columns, Sink, Sinks, StepEnded, StepStarted, StoreSink
from cyclerd.engine.states import RunState, TransitionError
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Store


def _run(tmp_path: Path, text: str, cell: LinearCell | None = None, resolution_s: float = 1.0):  # type: ignore[no-untyped-def]
    program = compile_protocol(loads(text))
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(program.name, "sim", text, {}, {"model": "linear"})
    clock = VirtualClock()
    channel = SimulatedChannel(cell or LinearCell(), clock, resolution_s=resolution_s)
    runner = Runner(program, channel, clock, StoreSink(store, run_id))
    result = asyncio.run(runner.run())
    return result, store, run_id, channel, clock


CHARGE_STEP = """
name: charge
record: {every: 10 s}
steps:
  - cc: {current: 1 mA, until: {charge: 1 mAh, voltage_above: 9 V}}
"""


def test_a_charge_condition_is_met_exactly_and_first_and_last_samples_are_logged(tmp_path: Path) -> None:
    result, store, run, _, clock = _run(tmp_path, CHARGE_STEP)
    assert result.state is RunState.COMPLETED
    samples = store.samples(run)
    assert samples["t"][0] == 0.0
    assert samples["charge"][-1] == pytest.approx(3.6, abs=1e-12)  # 1 mAh in A·s
    assert samples["t"][-1] == pytest.approx(3600.0)
    assert np.all(np.diff(samples["t"]) == pytest.approx(10.0))
    (step,) = store.steps(run)
    assert step["end_reason"] == "charge"
    assert clock.now() == pytest.approx(3600.0)
    # The charge integrated from the stored samples matches the step's counter.
    integrated = np.trapezoid(samples["current"], samples["t"])
    assert integrated == pytest.approx(step["charge_As"])


def test_a_voltage_cut_off_ends_the_step_within_one_fine_sample(tmp_path: Path) -> None:
    # V = 3 + q/1000 + I·10: at 1 mA the cut-off 3.01 V is reached when q = 0 A·s... plus IR 0.01 V:
    text = (
        "name: v\nrecord: {every: 1 min}\nsteps:\n  - cc: {current: 1 mA, until: {voltage_above: 3.02 V}}\n"
    )
    result, store, run, _, _ = _run(tmp_path, text)
    samples = store.samples(run)
    # 3 + 0.001·t/1000 + 0.01 >= 3.02  <=>  t >= 10000 s
    assert samples["t"][-1] == pytest.approx(10000.0, abs=1.0)
    assert samples["voltage"][-1] >= 3.02
    assert store.steps(run)[0]["end_reason"] == "voltage_above"
    assert result.state is RunState.COMPLETED


INSITU = """
name: in-situ
cell: {area: 1 cm^2}
record: {every: 1 min}
steps:
  - repeat:
      count: 1
      steps:
        - plate:
            current: 1 mA/cm^2
            until: {charge: 1 mAh/cm^2}
            every:
              interval: 10 min
              at_end: true
              steps:
                - rest: 30 s
                - eis: {frequency_start: 10 kHz, frequency_stop: 1 Hz, amplitude: 10 mV}
        - strip:
            current: 1 mA/cm^2
            until: {duration: 55 min}
            every:
              interval: 10 min
              at_end: false
              steps:
                - eis: {frequency_start: 10 kHz, frequency_stop: 1 Hz, amplitude: 10 mV}
"""


def test_every_blocks_interrupt_without_counting_towards_the_step(tmp_path: Path) -> None:
    result, store, run, _, clock = _run(tmp_path, INSITU, LinearCell(v0=1.0))
    assert result.state is RunState.COMPLETED
    spectra = store.spectra(run)
    steps = store.steps(run)
    plate = next(s for s in steps if s["kind"] == "plate")
    strip = next(s for s in steps if s["kind"] == "strip")
    during_plating = [s for s in spectra if plate["t_start"] <= s["t"] <= plate["t_end"]]
    during_stripping = [s for s in spectra if strip["t_start"] <= s["t"] <= strip["t_end"]]
    assert len(during_plating) == 6
    assert len(during_stripping) == 5
    # Exactly 1 mAh/cm² on 1 cm² in the plating step, whatever the interruptions.
    assert plate["charge_As"] == pytest.approx(-3.6, abs=1e-9)
    samples = store.samples(run)
    in_plate = samples["step"] == plate["number"]
    assert samples["charge"][in_plate][-1] == pytest.approx(-3.6, abs=1e-9)
    # Spectra fall every 10 min of *step* time: their step-time stamps are 600, 1200, ... s.
    eis_time = spectra[1]["t"] - spectra[0]["t"] - 600.0
    assert eis_time > 30.0  # the rest and the spectrum took real (virtual) time
    assert plate["t_end"] - plate["t_start"] == pytest.approx(3600.0 + 6 * eis_time, rel=1e-6)
    assert clock.now() > 3600 + 3300


SAFETY = """
name: safety
safety: {voltage_max: 3.05 V}
record: {every: 1 min}
steps:
  - cc: {current: 1 mA, until: {duration: 20 h}}
"""


def test_crossing_a_safety_limit_stops_within_one_logged_sample_and_makes_the_cell_safe(
    tmp_path: Path,
) -> None:
    result, store, run, channel, _ = _run(tmp_path, SAFETY)
    assert result.state is RunState.STOPPED
    assert result.reason.startswith("safety")
    assert not channel.output_on
    samples = store.samples(run)
    # 3 + t·1e-6 + 0.01 > 3.05 from t = 40000 s on; the last stored sample is the first beyond it.
    assert samples["voltage"][-1] > 3.05
    assert (samples["voltage"][:-1] <= 3.05).all()
    assert samples["t"][-1] == pytest.approx(40001.0, abs=1.0)
    kinds = [e["kind"] for e in store.events(run)]
    assert "safety" in kinds
    assert store.run(run).state == "stopped"


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", INSITU, LinearCell(v0=1.0, noise_V=1e-3, seed=7))[1]
    b = _run(tmp_path / "b", INSITU, LinearCell(v0=1.0, noise_V=1e-3, seed=7))[1]
    c = _run(tmp_path / "c", INSITU, LinearCell(v0=1.0, noise_V=1e-3, seed=8))[1]
    for key in ("t", "voltage", "current", "charge", "energy"):
        assert a.samples(1)[key].tobytes() == b.samples(1)[key].tobytes()
    assert a.samples(1)["voltage"].tobytes() != c.samples(1)["voltage"].tobytes()


def test_pause_resume_and_stop_are_state_transitions(tmp_path: Path) -> None:
    text = "name: long\nrecord: {every: 10 s}\nsteps:\n  - cc: {current: 1 mA, until: {duration: 100 h}}\n"
    program = compile_protocol(loads(text))
    (tmp_path / "x").mkdir()
    store = Store(tmp_path / "x" / "runs.db")
    run_id = store.create_run("long", "sim", text, {}, {})
    clock = VirtualClock()
    channel = SimulatedChannel(LinearCell(capacitance_F=1e9), clock, chunk=256)
    runner = Runner(program, channel, clock, StoreSink(store, run_id))

    async def drive() -> RunState:
        task = asyncio.create_task(runner.run())
        while clock.now() < 3600 and not task.done():
            await asyncio.sleep(0)
        runner.pause()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        paused_at = clock.now()
        for _ in range(20):
            await asyncio.sleep(0)
        assert clock.now() == paused_at  # nothing runs while paused
        assert not channel.output_on
        runner.resume()
        while clock.now() < 7200 and not task.done():
            await asyncio.sleep(0)
        runner.stop()
        result = await task
        with pytest.raises(TransitionError):
            runner.resume()
        return result.state

    assert asyncio.run(drive()) is RunState.STOPPED
    states = [e["data"].get("state") for e in store.events(run_id) if e["kind"] == "state"]
    assert states == ["running", "paused", "running", "stopping", "stopped"]
    samples = store.samples(run_id)
    assert np.all(np.diff(samples["seq"]) == 1)  # no gap, no duplicate across the pause
    assert np.all(np.diff(samples["t"]) > 0)


def test_a_step_shorter_than_a_chunk_is_one_batch_with_its_first_sample(tmp_path: Path) -> None:
    """The first sample travels with the step's other samples: one transaction, one checkpoint
    and one bus message per chunk, not an extra one for a single sample."""
    program = compile_protocol(loads(CHARGE_STEP))
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(program.name, "sim", CHARGE_STEP, {}, {"model": "linear"})
    clock = VirtualClock()
    batches: list[np.ndarray] = []
    channel = SimulatedChannel(LinearCell(), clock)
    runner = Runner(
        program, channel, clock, stored_and_watched(store, run_id, lambda c: batches.append(c["t"]))
    )
    asyncio.run(runner.run())
    assert len(batches) == 1  # a 1 h step on a 4096-point chunk
    assert batches[0][0] == 0.0
    assert len(batches[0]) == len(store.samples(run_id)["t"]) == 361  # every 10 s over 1 h, both ends


class Checking(Sink):
    """After the store: is each checkpoint's cell the channel's cell as it is at that moment?"""

    def __init__(self, live_state: Callable[[], dict[str, Any]]) -> None:
        self.live_state = live_state
        self.checked: list[bool] = []
        self.batches = 0

    def _check(self, cursor: Cursor | None) -> None:
        if cursor is not None:
            self.checked.append(
                json.loads(json.dumps(cursor.cell)) == json.loads(json.dumps(self.live_state()))
            )

    def step_started(self, step: StepStarted, cursor: Cursor | None) -> None:
        self._check(cursor)

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        self.batches += 1
        self._check(cursor)

    def step_ended(self, step: StepEnded, cursor: Cursor | None) -> None:
        self._check(cursor)


def test_every_checkpoint_holds_the_cell_as_it_is_and_reads_it_only_after_it_moved(
    tmp_path: Path,
) -> None:
    """A stale snapshot would resume a run from a cell that is not the one its samples came
    from; reading the cell's state again for every checkpoint would be wasted work."""
    program = compile_protocol(loads(INSITU))
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(program.name, "sim", INSITU, {}, {"preset": "mgagsn"})
    clock = VirtualClock()
    cell = make_cell("mgagsn", seed=7, area_m2=1e-4)
    read_state = cell.live_state
    reads = 0

    def counted() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return read_state()

    cell.live_state = counted  # type: ignore[method-assign]
    checking = Checking(read_state)
    runner = Runner(
        program, SimulatedChannel(cell, clock), clock, Sinks([StoreSink(store, run_id), checking])
    )
    asyncio.run(runner.run())
    assert checking.checked
    assert all(checking.checked)
    # Once at the start, then once after each batch moved the cell; a spectrum moves it too,
    # and comes with a batch of its own (the DC potential logged while it was measured).
    assert len(store.spectra(run_id)) > 0
    assert reads == 1 + checking.batches
    state = store.checkpoint(run_id)
    assert state is not None
    assert isinstance(state[1]["cell"], dict)


def test_a_steps_generators_are_closed_by_the_runner_not_left_to_the_garbage_collector(
    tmp_path: Path,
) -> None:
    """An async generator left open is closed through the event loop's finalizer hook, a wake-up
    through the loop's self-pipe: three per step (channel, phase, stream) add up over a run."""
    program = compile_protocol(loads(INSITU))
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(program.name, "sim", INSITU, {}, {"model": "linear"})
    finalized: list[object] = []

    async def main() -> None:
        firstiter, finalizer = sys.get_asyncgen_hooks()
        assert finalizer is not None

        def counting(agen: object) -> None:
            finalized.append(agen)
            finalizer(agen)

        sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=counting)
        try:
            clock = VirtualClock()
            channel = SimulatedChannel(LinearCell(v0=1.0, noise_V=1e-3, seed=7), clock)
            await Runner(program, channel, clock, StoreSink(store, run_id)).run()
            gc.collect()
        finally:
            sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)

    asyncio.run(main())
    assert len(store.steps(run_id)) > 3
    assert finalized == []


class CallCountingCell(LinearCell):
    """A linear cell that counts how often its voltage is asked for."""

    calls = 0

    def voltage_at_current(self, current_A: float, t_s: np.ndarray) -> np.ndarray:
        CallCountingCell.calls += 1
        return super().voltage_at_current(current_A, t_s)


def test_a_step_asks_the_cell_once_per_chunk_its_first_sample_included(tmp_path: Path) -> None:
    """A model call for the first sample alone cost the half-cell half as much as a whole chunk."""
    CallCountingCell.calls = 0
    result, store, run, _, _ = _run(tmp_path, CHARGE_STEP, cell=CallCountingCell())
    assert result.state is RunState.COMPLETED
    assert CallCountingCell.calls == 1  # a 1 h step on a 4096-point chunk
    samples = store.samples(run)
    assert samples["t"][0] == 0.0
    assert samples["current"][0] == pytest.approx(1e-3)
    assert samples["t"][1] == pytest.approx(10.0)


CCCV_STEP = """
name: cccv
record: {every: 10 s}
steps:
  - cccv: {current: 1 mA, voltage: 3.5 V, until: {current_below: 0.1 mA}}
"""


def test_a_cccv_step_charges_at_constant_current_then_holds_the_voltage(tmp_path: Path) -> None:
    result, store, run, _, _ = _run(tmp_path, CCCV_STEP, cell=LinearCell(capacitance_F=1000.0))
    assert result.state is RunState.COMPLETED
    samples = store.samples(run)
    held = np.isclose(samples["voltage"], 3.5, rtol=0, atol=1e-12)
    assert not held[0]
    assert held[-1]
    switch = int(np.argmax(held))
    assert np.all(samples["current"][:switch] == pytest.approx(1e-3))  # constant current until 3.5 V
    assert np.all(held[switch:])  # then the hold, with the current falling to the end condition
    assert np.all(np.diff(samples["current"][switch:]) < 0)
    assert samples["current"][-1] < 1e-4
    (step,) = store.steps(run)
    assert step["end_reason"] == "current_below"


class EndlessChannel(SimulatedChannel):
    """A channel whose stream stops after its first batch without saying why the step ended."""

    async def run(self, command, start, limits, pause_at_s=None):  # type: ignore[no-untyped-def, override]
        stream = super().run(command, start, limits, pause_at_s)
        try:
            yield await stream.__anext__()
        finally:
            await stream.aclose()


def test_a_stream_that_ends_without_ending_the_step_is_a_fault_not_a_loop(tmp_path: Path) -> None:
    """Asked again, such a channel would answer the same way for ever: the run stops safely."""
    program = compile_protocol(loads(CHARGE_STEP))
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(program.name, "sim", CHARGE_STEP, {}, {"model": "linear"})
    clock = VirtualClock()
    channel = EndlessChannel(LinearCell(), clock, chunk=64, name="endless")
    result = asyncio.run(
        asyncio.wait_for(Runner(program, channel, clock, StoreSink(store, run_id)).run(), 10.0)
    )
    assert result.state is RunState.STOPPED
    assert not channel.output_on
    faults = [e for e in store.events(run_id) if e["kind"] == "fault"]
    assert faults
    assert "ended before the step did" in faults[0]["message"]


CYCLING = """
name: short cycles
record: {every: 10 s}
steps:
  - repeat:
      count: 4
      steps:
        - cc: {current: 1 mA, until: {duration: 20 min}}
        - rest: 5 min
        - cc: {current: -1 mA, until: {duration: 20 min}}
"""


class Reader(Sink):
    """After the store: what another connection sees as each result comes in."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path)
        self.finals = 0

    def _step(self, number: int) -> list[tuple[object, ...]]:
        return self.db.execute("SELECT end_reason FROM steps WHERE number = ?", (number,)).fetchall()

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        if final:  # its step's start waits with it for the step's end
            self.finals += 1
            assert self._step(int(columns["step"][0])) == []

    def step_ended(self, step: StepEnded, cursor: Cursor | None) -> None:
        assert self._step(step.number) == [(step.reason,)]
        (stored,) = self.db.execute("SELECT MAX(last_seq) FROM sample_blocks").fetchone()
        (checkpoint,) = self.db.execute("SELECT state FROM checkpoints").fetchone()
        assert cursor is not None
        assert json.loads(checkpoint) == json.loads(json.dumps(cursor.as_state()))
        assert stored is not None


def test_a_step_of_one_batch_commits_its_start_samples_and_end_together(tmp_path: Path) -> None:
    """A commit is the dearest part of storing a batch: a step that fits one batch commits its
    start, its samples, its end and where the run stands at once; a crash before that resumes
    from the step before."""
    program = compile_protocol(loads(CYCLING))
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(program.name, "sim", CYCLING, {}, {"model": "linear"})
    reader = Reader(tmp_path / "runs.db")
    clock = VirtualClock()
    sinks = Sinks([StoreSink(store, run_id), reader])
    runner = Runner(program, SimulatedChannel(LinearCell(), clock), clock, sinks)
    assert asyncio.run(runner.run()).state is RunState.COMPLETED
    assert reader.finals == len(store.steps(run_id)) == 12
    assert len(store.cycles(run_id)["cycle"]) == 4


async def test_the_constant_current_phase_of_a_cccv_step_does_not_end_the_step() -> None:
    """The switch to the voltage hold is not the step's end: the batch before it is not final."""

    def batch(t: float, final: bool) -> Batch:
        one = np.array([t])
        return Batch(one, one, one, one, one, final=final)

    async def constant_current() -> AsyncGenerator[Batch | StepEnd, None]:
        yield batch(1.0, final=True)
        yield StepEnd("switch", StepProgress(1.0, 1.0, 1.0))

    async def hold(progress: StepProgress) -> AsyncGenerator[Batch | StepEnd, None]:
        yield batch(progress.t_s + 1.0, final=True)
        yield StepEnd("current", StepProgress(2.0, 2.0, 2.0))

    items = [item async for item in hold_after_switch(constant_current(), hold)]
    assert [(type(i).__name__, getattr(i, "final", None)) for i in items] == [
        ("Batch", False),
        ("Batch", True),
        ("StepEnd", None),
    ]


SWEEP_TRIP = """
name: sweep trip
safety: {current_max: 20 mA}
record: {every: 10 s}
steps:
  - rest: {until: {duration: 1 h}}
  - sweep: {start: 3.0 V, vertices: [3.5 V, 3.0 V], scan_rate: 1 mV/s, scans: 3}
"""


def test_a_sweep_that_trips_a_safety_limit_stops_there_not_at_its_planned_end(tmp_path: Path) -> None:
    # I ≈ (E - 3 V) / 10 Ω passes 20 mA about 200 s into the 3000 s sweep, after the 1 h rest.
    result, store, run, _, clock = _run(tmp_path, SWEEP_TRIP)
    assert result.state is RunState.STOPPED
    assert result.reason.startswith("safety")
    samples = store.samples(run)
    (event,) = [e for e in store.events(run) if e["kind"] == "safety"]
    assert abs(samples["current"][-1]) > 0.02
    assert 3600.0 + 150.0 < samples["t"][-1] < 3600.0 + 250.0
    assert event["t"] == pytest.approx(samples["t"][-1], abs=1e-9)
    assert clock.now() == pytest.approx(samples["t"][-1], abs=1e-9)
    # The sweep's step ends there too, on the sample that crossed the limit, with its charge.
    sweep = store.steps(run)[-1]
    assert (sweep["kind"], sweep["end_reason"]) == ("sweep", "safety")
    assert sweep["t_end"] == pytest.approx(samples["t"][-1], abs=1e-9)
    assert sweep["charge_As"] == pytest.approx(samples["charge"][-1], abs=1e-12)


async def test_a_sweeps_safety_stop_carries_the_trip_time_and_the_clock_stops_there() -> None:
    program = compile_protocol(loads(SWEEP_TRIP))
    *_, command = program.commands()
    clock = VirtualClock()
    cell = LinearCell()
    channel = SimulatedChannel(cell, clock)
    items = [item async for item in channel.run(command, StepProgress(), program.safety)]
    *batches, end = items
    assert isinstance(end, StepEnd)
    assert end.reason == "safety"
    last = batches[-1]
    assert isinstance(last, Batch)
    assert end.progress.t_s == last.t_s[-1] == clock.now()
    assert end.progress.charge_As == last.charge_As[-1]
    assert 150.0 < clock.now() < 250.0
    # The cell held the sweep's potentials up to the trip, not to the sweep's planned end.
    assert cell.charge_As == pytest.approx(end.progress.charge_As, rel=0.01)
