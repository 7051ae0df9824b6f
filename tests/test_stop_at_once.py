"""Stop (and pause) take effect within a second of wall time, whatever the record interval.

A daemon runs a real-time emulated Keithley 2450 and a simulated channel, each plating with
`record: {every: 5 min}`: the runner hears from the instrument only every five minutes, yet a stop
from `cyclerd stop` (another process's request row) or from an MQTT command must switch the
output off at once and leave the stop in the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mosquitto import Mosquitto
from test_daemon_bus import LAB, ask, daemon_bus
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.daemon.config import Lab
from cyclerd.daemon.service import Daemon
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

pytestmark = pytest.mark.slow

PLATING = """\
name: long plating
cell: {area: 0.785 cm^2}
record: {every: 5 min}
steps:
  - repeat:
      count: 100000
      steps:
        - plate: {current: 0.1 mA/cm^2, until: {duration: 100 h}}
        - strip: {current: 0.1 mA/cm^2, until: {voltage_above: 1 V, duration: 100 h}}
"""


async def within(condition: Callable[[], bool], timeout_s: float) -> float:
    """Wall seconds until `condition` holds; fails after `timeout_s`."""
    start = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)
    return time.monotonic() - start


def stop_events(store: Store, run_id: int) -> list[str]:
    return [e["message"] for e in store.events(run_id) if e["kind"] == "state" and "stop" in e["message"]]


async def test_stop_from_the_cli_and_from_mqtt_switches_the_output_off_within_a_second(
    tmp_path: Path, broker: Mosquitto
) -> None:
    emulator = Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=1.0)
    with running(emulator) as port:
        lab = Lab.model_validate(
            {
                "lab": LAB,
                "database": tmp_path / "lab.db",
                "instruments": [
                    {
                        "name": "smu",
                        "driver": "keithley2450",
                        "resource": f"TCPIP::127.0.0.1::{port}::SOCKET",
                        "poll_s": 1.0,
                    }
                ],
                "channels": [{"name": "k", "instrument": "smu"}, {"name": "s", "sim": "mgagsn"}],
            }
        )
        store = Store(lab.database)
        for channel in ("k", "k", "s"):
            store.jobs.submit(channel, "long plating", PLATING, "plating.yaml", {})

        def running_on(channel: str) -> int | None:
            found = [r.id for r in store.runs() if r.channel == channel and r.state == "running"]
            return found[-1] if found else None

        async with daemon_bus(broker, store) as bus:
            await asyncio.wait_for(bus.wait_connected(), 5.0)
            daemon = asyncio.create_task(Daemon(lab, bus).run())
            try:
                # 1. The CLI, another process's way: a request row the daemon's poller forwards.
                await within(lambda: running_on("k") is not None and emulator.s.output, 10.0)
                first = running_on("k")
                assert first is not None
                await asyncio.sleep(1.5)  # well inside the 5 min between two logged samples
                asked = time.monotonic()
                result = await asyncio.to_thread(
                    CliRunner().invoke, app, ["stop", str(first), "--db", str(lab.database)]
                )
                assert result.exit_code == 0, result.output
                await within(lambda: not emulator.s.output, 5.0)
                output_off_s = time.monotonic() - asked
                assert output_off_s <= 2.0, output_off_s
                await within(lambda: store.run(first).state == "stopped", 2.0)
                assert stop_events(store, first) == ["stop requested", "stopped on request"]

                # 2. MQTT, this process's way: straight to the run's control.
                await within(lambda: running_on("k") not in (None, first) and emulator.s.output, 10.0)
                second = running_on("k")
                await asyncio.sleep(1.5)
                async with ask(broker, "operator") as operator:
                    # A pause holds the cell safe just as fast; a resume takes the step up again.
                    asked = time.monotonic()
                    reply = await operator("k", json.dumps({"action": "pause"}))
                    await within(lambda: not emulator.s.output, 5.0)
                    assert time.monotonic() - asked <= 1.0
                    assert reply is not None
                    assert reply["result"] == "done", reply
                    assert second is not None
                    assert store.run(second).state == "paused"
                    reply = await operator("k", json.dumps({"action": "resume"}))
                    assert reply is not None
                    assert reply["result"] == "done", reply
                    await within(lambda: bool(emulator.s.output), 5.0)
                    await asyncio.sleep(1.0)

                    asked = time.monotonic()
                    reply = await operator("k", json.dumps({"action": "stop"}))
                    await within(lambda: not emulator.s.output, 5.0)
                    output_off_s = time.monotonic() - asked
                    assert reply is not None
                    assert reply["ok"], reply
                    assert reply["result"] == "done", reply
                    assert output_off_s <= 1.0, output_off_s
                    await within(lambda: store.run(second).state == "stopped", 2.0)
                    assert stop_events(store, second) == ["stop requested", "stopped on request"]

                    # 3. The simulated channel, computing as fast as it can in virtual time.
                    await within(lambda: running_on("s") is not None, 10.0)
                    simulated = running_on("s")
                    assert simulated is not None
                    asked = time.monotonic()
                    reply = await operator("s", json.dumps({"action": "stop"}))
                    assert reply is not None
                    assert reply["ok"], reply
                    await within(lambda: store.run(simulated).state == "stopped", 1.0)
                    assert time.monotonic() - asked <= 1.0
                    assert stop_events(store, simulated) == ["stop requested", "stopped on request"]
            finally:
                daemon.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await daemon
        store.close()
