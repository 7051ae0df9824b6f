"""The retained state on MQTT says where a run stands, and follows every step and cycle.

A viewer that connects in the middle of a week-long run reads the channel's retained state:
it must name the step (number, kind, label), the cycle, the step time, the elapsed time, the
last voltage and current and the time left by the plan, and it must change as the run moves, not
only at start and end.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mosquitto import Mosquitto
from test_bus import CHANNEL, LAB, client, collecting, make_bus, until
from test_status_progress import DURATIONS

from cyclerd.bus.sink import BusSink
from cyclerd.drivers.base import StepProgress
from cyclerd.engine.cursor import Cursor, Phase
from cyclerd.engine.session import CellSpec, Controls, Session, SimulatedCell, prepare
from cyclerd.engine.sinks import RunEvent, StepStarted
from cyclerd.engine.states import RunState
from cyclerd.protocols.plan import plan
from cyclerd.protocols.program import Loop
from cyclerd.store.database import Store


async def retained_state(broker: Mosquitto) -> dict[str, Any]:
    """What a viewer connecting now reads on the channel's state topic."""
    async with client(broker, "viewer") as viewer:
        await viewer.subscribe(f"cyclerd/{LAB}/{CHANNEL}/state", qos=1)
        async with asyncio.timeout(5.0):
            async for message in viewer.messages:
                state: dict[str, Any] = json.loads(bytes(message.payload))
                return state
    raise AssertionError("no retained state")


def samples(t: float, voltage: float, current: float, seq: int) -> dict[str, Any]:
    return {
        "seq": np.array([seq]), "t": np.array([t]), "step": np.array([1]), "cycle": np.array([1]),
        "voltage": np.array([voltage]), "current": np.array([current]),
        "charge": np.array([0.0]), "energy": np.array([0.0]),
    }  # fmt: skip


async def test_the_retained_state_follows_each_step_and_cycle(broker: Mosquitto, tmp_path: Path) -> None:
    store = Store(tmp_path / "lab.sqlite")
    async with make_bus(broker, store) as bus:
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        run_id = store.create_run("bus test", CHANNEL, "steps: []", {}, {})
        sink = BusSink(bus, CHANNEL, run_id)
        sink.state_changed(RunState.RUNNING, 0)
        sink.event(RunEvent(0.0, "state", "run started", {"state": "running"}))

        sink.step_started(StepStarted(1, 3, "plate", "plate with EIS", 1, 3600.0), None)
        sink.batch(samples(3660.0, -0.012, -7.85e-4, 0), None, False)
        assert await bus.flush(5.0)
        plating = await retained_state(broker)

        sink.step_started(StepStarted(2, 4, "strip", "strip", 1, 7200.0), None)
        sink.batch(samples(9000.0, 0.95, 7.85e-4, 1), None, False)
        sink.cycle_closed({"cycle": 1.0})
        assert await bus.flush(5.0)
        after_cycle = await retained_state(broker)

    assert plating["run"] == run_id
    assert plating["state"] == "running"
    assert (plating["step"], plating["step_kind"], plating["step_label"]) == (1, "plate", "plate with EIS")
    assert plating["step_time_s"] == 0.0  # published as the step starts
    assert plating["elapsed_s"] == 3600.0
    assert "voltage" not in plating  # nothing measured yet
    assert (after_cycle["step"], after_cycle["step_label"], after_cycle["cycle"]) == (2, "strip", 1)
    assert after_cycle["step_time_s"] == 1800.0
    assert (after_cycle["voltage"], after_cycle["current"]) == (0.95, 7.85e-4)


