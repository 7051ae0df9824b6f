"""WAL checkpoints in a thread of their own, beside the daemon's event loop.

In WAL mode SQLite appends every commit to the `-wal` file, and a checkpoint copies those
pages back into the database and fsyncs it. By default the committing connection does that
itself whenever the WAL passes 1000 pages: that commit then stalls the event loop, and
every channel with it, while the pages are copied and synced. Python's sqlite3 lets go of the
GIL while SQLite works, so here a thread with its own connection checkpoints every fraction
of a second and the copying and the fsync overlap the loop's work. A PASSIVE checkpoint never
waits for a writer or blocks one.

The writer keeps a checkpoint of its own, at a far larger WAL, in case this thread falls
behind or dies: the WAL can grow, but not without bound.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

INTERVAL_S = 0.25  # keeps the WAL near SQLite's default 1000 pages even at the daemon's fastest
WRITER_FALLBACK_PAGES = 20_000  # the writer's own checkpoint (80 MB of WAL): only if we fall behind


class WalCheckpointer:
    """A thread that checkpoints `path`'s WAL every `interval_s` until `stop`."""

    def __init__(self, path: Path, interval_s: float = INTERVAL_S) -> None:
        self._path = path
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"wal checkpoints of {path.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        db = sqlite3.connect(self._path, check_same_thread=True)
        try:
            failing = ""  # said once, not four times a second for as long as a disk stays full
            while not self._stopping.wait(self._interval_s):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as error:  # the writer's own checkpoint takes over meanwhile
                    if str(error) != failing:
                        log.warning("checkpointing the WAL of %s failed: %s", self._path, error)
                    failing = str(error)
                else:
                    if failing:
                        log.warning("checkpointing the WAL of %s works again", self._path)
                    failing = ""
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.close()
