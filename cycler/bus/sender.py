"""The bus's sender: one broker connection's messages, in order, many acknowledgements awaited at once.

The daemon's event loop also runs every channel, so a sender that waited for each PUBACK
before the next publish would get one message out per turn of a loop that is busy with the
channels between turns, and fall ever further behind. This one starts each publish as soon as
its payload is ready, keeps up to `window` unacknowledged, and settles acknowledgements in the
order the messages were sent: a run's marks (cyclerd.store.marks: its samples, events and
spectra) move only past messages that were acknowledged together with every message before
them. After the first failure nothing moves them any more; the bus reconnects and replays
from the store what was not acknowledged.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiomqtt
import numpy as np

from cyclerd.bus.payloads import data_payload
from cyclerd.store.marks import Kind, Marks

QOS = 1  # at least once on the wire; sequence numbers and the delivered mark make it exactly once


@dataclass(frozen=True)
class Outgoing:
    """A message on its way to the broker; a batch's payload may still be encoding."""

    topic: str
    payload: asyncio.Future[str | bytes]
    retain: bool = False
    run_id: int | None = None  # of this run: samples seq first..last, or an event or spectrum `last`
    first: int = 0
    last: int = -1
    columns: Mapping[str, Any] | None = None
    kind: Kind = "data"


def ready(payload: str | bytes) -> asyncio.Future[str | bytes]:
    """A payload that needs no encoding, as the sender takes payloads: a future."""
    future: asyncio.Future[str | bytes] = asyncio.get_running_loop().create_future()
    future.set_result(payload)
    return future


class Sender:
    """Publishes what it is given, in order, on one connection (`run` until it fails)."""

    def __init__(
        self,
        client: aiomqtt.Client,
        marks: Marks,
        lock: asyncio.Lock,
        payload: Callable[[Outgoing], Awaitable[str | bytes]],
        window: int,
    ) -> None:
        self._client = client
        self._marks = marks  # shared with the bus: the marks outlive the connection
        self._lock = lock  # held by a replay, which publishes around the sender
        self._payload = payload
        self._window = window
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=window)
        self._unacked: collections.deque[tuple[asyncio.Future[None], Outgoing]] = collections.deque()
        self._failed: BaseException | None = None
        self.in_transit = 0  # given and not yet settled

    async def put(self, out: Outgoing) -> None:
        self.in_transit += 1
        await self._queue.put(out)

    async def join(self) -> None:
        """Until everything given so far is acknowledged (or skipped, or failed)."""
        await self._queue.join()

    async def settled(self) -> None:
        """Until every publish already started is acknowledged; call with the lock held."""
        while self._unacked:
            await asyncio.wait([self._unacked[-1][0]])

    async def run(self) -> None:
        while True:
            out = await self._queue.get()
            try:
                payload = await self._payload(out)
                async with self._lock:
                    started = self._start(out, payload)
            except BaseException:
                self._settled_one()
                raise
            if not started:
                self._settled_one()
            while len(self._unacked) >= self._window:
                await asyncio.wait([self._unacked[0][0]])
            if self._failed is not None:
                raise self._failed

    def close(self) -> None:
        """The connection is gone: what is unacknowledged stays for the replay."""
        for future, _ in self._unacked:
            future.cancel()

    def _start(self, out: Outgoing, payload: str | bytes) -> bool:
        if out.run_id is not None:
            delivered = self._marks.get(out.kind, out.run_id)
            if out.last <= delivered:
                return False  # a replay sent it meanwhile
            if out.first <= delivered and out.columns is not None:
                keep = np.asarray(out.columns["seq"]) > delivered
                payload = data_payload(out.run_id, {k: np.asarray(v)[keep] for k, v in out.columns.items()})
        publish = asyncio.ensure_future(self._client.publish(out.topic, payload, qos=QOS, retain=out.retain))
        self._unacked.append((publish, out))
        publish.add_done_callback(self._settle)
        return True

    def _settle(self, _: object) -> None:
        while self._unacked and self._unacked[0][0].done():
            future, out = self._unacked.popleft()
            error = aiomqtt.MqttError("publish cancelled") if future.cancelled() else future.exception()
            if error is not None:
                self._failed = self._failed or error
            elif out.run_id is not None and self._failed is None:
                self._marks.advance(out.kind, out.run_id, out.last)
            self._settled_one()

    def _settled_one(self) -> None:
        self.in_transit -= 1
        self._queue.task_done()
