"""A cycler's channels on MQTT: the daemon publishes their samples like any channel's, every sample
once and in order, whatever kind of cycler they come from."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from mosquitto import Mosquitto
from protocol_texts import E1_TWO_CYCLES
from test_bus import collecting
from test_daemon_bus import by_channel, daemon_bus, in_seq_order

from cyclerd.daemon.config import Lab
from cyclerd.daemon.service import Daemon
from cyclerd.simulators.maccor_emulator import MaccorEmulator
from cyclerd.simulators.neware_emulator import NewareEmulator
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

LAB = "lab4"  # the lab whose topics daemon_bus (tests/test_daemon_bus.py) publishes on
SPEED = 3600.0


@pytest.mark.parametrize(("driver", "emulator"), [("maccor", MaccorEmulator), ("neware", NewareEmulator)])
async def test_a_cyclers_channels_publish_every_sample_once_in_order(
    tmp_path: Path, broker: Mosquitto, driver: str, emulator: type
) -> None:
    with running(emulator("mgagsn", 2, 7, SPEED)) as port:
        lab = Lab.model_validate(
            {
                "lab": LAB,
                "database": tmp_path / "lab.db",
                "speed": SPEED,
                "instruments": [
                    {"name": "cyc", "driver": driver, "resource": f"tcp://127.0.0.1:{port}", "poll_s": 10.0}
                ],
                "channels": [{"name": f"c{n}", "instrument": "cyc", "cycler_channel": n} for n in (1, 2)],
            }
        )
        store = Store(lab.database)
        for n in (1, 2):
            store.jobs.submit(f"c{n}", "E1", E1_TWO_CYCLES, "e1.yaml", {})
        async with collecting(broker, f"cyclerd/{LAB}/+/data") as data, daemon_bus(broker, store) as bus:
            await asyncio.wait_for(bus.wait_connected(), 5.0)
            await asyncio.wait_for(Daemon(lab, bus).run(until_idle=True), 60.0)
            assert await bus.flush(10.0)
            await asyncio.sleep(0.3)  # the last messages reach the viewer
    received = by_channel(data.messages)
    for run in store.runs():
        assert run.state == "completed"
        stored = store.samples(run.id)
        got, _ = in_seq_order([m for m in received[run.channel] if m["run"] == run.id])
        np.testing.assert_array_equal(got["seq"], stored["seq"])
        np.testing.assert_array_equal(got["voltage"], stored["voltage"])
    store.close()
