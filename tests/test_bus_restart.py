"""The bus keeps going: channels that publish their first state while it (re)connects, and any
unexpected failure inside it, never end it; a failure is logged as an error and the bus starts
again, against a real Mosquitto and a real store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from mosquitto import Mosquitto
from test_bus import CHANNEL, LAB, Producer, collecting, make_bus, until

from cyclerd.store.database import FloatArray, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "lab.sqlite") as store:
        yield store


def states(messages: list[Any]) -> dict[str, dict[str, Any]]:
    """The latest state per channel, as a viewer of cyclerd/<lab>/+/state ends up seeing it."""
    return {str(m.topic).split("/")[2]: json.loads(bytes(m.payload)) for m in messages}


async def test_channels_publishing_their_first_state_while_the_bus_connects_do_not_end_it(
    broker: Mosquitto, store: Store
) -> None:
    """A restarted daemon: the bus connects while one channel after another takes its run up and
    publishes its first state. The catch-up republishing the states it had must not trip over the
    new ones; the bus goes on publishing data and states."""
    async with (
        collecting(broker, f"cyclerd/{LAB}/+/state") as viewer,
        collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/data") as data,
    ):
        bus = make_bus(broker, store)
        for k in range(20):  # what the channels had said before the bus got its connection
            bus.publish_state(f"early{k}", {"run": None, "state": "idle"})
        async with bus:
            k, after = 0, 0
            async with asyncio.timeout(10.0):
                while after < 100:  # channels keep arriving, one a millisecond, across the catch-up
                    bus.publish_state(f"late{k}", {"run": k, "state": "running"})
                    k += 1
                    after += bus.connected
                    await asyncio.sleep(0.001)
            producer = Producer(store, bus)
            for _ in range(5):
                producer.batch()
            bus.publish_state("late0", {"run": 0, "state": "completed"})
            await until(lambda: len(data.seqs()) >= 50, timeout_s=10.0)
            assert data.seqs() == list(range(50))
            await until(lambda: states(viewer.messages).get("late0", {}).get("state") == "completed")
            seen = states(viewer.messages)
            assert {f"early{i}" for i in range(20)} <= set(seen)
            assert {f"late{i}" for i in range(k)} <= set(seen)


class FailingOnce(Store):
    """A store whose first read of samples fails as a failing disk would (the bus's own store)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failures = 1

    def samples(self, run_id: int, after_seq: int = -1, limit: int | None = None) -> dict[str, FloatArray]:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return super().samples(run_id, after_seq, limit)


async def test_an_unexpected_failure_in_the_bus_is_logged_and_the_bus_starts_again(
    broker: Mosquitto, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The replay after a broker outage fails once (a store error): an error in the log, the status
    says offline meanwhile, and the bus comes back and delivers every sample."""
    failing = FailingOnce(tmp_path / "lab.sqlite")
    async with (
        collecting(broker, f"cyclerd/{LAB}/{CHANNEL}/data") as data,
        collecting(broker, f"cyclerd/{LAB}/daemon/status") as status,
    ):
        async with make_bus(broker, failing) as bus:
            await asyncio.wait_for(bus.wait_connected(), 5.0)
            producer = Producer(store, bus)
            producer.batch()
            await until(lambda: bus.delivered(producer.run_id) == 9)
            broker.stop()
            await until(lambda: not bus.connected and not data.subscribed.is_set())
            for _ in range(4):  # stored while the broker is away: the replay reads them back
                producer.batch()
            broker.start()
            await until(lambda: data.subscribed.is_set() and status.subscribed.is_set(), timeout_s=10.0)
            await until(lambda: bus.delivered(producer.run_id) == 49, timeout_s=10.0)
            producer.batch()
            await until(lambda: len(set(data.seqs())) >= 60, timeout_s=10.0)
        assert sorted(set(data.seqs())) == list(range(60))
        errors = [
            r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("cyclerd.bus")
        ]
        assert errors, caplog.text
        assert "disk I/O error" in caplog.text
        said: list[Mapping[str, Any]] = [{"status": bytes(m.payload).decode()} for m in status.messages]
        assert {"status": "offline"} in said  # the failed connection did not leave a stale "online"
    failing.close()
