"""The job queue and the pause/resume/stop requests: the store's half that the daemon polls.

A mixin of `cyclerd.store.database.Store`, which owns the connection; callers only ever see `Store`.
Both tables live in the same SQLite file as the runs, so the CLI of one process and the
daemon of another meet in it without any other channel between them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any


class JobQueue:
    """Jobs waiting for a channel, and requests waiting for the daemon, as methods of the Store."""

    path: Path
    _db: sqlite3.Connection

    if TYPE_CHECKING:  # provided by Store, which owns the connection

        def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _rows(
            self, query: str, where: str | None, value: Any, order: str, json_column: str | None = None
        ) -> list[dict[str, Any]]: ...

    # -- jobs ----------------------------------------------------------------------------

    def submit_job(
        self, channel: str, name: str, protocol_text: str, source: str, cell: Mapping[str, Any]
    ) -> int:
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO jobs (channel, name, protocol, source, cell, state, submitted_unix)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                (channel, name, protocol_text, source, json.dumps(cell, sort_keys=True), time.time()),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def claim_job(self, channel: str) -> dict[str, Any] | None:
        """The oldest queued job of `channel`, marked running (atomic: one claimant wins)."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE channel = ? AND state = 'queued' ORDER BY id LIMIT 1", (channel,)
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running' WHERE id = ?", (row[0],))
        return next(job for job in self.jobs() if job["id"] == row[0])

    def finish_job(self, job_id: int, state: str, run_id: int | None = None) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, run_id = COALESCE(?, run_id) WHERE id = ?",
                (state, run_id, job_id),
            )

    def requeue_job(self, job_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (job_id,))

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT id, channel, name, source, cell, state, submitted_unix, run_id FROM jobs"
        return self._rows(query, "state", state, "id", json_column="cell")

    def job_protocol(self, job_id: int) -> str:
        row = self._db.execute("SELECT protocol FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id} in {self.path}")
        return str(row[0])

    def orphan_jobs(self, channel: str) -> list[dict[str, Any]]:
        """Jobs marked running on `channel`: after a crash, their runs resume or they queue again."""
        return [job for job in self.jobs("running") if job["channel"] == channel]

    # -- requests ------------------------------------------------------------------------

    def request(self, run_id: int, action: str) -> int:
        """Record that someone asked a run to pause, resume or stop; the daemon acts on it."""
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO requests (run_id, action, requested_unix) VALUES (?, ?, ?)",
                (run_id, action, time.time()),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def pending_requests(self, run_id: int) -> list[tuple[int, str]]:
        rows = self._db.execute(
            "SELECT id, action FROM requests WHERE run_id = ? AND handled_unix IS NULL ORDER BY id", (run_id,)
        ).fetchall()
        return [(int(r[0]), str(r[1])) for r in rows]

    def handle_request(self, request_id: int, result: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE requests SET handled_unix = ?, result = ? WHERE id = ?",
                (time.time(), result, request_id),
            )

    def request_result(self, request_id: int) -> str | None:
        """What became of a request: 'done', 'refused: ...', or None while it waits."""
        row = self._db.execute("SELECT result FROM requests WHERE id = ?", (request_id,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])
