"""A store that cannot be written: a full disk (a small tmpfs, filled to the last byte) and a
read-only database. Every cell is kept safe, the daemon says what is wrong in one line, no
channel takes the others down, and the runs go on where their record stopped once the store can
be written again; doctor calls a full disk a FAIL.

Mounting a tmpfs needs root: without it the full-disk tests are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path

import pytest

from cyclerd.daemon.config import Lab
from cyclerd.daemon.service import Daemon
from cyclerd.doctor.store import check_database
from cyclerd.doctor.verdict import Verdict
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

CYCLERD = str(Path(sys.executable).with_name("cyclerd"))
E1 = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
SPEED = 3600.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 MB tmpfs of the test's own (root only): room for the runs, filled in a blink."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip()}): needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system holding `folder` to its last byte; the filler, to delete later."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (2**20, 2**12, 1):  # down to the last byte
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * size)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def serving(config: Path) -> subprocess.Popen[str]:
    """`cyclerd serve --until-idle`, its stderr to read line by line as an operator would."""
    return subprocess.Popen(
        [CYCLERD, "serve", "--config", str(config), "--until-idle"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


def samples(db: Path) -> dict[int, int]:
    with Store(db) as store:
        rows = store.read("SELECT run_id, MAX(last_seq) AS last FROM sample_blocks GROUP BY run_id")
    return {int(r["run_id"]): int(r["last"]) for r in rows}


async def test_a_full_disk_keeps_every_cell_safe_and_the_runs_go_on_when_space_returns(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two channels, one a simulated cell and one a Keithley 2450 (emulated): the disk fills
    mid-run. Neither run fails, the instrument's output goes off, the log says the disk is full;
    once the filler is deleted both runs are taken up from their checkpoints and go on."""
    device = Keithley2450Emulator(make_cell("mgagsn", seed=3), speed=SPEED)
    long_e1 = E1.replace("count: 250", "count: 5000").replace("duration_max: 600 h", "duration_max: 20000 h")
    with running(device) as port:
        lab = Lab.model_validate(
            {
                "lab": "full",
                "database": small_disk / "lab.db",
                "speed": SPEED,
                "instruments": [
                    {
                        "name": "smu",
                        "driver": "keithley2450",
                        "resource": f"TCPIP::127.0.0.1::{port}::SOCKET",
                        "poll_s": 10.0,
                    }
                ],
                "channels": [
                    {"name": "sim", "sim": "mgagsn", "seed": 1},
                    {"name": "smu", "instrument": "smu"},
                ],
            }
        )
        with Store(lab.database) as store:
            store.jobs.submit("sim", "E1", long_e1, "e1.yaml", {})
            store.jobs.submit("smu", "E1", E1.replace("count: 250", "count: 2"), "e1.yaml", {})
        caplog.set_level(logging.WARNING, logger="cyclerd")
        daemon = asyncio.create_task(Daemon(lab).run())
        await until(lambda: len(samples(lab.database)) == 2 and device.s.output, 20, "both runs started")

        filler = fill(small_disk)
        await until(
            lambda: sum("cannot write the store" in r.getMessage() for r in caplog.records) == 2,
            20,
            f"each channel says the store cannot be written: {[r.getMessage() for r in caplog.records]}",
        )
        said = [r.getMessage() for r in caplog.records if "cannot write the store" in r.getMessage()]
        assert all(f"the disk holding {lab.database} is full" in line for line in said), said
        assert not daemon.done()  # no channel took the daemon down
        assert not device.s.output  # the instrument's cell is safe while nothing can be recorded
        stalled = samples(lab.database)
        await asyncio.sleep(0.5)
        assert samples(lab.database) == stalled  # and nothing runs on unrecorded
        with Store(lab.database) as store:
            assert [r.state for r in store.runs()] == ["running", "running"]  # kept, not failed

        filler.unlink()
        with Store(lab.database) as store:
            await until(lambda: store.jobs.list()[1]["state"] == "done", 40, "the instrument's run went on")
            await until(
                lambda: samples(lab.database)[1] > stalled[1] + 10_000, 10, "the simulated run went on"
            )
        daemon.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await daemon
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("cyclerd")), "a traceback"
    with Store(lab.database) as store:
        # The long run went on until it shorted or was stopped with the daemon (resumable then).
        assert store.run(1).state in ("running", "completed")
        assert store.run(2).state == "completed"
        assert store.jobs.list()[1]["state"] == "done"
        waited = [e["message"] for e in store.events() if e["kind"] == "store"]
        assert len(waited) == 2
        assert all("the store could not be written" in m and "is full" in m for m in waited)
        for run in store.runs():  # each run was taken up from its checkpoint: a gap, no seq twice
            assert [e["kind"] for e in store.events(run.id)].count("gap") == 1
            seq = store.samples(run.id)["seq"]
            assert (seq == range(len(seq))).all()


