"""Replies to commands go only into this lab's reply space, against a real Mosquitto (password
file + ACL) and the daemon's real command handler: the daemon publishes with `readwrite
cyclerd/#`, so a response topic elsewhere would make it a confused deputy. Such a command is
refused and not carried out, and nothing is published where it pointed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from mosquitto import USERS, Mosquitto
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_bus import collecting, until

from cyclerd.bus.publisher import Bus
from cyclerd.bus.replies import refusal
from cyclerd.daemon.config import Lab
from cyclerd.daemon.service import Daemon
from cyclerd.store.database import Store

LAB = "lab5"
PROTOCOL = """\
name: short plating
cell: {area: 0.785 cm^2}
steps:
  - plate: {current: 1 mA/cm^2, until: {duration: 1 min}}
"""


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        (f"cyclerd/{LAB}/reply/operator/1", None),
        (f"cyclerd/{LAB}/reply/operator", None),
        (f"cyclerd/{LAB}/reply/operator/a/b/c", None),
        (f"cyclerd/{LAB}/sim1/state", "outside this lab's reply space"),
        (f"cyclerd/{LAB}/daemon/status", "outside this lab's reply space"),
        (f"cyclerd/{LAB}/sim1/data", "outside this lab's reply space"),
        ("cyclerd/otherlab/sim1/cmd", "outside this lab's reply space"),
        ("cyclerd/otherlab/reply/operator/1", "outside this lab's reply space"),
        (f"cyclerd/{LAB}/reply", "outside this lab's reply space"),
        (f"cyclerd/{LAB}/reply//1", "outside this lab's reply space"),
        (f"/cyclerd/{LAB}/reply/operator/1", "outside this lab's reply space"),
        (f"cyclerd/{LAB}/reply/operator/#", "wildcard"),
        (f"cyclerd/{LAB}/reply/+/1", "wildcard"),
        ("#", "wildcard"),
        (f"cyclerd/{LAB}/reply/operator/a\0b", "not a valid MQTT topic"),
    ],
)
def test_the_reply_space_rule(topic: str, problem: str | None) -> None:
    found = refusal(topic, LAB)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found
        assert f"cyclerd/{LAB}/reply/<your user>/1" in found  # and says what to use instead


@contextlib.asynccontextmanager
async def commanding(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Store]:
    """A daemon's bus answering commands with the daemon's own handler (no channel needs to run)."""
    lab = Lab.model_validate(
        {"lab": LAB, "database": tmp_path / "lab.db", "channels": [{"name": "sim1", "sim": "mgagsn"}]}
    )
    store = Store(lab.database)
    bus = Bus(
        LAB,
        broker.host,
        broker.port,
        username="daemon",
        password=USERS["daemon"],
        store=store,
        backoff_s=(0.05, 0.2),
        timeout_s=5.0,
    )
    Daemon(lab, bus)
    async with bus:
        await asyncio.wait_for(bus.wait_connected(), 5.0)
        yield store
    store.close()


@contextlib.asynccontextmanager
async def operator(broker: Mosquitto) -> AsyncIterator[Any]:
    """The operator, listening on its whole reply space; `send` returns the correlation data."""
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        username="operator",
        password=USERS["operator"],
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5.0,
    ) as client:
        await client.subscribe(f"cyclerd/{LAB}/reply/operator/#", qos=1)

        async def send(payload: dict[str, Any], response_topic: str) -> bytes:
            correlation = uuid.uuid4().bytes
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ResponseTopic = response_topic
            properties.CorrelationData = correlation
            await client.publish(f"cyclerd/{LAB}/sim1/cmd", json.dumps(payload), qos=1, properties=properties)
            return correlation

        async def reply(correlation: bytes) -> tuple[str, dict[str, Any]]:
            async with asyncio.timeout(5.0):
                async for message in client.messages:
                    if getattr(message.properties, "CorrelationData", None) == correlation:
                        return str(message.topic), json.loads(bytes(message.payload))
            raise AssertionError("no reply")

        yield send, reply


def replies_seen(messages: list[aiomqtt.Message]) -> list[tuple[str, dict[str, Any]]]:
    """Every message that looks like a command's reply, wherever it was published."""
    seen = []
    for message in messages:
        with contextlib.suppress(ValueError):
            body = json.loads(bytes(message.payload))
            if isinstance(body, dict) and "ok" in body:
                seen.append((str(message.topic), body))
    return seen


async def test_a_response_topic_outside_the_reply_space_is_refused_and_nothing_is_published_there(
    tmp_path: Path, broker: Mosquitto
) -> None:
    outside = [
        f"cyclerd/{LAB}/sim1/state",
        f"cyclerd/{LAB}/daemon/status",
        f"cyclerd/{LAB}/sim1/data",
        "cyclerd/otherlab/sim1/cmd",
        "cyclerd/otherlab/reply/operator/1",
    ]
    async with (
        collecting(broker, "cyclerd/#") as everything,
        commanding(tmp_path, broker) as store,
        operator(broker) as (send, reply),
    ):
        for topic in outside:
            await send({"action": "submit", "protocol": PROTOCOL}, topic)
        # A good command after them: its reply is published after any the daemon made for them.
        good = f"cyclerd/{LAB}/reply/operator/{uuid.uuid4().hex}"
        where, answer = await reply(await send({"action": "status"}, good))
        assert (where, answer["ok"]) == (good, True)
        await until(lambda: any(topic == good for topic, _ in replies_seen(everything.messages)))
        assert replies_seen(everything.messages) == [(good, answer)]
        assert store.jobs.list() == []  # none of the refused submissions was carried out


async def test_a_wildcard_response_topic_gets_a_refusal_and_the_command_is_not_carried_out(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A client that gives its subscription as the response topic learns what is wrong, on the
    part of it before the wildcard; a wildcard elsewhere is only logged. The bus goes on."""
    async with commanding(tmp_path, broker) as store, operator(broker) as (send, reply):
        wild = f"cyclerd/{LAB}/reply/operator/#"
        where, refused = await reply(await send({"action": "submit", "protocol": PROTOCOL}, wild))
        assert where == f"cyclerd/{LAB}/reply/operator"
        assert refused["ok"] is False
        assert "wildcard" in refused["error"]
        await send({"action": "submit", "protocol": PROTOCOL}, "cyclerd/+/reply/operator/1")
        good = f"cyclerd/{LAB}/reply/operator/1"
        where, answer = await reply(await send({"action": "status"}, good))
        assert (where, answer["ok"]) == (good, True)
        assert store.jobs.list() == []
        where, submitted = await reply(await send({"action": "submit", "protocol": PROTOCOL}, good))
        assert submitted["ok"], submitted
        assert [job["id"] for job in store.jobs.list()] == [submitted["job"]]
