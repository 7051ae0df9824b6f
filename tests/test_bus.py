"""The MQTT bus against a real Mosquitto (password file, ACLs) and a real store: batches arrive
once and in order, a broker outage is filled from the store without gaps or duplicates,
ACLs hold, and the daemon status is retained with a last will.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
import pytest
from mosquitto import USERS, Mosquitto
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cyclerd.bus.publisher import Bus
from cyclerd.store.database import Store

LAB = "lab1"
CHANNEL = "ch1"
BATCH = 10


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "lab.sqlite") as store:
        yield store


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


def client(
    broker: Mosquitto,
    user: str,
    password: str | None = None,
    queue_type: type[asyncio.Queue[aiomqtt.Message]] | None = None,
    session: str | None = None,
) -> aiomqtt.Client:
    """A client; with `session`, a persistent session of that name (kept 10 min by the broker)."""
    properties = None
    if session is not None:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 600
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=user,
        password=USERS[user] if password is None else password,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5.0,
        queue_type=queue_type,
        identifier=session,
        clean_start=session is None,
        properties=properties,
    )


def recording_into(sink: list[aiomqtt.Message]) -> type[asyncio.Queue[aiomqtt.Message]]:
    """A message queue that records each message as it arrives. aiomqtt's message iterator
    drops what is still queued when the connection breaks, and a subscriber counting samples
    across a broker restart must not lose those."""

    class Recording(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            sink.append(item)

    return Recording


class Collector:
    """A subscriber that reconnects and subscribes again whenever the broker comes back."""

    def __init__(
        self, broker: Mosquitto, topic: str, user: str = "viewer", session: str | None = None
    ) -> None:
        self.broker, self.topic, self.user, self.session = broker, topic, user, session
        self.messages: list[aiomqtt.Message] = []
        self.subscribed = asyncio.Event()

    async def run(self) -> None:
        recording = recording_into(self.messages)
        while True:
            try:
                async with client(self.broker, self.user, queue_type=recording, session=self.session) as mqtt:
                    await mqtt.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for _ in mqtt.messages:  # returns only by raising, on disconnection
                        pass
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.02)

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(bytes(m.payload)) for m in self.messages]

    def seqs(self) -> list[int]:
        return [p["seq"] + i for p in self.payloads() for i in range(len(p["t"]))]


@contextlib.asynccontextmanager
async def collecting(
    broker: Mosquitto, topic: str, user: str = "viewer", session: str | None = None
) -> AsyncIterator[Collector]:
    collector = Collector(broker, topic, user, session)
    task = asyncio.create_task(collector.run())
    try:
        await asyncio.wait_for(collector.subscribed.wait(), 5.0)
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Producer:
    """Stands in for the Runner: stores each batch, then hands it to the bus (its on_batch)."""

    def __init__(self, store: Store, bus: Bus) -> None:
        self.store, self.bus = store, bus
        self.run_id = store.create_run("bus test", CHANNEL, "steps: []", {}, {"preset": "test"})
        self.seq = 0

    def batch(self) -> None:
        seq = np.arange(self.seq, self.seq + BATCH)
        columns = {
            "seq": seq,
            "t": seq * 0.1,
            "step": np.full(BATCH, 1),
            "cycle": np.full(BATCH, 1),
            "voltage": 3.0 + seq * 1e-3,
            "current": np.full(BATCH, 0.5),
            "charge": seq * 0.05,
            "energy": seq * 0.15,
        }
        self.store.append_samples(self.run_id, columns)
        started = time.perf_counter()
        self.bus.publish_batch(CHANNEL, self.run_id, columns)
        assert time.perf_counter() - started < 0.01  # only enqueues
        self.seq += BATCH


def make_bus(
    broker: Mosquitto, store: Store | None = None, password: str | None = None, queue_size: int = 1000
) -> Bus:
    return Bus(
        LAB,
        broker.host,
        broker.port,
        username="daemon",
        password=USERS["daemon"] if password is None else password,
        store=store,
        queue_size=queue_size,
        backoff_s=(0.05, 0.2),
        timeout_s=5.0,
    )


async def test_every_batch_arrives_once_in_order(broker: Mosquitto, store: Store) -> None:
    async with collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/data") as data, make_bus(broker, store) as bus:
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        producer = Producer(store, bus)
        for _ in range(20):
            producer.batch()
            await asyncio.sleep(0)
        await until(lambda: len(data.messages) >= 20 and bus.delivered(producer.run_id) == 199)
        payloads = data.payloads()
        assert len(payloads) == 20  # one message per batch
        assert [p["seq"] for p in payloads] == list(range(0, 200, BATCH))
        assert data.seqs() == list(range(200))
        assert all(p["run"] == producer.run_id for p in payloads)
        stored = store.samples(producer.run_id)
        np.testing.assert_allclose(np.concatenate([p["voltage"] for p in payloads]), stored["voltage"])
        assert payloads[0]["step"] == [1] * BATCH
        assert bus.delivered(producer.run_id) == 199


async def test_broker_outage_is_filled_from_the_store_exactly_once(broker: Mosquitto, store: Store) -> None:
    async with collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/data") as data, make_bus(broker, store) as bus:
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        producer = Producer(store, bus)
        for _ in range(5):
            producer.batch()
        await until(lambda: bus.delivered(producer.run_id) == 49 and len(data.messages) == 5)

        broker.stop()
        await until(lambda: not bus.connected and not data.subscribed.is_set())
        for _ in range(5):  # acquisition goes on: stored, never blocked by the bus
            producer.batch()
            await asyncio.sleep(0.01)
        assert bus.delivered(producer.run_id) == 49

        # The broker comes back; the viewer resubscribes before the daemon is let in again, so
        # what the viewer sees from now on is exactly what the bus sends after reconnecting.
        broker.start(users=["viewer"])
        await asyncio.wait_for(data.subscribed.wait(), 5.0)
        received_before = len(data.messages)
        broker.allow()
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        # No new batch needed: reconnecting alone replays what the store has beyond `delivered`.
        await until(lambda: bus.delivered(producer.run_id) == 99 and len(data.seqs()) >= 100)
        for _ in range(5):
            producer.batch()
            await asyncio.sleep(0)
        await until(lambda: bus.delivered(producer.run_id) == 149 and len(data.seqs()) >= 150)

        seqs = data.seqs()
        assert sorted(seqs) == seqs == list(range(150))  # complete, in order, no duplicates
        after = data.payloads()[received_before:]
        assert after[0]["seq"] == 50  # the replay starts right after what was delivered
        stored = store.samples(producer.run_id)
        received = np.concatenate([p["voltage"] for p in data.payloads()])
        np.testing.assert_allclose(received, stored["voltage"])


async def test_a_full_queue_drops_and_the_gap_is_replayed_from_the_store(
    broker: Mosquitto, store: Store
) -> None:
    bus = make_bus(broker, store, queue_size=2)  # tiny, so that a burst overflows it
    async with collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/data") as data, bus:
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        producer = Producer(store, bus)
        for _ in range(10):  # a burst without yielding: only the last two batches stay queued
            producer.batch()
        assert bus.dropped == 8
        await until(lambda: bus.delivered(producer.run_id) == 99 and len(data.seqs()) >= 100)
        producer.batch()
        await until(lambda: len(data.seqs()) >= 110)
        assert data.seqs() == list(range(110))


async def test_wrong_credentials_are_refused_and_never_logged(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with client(broker, "viewer", password="not-the-password"):
            pass
    caplog.set_level(logging.DEBUG)
    async with make_bus(broker, password="wrong-secret") as bus:
        await until(lambda: "unavailable" in caplog.text)
        assert not bus.connected
    assert "wrong-secret" not in caplog.text
    assert "wrong-secret" not in repr(bus)


async def test_viewer_cannot_publish_commands(broker: Mosquitto) -> None:
    async with collecting(broker, f"cyclerd/{LAB}/+/cmd", user="daemon") as commands:
        async with client(broker, "viewer") as viewer:
            await viewer.publish(f"cyclerd/{LAB}/x/cmd", "start", qos=1)
        async with client(broker, "daemon") as daemon:  # a marker after the viewer's attempt
            await daemon.publish(f"cyclerd/{LAB}/y/cmd", "marker", qos=1)
        await until(lambda: len(commands.messages) >= 1)
        assert [str(m.topic) for m in commands.messages] == [f"cyclerd/{LAB}/y/cmd"]


DAEMON = """
import asyncio, os, sys
from cyclerd.bus.publisher import Bus

