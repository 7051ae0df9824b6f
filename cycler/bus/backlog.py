"""What the broker missed, sent from the store: a run's samples after its `delivered` mark, and
its events and spectra after theirs (cyclerd.store.marks).

Samples are replayed a slice at a time (a long run is never loaded whole), each slice encoding
while the ones before it are published, around the sender and under its lock, so that the
`delivered` mark never passes a sample the broker has not acknowledged. Events and spectra are
few and go through the sender like live messages; the marks move as the broker acknowledges
them, in order.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

import aiomqtt
import numpy as np

from cyclerd.bus.encoding import Encoding
from cyclerd.bus.payloads import DATA_COLUMNS, event_payload, spectrum_payload
from cyclerd.bus.sender import QOS, Outgoing, Sender, ready
from cyclerd.store.database import Store
from cyclerd.store.marks import Kind, Marks, events_after, spectra_after

log = logging.getLogger(__name__)

NEWS_BATCH = 100  # events or spectra read from the store at a time
SPECTRUM_FIELDS = ("sequence", "t", "step", "cycle", "frequency", "z_real", "z_imag")

Topic = Callable[[str, str], str]  # (channel, kind) -> topic


class Backlog:
    """Reads what the broker has not acknowledged from the store and sends it."""

    def __init__(
        self, store: Store | None, marks: Marks, topic: Topic, encoding: Encoding, batch: int
    ) -> None:
        self._store = store
        self._marks = marks
        self._topic = topic
        self._encoding = encoding
        self._batch = batch
        self._handed: dict[tuple[Kind, int], int] = {}  # events and spectra given to this connection

    def reset(self) -> None:
        """A new connection: nothing is handed to it yet."""
        self._handed.clear()

    async def send(self, sender: Sender, run_id: int, kind: Kind) -> int:
        """Hand the sender the run's stored events or spectra (`kind`) that it was not given yet
        on this connection, beyond what the broker acknowledged; returns how many."""
        if self._store is None:
            return 0
        topic = self._topic(self._marks.channel(run_id), kind)
        after = self._handed.get((kind, run_id), self._marks.get(kind, run_id))
        sent = 0
        while news := self._read(self._store, run_id, kind, after):
            for key, payload in news:
                self._handed[(kind, run_id)] = after = key
                await sender.put(Outgoing(topic, ready(payload), False, run_id, key, key, None, kind))
            sent += len(news)
        return sent

    @staticmethod
    def _read(store: Store, run_id: int, kind: Kind, after: int) -> list[tuple[int, str]]:
        if kind == "events":
            return [
                (row["id"], event_payload(run_id, row["t"], row["kind"], row["message"], row["data"]))
                for row in events_after(store, run_id, after, NEWS_BATCH)
            ]
        return [
            (s["sequence"], spectrum_payload(run_id, *(s[k] for k in SPECTRUM_FIELDS)))
            for s in spectra_after(store, run_id, after, NEWS_BATCH)
        ]

    async def samples(
        self,
        client: aiomqtt.Client,
        run_id: int,
        channel: str,
        after: int,
        ahead_max: int,
        store: Store | None = None,
    ) -> int:
        """Publish the stored samples of `run_id` with seq > `after` (call with the sender's lock
        held and its publishes settled); returns how many."""
        store = store or self._store
        assert store is not None
        sent, last = 0, after
        ahead: collections.deque[Outgoing] = collections.deque()  # slices encoding meanwhile
        while True:  # a slice at a time: a long run is never loaded whole
            samples = store.samples(run_id, after_seq=last, limit=self._batch)
            seq = samples["seq"].astype(np.int64)
            if len(seq) == 0:
                break
            columns = {"seq": seq, **{name: samples[name] for name in DATA_COLUMNS[1:]}}
            topic, first, last = self._topic(channel, "data"), int(seq[0]), int(seq[-1])
            ahead.append(
                Outgoing(topic, self._encoding.encode(run_id, columns), False, run_id, first, last, columns)
            )
            if len(ahead) >= ahead_max:
                sent += await self._publish_slice(client, ahead.popleft())
        while ahead:
            sent += await self._publish_slice(client, ahead.popleft())
        if sent:
            log.info("bus replayed %d samples of run %d after seq %d", sent, run_id, after)
        return sent

    async def _publish_slice(self, client: aiomqtt.Client, out: Outgoing) -> int:
        assert out.run_id is not None
        assert out.columns is not None
        await client.publish(out.topic, await self._encoding.payload(out), qos=QOS)
        self._marks.advance("data", out.run_id, out.last)
        return len(out.columns["seq"])
