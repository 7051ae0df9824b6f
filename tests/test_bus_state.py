"""The retained state on MQTT says where a run stands, and follows every step and cycle.

A viewer that connects in the middle of a week-long run reads the channel's retained state:
it must name the step (number, kind, label), the cycle, the step time, the elapsed time and the
last voltage and current, and it must change as the run moves, not only at start and end.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
from mosquitto import Mosquitto
from test_bus import CHANNEL, LAB, client, make_bus

from cyclerd.bus.sink import BusSink
from cyclerd.engine.sinks import RunEvent, StepStarted
from cyclerd.engine.states import RunState
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
