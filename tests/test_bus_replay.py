"""Nothing stored is lost to the bus, against a real Mosquitto and a real store: events and
spectra made while the broker is away reach subscribers after it returns; the final states a
daemon leaves at exit reach the broker before the bus closes; and samples a daemon stored but
had not got acknowledged when it was killed (SIGKILL) are published by the next start, counted
by `seq` by a real subscriber.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mosquitto import USERS, Mosquitto
from test_bus import BATCH, CHANNEL, LAB, Producer, client, collecting, make_bus, until

from cyclerd.bus.sink import BusSink
from cyclerd.engine.sinks import RunEvent, Sinks, SpectrumTaken, StoreSink
from cyclerd.store.database import Store

CYCLERD = str(Path(sys.executable).with_name("cyclerd"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "lab.sqlite") as store:
        yield store


def spectrum(sequence: int) -> SpectrumTaken:
    frequency = np.geomspace(1e5, 0.1, 7)
    impedance = (10.0 + sequence + 1.0 / (1j * 2 * np.pi * frequency * 1e-3)).astype(np.complex128)
    return SpectrumTaken(sequence, 100.0 * sequence, 2, sequence, frequency, impedance)


async def test_events_and_spectra_made_while_the_broker_is_away_reach_subscribers_after_it(
    broker: Mosquitto, store: Store
) -> None:
    async with (
        collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/events") as events,
        collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/eis") as eis,
        make_bus(broker, store) as bus,
    ):
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        run_id = store.create_run("bus test", CHANNEL, "steps: []", {}, {})
        run = Sinks([StoreSink(store, run_id), BusSink(bus, CHANNEL, run_id)])  # as a runner has it
        run.event(RunEvent(0.0, "state", "run started", {"state": "running"}))
        run.spectrum(spectrum(1))
        assert await bus.flush(5.0)  # acknowledged: not due again after the outage
        await until(lambda: len(events.messages) == 1 and len(eis.messages) == 1)

        broker.stop()
        await until(
            lambda: not bus.connected and not events.subscribed.is_set() and not eis.subscribed.is_set()
        )
        for k in (2, 3, 4):
            run.event(RunEvent(10.0 * k, "fault", f"fault {k}", {"attempt": k}))
        run.spectrum(spectrum(2))
        run.spectrum(spectrum(3))

        broker.start(users=["viewer"])  # the viewers are back before the daemon is let in
        await until(lambda: events.subscribed.is_set() and eis.subscribed.is_set(), timeout_s=10.0)
        broker.allow()
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        assert await bus.flush(5.0)
        await until(lambda: len(events.messages) >= 4 and len(eis.messages) >= 3)

    assert [e["message"] for e in events.payloads()] == ["run started", "fault 2", "fault 3", "fault 4"]
    assert events.payloads()[2] == {
        "run": run_id,
        "t": 30.0,
        "kind": "fault",
        "message": "fault 3",
        "data": {"attempt": 3},
    }
    received = eis.payloads()
    assert [s["sequence"] for s in received] == [1, 2, 3]
    for got, stored in zip(received, store.spectra(run_id), strict=True):
        assert got["run"] == run_id
        assert (got["t"], got["step"], got["cycle"]) == (stored["t"], stored["step"], stored["cycle"])
        assert got["frequency"] == stored["frequency_Hz"].tolist()
        assert got["z_real"] == stored["impedance_ohm"].real.tolist()
        assert got["z_imag"] == stored["impedance_ohm"].imag.tolist()


async def test_a_new_bus_on_the_store_sends_what_the_last_one_had_not_got_across_and_only_that(
    broker: Mosquitto, store: Store
) -> None:
    """The marks live in the store: a bus that ends (as a daemon does) before the broker took
    a run's samples leaves them to the next bus on the same file. A run no bus ever showed
    (imported, or recorded with no broker configured) is not poured onto the bus."""
    unshown = store.create_run("imported", CHANNEL, "steps: []", {}, {})
    seq, ones = np.arange(BATCH), np.ones(BATCH)
    columns: dict[str, Any] = {
        "seq": seq,
        "t": 1.0 * seq,
        "step": seq // BATCH + 1,
        "cycle": seq // BATCH + 1,
    }
    store.append_samples(
        unshown, columns | {"voltage": ones, "current": ones, "charge": ones, "energy": ones}
    )
    broker.allow(users=["viewer"])
    async with make_bus(broker, store) as bus:
        producer = Producer(store, bus)
        for _ in range(3):  # stored while the broker does not let the daemon in
            producer.batch()
    async with collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/data") as data:
        broker.allow()
        with Store(store.path) as reopened:
            async with make_bus(broker, reopened) as again:
                await asyncio.wait_for(again.wait_connected(), 5.0)
                assert await again.flush(5.0)
                await until(lambda: len(data.seqs()) >= 30)
                assert again.delivered(producer.run_id) == 29
    assert {p["run"] for p in data.payloads()} == {producer.run_id}
    assert data.seqs() == list(range(30))


async def retained_states(broker: Mosquitto, count: int) -> dict[str, Any]:
    """The retained state of each channel, as a viewer that subscribes now gets them."""
    states: dict[str, Any] = {}
    async with client(broker, "viewer") as viewer:
        await viewer.subscribe(f"cyclerd/{LAB}/+/state", qos=1)
        async with asyncio.timeout(5.0):
            async for message in viewer.messages:
                states[str(message.topic).split("/")[2]] = json.loads(bytes(message.payload))
                if len(states) == count:
                    break
    return states


async def test_the_final_states_reach_the_broker_before_the_bus_closes(
    broker: Mosquitto, store: Store
) -> None:
    """`cyclerd serve --until-idle` ends with flush and close: the channels' last states, said
    while the broker was out of reach, must be sent by then, not cut off by the close."""
    broker.allow(users=["viewer"])  # the daemon is not let in yet
    channels = [f"ch{k:02d}" for k in range(40)]
    async with make_bus(broker, store) as bus:
        for channel in channels:
            bus.publish_state(channel, {"run": 1, "state": "running", "cycle": 3})
            bus.publish_state(channel, {"run": 1, "state": "completed", "cycle": 3})
            bus.publish_state(channel, {"run": None, "state": "idle"})
        broker.allow()
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        assert await bus.flush(5.0)
    states = await retained_states(broker, len(channels))
    assert states == {channel: {"run": None, "state": "idle"} for channel in channels}


# -- a daemon killed with SIGKILL --------------------------------------------------------------

LAB_TOML = """\
lab = "{lab}"
database = "{db}"

