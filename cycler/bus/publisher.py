"""The bus: a live view of one lab's runs over MQTT 5 (state, data, events, spectra, daemon status).

Publishing never blocks acquisition: the runner only enqueues and a background task sends.
Turning samples into JSON is a large part of what the daemon does with them, so it runs in
an encoder process (cyclerd.bus.encoder) on the lab PC's other core, ahead of the
sender (cyclerd.bus.sender), which keeps many messages awaiting their acknowledgement at once.
The store is the source of truth, so whatever the bus misses while the broker is away, or
while the daemon is down, is sent from the store afterwards (cyclerd.bus.backlog): from the
first sample, event or spectrum the broker had not acknowledged, as the marks kept in the store
say (cyclerd.store.marks). A message the broker took as it stopped, whose PUBACK never came, is
therefore sent again (QoS 1 is at least once); its samples keep their seq, so viewers drop what
they already have.

The bus task never ends on its own (cyclerd.bus.connection): a lost broker is retried with
backoff, and anything else that fails inside it is logged as an error, the status set
"offline", and the bus started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiomqtt
import numpy as np

from cyclerd.bus.backlog import Backlog
from cyclerd.bus.connection import Broker, keep_connected
from cyclerd.bus.encoding import Encoding
from cyclerd.bus.payloads import (
    DATA_COLUMNS,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    data_payload,
    event_payload,
    spectrum_payload,
)
from cyclerd.bus.replies import CommandHandler, answer
from cyclerd.bus.sender import QOS, Outgoing, Sender, ready
from cyclerd.engine.sinks import RunEvent, SpectrumTaken
from cyclerd.store.database import Store
from cyclerd.store.marks import NOTHING, Kind, Marks

__all__ = ["FLOAT_COLUMNS", "INT_COLUMNS", "QOS", "Bus", "CommandHandler", "data_payload"]

log = logging.getLogger(__name__)

MARKS_EVERY_S = 0.5  # how often acknowledged marks reach the store: what a kill -9 may send twice


@dataclass(frozen=True)
class _Batch:
    channel: str
    run_id: int
    columns: Mapping[str, Any]
    first: int
    last: int


@dataclass(frozen=True)
class _Message:
    """An event or spectrum of a bus without a store, sent as it came."""

    topic: str
    payload: str


@dataclass(frozen=True)
class _State:
    """A channel's state changed; its latest is sent (an older one never after a newer)."""

    channel: str


@dataclass(frozen=True)
class _News:
    """The store holds more of `kind` of this run than was handed to the broker: send it."""

    run_id: int
    kind: Kind


