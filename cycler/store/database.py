"""The store: one SQLite file per lab PC holding every run, sample, spectrum and event.

The store is the source of truth (the bus is only a view of it). WAL mode lets readers work
while a run writes; each batch of samples goes in as one block row (cyclerd.store.blocks) in
one transaction, so a crash loses at most the batch being written and never half a batch.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cyclerd.store.blocks import BLOB_COLUMNS, INSERT, SELECT, block_rows, read_blocks, read_columns
from cyclerd.store.migrate import migrate
from cyclerd.store.queue import JobQueue, Requests
from cyclerd.store.schema import CYCLE_COLUMNS, SAMPLE_COLUMNS, SCHEMA
from cyclerd.store.wal import WRITER_FALLBACK_PAGES, WalCheckpointer

__all__ = ["CYCLE_COLUMNS", "SAMPLE_COLUMNS", "SCHEMA", "FloatArray", "Run", "Store"]

FloatArray = NDArray[np.float64]


class StoreInUse(RuntimeError):
    """A task entered a transaction that another task holds open (across an await)."""


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop: the CLI and the tests' plain calls
        return None


@dataclass(frozen=True)
class Run:
    id: int
    name: str
    channel: str
    state: str
    started_unix: float
    ended_unix: float | None
    cell: dict[str, Any]
    source: dict[str, Any]


class Store:
    """One SQLite database; not shared between threads (open one Store per writer).

    `jobs` is the job queue and `requests` the pause/resume/stop requests
    (cyclerd.store.queue); they use only this class's public `transaction` and `read`.
    """

    def __init__(self, path: str | Path, wal_thread: bool = False) -> None:
        """`wal_thread`: checkpoint the WAL in a thread (cyclerd.store.wal), for the daemon's
        writer, whose event loop must not stall on a checkpoint's copying and fsync."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        self._owner: asyncio.Task[Any] | None = None  # the task whose transaction is open
        self._due: dict[int, tuple[float, Mapping[str, Any]]] = {}  # the open transaction's checkpoints
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last transactions, never corrupt the file.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        migrate(self._db)
        self._wal: WalCheckpointer | None = None
        if wal_thread:
            self._db.execute(f"PRAGMA wal_autocheckpoint={WRITER_FALLBACK_PAGES}")
            self._wal = WalCheckpointer(self.path)
        self.jobs = JobQueue(self)
        self.requests = Requests(self)

    def close(self) -> None:
        if self._wal is not None:
            self._wal.stop()
            self._wal = None
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; nested in another, it is part of that one (one commit, all or nothing).

        A run's checkpoint is written once, as the transaction commits: the latest one given wins,
        and an earlier one in the same commit costs nothing.

        The daemon's channel tasks share one Store, so a transaction must not span an await:
        another task would write into it unseen. One that does is refused when that other task
        enters (StoreInUse), rather than mixing two channels' writes in one commit.
        """
        task = _current_task()
        if self._db.in_transaction:
            if task is not self._owner:
                raise StoreInUse("a transaction of another task is open: one held across an await")
            yield self._db
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._owner = task
        try:
            yield self._db
            for run_id, (t, state) in self._due.items():
                self._write_checkpoint(self._db, run_id, t, state)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        finally:
            self._owner = None
            self._due.clear()
        self._db.execute("COMMIT")

    # -- writing -------------------------------------------------------------------------

    def create_run(
        self,
        name: str,
        channel: str,
        protocol_text: str,
        cell: Mapping[str, Any],
        source: Mapping[str, Any],
        started_unix: float | None = None,
    ) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (name, channel, protocol, cell, source, state, started_unix)"
                " VALUES (?, ?, ?, ?, ?, 'created', ?)",
                (
                    name,
                    channel,
                    protocol_text,
                    json.dumps(cell, sort_keys=True),
                    json.dumps(source, sort_keys=True),
                    time.time() if started_unix is None else started_unix,
                ),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def set_state(self, run_id: int, state: str, ended_unix: float | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET state = ?, ended_unix = COALESCE(?, ended_unix) WHERE id = ?",
                (state, ended_unix, run_id),
            )

    def begin_step(
        self,
        run_id: int,
        number: int,
        command: int,
        kind: str,
        label: str,
        cycle: int,
        t_start: float,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO steps (run_id, number, command, kind, label, cycle, t_start)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, number, command, kind, label, cycle, t_start),
            )

    def end_step(
        self,
        run_id: int,
        number: int,
        t_end: float,
        reason: str,
        charge_As: float | None,
        energy_J: float | None,
    ) -> None:
        """Close a step; charge and energy are None for a step a crash cut off (its samples tell)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE steps SET t_end = ?, end_reason = ?, charge_As = ?, energy_J = ?"
                " WHERE run_id = ? AND number = ?",
                (t_end, reason, charge_As, energy_J, run_id, number),
            )

    def append_samples(
        self,
        run_id: int,
        columns: Mapping[str, FloatArray | NDArray[np.int64]],
        checkpoint: tuple[float, Mapping[str, Any]] | None = None,
    ) -> None:
        """Store one batch of samples (columns named as SAMPLE_COLUMNS) in one transaction.

        The run's checkpoint, when given, commits in the same transaction: after a crash the
        last stored sample and the position the run resumes from always agree. A batch whose
        seq overlaps what the run has stored is refused whole (SequenceError).
        """
        with self.transaction() as db:
            after = db.execute(
                "SELECT MAX(last_seq) FROM sample_blocks WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            db.executemany(INSERT, block_rows(run_id, columns, -1 if after is None else after))
            if checkpoint is not None:
                self._due[run_id] = checkpoint

    def append_spectrum(
        self,
        run_id: int,
        sequence: int,
        t: float,
        step: int,
        cycle: int,
        frequency_Hz: FloatArray,
        impedance_ohm: NDArray[np.complex128],
    ) -> None:
        rows = zip(
            range(len(frequency_Hz)),
            np.asarray(frequency_Hz).tolist(),
            impedance_ohm.real.tolist(),
            impedance_ohm.imag.tolist(),
            strict=True,
        )
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO spectra (run_id, sequence, point, t, step, cycle, frequency, z_real, z_imag)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ((run_id, sequence, p, t, step, cycle, f, zr, zi) for p, f, zr, zi in rows),
            )

    def record_event(
        self,
        run_id: int | None,
        kind: str,
        message: str,
        t: float | None = None,
        data: Mapping[str, Any] | None = None,
        unix: float | None = None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO events (run_id, t, unix, kind, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    t,
                    time.time() if unix is None else unix,
                    kind,
                    message,
                    json.dumps(data or {}, sort_keys=True),
                ),
            )

    def save_cycle(
        self, run_id: int, summary: Mapping[str, float], reference_cycle: int | None = None
    ) -> None:
        """Store one cycle's summary (keys as CYCLE_COLUMNS) and, when known, the cycle its
        capacity retention is measured against."""
        with self.transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO cycles (run_id, {', '.join(CYCLE_COLUMNS)})"
                f" VALUES (?{', ?' * len(CYCLE_COLUMNS)})",
                (run_id, *(summary[name] for name in CYCLE_COLUMNS)),
            )
            if reference_cycle is not None:
                db.execute(
                    "INSERT OR REPLACE INTO cycle_references (run_id, cycle, reference_cycle)"
                    " VALUES (?, ?, ?)",
                    (run_id, int(summary["cycle"]), reference_cycle),
                )

    def save_checkpoint(self, run_id: int, t: float, state: Mapping[str, Any]) -> None:
        with self.transaction():
            self._due[run_id] = (t, state)

    @staticmethod
    def _write_checkpoint(db: sqlite3.Connection, run_id: int, t: float, state: Mapping[str, Any]) -> None:
        db.execute(
            "INSERT INTO checkpoints (run_id, t, unix, state) VALUES (?, ?, ?, ?) ON CONFLICT (run_id)"
            " DO UPDATE SET t = excluded.t, unix = excluded.unix, state = excluded.state",
            (run_id, t, time.time(), json.dumps(state)),
        )

    # -- reading -------------------------------------------------------------------------

    def read(self, query: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of one SELECT as dicts keyed by column name.

        Outside a transaction it sees what is committed; inside one, that transaction's writes too.
        """
        cursor = self._db.execute(query, args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def runs(self) -> list[Run]:
        rows = self._db.execute(
            "SELECT id, name, channel, state, started_unix, ended_unix, cell, source FROM runs ORDER BY id"
        ).fetchall()
        return [Run(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), json.loads(r[7])) for r in rows]

    def run(self, run_id: int) -> Run:
        for run in self.runs():
            if run.id == run_id:
                return run
        raise KeyError(f"no run {run_id} in {self.path}")

    def protocol_text(self, run_id: int) -> str:
        row = self._db.execute("SELECT protocol FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"no run {run_id} in {self.path}")
        return str(row[0])

    def samples(self, run_id: int, after_seq: int = -1, limit: int | None = None) -> dict[str, FloatArray]:
        """Samples of a run as columns, in sequence order (temperature NaN where unknown).

        `after_seq` and `limit` read a slice (seq > after_seq, at most `limit` rows), so a replay
        of a months-long run never holds the whole run in memory.
        """
        cursor = self._db.execute(
            f"{SELECT} WHERE run_id = ? AND last_seq > ? ORDER BY last_seq", (run_id, after_seq)
        )
        return read_blocks(cursor, after_seq, limit)

    def sample_columns(
        self,
        run_id: int,
        names: tuple[str, ...] = ("t", "voltage", "current"),
        after_seq: int = -1,
        last_s: float | None = None,
    ) -> tuple[dict[str, FloatArray], int]:
        """Some columns of a run's samples with seq > after_seq, and the last seq read
        (`after_seq` when there is none).

        The dashboard keeps a run's plotted columns in memory and reads only what a live run
        added since (`after_seq`). `last_s` reads back from the newest block only as far as
        that many seconds of test time before the last sample (whole blocks, so the first may
        start earlier): a tile's sparkline of a months-long run reads a few blocks, not the run.
        """
        unknown = [name for name in names if name not in BLOB_COLUMNS]
        if unknown or (last_s is not None and "t" not in names):
            raise ValueError(f"columns {names}: give some of {BLOB_COLUMNS}, t among them with last_s")
        select = (
            f"SELECT first_seq, last_seq, {', '.join(names)} FROM sample_blocks"
            " WHERE run_id = ? AND last_seq > ? ORDER BY last_seq"
        )
        if last_s is None:
            return read_columns(self._db.execute(select, (run_id, after_seq)), names, after_seq)
        at = 2 + names.index("t")
        newest: list[tuple[Any, ...]] = []
        since: float | None = None
        cursor = self._db.execute(f"{select} DESC", (run_id, after_seq))
        for row in cursor:
            newest.append(row)
            t = np.frombuffer(row[at], dtype="<f8")
            if since is None:
                since = float(t[-1]) - last_s
            if t[0] <= since:
                break
        cursor.close()
        return read_columns(reversed(newest), names, after_seq)

    def spectra(self, run_id: int) -> list[dict[str, Any]]:
        """Each spectrum of a run: sequence, t, step, cycle, frequency and complex impedance."""
        rows = self._db.execute(
            "SELECT sequence, t, step, cycle, frequency, z_real, z_imag FROM spectra"
            " WHERE run_id = ? ORDER BY sequence, point",
            (run_id,),
        ).fetchall()
        out: list[dict[str, Any]] = []
        table = np.array(rows, dtype=np.float64).reshape(len(rows), 7)
        for sequence in np.unique(table[:, 0]).astype(int).tolist():
            part = table[table[:, 0] == sequence]
            out.append(
                {
                    "sequence": sequence,
                    "t": float(part[0, 1]),
                    "step": int(part[0, 2]),
                    "cycle": int(part[0, 3]),
                    "frequency_Hz": part[:, 4].copy(),
                    "impedance_ohm": part[:, 5] + 1j * part[:, 6],
                }
            )
        return out

    def steps(self, run_id: int) -> list[dict[str, Any]]:
        query = (
            "SELECT number, command, kind, label, cycle, t_start, t_end, end_reason, charge_As, energy_J"
            " FROM steps WHERE run_id = ? ORDER BY number"
        )
        return self.read(query, (run_id,))

    def events(self, run_id: int | None = None) -> list[dict[str, Any]]:
        query = "SELECT id, run_id, t, unix, kind, message, data FROM events"
        if run_id is None:
            events = self.read(f"{query} ORDER BY id")
        else:
            events = self.read(f"{query} WHERE run_id = ? ORDER BY id", (run_id,))
        for event in events:
            event["data"] = json.loads(event["data"])
        return events

    def cycles(self, run_id: int) -> dict[str, FloatArray]:
        """The stored cycle summaries of a run as columns (CYCLE_COLUMNS), in cycle order."""
        rows = self._db.execute(
            f"SELECT {', '.join(CYCLE_COLUMNS)} FROM cycles WHERE run_id = ? ORDER BY cycle", (run_id,)
        ).fetchall()
        table = np.array(rows, dtype=np.float64).reshape(len(rows), len(CYCLE_COLUMNS))
        return {name: table[:, i].copy() for i, name in enumerate(CYCLE_COLUMNS)}

    def cycle_references(self, run_id: int) -> dict[int, int]:
        """Cycle -> the cycle its capacity retention is measured against (the first cycle of its
        loop), for the cycles the engine summarised; empty for imported runs."""
        rows = self._db.execute(
            "SELECT cycle, reference_cycle FROM cycle_references WHERE run_id = ?", (run_id,)
        ).fetchall()
        return {int(cycle): int(reference) for cycle, reference in rows}

    def checkpoint(self, run_id: int) -> tuple[float, dict[str, Any]] | None:
        row = self._db.execute("SELECT t, state FROM checkpoints WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else (float(row[0]), json.loads(row[1]))

    def checkpoint_unix(self, run_id: int) -> float | None:
        row = self._db.execute("SELECT unix FROM checkpoints WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else float(row[0])

    def unfinished_runs(self, channel: str) -> list[Run]:
        """The channel's runs a crash left unfinished (not in a final state), oldest first."""
        return [
            r
            for r in self.runs()
            if r.channel == channel and r.state not in ("completed", "stopped", "failed")
        ]
