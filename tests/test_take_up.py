"""A daemon stopped mid-run (SIGTERM, a crash) takes the run up at its next start: on a full
cell too, whose protocol is written in C-rates of a nominal capacity."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from importlib.resources import files
from pathlib import Path

from cyclerd.daemon.config import Lab
from cyclerd.daemon.service import Daemon
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store


async def test_a_full_cell_run_in_c_rates_is_taken_up_after_the_daemon_stopped(tmp_path: Path) -> None:
    text = (files("cyclerd.protocols") / "library" / "cycling.yaml").read_text()
    lab = Lab.model_validate(
        {
            "lab": "lab",
            "database": tmp_path / "lab.db",
            "channels": [{"name": "full", "sim": "ncm811-anodeless", "seed": 2}],
        }
    )
    store = Store(lab.database)
    store.jobs.submit("full", "E8", text, "cycling.yaml", {})
    serving = asyncio.create_task(Daemon(lab).run())
    while not store.runs() or len(store.cycles(1)["cycle"]) < 3:
        await asyncio.sleep(0)
    serving.cancel()  # what SIGTERM does: every cell made safe, the run kept resumable
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    assert store.run(1).state == "running"
    assert store.run(1).cell["capacity_As"] > 0

    await Daemon(lab).run(until_idle=True)
    run = store.run(1)
    assert run.state == "completed", [e["message"] for e in store.events(1)]
    gaps = [e["message"] for e in store.events(1) if e["kind"] == "gap"]
    assert len(gaps) == 1
    assert gaps[0].startswith("resumed after a restart")
    store.close()


async def test_a_checkpoint_holding_a_pickled_cell_is_never_read_and_the_run_stops_safely(
    tmp_path: Path,
) -> None:
    """A database written before cells were stored as data (or by someone who means harm)
    holds pickle text where the cell state belongs: the daemon does not decode it."""
    import json
    import sqlite3

    text = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
    lab = Lab.model_validate(
        {"lab": "lab", "database": tmp_path / "lab.db", "channels": [{"name": "half", "sim": "mgagsn"}]}
    )
    store = Store(lab.database)
    store.jobs.submit("half", "E1", text, "plating_stripping.yaml", {})
    serving = asyncio.create_task(Daemon(lab).run())
    while not store.runs() or len(store.cycles(1)["cycle"]) < 2:
        await asyncio.sleep(0)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    found = store.checkpoint(1)
    assert found is not None
    state = {**found[1], "cell": "gASVAAAAAAAAAAB9lC4="}  # base64 of a pickle
    with sqlite3.connect(lab.database) as db:
        db.execute("UPDATE checkpoints SET state = ? WHERE run_id = 1", (json.dumps(state),))

    await Daemon(lab).run(until_idle=True)
    assert store.run(1).state == "stopped"
    gaps = [e["message"] for e in store.events(1) if e["kind"] == "gap"]
    assert gaps == [
        "stopped safely after a restart: its checkpoint holds the simulated cell as a pickle,"
        " which is never read"
    ]
    store.close()


async def test_a_job_whose_run_was_killed_before_its_first_record_runs_again(tmp_path: Path) -> None:
    """SIGKILL between a run's creation and its first commit (seen in bench/chaos.py) leaves a
    run with no checkpoint: it is stopped safely, as it cannot be continued, and its job is
    queued again instead of being lost with it."""
    text = (
        (files("cyclerd.protocols") / "library" / "plating_stripping.yaml")
        .read_text()
        .replace("count: 250", "count: 2")
    )
    lab = Lab.model_validate(
        {"lab": "lab", "database": tmp_path / "lab.db", "channels": [{"name": "half", "sim": "mgagsn"}]}
    )
    with Store(lab.database) as store:
        store.jobs.submit("half", "E1", text, "plating_stripping.yaml", {"cell": "A7"})
        job = store.jobs.claim("half")  # what the killed daemon had done: claimed, run created
        assert job is not None
        source = {"job": job["id"], "path": "plating_stripping.yaml", "channel": "half", "sim": "mgagsn"}
        killed = store.create_run("E1", "half", text, {}, source)

    await Daemon(lab).run(until_idle=True)
    with Store(lab.database) as store:
        assert store.run(killed).state == "stopped"
        gaps = [e["message"] for e in store.events(killed) if e["kind"] == "gap"]
        assert gaps == ["stopped safely after a restart: it had no checkpoint yet"]
        (again,) = [run for run in store.runs() if run.id != killed]
        assert again.state == "completed"
        assert again.source["job"] == job["id"]
        (done,) = store.jobs.list()
        assert (done["state"], done["run_id"]) == ("done", again.id)


def smu_lab(folder: Path, port: int, speed: float) -> Lab:
    """A lab of one channel on an emulated 2450 at `port`, run at `speed`."""
    resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
    return Lab.model_validate(
        {
            "lab": "lab",
            "database": folder / "lab.db",
            "instruments": [
                {"name": "smu", "driver": "keithley2450", "resource": resource, "speed": speed, "poll_s": 5.0}
            ],
            "channels": [{"name": "k1", "instrument": "smu"}],
        }
    )


async def stopped_after_its_first_record(lab: Lab, store: Store, protocol: str) -> None:
    """Run 1 of `protocol` on channel k1, stopped as SIGTERM stops it (the cell made safe, the
    run kept resumable) once it has a checkpoint."""
    store.jobs.submit("k1", "test", protocol, "test.yaml", {})
    serving = asyncio.create_task(Daemon(lab).run())
    async with asyncio.timeout(20):
        while store.checkpoint(1) is None:
            await asyncio.sleep(0.02)
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving


async def test_the_outage_of_an_accelerated_instrument_is_counted_in_the_runs_own_time(
    tmp_path: Path,
) -> None:
    """An emulator at 50x lives 50 s of cell time per second the daemon is away: the test time
    the run carries on with, and its gap event, must say so (they said the wall-clock seconds)."""
    speed = 50.0
    protocol = """
