"""Who is alive to act on a store's runs: the daemon, and each `cyclerd run` in a terminal, write
a heartbeat row every few seconds. `cyclerd status` and `stop` read it to tell a run that is being
served from one whose process is gone, and since when, instead of trusting the run's last state.

The table is created by the first beat, so a store no daemon of this version has served simply
has no heartbeat (read as "never served").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sqlite3
import time
from dataclasses import dataclass

from cyclerd.store.database import Store, StoreInUse

log = logging.getLogger(__name__)

DAEMON = "daemon"  # one daemon per store; a run in a terminal beats as "run N"
BEAT_S = 2.0
STALE_S = 10.0  # five beats missed: the process is gone (or frozen, which is no better for a run)

TABLE = """
CREATE TABLE IF NOT EXISTS heartbeats (  -- one row per process that serves runs from this store
    holder TEXT PRIMARY KEY,         -- 'daemon', or 'run N' for `cyclerd run` in a terminal
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    started_unix REAL NOT NULL,
    beat_unix REAL NOT NULL,         -- the last sign of life
    stopped_unix REAL                -- a clean exit; NULL while it runs, and after a crash
)"""


@dataclass(frozen=True)
class Heartbeat:
    holder: str
    pid: int
    host: str
    started_unix: float
    beat_unix: float
    stopped_unix: float | None

    def alive(self, now: float | None = None) -> bool:
        """A recent beat and no clean exit; on this PC, also a process still there (a crash is
        seen at once rather than after STALE_S)."""
        now = time.time() if now is None else now
        if self.stopped_unix is not None or now - self.beat_unix >= STALE_S:
            return False
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)  # signal 0: only asks whether the process exists
            except ProcessLookupError:
                return False
            except PermissionError:  # another user's process (the service's): it exists
                pass
        return True

    @property
    def gone_since(self) -> float:
        """When it stopped, or (after a crash) when it was last seen alive."""
        return self.beat_unix if self.stopped_unix is None else self.stopped_unix


def run_holder(run_id: int) -> str:
    return f"run {run_id}"


def beat(store: Store, started_unix: float, holder: str = DAEMON) -> None:
    """Record that `holder`, this process, started at `started_unix`, is alive now."""
    with store.transaction() as db:
        db.execute(TABLE)
        db.execute(
            "INSERT OR REPLACE INTO heartbeats (holder, pid, host, started_unix, beat_unix)"
            " VALUES (?, ?, ?, ?, ?)",
            (holder, os.getpid(), socket.gethostname(), started_unix, time.time()),
        )


def stopped(store: Store, holder: str = DAEMON) -> None:
    """Record a clean exit of `holder`."""
    with store.transaction() as db:
        db.execute(TABLE)
        db.execute("UPDATE heartbeats SET stopped_unix = ? WHERE holder = ?", (time.time(), holder))


def last(store: Store, holder: str = DAEMON) -> Heartbeat | None:
    """The last heartbeat of `holder`, or None if it never beat in this store."""
    if not store.read("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'heartbeats'"):
        return None
    rows = store.read(
        "SELECT holder, pid, host, started_unix, beat_unix, stopped_unix FROM heartbeats WHERE holder = ?",
        (holder,),
    )
    return None if not rows else Heartbeat(**rows[0])


async def keep_beating(store: Store, holder: str = DAEMON, interval_s: float = BEAT_S) -> None:
    """Beat every `interval_s` until cancelled, then record the clean exit.

    A beat that cannot be written (the file is busy) is logged and tried again: a missed beat
    must never take the daemon's channels down with it.
    """
    started = time.time()
    failing = ""  # said once while the same failure lasts (a full disk may last hours)
    try:
        while True:
            try:
                beat(store, started, holder)
            except (sqlite3.Error, StoreInUse) as exc:
                if str(exc) != failing:
                    log.warning("heartbeat not written (%s); trying again every %g s", exc, interval_s)
                failing = str(exc)
            else:
                failing = ""
            await asyncio.sleep(interval_s)
    finally:
        with contextlib.suppress(sqlite3.Error, StoreInUse):
            stopped(store, holder)