async def main():
    lab, port, password = sys.argv[1], int(sys.argv[2]), os.environ["BUS_PASSWORD"]
    bus = Bus(lab, "127.0.0.1", port, username="daemon", password=password)
    bus.start()
    await bus.wait_connected()
    print("connected", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def retained_status(broker: Mosquitto) -> str:
    async with client(broker, "viewer") as viewer:
        await viewer.subscribe(f"cyclerd/{LAB}/daemon/status", qos=1)
        async with asyncio.timeout(5.0):
            async for message in viewer.messages:
                assert message.retain
                return bytes(message.payload).decode()
    raise AssertionError("no retained status")


async def test_status_is_retained_online_and_offline_by_last_will(broker: Mosquitto) -> None:
    env = {**os.environ, "BUS_PASSWORD": USERS["daemon"]}
    daemon = subprocess.Popen(
        [sys.executable, "-c", DAEMON, LAB, str(broker.port)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert daemon.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(daemon.stdout.readline), 10.0)
        assert line.strip() == b"connected"
        assert await retained_status(broker) == "online"
        async with collecting(broker, f"cyclerd/{LAB}/daemon/status") as status:
            daemon.kill()  # no goodbye: the broker publishes the last will
            await until(lambda: any(m.payload == b"offline" for m in status.messages))
        assert await retained_status(broker) == "offline"
    finally:
        daemon.kill()
        daemon.wait()


async def test_closing_says_offline(broker: Mosquitto) -> None:
    async with make_bus(broker) as bus:
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        assert await retained_status(broker) == "online"
    assert await retained_status(broker) == "offline"


async def test_a_dead_encoder_process_loses_no_batch(
    broker: Mosquitto, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The encoder child is killed mid-stream: its pending batches are encoded in the daemon."""
    async with collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/data") as data, make_bus(broker, store) as bus:
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        encoder = bus._encoding.process
        assert encoder is not None
        assert encoder.alive
        producer = Producer(store, bus)
        for k in range(40):
            producer.batch()
            if k == 20:
                encoder.kill()
            await asyncio.sleep(0.005)
        await until(lambda: bus.delivered(producer.run_id) == 399)
        await until(lambda: len(data.seqs()) >= 400)
        assert data.seqs() == list(range(400))
        received = np.concatenate([p["voltage"] for p in data.payloads()])
        assert received.tobytes() == store.samples(producer.run_id)["voltage"].tobytes()
        assert bus._encoding.process is None
        assert "encoding in the daemon from now on" in caplog.text