class Bus:
    """Publishes one lab's channels to `cyclerd/<lab>/...`; use as `async with Bus(...) as bus:`.

    Per run the bus keeps what the broker acknowledged (`delivered`, and the like for events
    and spectra), in the store when it has one. A batch reaching the sender after a gap (the
    broker was away, the queue overflowed) first makes the bus replay the store from
    `delivered`; batches at or below it are skipped. With a store, a run's events and spectra
    are sent from the store (the runner's call only says there is something new), so none is
    lost to an outage or a restart either.
    """

    def __init__(
        self,
        lab: str,
        host: str = "localhost",
        port: int = 1883,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        store: Store | None = None,
        queue_size: int = 1000,
        replay_batch: int = 500,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        timeout_s: float = 10.0,
        on_command: CommandHandler | None = None,
        encoder: bool = True,
        in_flight: int = 256,
    ) -> None:
        self.lab = lab
        self.host = host
        self.port = port
        self.username = username
        self._broker = Broker(
            host,
            port,
            username,
            password,
            tls_context,
            f"cyclerd-{lab}-daemon",
            self.status_topic,
            timeout_s,
            in_flight,
        )
        self._store = store
        self._queue: asyncio.Queue[_Batch | _Message | _State | _News] = asyncio.Queue(maxsize=queue_size)
        self._pending = 0  # items enqueued and not yet handed to the sender (or dropped)
        self._backoff_s = backoff_s
        self._marks = Marks(store)
        self._produced: dict[int, int] = {}  # per run: the last seq given to the bus
        self._states: dict[str, tuple[int, str]] = {}  # per channel: (version, payload)
        self._state_sent: dict[str, int] = {}  # per channel: the version last handed over
        self._versions = itertools.count(1)
        self._send_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._caught_up = False  # this connection sent what the previous ones missed
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_command = on_command
        self._handlers: set[asyncio.Task[None]] = set()
        self._encoding = Encoding(child=encoder)  # False: encode in the daemon's process
        self._in_flight = in_flight
        self._handed: dict[int, int] = {}  # per run: last seq handed to the sender this connection
        self._sender: Sender | None = None
        self._backlog = Backlog(store, self._marks, self.topic, self._encoding, replay_batch)
        self.dropped = 0

    def __repr__(self) -> str:  # never shows the password
        return f"Bus(lab={self.lab!r}, {self.host}:{self.port}, user={self.username!r})"

    # -- topics --------------------------------------------------------------------------

    def topic(self, channel: str, kind: str) -> str:
        return f"cyclerd/{self.lab}/{channel}/{kind}"

    @property
    def status_topic(self) -> str:
        return f"cyclerd/{self.lab}/daemon/status"

    # -- the runner's side: synchronous, never blocks ------------------------------------

    def track(self, channel: str, run_id: int) -> None:
        """Take run `run_id` on: from now on what the broker acknowledged of it is kept (in the
        store), and whatever of it the broker misses, even across a restart, is sent later."""
        self._marks.take_on(run_id, channel)

    def publish_batch(self, channel: str, run_id: int, columns: Mapping[str, Any]) -> None:
        """Enqueue one stored batch (the Runner's `on_batch` columns); drops when it must."""
        seq = columns["seq"]
        if len(seq) == 0:
            return
        first, last = int(seq[0]), int(seq[-1])
        if run_id not in self._marks:  # a run nobody announced: shown from its first batch on
            self._marks.take_on(run_id, channel, {"data": first - 1})
        self._produced[run_id] = max(self._produced.get(run_id, last), last)
        if self.connected:
            self._enqueue(_Batch(channel, run_id, columns, first, last))
        else:
            self.dropped += 1  # the store has it; replayed after reconnecting

    def publish_state(self, channel: str, state: Mapping[str, Any]) -> None:
        """Enqueue the channel's state (retained; republished after each reconnect)."""
        self._states[channel] = (next(self._versions), json.dumps(state, sort_keys=True))
        if self.connected:
            self._enqueue(_State(channel))

    def publish_event(self, channel: str, run_id: int, event: RunEvent) -> None:
        """Enqueue an event of run `run_id` (not retained; the store keeps them all)."""
        if self._store is not None:
            self._news(channel, run_id, "events")
        elif self.connected:
            payload = event_payload(run_id, event.t_s, event.kind, event.message, event.data)
            self._enqueue(_Message(self.topic(channel, "events"), payload))

    def publish_spectrum(self, channel: str, run_id: int, spectrum: SpectrumTaken) -> None:
        """Enqueue one impedance spectrum of run `run_id` (and where it was taken)."""
        if self._store is not None:
            self._news(channel, run_id, "eis")
        elif self.connected:
            z = spectrum.impedance_ohm
            payload = spectrum_payload(
                run_id,
                spectrum.sequence,
                spectrum.t_s,
                spectrum.step,
                spectrum.cycle,
                spectrum.frequency_Hz,
                z.real,
                z.imag,
            )
            self._enqueue(_Message(self.topic(channel, "eis"), payload))

    def handle_commands(self, handler: CommandHandler) -> None:
        """Answer commands on cyclerd/<lab>/<channel>/cmd with `handler` (from the next connection)."""
        self._on_command = handler

    def _news(self, channel: str, run_id: int, kind: Kind) -> None:
        if run_id not in self._marks:  # a run nobody announced: all of this kind it has stored
            self._marks.take_on(run_id, channel, {kind: NOTHING[kind]})
        if self.connected:  # else the catch-up after reconnecting finds it in the store
            self._enqueue(_News(run_id, kind))

    def _enqueue(self, item: _Batch | _Message | _State | _News) -> None:
        if self._queue.full():  # the newest is the most useful live; the store fills the gap
            self._queue.get_nowait()
            self._pending -= 1
            self.dropped += 1
        self._queue.put_nowait(item)
        self._pending += 1

    # -- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the broker has every sample produced so far, the latest states, and all
        the store holds of the runs taken on; False if it did not in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self._idle():
                behind = any(last > self.delivered(run) for run, last in self._produced.items())
                owed = self._marks.owed()
                if not behind and not owed:
                    return True
                for run in owed:  # stored beside the sinks (a gap, an instrument's note)
                    for kind in run.kinds:
                        self._enqueue(_News(run.run_id, kind))
            await asyncio.sleep(0.05)
        return False

    def _idle(self) -> bool:
        in_transit = self._sender is not None and self._sender.in_transit > 0
        return self.connected and self._caught_up and self._pending == 0 and not in_transit

    def delivered(self, run_id: int) -> int:
        """The last sequence number of `run_id` the broker acknowledged (-1: none)."""
        return self._marks.get("data", run_id)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Bus:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"bus {self.lab}")
            self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """The last line of defence: `_run` catches what fails inside it, yet if the task ends
        other than by `close`, that is an error in the log and the bus starts again."""
        if task.cancelled() or task is not self._task:
            return
        error = task.exception()
        log.error("the bus stopped unexpectedly (%r); starting it again", error, exc_info=error)
        self._task = None
        self.start()

    async def close(self) -> None:
        """Say "offline" (retained) and disconnect; the last will covers a crash."""
        client = self._client
        if client is not None:
            await self._broker.say(client, "offline")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._marks.save()
        await self._encoding.close()

    async def _run(self) -> None:
        """Connect and publish until cancelled (`close`), whatever fails meanwhile."""
        await self._encoding.start()
        await keep_connected(self._broker, self._serve, self._backoff_s, self._gone)

    def _gone(self) -> None:
        self._connected.clear()
        self._client = None
        self._marks.save()

    async def _serve(self, client: aiomqtt.Client) -> None:
        """One connection: catch up, then publish as things come; returns only by raising."""
        self._client = client
        await client.publish(self.status_topic, "online", qos=QOS, retain=True)
        self._caught_up = False
        self._handed = {}
        self._backlog.reset()
        self._connected.set()  # batches from now on queue up behind the catch-up
        sender = Sender(client, self._marks, self._send_lock, self._encoding.payload, self._in_flight)
        self._sender = sender
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch(client))
                tasks.create_task(self._drain(client, sender))
                tasks.create_task(sender.run())
                tasks.create_task(self._keep_marks())
        finally:
            sender.close()
            self._sender = None

    async def _keep_marks(self) -> None:
        while True:
            await asyncio.sleep(MARKS_EVERY_S)
            self._marks.save()

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Return only by raising: the message iterator raises when the connection is lost."""
        await client.subscribe(f"cyclerd/{self.lab}/+/cmd", qos=QOS)
        async for message in client.messages:
            task = asyncio.create_task(answer(client, message, self._on_command, self.lab))
            self._handlers.add(task)  # keep a reference until it is done
            task.add_done_callback(self._handlers.discard)
        raise aiomqtt.MqttError("disconnected from the broker")

    async def _catch_up(self, client: aiomqtt.Client, sender: Sender) -> None:
        """After (re)connecting: the retained states again, then whatever the store holds of the
        runs taken on that the broker has not acknowledged (an outage, or before a restart)."""
        for channel in list(self._states):  # channels keep arriving meanwhile: queued, sent after
            await self._send_state(channel, sender)
        for owed in self._marks.owed():
            for kind in owed.kinds:
                await self._send_news(client, sender, owed.run_id, kind)

    async def _drain(self, client: aiomqtt.Client, sender: Sender) -> None:
        """Hand each queued item to the sender in order, batches encoding meanwhile."""
        await self._catch_up(client, sender)
        self._caught_up = True
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, _Batch):
                    await self._hand_over(client, item, sender)
                elif isinstance(item, _State):
                    await self._send_state(item.channel, sender)
                elif isinstance(item, _News):
                    await self._send_news(client, sender, item.run_id, item.kind)
                else:
                    await sender.put(Outgoing(item.topic, ready(item.payload)))
            finally:
                self._pending -= 1

    async def _send_state(self, channel: str, sender: Sender) -> None:
        version, payload = self._states[channel]
        if self._state_sent.get(channel, 0) >= version and self._caught_up:
            return  # this version went already (a channel's states queue up faster than they go)
        self._state_sent[channel] = version
        await sender.put(Outgoing(self.topic(channel, "state"), ready(payload), retain=True))

    async def _send_news(self, client: aiomqtt.Client, sender: Sender, run_id: int, kind: Kind) -> None:
        if kind == "data":
            await sender.join()  # everything handed over is acknowledged: delivered == handed
            await self._replay(client, run_id, self._marks.channel(run_id), self.delivered(run_id))
        else:
            await self._backlog.send(sender, run_id, kind)

    async def _hand_over(self, client: aiomqtt.Client, batch: _Batch, sender: Sender) -> None:
        handed = self._handed.get(batch.run_id, self.delivered(batch.run_id))
        if batch.first > handed + 1 and self._store is not None:  # batches were dropped: the store has them
            await sender.join()  # everything handed over is acknowledged, so delivered == handed
            await self._replay(client, batch.run_id, batch.channel, self.delivered(batch.run_id))
            handed = self.delivered(batch.run_id)
        if batch.last <= handed:
            return
        columns = {name: np.asarray(batch.columns[name]) for name in DATA_COLUMNS}
        if batch.first <= handed:  # partly replayed already: only the rest
            keep = columns["seq"] > handed
            columns = {name: values[keep] for name, values in columns.items()}
        self._handed[batch.run_id] = batch.last
        topic, first = self.topic(batch.channel, "data"), int(columns["seq"][0])
        encoded = self._encoding.encode(batch.run_id, columns)
        await sender.put(Outgoing(topic, encoded, False, batch.run_id, first, batch.last, columns))

    # -- replay --------------------------------------------------------------------------

    async def replay(self, store: Store, run_id: int, channel: str, after_seq: int) -> int:
        """Republish the stored samples of `run_id` with seq > `after_seq`; returns how many."""
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("the bus is not connected to the broker")
        return await self._replay(client, run_id, channel, after_seq, store)

    async def _replay(
        self, client: aiomqtt.Client, run_id: int, channel: str, after: int, store: Store | None = None
    ) -> int:
        async with self._send_lock:
            if self._sender is not None:
                await self._sender.settled()  # what is in flight counts before `after` is read
            return await self._backlog.samples(client, run_id, channel, after, self._in_flight, store)
