"""The doctor's checks of the store: the SQLite file is writable by the service, in WAL mode and
undamaged, on a disk with room left, and which unfinished runs a (re)start of serve will take up.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from cyclerd.daemon.config import Lab
from cyclerd.doctor.verdict import Check, Verdict, current_user
from cyclerd.engine.record import MIN_FREE_BYTES
from cyclerd.engine.states import FINAL
from cyclerd.store.database import Store

QUICK_CHECK_S = 15.0  # PRAGMA quick_check reads the whole file; a huge store is interrupted
LOW_SPACE_BYTES = 2**30  # less free than this (or than LOW_SPACE_SHARE of the disk) warns
LOW_SPACE_SHARE = 0.05


def check_database(lab: Lab, quick_check_s: float = QUICK_CHECK_S) -> list[Check]:
    """The folder is writable, the file opens as a Store in WAL mode and passes quick_check."""
    path, user = lab.database, current_user()
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        fix = f"install -d -o cyclerd -g cyclerd {folder}, or fix `database` in the config"
        return [Check("database", Verdict.FAIL, f"{folder} {what}: {fix}")]
    if not os.access(folder, os.W_OK | os.X_OK):
        why = f"SQLite creates {path.name}-wal and -shm next to the database"
        return [
            Check(
                "database",
                Verdict.FAIL,
                f"user {user} cannot write in {folder} ({why}): chown cyclerd {folder}",
            )
        ]
    room, full = _room(folder)
    if full:
        return [Check("database", Verdict.FAIL, room)]
    if not path.exists():
        detail = (
            f"no database at {path} yet: serve creates it at its first start (expected on a new install;"
            " otherwise check `database` in the config)"
        )
        return [Check("database", Verdict.WARN, detail)]
    files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    locked = [str(p) for p in files if not os.access(p, os.W_OK)]
    if locked:
        return [
            Check(
                "database", Verdict.FAIL, f"user {user} cannot write {', '.join(locked)}: chown cyclerd them"
            )
        ]
    try:
        with Store(path) as store:
            runs = store.runs()
        mode, problems = _inspect(path, quick_check_s)
    except sqlite3.DatabaseError as exc:
        fix = f"stop the daemon, move it aside (mv {path} {path}.broken) and restore the last backup"
        return [Check("database", Verdict.FAIL, f"{path} does not open as a cyclerd store ({exc}): {fix}")]
    if mode != "wal":
        detail = (
            f"{path} is in {mode} journal mode, not WAL: is it on a network share? keep it on a local disk"
        )
        return [Check("database", Verdict.FAIL, detail)]
    if problems is None:
        detail = f"PRAGMA quick_check did not finish in {quick_check_s:g} s; run it when the lab is idle"
        return [Check("database", Verdict.WARN, detail), _unfinished(lab, runs)]
    if problems != ["ok"]:
        found = "; ".join(problems[:3])
        fix = f"stop the daemon, copy the file, and recover it (sqlite3 {path} .recover)"
        return [Check("database", Verdict.FAIL, f"{path} is damaged ({found}): {fix}")]
    size = f"{path.stat().st_size / 1e6:.1f} MB"
    rights = (
        " (checked as root, who may write anything: run doctor as the service user)"
        if os.geteuid() == 0
        else ""
    )
    detail = f"{path}: {size}, {len(runs)} run(s), WAL, quick_check ok, writable by {user}{rights}; {room}"
    verdict = Verdict.WARN if room.startswith("only") else Verdict.OK
    return [Check("database", verdict, detail), _unfinished(lab, runs)]


def _room(folder: Path) -> tuple[str, bool]:
    """The free space on the disk holding `folder`, said for the report, and whether it is too
    little for serve to write (it then keeps every cell safe and waits for room)."""
    try:
        found = os.statvfs(folder)
    except OSError as exc:
        return f"free space unknown ({exc.strerror or exc})", False
    free, total = found.f_bavail * found.f_frsize, found.f_blocks * found.f_frsize
    if total <= 0:
        return "free space unknown", False
    said = f"{free / 2**30:.2f} GB free of {total / 2**30:.2f} GB ({100 * free / total:.0f} %)"
    if free < MIN_FREE_BYTES:
        fix = "free some space (old backups, journal: journalctl --vacuum-size=...), or move the database"
        return (
            f"the disk holding {folder} is full: {free / 2**20:.1f} MB free of {total / 2**20:.0f} MB;"
            f" serve keeps every cell safe and records nothing until {MIN_FREE_BYTES / 2**20:.0f} MB"
            f" are free: {fix}",
            True,
        )
    if free < LOW_SPACE_BYTES or free < LOW_SPACE_SHARE * total:
        return f"only {said}: free some space before the disk fills, or move the database", False
    return said, False


def _inspect(path: Path, quick_check_s: float) -> tuple[str, list[str] | None]:
    """The journal mode and quick_check's findings (None: interrupted after `quick_check_s`)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        mode = str(db.execute("PRAGMA journal_mode").fetchone()[0])
        timer = threading.Timer(quick_check_s, db.interrupt)
        timer.start()
        try:
            return mode, [str(row[0]) for row in db.execute("PRAGMA quick_check")]
        except sqlite3.OperationalError as exc:
            if "interrupt" in str(exc):
                return mode, None
            raise
        finally:
            timer.cancel()


def _unfinished(lab: Lab, runs: list[Any]) -> Check:
    """The runs a (re)start of serve takes up, and what it will do with them."""
    left = [r for r in runs if r.state not in FINAL]
    if not left:
        return Check("runs to take up", Verdict.OK, "none: every stored run is finished")
    states = ", ".join(f"{n} {state}" for state, n in sorted(Counter(r.state for r in left).items()))
    action = "resumes them from their checkpoints" if lab.resume == "resume" else "stops them safely"
    detail = f"{len(left)} unfinished ({states}): at start serve {action} (resume = {lab.resume!r})"
    channels = {c.name for c in lab.channels}
    orphans = [f"run {r.id} on {r.channel!r}" for r in left if r.channel not in channels]
    if orphans:
        detail += (
            f"; {', '.join(orphans)}: no such channel in the config, never taken up; add the channel back"
        )
        return Check("runs to take up", Verdict.WARN, detail)
    return Check("runs to take up", Verdict.OK, detail)