[mqtt]
host = "{host}"
port = {port}
username = "daemon"
password_env = "CYCLERD_TEST_MQTT_PASSWORD"

[[channels]]
name = "{channel}"
sim = "mgagsn"
seed = 1
"""


def plating_stripping(cycles: int) -> str:
    text = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
    assert "count: 250" in text
    return text.replace("count: 250", f"count: {cycles}")


def serve(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CYCLERD_TEST_MQTT_PASSWORD": USERS["daemon"]}
    return subprocess.Popen(
        [CYCLERD, "serve", "--config", str(config), "--until-idle"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def last_seq(db: sqlite3.Connection, run_id: int) -> int:
    value = db.execute("SELECT MAX(last_seq) FROM sample_blocks WHERE run_id = ?", (run_id,)).fetchone()[0]
    return -1 if value is None else int(value)


async def test_samples_stored_before_a_sigkill_are_published_after_the_restart(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """The broker does not let the daemon in while it completes one run and stores part of the
    next; then it is killed. The next start publishes both runs whole, and the events."""
    db_path = tmp_path / "lab.db"
    config = tmp_path / "lab.toml"
    config.write_text(
        LAB_TOML.format(lab=LAB, db=db_path.name, host=broker.host, port=broker.port, channel=CHANNEL)
    )
    with Store(db_path) as store:
        store.jobs.submit(CHANNEL, "short", plating_stripping(3), "plating_stripping.yaml", {})
        store.jobs.submit(CHANNEL, "long", plating_stripping(40), "plating_stripping.yaml", {})
    broker.allow(users=["viewer"])
    async with (
        collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/data") as data,
        collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/events") as events,
    ):
        daemon = serve(config)
        db = sqlite3.connect(db_path, timeout=10)
        try:
            async with asyncio.timeout(60.0):
                while daemon.poll() is None and last_seq(db, 2) < 5000:
                    await asyncio.sleep(0.002)
            assert daemon.poll() is None, "the second run ended before it could be killed"
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
        finally:
            daemon.kill()
            db.close()
        assert data.messages == []  # nothing got out: everything stored is owed to the bus

        broker.allow()
        again = serve(config)
        returncode = await asyncio.to_thread(again.wait, 120)
        assert returncode == 0, again.stderr.read() if again.stderr else ""
        with Store(db_path) as store:
            runs = store.runs()
            stored = {run.id: store.samples(run.id)["seq"].astype(int).tolist() for run in runs}
            stored_events = [(e["run_id"], e["kind"], e["message"]) for e in store.events() if e["run_id"]]
        assert [run.state for run in runs] == ["completed", "completed"]

        def received() -> dict[int, list[int]]:
            seqs: dict[int, set[int]] = {}
            for payload in data.payloads():
                seqs.setdefault(payload["run"], set()).update(
                    payload["seq"] + i for i in range(len(payload["t"]))
                )
            return {run: sorted(values) for run, values in seqs.items()}

        await until(lambda: received() == stored, timeout_s=10.0)
        await until(lambda: len(events.messages) >= len(stored_events))
        got = [(e["run"], e["kind"], e["message"]) for e in events.payloads()]
        assert sorted(set(got)) == sorted(stored_events)
    states = await retained_states(broker, 1)
    assert states == {CHANNEL: {"run": None, "state": "idle"}}
