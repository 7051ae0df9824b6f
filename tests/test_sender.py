"""The sender's bookkeeping: acknowledgements settle in send order, a failure freezes the marks.

Mosquitto acknowledges in order, so the out-of-order case cannot be produced with it; here the
client is a stand-in whose publishes complete when the test says (everything else about the bus
runs against a real broker in test_bus.py and test_daemon_bus.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import pytest

from cyclerd.bus.sender import Outgoing, Sender
from cyclerd.store.marks import Marks


class HeldClient:
    """Publishes that complete only when the test completes them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.acks: list[asyncio.Future[None]] = []

    async def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False) -> None:
        self.sent.append((topic, payload))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        await ack


def batch(run_id: int, first: int, last: int) -> Outgoing:
    ready: asyncio.Future[str | bytes] = asyncio.get_running_loop().create_future()
    ready.set_result(f"{first}..{last}")
    return Outgoing("cyclerd/lab/ch/data", ready, False, run_id, first, last, None)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def delivered_up_to(seq: int) -> Marks:
    """The marks of run 1, its samples acknowledged up to `seq` (kept in memory only)."""
    marks = Marks(None)
    marks.take_on(1, "ch", {"data": seq})
    return marks


async def sending(delivered: Marks, *firsts: int) -> tuple[HeldClient, Sender, asyncio.Task[None]]:
    """A running sender on a held client, given ten-sample batches of run 1 starting at `firsts`."""
    client = HeldClient()
    sender = Sender(client, delivered, asyncio.Lock(), lambda out: out.payload, window=8)  # type: ignore[arg-type]
    running = asyncio.create_task(sender.run())
    for first in firsts:
        await sender.put(batch(1, first, first + 9))
    await settle()
    return client, sender, running


async def test_acknowledgements_out_of_order_move_the_mark_only_in_send_order() -> None:
    delivered = delivered_up_to(-1)
    client, sender, running = await sending(delivered, 0, 10, 20)
    assert [payload for _, payload in client.sent] == ["0..9", "10..19", "20..29"]  # all in flight
    client.acks[2].set_result(None)
    client.acks[1].set_result(None)
    await settle()
    assert delivered.get("data", 1) == -1  # 10..29 acknowledged, but 0..9 not yet
    client.acks[0].set_result(None)
    await settle()
    assert delivered.get("data", 1) == 29
    assert sender.in_transit == 0
    running.cancel()


async def test_after_a_failed_publish_no_later_acknowledgement_moves_the_mark() -> None:
    delivered = delivered_up_to(-1)
    client, sender, running = await sending(delivered, 0, 10, 20)
    client.acks[0].set_result(None)
    client.acks[1].set_exception(aiomqtt.MqttError("connection lost"))
    client.acks[2].set_result(None)  # acknowledged, but after a gap: the replay must resend it
    await settle()
    assert delivered.get("data", 1) == 9
    await sender.put(batch(1, 30, 39))  # the sender notices and stops, for the bus to reconnect
    with pytest.raises(aiomqtt.MqttError):
        await asyncio.wait_for(running, 1.0)


async def test_what_a_replay_already_sent_is_skipped() -> None:
    delivered = delivered_up_to(49)
    client, sender, running = await sending(delivered, 40, 50)
    assert [payload for _, payload in client.sent] == ["50..59"]
    client.acks[0].set_result(None)
    await asyncio.wait_for(sender.join(), 1.0)
    assert delivered.get("data", 1) == 59
    running.cancel()
