"""The daemon killed (SIGKILL) at 20 random moments of a run and restarted each time.

Nothing committed is lost, the run ends as an uninterrupted run with the same seed does, and
every restart that took the run up again is a `gap` event. The daemon runs as a real process
(`cyclerd serve`), its simulated cell in virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cyclerd.store.database import Store

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
    Store(db).close()  # the lab's store, as serve creates it: submit never creates one
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
    checkpoints: list[str] = []  # the checkpoint column as each kill left it
    history: list[tuple[int, int, Any, int]] = []  # after each kill: k, gaps, run state, last seq
    for k, moment in enumerate(moments):
        daemon = _serve(config)
        # Wait until the restarted daemon has the run going again (k gaps so far), then until the
        # run passes the chosen sample, and kill it there: mid-step, mid-transaction, anywhere.
        while daemon.poll() is None and _count(db, "SELECT COUNT(*) FROM events WHERE kind = 'gap'") < k:
            time.sleep(0.005)
        while daemon.poll() is None and _count(db, "SELECT MAX(last_seq) FROM sample_blocks") < moment:
            time.sleep(0.002)
        assert daemon.poll() is None, "the run ended before it could be killed"
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        snapshots.append(_committed(db_path))
        checkpoints.extend(row[0] for row in db.execute("SELECT state FROM checkpoints"))
        history.append(
            (
                k,
                _count(db, "SELECT COUNT(*) FROM events WHERE kind = 'gap'"),
                db.execute("SELECT state FROM runs").fetchone(),
                _count(db, "SELECT MAX(last_seq) FROM sample_blocks"),
            )
        )
    db.close()
    # The simulated cell travels in the checkpoint as plain data: a database holds no code.
    assert checkpoints
    for text in checkpoints:
        cell = json.loads(text)["cell"]
        assert isinstance(cell, dict), text[:200]
        assert all(isinstance(key, str) for key in cell)

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
        # Each kill that left the run unfinished is one gap, taken up by the next start. (A kill
        # can land after the run's end, while the daemon finishes the job: no gap then.)
        interrupted = [h for h in history if h[2] is not None and h[2][0] == "running"]
        assert len(gaps) == len(interrupted), (history, [e["message"] for e in store.events()])
        assert len(interrupted) >= KILLS - 2, history
        assert all("resumed after a restart" in e["message"] for e in gaps)
        assert [job["state"] for job in store.jobs.list()] == ["done"]


def test_sigterm_makes_the_cell_safe_exits_cleanly_and_the_run_resumes(tmp_path: Path) -> None:
    config, db_path = _lab(tmp_path, "term")
    daemon = _serve(config)
    db = sqlite3.connect(db_path, timeout=10)
    while daemon.poll() is None and _count(db, "SELECT MAX(last_seq) FROM sample_blocks") < 5000:
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


async def test_a_spectrum_cut_off_by_a_crash_is_measured_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """E5 in-situ EIS: the daemon dies while the third spectrum is being measured (the sweep
    hangs, then the task is cancelled as at shutdown). After the restart that spectrum is
    measured again from its start, the plating step goes on with its charge, and the run has
    the same 6 + 5 spectra as one that was never interrupted."""
    from cyclerd.daemon.config import Lab
    from cyclerd.daemon.service import Daemon
    from cyclerd.simulators.channel import SimulatedChannel

    text = (files("cyclerd.protocols") / "library" / "insitu_eis.yaml").read_text()
    lab = Lab.model_validate(
        {"lab": "eis", "database": tmp_path / "lab.db", "channels": [{"name": "ch1", "sim": "mgagsn-pvdf"}]}
    )
    with Store(lab.database) as store:
        store.jobs.submit("ch1", "E5", text, "insitu_eis.yaml", {})
    measured = SimulatedChannel.impedance
    calls = 0
    hanging = asyncio.Event()

    async def hangs_on_the_third(self: SimulatedChannel, spec: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            hanging.set()
            await asyncio.Event().wait()  # the process dies in here
        return await measured(self, spec)

    monkeypatch.setattr(SimulatedChannel, "impedance", hangs_on_the_third)
    daemon = asyncio.create_task(Daemon(lab).run(until_idle=True))
    await asyncio.wait_for(hanging.wait(), 30)
    daemon.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await daemon
    monkeypatch.setattr(SimulatedChannel, "impedance", measured)
    with Store(lab.database) as store:
        assert store.run(1).state == "running"
        assert len(store.spectra(1)) == 2
        cut = [s for s in store.steps(1) if s["kind"] == "eis" and s["t_end"] is None]
        assert len(cut) == 1

    await Daemon(lab).run(until_idle=True)
    with Store(lab.database) as store:
        assert store.run(1).state == "completed"
        steps = {s["number"]: s for s in store.steps(1)}
        assert steps[cut[0]["number"]]["end_reason"] == "interrupted"
        assert len(store.spectra(1)) == 6 + 5
        gap = next(e for e in store.events(1) if e["kind"] == "gap")
        assert gap["data"]["phase"] == "interrupt"  # inside the every-block of the plating step
        assert gap["data"]["charge_As"] < 0  # the plating charge so far (negative), carried over
        plate = next(s for s in store.steps(1) if s["label"] == "plate with EIS")
        assert plate["charge_As"] == pytest.approx(-1e-3 * 3600 * 0.785, rel=1e-3)  # 1 mAh/cm^2


@pytest.mark.parametrize(
    ("policy", "why"),
    [({"resume": "stop"}, "the resume policy is 'stop'"), ({"resume_max_gap_s": 0.01}, "resume_max_gap_s")],
)
async def test_the_resume_policy_can_stop_an_interrupted_run_safely(
    tmp_path: Path, policy: dict[str, Any], why: str
) -> None:
    from cyclerd.daemon.config import Lab
    from cyclerd.daemon.service import Daemon

    text = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
    config = {"lab": "p", "database": tmp_path / "lab.db", "channels": [{"name": "ch1", "sim": "mgagsn"}]}
    with Store(config["database"]) as store:
        store.jobs.submit("ch1", "E1", text, "plating_stripping.yaml", {})
        daemon = asyncio.create_task(Daemon(Lab.model_validate(config)).run(until_idle=True))
        while not store.runs() or len(store.samples(1, limit=2000)["seq"]) < 2000:
            await asyncio.sleep(0.01)
        daemon.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon
        kept = len(store.samples(1)["seq"])
        await asyncio.sleep(0.05)
        await Daemon(Lab.model_validate(config | policy)).run(until_idle=True)
        assert store.run(1).state == "stopped"
        assert len(store.samples(1)["seq"]) == kept  # stopped, not run on
        (gap,) = [e for e in store.events(1) if e["kind"] == "gap"]
        assert "stopped safely after a restart" in gap["message"]
        assert why in gap["message"]
        assert [job["state"] for job in store.jobs.list()] == ["stopped"]