async def test_a_restart_on_a_full_disk_waits_without_a_traceback_and_goes_on(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon stopped (its files closed cleanly) and the disk filled meanwhile: SQLite cannot
    even create the files it reads through. The next start says so and waits; once there is
    room it takes the run up."""
    lab = Lab.model_validate(
        {"lab": "full", "database": small_disk / "lab.db", "channels": [{"name": "ch1", "sim": "mgagsn"}]}
    )
    with Store(lab.database) as store:
        store.jobs.submit("ch1", "E1", E1, "e1.yaml", {})
    first = asyncio.create_task(Daemon(lab).run())
    await until(lambda: samples(lab.database).get(1, 0) > 5000, 20, "the run started")
    first.cancel()  # what SIGTERM does: the cell made safe, the run kept resumable
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert not Path(f"{lab.database}-wal").exists()  # closed cleanly: a reader must create it again
    filler = fill(small_disk)

    caplog.set_level(logging.WARNING, logger="cyclerd")
    again = asyncio.create_task(Daemon(lab).run(until_idle=True))
    await until(lambda: any("is full" in r.getMessage() for r in caplog.records), 10, "the full disk is said")
    await asyncio.sleep(0.5)
    assert not again.done()
    filler.unlink()
    await asyncio.wait_for(again, 40)
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("cyclerd")), "a traceback"
    with Store(lab.database) as store:
        assert store.run(1).state == "completed"
        assert [e["kind"] for e in store.events(1)].count("gap") == 1


def test_serve_on_a_full_disk_starts_and_waits_and_run_says_the_disk_is_full(small_disk: Path) -> None:
    """The command line's own look at the store, before the daemon starts, reads a closed store
    on a full disk: it must call that a full disk (not "not a cyclerd store"); serve then starts
    and waits for room, and `run`, which cannot wait for a person, says so and stops."""
    database, config = small_disk / "lab.db", small_disk / "lab.toml"
    config.write_text(
        f'lab = "full"\ndatabase = "{database}"\n\n[[channels]]\nname = "ch1"\nsim = "mgagsn"\n'
    )
    with Store(database) as store:
        store.jobs.submit("ch1", "E1", E1.replace("count: 250", "count: 2"), "e1.yaml", {})
    protocol = small_disk / "e1.yaml"
    protocol.write_text(E1.replace("count: 250", "count: 2"))
    filler = fill(small_disk)

    run = subprocess.run(
        [CYCLERD, "run", str(protocol), "--sim", "mgagsn", "--db", str(database)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2, run.stderr
    assert f"the disk holding {database} is full" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr

    serve = serving(config)
    try:
        assert serve.stderr is not None
        first = serve.stderr.readline()
        assert "is full" in first, first
        assert "the daemon starts and waits" in first, first
        assert serve.poll() is None
        filler.unlink()
        assert serve.wait(60) == 0
        rest = serve.stderr.read()
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGKILL)
            serve.wait()
    assert "Traceback" not in first + rest
    with Store(database) as store:
        assert [r.state for r in store.runs()] == ["completed"]


def test_doctor_fails_a_full_disk_and_warns_of_a_small_one(small_disk: Path) -> None:
    lab = Lab.model_validate(
        {"lab": "full", "database": small_disk / "lab.db", "channels": [{"name": "ch1", "sim": "mgagsn"}]}
    )
    Store(lab.database).close()
    filler = fill(small_disk)
    (database,) = check_database(lab)
    assert database.verdict is Verdict.FAIL, database
    assert f"the disk holding {small_disk} is full: 0.0 MB free of 256 MB" in database.detail
    assert "serve keeps every cell safe and records nothing until 16 MB are free" in database.detail
    filler.unlink()
    (database,) = [c for c in check_database(lab) if c.name == "database"]
    assert database.verdict is Verdict.WARN  # 256 MB is little for months of samples
    assert "only 0.25 GB free of 0.25 GB" in database.detail


def test_a_read_only_store_is_said_in_one_line_nothing_runs_and_it_goes_on_once_writable(
    tmp_path: Path,
) -> None:
    """The database file cannot be written by the daemon: serve starts, says which file and what
    to do, drives nothing; made writable, it opens the store again and the queued job runs.

    Root writes whatever a file's mode says, so as root the file is bind-mounted read-only over
    itself (its folder stays writable, as with a file of mode 0444 that the service does not own).
    """
    database, config = tmp_path / "lab.db", tmp_path / "lab.toml"
    config.write_text(f'lab = "ro"\ndatabase = "{database}"\n\n[[channels]]\nname = "ch1"\nsim = "mgagsn"\n')
    with Store(database) as store:
        store.jobs.submit("ch1", "E1", E1.replace("count: 250", "count: 2"), "e1.yaml", {})
    with read_only(database) as made_writable:
        serve = serving(config)
        try:
            lines: list[str] = []
            assert serve.stderr is not None
            for line in serve.stderr:
                lines.append(line)
                if "cannot be written" in line:
                    break
            assert serve.poll() is None, "".join(lines)
            assert f"{database} cannot be written (attempt to write a readonly database)" in lines[-1]
            made_writable()
            assert serve.wait(60) == 0
            rest = serve.stderr.read()
        finally:
            if serve.poll() is None:
                serve.send_signal(signal.SIGKILL)
                serve.wait()
    assert "Traceback" not in "".join(lines) + rest
    with Store(database) as store:
        assert [r.state for r in store.runs()] == ["completed"]
        assert [job["state"] for job in store.jobs.list()] == ["done"]


@contextlib.contextmanager
def read_only(database: Path) -> Iterator[Callable[[], None]]:
    """`database` read-only to the daemon until the function yielded is called."""
    if os.geteuid() != 0:
        database.chmod(0o444)
        yield lambda: database.chmod(0o644)
        return
    for options in (["--bind"], ["-o", "remount,bind,ro"]):
        subprocess.run(["mount", *options, str(database), str(database)], check=True)
    mounted = True

    def writable() -> None:
        nonlocal mounted
        subprocess.run(["umount", str(database)], check=True)
        mounted = False

    try:
        yield writable
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(database)], check=False)
