"""Bringing a store file written by an older cyclerd up to the present schema, losing nothing.

The version lives in SQLite's `PRAGMA user_version`. Version 0 kept one `samples` row per
sample; version 1 keeps them as blocks (cyclerd.store.blocks); version 2 keeps why a job was
refused or failed (jobs.reason). A lab PC updated mid-run
converts its file the first time the new daemon or CLI opens it, in one transaction: a crash
during the conversion leaves the old file as it was.
"""

from __future__ import annotations

import logging
import sqlite3

import numpy as np

from cyclerd.store.blocks import INSERT, block_rows
from cyclerd.store.schema import SAMPLE_COLUMNS, VERSION

log = logging.getLogger(__name__)

CHUNK = 65_536  # rows of the old table per block: bounded memory for runs of any length

SAMPLES_V0 = """
CREATE TABLE samples (
    run_id INTEGER NOT NULL, seq INTEGER NOT NULL, t REAL NOT NULL, step INTEGER NOT NULL,
    cycle INTEGER NOT NULL, voltage REAL NOT NULL, current REAL NOT NULL, charge REAL NOT NULL,
    energy REAL NOT NULL, temperature REAL, PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"""
"""Schema 0's samples table, one row per sample: what `migrate` converts from."""


def migrate(db: sqlite3.Connection) -> None:
    """Upgrade `db` (opened in autocommit mode, schema already created) to VERSION."""
    if _version(db) >= VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if _version(db) < 1:  # another process may have done it while we waited for the lock
            _rows_to_blocks(db)
        if _version(db) < 2:
            _add_job_reasons(db)
        db.execute(f"PRAGMA user_version = {VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _rows_to_blocks(db: sqlite3.Connection) -> None:
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'samples'").fetchone()
    if exists is None:
        return
    runs = [row[0] for row in db.execute("SELECT DISTINCT run_id FROM samples ORDER BY run_id")]
    total = 0
    for run_id in runs:
        after = -1
        while True:
            rows = db.execute(
                f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE run_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (run_id, after, CHUNK),
            ).fetchall()
            if not rows:
                break
            table = np.array(rows, dtype=np.float64)  # temperature NULL -> NaN
            columns = {name: table[:, k] for k, name in enumerate(SAMPLE_COLUMNS)}
            for name in ("seq", "step", "cycle"):
                columns[name] = columns[name].astype(np.int64)
            db.executemany(INSERT, block_rows(run_id, columns, after))
            after = int(columns["seq"][-1])
            total += len(rows)
    db.execute("DROP TABLE samples")
    log.info("store: %d samples of %d runs converted to blocks", total, len(runs))


def _add_job_reasons(db: sqlite3.Connection) -> None:
    """A jobs table from before version 2 gets its reason column (empty: reasons were not kept)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    if "reason" not in columns:
        db.execute("ALTER TABLE jobs ADD COLUMN reason TEXT")