name: two steps
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.5 V, voltage_max: 3 V}
record: {every: 5 s}
steps:
  - rest: 100 s
  - plate: {current: 1 mA/cm^2, until: {duration: 100 s}}
"""
    with running(Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=speed)) as port:
        lab = smu_lab(tmp_path, port, speed)
        with Store(lab.database) as store:
            await stopped_after_its_first_record(lab, store, protocol)
            last = store.checkpoint_unix(1)  # the outage runs from the last record
            assert last is not None
            await asyncio.sleep(0.5)  # the outage itself
            resuming = asyncio.create_task(Daemon(lab).run(until_idle=True))
            async with asyncio.timeout(30):
                while not [e for e in store.events(1) if e["kind"] == "gap"]:
                    await asyncio.sleep(0.02)
            wall_s = time.time() - last
            (gap,) = [e for e in store.events(1) if e["kind"] == "gap"]
            await asyncio.wait_for(resuming, 30)
    assert speed * 0.5 <= gap["data"]["outage_s"] <= speed * wall_s


async def test_a_stored_protocol_that_no_longer_compiles_still_gets_its_cell_made_safe(
    tmp_path: Path,
) -> None:
    """A daemon killed with the output on, and a restart whose cyclerd cannot compile the run's
    stored protocol (written by an older version, or a file of 10 000 steps that takes seconds):
    the cell is made safe first, the protocol compiled meanwhile; then the run fails, saying why."""
    speed = 50.0
    protocol = """
name: one hour
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.5 V, voltage_max: 3 V}
record: {every: 5 s}
steps:
  - plate: {current: 1 mA/cm^2, until: {duration: 1 h}}
"""
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=speed)
    with running(device) as port:
        lab = smu_lab(tmp_path, port, speed)
        with Store(lab.database) as store:
            await stopped_after_its_first_record(lab, store, protocol)
            with store.transaction() as db:  # what this cyclerd cannot read any more
                db.execute("UPDATE runs SET protocol = 'steps: [' WHERE id = 1")
        with socket.create_connection(("127.0.0.1", port)) as scpi:  # the output a kill -9 left on
            scpi.sendall(b":SOUR:FUNC CURR\n:SOUR:CURR -0.0007\n:OUTP ON\n*OPC?\n")
            assert scpi.recv(64).strip() == b"1"
        assert device.s.output

        await asyncio.wait_for(Daemon(lab).run(until_idle=True), 30)
        assert not device.s.output
    with Store(lab.database) as store:
        assert store.run(1).state == "failed"
        (gap,) = [e["message"] for e in store.events(1) if e["kind"] == "gap"]
        assert gap.startswith("could not take up the run after a restart")
