"""What the MQTT broker has acknowledged of each run, kept in the store (table `bus_marks`), so
that the bus of a restarted daemon sends what its predecessor had stored but not got across.

Per run, three marks: the last sample `seq`, the last event id and the last spectrum sequence
the broker acknowledged. They move in memory with each acknowledgement and reach the file in
one small transaction every fraction of a second (`save`): a kill -9 loses at most that
fraction, which the next start sends again (QoS 1 is at least once; viewers drop a `seq` they
have). A run has marks only once the bus takes it on, so runs it never showed (imported, or
recorded while no broker was configured) are never poured onto the bus later.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from cyclerd.store.database import Store

log = logging.getLogger(__name__)

Kind = Literal["data", "events", "eis"]  # the topic each mark is about
KINDS: tuple[Kind, ...] = ("data", "events", "eis")
NOTHING: dict[Kind, int] = {"data": -1, "events": 0, "eis": 0}  # no sample / event / spectrum yet

_HEADS = (
    "(SELECT MAX(last_seq) FROM sample_blocks WHERE run_id = {run})",
    "(SELECT MAX(id) FROM events WHERE run_id = {run})",
    "(SELECT MAX(sequence) FROM spectra WHERE run_id = {run})",
)


@dataclass(frozen=True)
class Owed:
    """A run whose store holds more than the broker acknowledged: which kinds, on which channel."""

    run_id: int
    channel: str
    kinds: tuple[Kind, ...]


class Marks:
    """The marks of every run the bus took on; without a store they live in memory only."""

    def __init__(self, store: Store | None) -> None:
        self._store = store
        self._marks: dict[Kind, dict[int, int]] = {kind: {} for kind in KINDS}
        self._channels: dict[int, str] = {}
        self._unsaved: set[int] = set()
        if store is not None:
            rows = store.read(
                "SELECT m.run_id, r.channel, m.data, m.events, m.eis FROM bus_marks m"
                " JOIN runs r ON r.id = m.run_id"
            )
            for row in rows:
                self._channels[row["run_id"]] = row["channel"]
                for kind in KINDS:
                    self._marks[kind][row["run_id"]] = row[kind]

    def __contains__(self, run_id: int) -> bool:
        return run_id in self._channels

    def get(self, kind: Kind, run_id: int) -> int:
        """The last `kind` of `run_id` the broker acknowledged (NOTHING[kind]: none)."""
        return self._marks[kind].get(run_id, NOTHING[kind])

    def channel(self, run_id: int) -> str:
        return self._channels[run_id]

    def take_on(self, run_id: int, channel: str, start: Mapping[Kind, int] | None = None) -> None:
        """Keep marks of `run_id` from now on, starting at what the store holds of it already (a
        run the bus did not show before is not poured onto it), or where `start` says.
        Its row is written at once: a run killed in its first second is still replayed."""
        if run_id in self._channels:
            return
        self._channels[run_id] = channel
        heads = self._heads(run_id) | dict(start or {})
        for kind in KINDS:
            self._marks[kind][run_id] = heads[kind]
        self._unsaved.add(run_id)
        self.save()

    def advance(self, kind: Kind, run_id: int, last: int) -> None:
        """The broker acknowledged `run_id`'s `kind` up to `last` (and everything before it)."""
        marks = self._marks[kind]
        if last > marks.get(run_id, NOTHING[kind]):
            marks[run_id] = last
            self._unsaved.add(run_id)

    def save(self) -> None:
        """Write the marks that moved since the last save; a busy or failing file is tried again
        at the next save (the marks only fall behind, so the next start sends a little twice)."""
        if self._store is None or not self._unsaved:
            return
        rows = [
            (run_id, *(self._marks[kind][run_id] for kind in KINDS))
            for run_id in self._unsaved
            if run_id in self._channels
        ]
        try:
            with self._store.transaction() as db:
                db.executemany(
                    "INSERT INTO bus_marks (run_id, data, events, eis) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (run_id) DO UPDATE SET data = MAX(data, excluded.data),"
                    " events = MAX(events, excluded.events), eis = MAX(eis, excluded.eis)",
                    rows,
                )
        except sqlite3.Error as error:
            log.warning("bus: could not keep what the broker acknowledged in the store: %s", error)
            return
        self._unsaved.clear()

    def owed(self) -> list[Owed]:
        """The runs taken on whose store holds more than the broker acknowledged, oldest first."""
        if self._store is None:
            return []
        heads = ", ".join(head.format(run="m.run_id") for head in _HEADS)
        rows = self._store.read(f"SELECT m.run_id, {heads} FROM bus_marks m ORDER BY m.run_id")
        owed = []
        for row in rows:
            run_id, *stored = row.values()
            kinds = tuple(
                kind
                for kind, head in zip(KINDS, stored, strict=True)
                if head is not None and head > self.get(kind, run_id)
            )
            if kinds and run_id in self._channels:
                owed.append(Owed(run_id, self._channels[run_id], kinds))
        return owed

    def _heads(self, run_id: int) -> dict[Kind, int]:
        if self._store is None:
            return dict(NOTHING)
        heads = ", ".join(head.format(run="?") for head in _HEADS)
        row = self._store.read(f"SELECT {heads}", (run_id,) * len(_HEADS))[0]
        return {
            kind: NOTHING[kind] if head is None else int(head)
            for kind, head in zip(KINDS, row.values(), strict=True)
        }


def events_after(store: Store, run_id: int, after: int, limit: int) -> list[dict[str, Any]]:
    """The stored events of `run_id` with id > `after`, oldest first, at most `limit`."""
    rows = store.read(
        "SELECT id, t, kind, message, data FROM events WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
        (run_id, after, limit),
    )
    for row in rows:
        row["data"] = json.loads(row["data"])
    return rows


def spectra_after(store: Store, run_id: int, after: int, limit: int) -> list[dict[str, Any]]:
    """The stored spectra of `run_id` with sequence > `after`, in order, at most `limit`; each
    with its sequence, t, step, cycle and the frequency, z_real and z_imag lists."""
    rows = store.read(
        "SELECT sequence, t, step, cycle, frequency, z_real, z_imag FROM spectra"
        " WHERE run_id = ? AND sequence IN"
        " (SELECT DISTINCT sequence FROM spectra WHERE run_id = ? AND sequence > ? ORDER BY sequence LIMIT ?)"
        " ORDER BY sequence, point",
        (run_id, run_id, after, limit),
    )
    spectra: list[dict[str, Any]] = []
    for row in rows:
        if not spectra or spectra[-1]["sequence"] != row["sequence"]:
            where = {name: row[name] for name in ("sequence", "t", "step", "cycle")}
            spectra.append({**where, "frequency": [], "z_real": [], "z_imag": []})
        for name in ("frequency", "z_real", "z_imag"):
            spectra[-1][name].append(row[name])
    return spectra
