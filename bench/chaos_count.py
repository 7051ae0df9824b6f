"""What the chaos run (bench/chaos.py) counts: every data message of the lab by seq, as a subscriber
connected throughout saw it, against the seqs the store kept, run by run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import numpy as np
from chaos_lab import LAB
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' broker
from mosquitto import USERS, Mosquitto

from cyclerd.store.database import Store

# -- the subscriber ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the subscriber saw: per run, (first seq, samples) of each data message."""

    received: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    messages: int = 0
    statuses: list[str] = field(default_factory=list)  # daemon/status, each time it came
    last_s: float = field(default_factory=time.monotonic)  # when the last message came

    def take(self, message: aiomqtt.Message) -> None:
        self.messages += 1
        self.last_s = time.monotonic()
        topic = str(message.topic)
        if topic.endswith("/data"):
            body = json.loads(bytes(message.payload))
            self.received.setdefault(int(body["run"]), []).append((int(body["seq"]), len(body["t"])))
        elif topic.endswith("/daemon/status"):
            self.statuses.append(bytes(message.payload).decode(errors="replace"))


async def subscribe(broker: Mosquitto, tally: Tally, subscribed: asyncio.Event) -> None:
    """Count every message of the lab, in a persistent session (should the connection break, the
    broker keeps what comes meanwhile). A message is counted as paho hands it over, not queued:
    aiomqtt's iterator drops its queue when the connection breaks."""

    class Counting(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            tally.take(item)

    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    first = True
    while True:
        viewer = aiomqtt.Client(
            broker.host,
            broker.port,
            username="viewer",
            password=USERS["viewer"],
            identifier="chaos-viewer",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=first,
            properties=properties,
            queue_type=Counting,
        )
        try:
            async with viewer:
                first = False
                await viewer.subscribe(f"cyclerd/{LAB}/#", qos=1)
                subscribed.set()
                async for _ in viewer.messages:  # returns only by raising, on disconnection
                    pass
        except aiomqtt.MqttError:
            await asyncio.sleep(0.1)


async def drained(tally: Tally, quiet_s: float) -> None:
    """Until the broker has sent nothing for `quiet_s`."""
    while time.monotonic() - tally.last_s < quiet_s:
        await asyncio.sleep(0.1)


# -- the figures ---------------------------------------------------------------------------------


@dataclass
class RunFigures:
    run: int
    channel: str
    state: str
    gaps: int
    stored: int
    lost: int
    dup: int
    unpublished: int
    unstored: int
    resent: int
    where: str = ""  # the seqs behind a figure that should be 0; how a run ended other than completed


def multiplicity(ranges: list[tuple[int, int]], size: int) -> np.ndarray:
    """How often each seq 0 .. size-1 is covered by the (first, last) ranges."""
    steps = np.zeros(size + 1, dtype=np.int64)
    if ranges:
        bounds = np.array(ranges, dtype=np.int64)
        np.add.at(steps, bounds[:, 0], 1)
        np.add.at(steps, bounds[:, 1] + 1, -1)
    return np.cumsum(steps)[:size]


def spans(mask: np.ndarray, limit: int = 4) -> str:
    """The first `limit` stretches of True in `mask`, as seq ranges."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    pairs = list(zip(edges[::2], edges[1::2] - 1, strict=True))
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in pairs[:limit])
    return text + (f" (+{len(pairs) - limit} more)" if len(pairs) > limit else "")


def audit(database: Path, tally: Tally) -> list[RunFigures]:
    """Per run: the stored seqs against themselves and against what the subscriber saw."""
    with Store(database) as store:
        runs = store.runs()
        blocks = store.read("SELECT run_id, first_seq, last_seq FROM sample_blocks")
        events = store.events()
    figures = []
    for run in runs:
        kept = [(int(b["first_seq"]), int(b["last_seq"])) for b in blocks if b["run_id"] == run.id]
        seen = [(first, first + n - 1) for first, n in tally.received.get(run.id, []) if n > 0]
        size = 1 + max((last for _, last in kept + seen), default=-1)
        stored, published = multiplicity(kept, size), multiplicity(seen, size)
        top = 1 + max((last for _, last in kept), default=-1)  # holes: below the highest stored seq
        masks = {
            "lost": (np.arange(size) < top) & (stored == 0),
            "unpublished": (stored > 0) & (published == 0),
            "unstored": (published > 0) & (stored == 0),
        }
        where = [f"{name} {spans(mask)}" for name, mask in masks.items() if mask.any()]
        if (stored > 1).any():
            where.append(f"dup {spans(stored > 1)}")
        told = [
            e["message"] for e in events if e["run_id"] == run.id and e["kind"] in ("gap", "fault", "state")
        ]
        if run.state != "completed" and told:
            where.append(f"{run.state}: {told[-1]}")
        figures.append(
            RunFigures(
                run=run.id,
                channel=run.channel,
                state=run.state,
                gaps=sum(e["run_id"] == run.id and e["kind"] == "gap" for e in events),
                stored=int((stored > 0).sum()),
                lost=int(masks["lost"].sum()),
                dup=int((stored - 1).clip(0).sum()),
                unpublished=int(masks["unpublished"].sum()),
                unstored=int(masks["unstored"].sum()),
                resent=int((published - 1).clip(0).sum()),
                where="; ".join(where),
            )
        )
    return figures


def integrity(database: Path) -> str:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return "; ".join(str(row[0]) for row in db.execute("PRAGMA integrity_check"))