async def test_the_retained_state_carries_the_time_left_by_the_plan(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """As the daemon runs it: the sink is given no program and compiles the run's stored one."""
    prepared = prepare(DURATIONS, "p.yaml", CellSpec())
    total = plan(prepared.program).total.high
    assert total is not None
    with Store(tmp_path / "lab.sqlite") as store:
        async with (
            collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/state") as states,
            make_bus(broker, store) as bus,
        ):
            await asyncio.wait_for(bus.wait_connected(), 5.0)
            session = Session(
                store,
                CHANNEL,
                SimulatedCell("mgagsn", seed=1),
                Controls(),
                views=lambda run_id, program: [BusSink(bus, CHANNEL, run_id, program)],
            )
            outcome = await session.start(prepared, prepared.cell_info(), {"path": "p.yaml"})
            assert not isinstance(outcome, list)
            assert await bus.flush(5.0)
            await until(lambda: any(p["state"] == "completed" for p in states.payloads()))

    published = states.payloads()
    estimated = [p for p in published if "time_left_s" in p]
    assert estimated == published[published.index(estimated[0]) :]  # once known, always there
    steps = [p for p in estimated if p["state"] == "running" and "step" in p]
    assert steps
    for state in steps:  # durations only: what is left and what passed make the plan's total
        assert state["time_left_s"] == pytest.approx(state["time_left_min_s"])
        assert state["time_left_s"] + state["elapsed_s"] == pytest.approx(total)
    assert (published[-1]["state"], published[-1]["time_left_s"]) == ("completed", 0.0)


async def test_after_an_every_block_the_state_names_the_step_it_interrupted(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """An hour of plating with a minute's rest every 20 min: 3720 s in all, whatever the moment."""
    text = (
        "name: p\nsteps:\n  - plate:\n      label: plate with rests\n      current: 1 mA\n"
        "      until: {duration: 1 h}\n      every: {interval: 20 min, at_end: false, steps: [rest: 1 min]}\n"
    )
    program = prepare(text, "p.yaml", CellSpec()).program
    (plating,) = program.body
    assert not isinstance(plating, Loop)
    assert plating.periodic is not None
    (pause,) = plating.periodic.body

    def at(t: float, phase: Phase, done: float, pause_at: float) -> Cursor:
        return Cursor(plating.index, phase, 1, StepProgress(done, 0.0, 0.0), pause_at, {}, 0, t)

    store = Store(tmp_path / "lab.sqlite")
    async with make_bus(broker, store) as bus:
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        run_id = store.create_run("bus test", CHANNEL, text, {}, {})
        sink = BusSink(bus, CHANNEL, run_id, program=program)  # given: nothing compiled again
        sink.state_changed(RunState.RUNNING, 0)
        sink.step_started(
            StepStarted(1, plating.index, "plate", "plate with rests", 0, 0.0), at(0, Phase.STEP, 0, 1200)
        )
        sink.batch(samples(1200.0, -0.01, -1e-3, 0), at(1200.0, Phase.STEP, 1200, 1200), False)
        sink.moved(at(1200.0, Phase.INTERRUPT, 1200, 1200))
        sink.step_started(StepStarted(2, pause.index, "rest", "rest", 0, 1200.0), None)
        assert await bus.flush(5.0)
        resting = await retained_state(broker)

        sink.batch(samples(1260.0, 0.0, 0.0, 1), at(1260.0, Phase.INTERRUPT, 1200, 1200), True)
        sink.moved(at(1260.0, Phase.STEP, 1200, 2400))
        sink.batch(samples(1860.0, -0.01, -1e-3, 2), at(1860.0, Phase.STEP, 1800, 2400), False)
        sink.state_changed(RunState.PAUSED, 0)
        sink.event(RunEvent(1860.0, "state", "pause requested", {"state": "paused"}))
        assert await bus.flush(5.0)
        paused = await retained_state(broker)

    assert (resting["step"], resting["step_label"]) == (2, "rest")
    assert resting["time_left_s"] == resting["time_left_min_s"] == 3720.0 - 1200.0
    assert (paused["state"], paused["step"], paused["step_label"]) == ("paused", 1, "plate with rests")
    assert paused["time_left_s"] == paused["time_left_min_s"] == 3720.0 - 1860.0


async def test_a_run_taken_up_after_a_restart_gets_its_time_left_once_its_position_is_known(
    broker: Mosquitto, tmp_path: Path
) -> None:
    text = "name: p\nsteps:\n  - plate: {current: 1 mA, until: {duration: 1 h}}\n"
    program = prepare(text, "p.yaml", CellSpec()).program
    (plating,) = program.body
    assert not isinstance(plating, Loop)
    store = Store(tmp_path / "lab.sqlite")
    async with make_bus(broker, store) as bus:
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        run_id = store.create_run("bus test", CHANNEL, text, {}, {})
        sink = BusSink(bus, CHANNEL, run_id, program=program)  # a new sink, as the restarted daemon makes
        sink.state_changed(RunState.RUNNING, 0)
        sink.event(RunEvent(1000.0, "gap", "resumed after 30 s", {}))
        assert await bus.flush(5.0)
        resumed = await retained_state(broker)
        moving = Cursor(plating.index, Phase.STEP, 1, StepProgress(1010.0, 0.0, 0.0), None, {}, 0, 1010.0)
        sink.batch(samples(1010.0, -0.01, -1e-3, 100), moving, False)
        assert await bus.flush(5.0)
        known = await retained_state(broker)

    assert "time_left_s" not in resumed  # not the whole plan: where the run stands is not known yet
    assert known["time_left_s"] == known["time_left_min_s"] == 3600.0 - 1010.0
