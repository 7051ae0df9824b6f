"""When the store cannot be written — a full disk, a read-only file or file system, an I/O
error, a lock another program holds — a run must not go on: the store is its only record.

The first write that fails stops the run with its cell made safe, and silences its sinks: no view
shows what the store does not hold, and the run's end ("failed") is not written either, so the
run stays as the store last had it, resumable from its last checkpoint. The daemon says what is
wrong and takes the run up again once the store can be written (cyclerd.daemon.service).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path

from cyclerd.engine.cursor import Cursor
from cyclerd.engine.sinks import Columns, RunEvent, Sink, SpectrumTaken, StepEnded, StepStarted
from cyclerd.engine.states import RunState

# Below this much free space a full store is not tried again: a write that fits in what the WAL
# freed would succeed and the next batch fail, switching the cell on and off for nothing.
MIN_FREE_BYTES = 16 * 2**20

# SQLite's primary result codes that say the file cannot be written now, rather than a bug.
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _FULL, _CANTOPEN = 3, 5, 6, 8, 10, 13, 14


class StoreUnwritable(Exception):
    """The store cannot be written now; the message says why and what to do. `full`: for want
    of disk space (so free space is what to wait for)."""

    def __init__(self, why: str, full: bool = False) -> None:
        super().__init__(why)
        self.why = why
        self.full = full


def as_unwritable(exc: BaseException, path: Path) -> StoreUnwritable | None:
    """`exc` as a StoreUnwritable when it says the store at `path` cannot be written; else None."""
    if isinstance(exc, StoreUnwritable):
        return exc
    if not isinstance(exc, sqlite3.Error):
        return None
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code not in (_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _FULL, _CANTOPEN):
        return None
    free = free_bytes(path)
    # SQLite says a full disk as such only when a write fails; a file it could not create (the
    # -shm and -wal it reads through) comes as an I/O error or as a file it cannot open.
    if code == _FULL or (code in (_IOERR, _CANTOPEN) and free is not None and free < MIN_FREE_BYTES):
        room = "" if free is None else f" ({free / 2**20:.1f} MB free)"
        return StoreUnwritable(f"the disk holding {path} is full{room}: free some space", full=True)
    if code in (_READONLY, _PERM):
        return StoreUnwritable(
            f"{path} cannot be written ({exc}): let user {_user()} write it and its folder,"
            " and check that its file system is mounted read-write"
        )
    if code == _IOERR:
        return StoreUnwritable(f"an I/O error on {path} ({exc}): check the disk (dmesg, smartctl)")
    if code == _CANTOPEN:
        return StoreUnwritable(f"{path} cannot be opened ({exc}): check its folder and rights")
    return StoreUnwritable(f"another program holds {path} locked ({exc}): close it")


def free_bytes(path: Path) -> int | None:
    """Free space for an unprivileged user on the file system holding `path` (None: unknown)."""
    try:
        found = os.statvfs(path if path.is_dir() else path.parent)
    except OSError:
        return None
    return found.f_bavail * found.f_frsize


def _user() -> str:
    with contextlib.suppress(KeyError):
        return pwd.getpwuid(os.geteuid()).pw_name
    return str(os.geteuid())


class RecordGuard(Sink):
    """A run's sinks (the store first) behind one guard: the first result the store cannot take
    raises StoreUnwritable into the run, which makes its cell safe and ends; whatever the run
    reports after that reaches no sink."""

    def __init__(self, sinks: Sink, path: Path) -> None:
        self.sinks = sinks
        self.path = path
        self.lost: StoreUnwritable | None = None

    def _pass(self, deliver: Callable[[], None]) -> None:
        if self.lost is not None:
            return
        try:
            deliver()
        except Exception as exc:
            lost = as_unwritable(exc, self.path)
            if lost is None:
                raise
            self.lost = lost
            raise lost from exc

    def step_started(self, step: StepStarted, cursor: Cursor | None) -> None:
        self._pass(lambda: self.sinks.step_started(step, cursor))

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        self._pass(lambda: self.sinks.batch(columns, cursor, final))

    def step_ended(self, step: StepEnded, cursor: Cursor | None) -> None:
        self._pass(lambda: self.sinks.step_ended(step, cursor))

    def spectrum(self, spectrum: SpectrumTaken) -> None:
        self._pass(lambda: self.sinks.spectrum(spectrum))

    def cycle_closed(self, summary: Mapping[str, float]) -> None:
        self._pass(lambda: self.sinks.cycle_closed(summary))

    def moved(self, cursor: Cursor) -> None:
        self._pass(lambda: self.sinks.moved(cursor))

    def event(self, event: RunEvent) -> None:
        self._pass(lambda: self.sinks.event(event))

    def state_changed(self, state: RunState, cycle: int) -> None:
        self._pass(lambda: self.sinks.state_changed(state, cycle))
