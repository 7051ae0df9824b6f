"""The daemon killed (SIGKILL) at 20 random moments of a run and restarted each time.

Nothing committed is lost, the run ends as an uninterrupted run with the same seed does, and
every restart that took the run up again is a `gap` event. The daemon runs as a real process
(`cyclerd serve`), its simulated cell in virtual time.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

from cyclerd.store import Store

CYCLERD = str(Path(sys.executable).with_name("cyclerd"))
LAB = """\
lab = "crash"
database = "{db}"

[[channels]]
name = "ch1"
sim = "mg"
seed = 1
"""
KILLS = 20


def _lab(tmp_path: Path, name: str) -> tuple[Path, Path]:
    db = tmp_path / f"{name}.db"
    config = tmp_path / f"{name}.toml"
    config.write_text(LAB.format(db=db.name))
    protocol = files("cyclerd.protocols") / "library" / "plating_stripping.yaml"
    submitted = subprocess.run(
        [CYCLERD, "submit", str(protocol), "--channel", "ch1", "--db", str(db)], capture_output=True
    )
    assert submitted.returncode == 0, submitted.stderr
    return config, db


def _serve(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [CYCLERD, "serve", "--config", str(config), "--until-idle"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _count(db: sqlite3.Connection, query: str) -> int:
    value = db.execute(query).fetchone()[0]
    return -1 if value is None else int(value)


def _committed(path: Path) -> np.ndarray:
    with Store(path) as store:
        s = store.samples(1)
    return np.column_stack([s["seq"], s["t"], s["voltage"], s["current"], s["charge"]])


def test_sigkill_at_20_random_moments_loses_nothing_and_ends_like_an_unbroken_run(tmp_path: Path) -> None:
    config, db_path = _lab(tmp_path, "ref")
    unbroken = _serve(config)
    assert unbroken.wait(120) == 0, unbroken.stderr.read() if unbroken.stderr else ""
    with Store(db_path) as store:
        reference_cycles = len(store.cycles(1)["cycle"])
        total = len(store.samples(1)["seq"])
    assert reference_cycles > 10  # `mg` shorts: the run's end depends on the cell, not a count

    config, db_path = _lab(tmp_path, "crash")
    # Kills land anywhere in the first 95 % of the run, so each one interrupts it (after the run's
    # end a kill would find nothing to resume).
    moments = sorted(random.Random(20261122).sample(range(1, int(0.95 * total)), KILLS))
    db = sqlite3.connect(db_path, timeout=10)
    snapshots = []
    for k, moment in enumerate(moments):
        daemon = _serve(config)
        # Wait until the restarted daemon has the run going again (k gaps so far), then until the
        # run passes the chosen sample, and kill it there: mid-step, mid-transaction, anywhere.
        while daemon.poll() is None and _count(db, "SELECT COUNT(*) FROM events WHERE kind = 'gap'") < k:
            time.sleep(0.005)
        while daemon.poll() is None and _count(db, "SELECT MAX(seq) FROM samples") < moment:
            time.sleep(0.002)
        assert daemon.poll() is None, "the run ended before it could be killed"
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        snapshots.append(_committed(db_path))
    db.close()

    last = _serve(config)
    assert last.wait(120) == 0, last.stderr.read() if last.stderr else ""
    final = _committed(db_path)
    for before in snapshots:  # every sample committed before a kill is still there, unchanged
        np.testing.assert_array_equal(final[: len(before)], before)
    np.testing.assert_array_equal(final[:, 0], np.arange(len(final)))  # no gap, no duplicate seq
    with Store(db_path) as store:
        assert store.run(1).state == "completed"
        assert len(store.cycles(1)["cycle"]) == reference_cycles
        gaps = [e for e in store.events(1) if e["kind"] == "gap"]
        assert len(gaps) == KILLS
        assert all("resumed after a restart" in e["message"] for e in gaps)
        assert [job["state"] for job in store.jobs()] == ["done"]


def test_sigterm_makes_the_cell_safe_exits_cleanly_and_the_run_resumes(tmp_path: Path) -> None:
    config, db_path = _lab(tmp_path, "term")
    daemon = _serve(config)
    db = sqlite3.connect(db_path, timeout=10)
    while daemon.poll() is None and _count(db, "SELECT MAX(seq) FROM samples") < 5000:
        time.sleep(0.002)
    db.close()
    daemon.send_signal(signal.SIGTERM)  # what `systemctl stop` sends
    assert daemon.wait(30) == 0, daemon.stderr.read() if daemon.stderr else ""
    with Store(db_path) as store:
        assert store.run(1).state == "running"  # not failed: the next start takes it up
        assert any(e["kind"] == "interrupted" for e in store.events(1))
    again = _serve(config)
    assert again.wait(120) == 0
    with Store(db_path) as store:
        assert store.run(1).state == "completed"
        assert [e["kind"] for e in store.events(1)].count("gap") == 1
