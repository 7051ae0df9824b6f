"""The job queue and the pause/resume/stop requests: the part of the store the daemon polls.

Both tables live in the same SQLite file as the runs, so the CLI of one process and the
daemon of another meet in it without any other channel between them. The Store creates one
`JobQueue` and one `Requests` (`store.jobs`, `store.requests`); they reach the file only
through the Store's public `transaction` and `read`, so they cannot disturb its state.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

Job = dict[str, Any]
"""A job as a dict: id, channel, name, source, cell (decoded), state, submitted_unix, run_id,
reason (why it was refused or failed; None otherwise)."""
Jobs = list[Job]  # named outside JobQueue, whose method `list` would shadow the builtin there

JOB_COLUMNS = "id, channel, name, source, cell, state, submitted_unix, run_id, reason"


class Database(Protocol):
    """What the queue needs of the Store: one writer's transactions and plain reads."""

    @property
    def path(self) -> Path: ...

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def read(self, query: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]: ...


class JobQueue:
    """Protocols submitted for a channel, each waiting until the channel's daemon claims it.

    A job's state goes queued -> running -> done, refused or failed; a daemon that crashed
    finds its running jobs again with `orphans` and resumes their runs or queues them again.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def submit(
        self, channel: str, name: str, protocol_text: str, source: str, cell: Mapping[str, Any]
    ) -> int:
        """Queue a protocol for `channel`; the job's id."""
        with self._db.transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (channel, name, protocol, source, cell, state, submitted_unix)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                (channel, name, protocol_text, source, json.dumps(cell, sort_keys=True), time.time()),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def claim(self, channel: str) -> Job | None:
        """The oldest queued job of `channel`, marked running (atomic: one claimant wins)."""
        with self._db.transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE channel = ? AND state = 'queued' ORDER BY id LIMIT 1", (channel,)
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (row[0],))
        return self._select("WHERE id = ?", (row[0],))[0]

    def finish(self, job_id: int, state: str, run_id: int | None = None, reason: str | None = None) -> None:
        """Record how a job ended, the run it became once known, and why it was refused or failed."""
        with self._db.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, run_id = COALESCE(?, run_id), reason = ? WHERE id = ?",
                (state, run_id, reason, job_id),
            )

    def requeue(self, job_id: int) -> None:
        """Put a job back in the queue: it never became a run, so it starts afresh."""
        with self._db.transaction() as db:
            db.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (job_id,))

    def list(self, state: str | None = None) -> Jobs:
        """Every job, or those in `state`, oldest first."""
        if state is None:
            return self._select("", ())
        return self._select("WHERE state = ?", (state,))

    def orphans(self, channel: str) -> Jobs:
        """Jobs marked running on `channel`: after a crash, their runs resume or they queue again."""
        return self._select("WHERE state = 'running' AND channel = ?", (channel,))

    def protocol(self, job_id: int) -> str:
        """The protocol text of a job, as submitted."""
        rows = self._db.read("SELECT protocol FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise KeyError(f"no job {job_id} in {self._db.path}")
        return str(rows[0]["protocol"])

    def _select(self, where: str, args: Sequence[Any]) -> Jobs:
        jobs = self._db.read(f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY id", args)
        for job in jobs:
            job["cell"] = json.loads(job["cell"])
        return jobs


class Requests:
    """Asks to pause, resume or stop a run, from anyone who can open the file; the daemon
    running the run acts on them and writes back what became of each."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, run_id: int, action: str) -> int:
        """Record that someone asked a run to pause, resume or stop; the request's id."""
        with self._db.transaction() as db:
            cursor = db.execute(
                "INSERT INTO requests (run_id, action, requested_unix) VALUES (?, ?, ?)",
                (run_id, action, time.time()),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def pending(self, run_id: int) -> list[tuple[int, str]]:
        """The run's requests not yet handled, oldest first, as (id, action)."""
        rows = self._db.read(
            "SELECT id, action FROM requests WHERE run_id = ? AND handled_unix IS NULL ORDER BY id", (run_id,)
        )
        return [(int(row["id"]), str(row["action"])) for row in rows]

    def handle(self, request_id: int, result: str) -> None:
        """Mark a request handled, with its result ('done' or 'refused: ...')."""
        with self._db.transaction() as db:
            db.execute(
                "UPDATE requests SET handled_unix = ?, result = ? WHERE id = ?",
                (time.time(), result, request_id),
            )

    def result(self, request_id: int) -> str | None:
        """What became of a request: 'done', 'refused: ...', or None while it waits."""
        rows = self._db.read("SELECT result FROM requests WHERE id = ?", (request_id,))
        return None if not rows or rows[0]["result"] is None else str(rows[0]["result"])
