"""The bus: a live view of one lab's runs over MQTT 5 (state, data, events, daemon status).

Publishing never blocks acquisition: the runner only enqueues and a background task sends.
Turning samples into JSON is a large part of what the daemon does with them, so it runs in
an encoder process (cyclerd.bus.encoder) on the lab PC's other core, ahead of the
sender (cyclerd.bus.sender), which keeps many messages awaiting their acknowledgement at once.
The store is the source of truth, so whatever the bus misses while the broker is away is
replayed from the store afterwards, by sequence number, without gaps: from the first sample
the broker had not acknowledged. A message the broker took as it stopped, whose PUBACK never
came, is therefore sent again (QoS 1 is at least once); its samples keep their seq, so
viewers drop what they already have.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiomqtt
import numpy as np

from cyclerd.bus.encoder import Encoder, EncoderGone
from cyclerd.bus.payloads import DATA_COLUMNS, FLOAT_COLUMNS, INT_COLUMNS, data_payload
from cyclerd.bus.replies import CommandHandler, answer
from cyclerd.bus.sender import QOS, Outgoing, Sender
from cyclerd.store.database import Store

__all__ = ["FLOAT_COLUMNS", "INT_COLUMNS", "QOS", "Bus", "CommandHandler", "data_payload"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Batch:
    channel: str
    run_id: int
    columns: Mapping[str, Any]
    first: int
    last: int


@dataclass(frozen=True)
class _Message:
    topic: str
    payload: str
    retain: bool


class Bus:
    """Publishes one lab's channels to `cyclerd/<lab>/...`; use as `async with Bus(...) as bus:`.

    Per run the bus remembers the last sequence number the broker acknowledged (`delivered`).
    A batch reaching the sender after a gap (the broker was away, the queue overflowed) first
    makes the bus replay the store from `delivered`; batches at or below it are skipped.
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
        self._password = password
        self._tls_context = tls_context
        self._store = store
        self._queue: asyncio.Queue[_Batch | _Message] = asyncio.Queue(maxsize=queue_size)
        self._replay_batch = replay_batch
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._delivered: dict[int, int] = {}
        self._produced: dict[int, int] = {}
        self._channels: dict[int, str] = {}
        self._states: dict[str, str] = {}
        self._send_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_command = on_command
        self._handlers: set[asyncio.Task[None]] = set()
        self._encoder = Encoder() if encoder else None  # None: encode in the daemon's process
        self._in_flight = in_flight
        self._handed: dict[int, int] = {}  # per run: last seq handed to the sender this connection
        self._sender: Sender | None = None
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

    def publish_batch(self, channel: str, run_id: int, columns: Mapping[str, Any]) -> None:
        """Enqueue one stored batch (the Runner's `on_batch` columns); drops when it must."""
        seq = columns["seq"]
        if len(seq) == 0:
            return
        first, last = int(seq[0]), int(seq[-1])
        self._channels[run_id] = channel
        self._delivered.setdefault(run_id, first - 1)  # the run's first batch sets the baseline
        self._produced[run_id] = max(self._produced.get(run_id, last), last)
        if self.connected:
            self._enqueue(_Batch(channel, run_id, columns, first, last))
        else:
            self.dropped += 1  # the store has it; replayed after reconnecting

    def publish_state(self, channel: str, state: Mapping[str, Any]) -> None:
        """Enqueue the channel's state (retained; republished after each reconnect)."""
        payload = json.dumps(state, sort_keys=True)
        self._states[channel] = payload
        if self.connected:
            self._enqueue(_Message(self.topic(channel, "state"), payload, retain=True))

    def publish_event(self, channel: str, event: Mapping[str, Any]) -> None:
        """Enqueue an event (not retained; the store keeps the events, the bus only shows them)."""
        if self.connected:
            self._enqueue(_Message(self.topic(channel, "events"), json.dumps(event, sort_keys=True), False))

    def publish_spectrum(self, channel: str, spectrum: Mapping[str, Any]) -> None:
        """Enqueue one impedance spectrum (frequency, z_real, z_imag and where it was taken)."""
        if self.connected:
            self._enqueue(_Message(self.topic(channel, "eis"), json.dumps(spectrum), False))

    def handle_commands(self, handler: CommandHandler) -> None:
        """Answer commands on cyclerd/<lab>/<channel>/cmd with `handler` (from the next connection)."""
        self._on_command = handler

    def _enqueue(self, item: _Batch | _Message) -> None:
        if self._queue.full():  # the newest is the most useful live; the store fills the gap
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    # -- state ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until the broker has every sample produced so far; False if it did not in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            behind = any(last > self.delivered(run) for run, last in self._produced.items())
            in_transit = self._sender is not None and self._sender.in_transit > 0
            if self.connected and self._queue.empty() and not in_transit and not behind:
                return True
            await asyncio.sleep(0.05)
        return False

    def delivered(self, run_id: int) -> int:
        """The last sequence number of `run_id` the broker acknowledged (-1: none)."""
        return self._delivered.get(run_id, -1)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Bus:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"bus {self.lab}")

    async def close(self) -> None:
        """Say "offline" (retained) and disconnect; the last will covers a crash."""
        client = self._client
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(self._timeout_s):
                    await client.publish(self.status_topic, "offline", qos=QOS, retain=True)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._encoder is not None:
            await self._encoder.close()

    def _new_client(self) -> aiomqtt.Client:
        # A fresh client per connection: no half-sent QoS 1 message from the previous session
        # is resent behind the replay's back (that would be a duplicate).
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self._password,
            identifier=f"cyclerd-{self.lab}-daemon",
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.status_topic, "offline", qos=QOS, retain=True),
            clean_start=True,
            tls_context=self._tls_context,
            timeout=self._timeout_s,
            max_inflight_messages=self._in_flight,
        )
        # Many publishes awaiting their PUBACK is the sender's design, not a sign of trouble
        # (aiomqtt warns from 10 on).
        client.pending_calls_threshold = self._in_flight + 16
        return client

    async def _run(self) -> None:
        if self._encoder is not None:
            try:
                await self._encoder.start()
            except EncoderGone as error:
                self._lose_encoder(error)
        delay = self._backoff_s[0]
        while True:
            try:
                async with self._new_client() as client:
                    self._client = client
                    delay = self._backoff_s[0]
                    log.info("bus connected to %s:%d as %s", self.host, self.port, self.username)
                    await client.publish(self.status_topic, "online", qos=QOS, retain=True)
                    self._connected.set()  # batches from now on queue up behind the catch-up
                    self._handed = {}
                    sender = Sender(client, self._delivered, self._send_lock, self._payload, self._in_flight)
                    self._sender = sender
                    try:
                        async with asyncio.TaskGroup() as tasks:
                            tasks.create_task(self._watch(client))
                            tasks.create_task(self._drain(client, sender))
                            tasks.create_task(sender.run())
                    finally:
                        sender.close()
                        self._sender = None
            except* (aiomqtt.MqttError, OSError) as group:
                log.warning(
                    "bus: broker %s:%d unavailable (%s); retrying in %.1f s",
                    self.host,
                    self.port,
                    group.exceptions[0],
                    delay,
                )
            finally:
                self._connected.clear()
                self._client = None
            await asyncio.sleep(delay)
            delay = min(2 * delay, self._backoff_s[1])

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Return only by raising: the message iterator raises when the connection is lost."""
        await client.subscribe(f"cyclerd/{self.lab}/+/cmd", qos=QOS)
        async for message in client.messages:
            task = asyncio.create_task(answer(client, message, self._on_command))
            self._handlers.add(task)  # keep a reference until it is done
            task.add_done_callback(self._handlers.discard)
        raise aiomqtt.MqttError("disconnected from the broker")

    async def _catch_up(self, client: aiomqtt.Client) -> None:
        """After (re)connecting: retained states again, and every run's stored samples not yet sent."""
        for channel, payload in self._states.items():
            await client.publish(self.topic(channel, "state"), payload, qos=QOS, retain=True)
        if self._store is None:
            return
        for run_id, produced in list(self._produced.items()):
            if produced > self.delivered(run_id):
                await self._replay(
                    client, self._store, run_id, self._channels[run_id], self.delivered(run_id)
                )

    async def _drain(self, client: aiomqtt.Client, sender: Sender) -> None:
        """Hand each queued item to the sender in order, batches encoding meanwhile."""
        await self._catch_up(client)
        while True:
            item = await self._queue.get()
            if isinstance(item, _Message):
                await sender.put(Outgoing(item.topic, _ready(item.payload), item.retain))
            else:
                await self._hand_over(client, item, sender)

    async def _hand_over(self, client: aiomqtt.Client, batch: _Batch, sender: Sender) -> None:
        handed = self._handed.get(batch.run_id, self.delivered(batch.run_id))
        if batch.first > handed + 1 and self._store is not None:  # batches were dropped: the store has them
            await sender.join()  # everything handed over is acknowledged, so delivered == handed
            delivered = self.delivered(batch.run_id)
            await self._replay(client, self._store, batch.run_id, batch.channel, delivered)
            handed = self.delivered(batch.run_id)
        if batch.last <= handed:
            return
        columns = {name: np.asarray(batch.columns[name]) for name in DATA_COLUMNS}
        if batch.first <= handed:  # partly replayed already: only the rest
            keep = columns["seq"] > handed
            columns = {name: values[keep] for name, values in columns.items()}
        self._handed[batch.run_id] = batch.last
        topic, first = self.topic(batch.channel, "data"), int(columns["seq"][0])
        encoded = self._encode(batch.run_id, columns)
        await sender.put(Outgoing(topic, encoded, False, batch.run_id, first, batch.last, columns))

    def _encode(self, run_id: int, columns: Mapping[str, Any]) -> asyncio.Future[str | bytes]:
        if self._encoder is not None:
            try:
                return asyncio.ensure_future(self._encoder.encode(run_id, columns))
            except EncoderGone as error:
                self._lose_encoder(error)
        return _ready(data_payload(run_id, columns))

    async def _payload(self, out: Outgoing) -> str | bytes:
        try:
            return await out.payload
        except EncoderGone as error:  # the encoder died: this daemon encodes from now on
            self._lose_encoder(error)
            assert out.run_id is not None
            assert out.columns is not None
            return data_payload(out.run_id, out.columns)

    def _lose_encoder(self, error: BaseException) -> None:
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            log.warning("bus: %s; encoding in the daemon from now on", error)
            reaping = asyncio.get_running_loop().create_task(encoder.close())  # its pipes and process
            self._handlers.add(reaping)
            reaping.add_done_callback(self._handlers.discard)

    async def _publish_slice(self, client: aiomqtt.Client, out: Outgoing) -> int:
        """Send one replayed slice; returns how many samples it held."""
        assert out.run_id is not None
        assert out.columns is not None
        await client.publish(out.topic, await self._payload(out), qos=QOS)
        self._delivered[out.run_id] = max(self.delivered(out.run_id), out.last)
        return len(out.columns["seq"])

    # -- replay --------------------------------------------------------------------------

    async def replay(self, store: Store, run_id: int, channel: str, after_seq: int) -> int:
        """Republish the stored samples of `run_id` with seq > `after_seq`; returns how many."""
        client = self._client
        if client is None:
            raise aiomqtt.MqttError("the bus is not connected to the broker")
        return await self._replay(client, store, run_id, channel, after_seq)

    async def _replay(
        self, client: aiomqtt.Client, store: Store, run_id: int, channel: str, after: int
    ) -> int:
        async with self._send_lock:
            if self._sender is not None:
                await self._sender.settled()  # what is in flight counts before `after` is read
            return await self._replay_locked(client, store, run_id, channel, after)

    async def _replay_locked(
        self, client: aiomqtt.Client, store: Store, run_id: int, channel: str, after: int
    ) -> int:
        sent, last = 0, after
        ahead: collections.deque[Outgoing] = collections.deque()  # slices encoding meanwhile
        while True:  # a slice at a time: a long run is never loaded whole
            samples = store.samples(run_id, after_seq=last, limit=self._replay_batch)
            seq = samples["seq"].astype(np.int64)
            if len(seq) == 0:
                break
            columns = {"seq": seq, **{name: samples[name] for name in DATA_COLUMNS[1:]}}
            topic, first, last = self.topic(channel, "data"), int(seq[0]), int(seq[-1])
            ahead.append(Outgoing(topic, self._encode(run_id, columns), False, run_id, first, last, columns))
            if len(ahead) >= self._in_flight:
                sent += await self._publish_slice(client, ahead.popleft())
        while ahead:
            sent += await self._publish_slice(client, ahead.popleft())
        if sent:
            log.info("bus replayed %d samples of run %d after seq %d", sent, run_id, after)
        return sent


def _ready(payload: str | bytes) -> asyncio.Future[str | bytes]:
    future: asyncio.Future[str | bytes] = asyncio.get_running_loop().create_future()
    future.set_result(payload)
    return future
