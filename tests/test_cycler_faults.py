"""Faults of an emulated cycler under `cyclerd serve` (the daemon in this process, the cycler in a
thread): a dropped link is reconnected and every run resumes, a gap event saying where; a channel
that trips its own safety stops its run with an event in the cycler's words, and its neighbours on
the same cycler complete."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from protocol_texts import E1_TWO_CYCLES

from cyclerd.daemon.config import Lab
from cyclerd.daemon.service import Daemon
from cyclerd.simulators.arbin_emulator import ArbinEmulator
from cyclerd.simulators.maccor_emulator import MaccorEmulator
from cyclerd.simulators.neware_emulator import NewareEmulator
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

SPEED = 3600.0
CHANNELS = 3
EMULATORS: dict[str, Any] = {"maccor": MaccorEmulator, "neware": NewareEmulator, "arbin": ArbinEmulator}


def lab_of(tmp_path: Path, driver: str, port: int) -> Lab:
    return Lab.model_validate(
        {
            "lab": "faults",
            "database": tmp_path / "lab.db",
            "speed": SPEED,
            "instruments": [
                {
                    "name": "cyc",
                    "driver": driver,
                    "resource": f"tcp://127.0.0.1:{port}",
                    "poll_s": 10.0,
                    "reconnect_s": 0.05,
                    "reconnect_max_s": 0.2,
                }
            ],
            "channels": [
                {"name": f"c{n}", "instrument": "cyc", "cycler_channel": n} for n in range(1, CHANNELS + 1)
            ],
        }
    )


def serve_with_a_fault(tmp_path: Path, driver: str, inject: Any) -> Store:
    """All channels run two E1 cycles; `inject(emulator)` strikes once channel 1 has plated an hour."""
    emulator = EMULATORS[driver]("mgagsn", CHANNELS, 5, SPEED)
    with running(emulator) as port:
        lab = lab_of(tmp_path, driver, port)
        with Store(lab.database) as store:
            for n in range(1, CHANNELS + 1):
                store.jobs.submit(f"c{n}", "E1", E1_TWO_CYCLES, "e1.yaml", {})
        struck = threading.Event()

        def strike() -> None:
            channel = emulator.bank.channel(1)
            deadline = time.monotonic() + 30
            while not (channel.on and channel.step_time_s > 1800.0) and time.monotonic() < deadline:
                time.sleep(0.001)
            inject(emulator)
            struck.set()

        threading.Thread(target=strike, daemon=True).start()
        asyncio.run(asyncio.wait_for(Daemon(lab).run(until_idle=True), 120))
        assert struck.is_set()
    return Store(lab.database)


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["maccor", "neware", "arbin"])
def test_a_dropped_link_is_reconnected_and_every_run_resumes(tmp_path: Path, driver: str) -> None:
    with serve_with_a_fault(tmp_path, driver, lambda emulator: emulator.faults.drop_connection()) as store:
        runs = sorted(store.runs(), key=lambda run: run.channel)
        assert [(run.channel, run.state) for run in runs] == [(f"c{n}", "completed") for n in range(1, 4)]
        assert all(len(store.cycles(run.id)["cycle"]) == 2 for run in runs)
        first = store.events(runs[0].id)
        assert any(e["kind"] == "fault" for e in first), [e["message"] for e in first]
        assert any(e["kind"] == "gap" for e in first), [e["message"] for e in first]


TRIPS = {"maccor": "Safety", "neware": "protect", "arbin": "Unsafe"}  # the cyclers' own words


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["maccor", "neware", "arbin"])
def test_a_channel_tripping_its_own_safety_stops_its_run_and_the_others_complete(
    tmp_path: Path, driver: str
) -> None:
    def trip(emulator: Any) -> None:
        emulator.bank.channel(1).faults.trip = "cell temperature 61 C above 60 C"

    with serve_with_a_fault(tmp_path, driver, trip) as store:
        runs = sorted(store.runs(), key=lambda run: run.channel)
        assert [(run.channel, run.state) for run in runs] == [
            ("c1", "stopped"),
            ("c2", "completed"),
            ("c3", "completed"),
        ]
        # A fault (the driver's words for a stopped test) or a safety end (the step's), as each
        # driver reports it; either way in the cycler's words.
        said = [e["message"] for e in store.events(runs[0].id) if e["kind"] in ("fault", "safety")]
        assert any(TRIPS[driver] in message for message in said), said


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["maccor", "neware", "arbin"])
def test_a_cycler_that_goes_away_stops_its_runs_without_failing_their_jobs(
    tmp_path: Path, driver: str
) -> None:
    """The vendor's API gone for good mid-run: each run stops by the fault policy, in the store as
    such; that its test could not be stopped on the cycler afterwards is an event to read, not a
    failed job with a traceback in the journal."""
    import contextlib

    emulator = EMULATORS[driver]("mgagsn", 2, 5, SPEED)
    serving = contextlib.ExitStack()
    port = serving.enter_context(running(emulator))
    lab = lab_of(tmp_path, driver, port).model_copy(
        update={"channels": lab_of(tmp_path, driver, port).channels[:2]}
    )
    with Store(lab.database) as store:
        for n in (1, 2):
            store.jobs.submit(f"c{n}", "E1", E1_TWO_CYCLES, "e1.yaml", {})

    def vanish() -> None:
        channel = emulator.bank.channel(1)
        deadline = time.monotonic() + 30
        while not (channel.on and channel.step_time_s > 1800.0) and time.monotonic() < deadline:
            time.sleep(0.001)
        serving.close()

    threading.Thread(target=vanish, daemon=True).start()
    asyncio.run(asyncio.wait_for(Daemon(lab).run(until_idle=True), 60))
    with Store(lab.database) as store:
        assert not store.jobs.list("failed"), [job["reason"] for job in store.jobs.list("failed")]
        assert {run.state for run in store.runs()} == {"stopped"}
        unsure = ("could not release", "could not confirm the cell is safe")
        assert any(w in e["message"] for e in store.events() for w in unsure)
