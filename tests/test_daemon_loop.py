"""No channel's bookkeeping stalls the others: taking a long run up after a restart, and reading
and compiling a protocol of thousands of steps at job start, happen off the event loop, and an
instrument left driving its cell is switched off before the run's history is read back.

The long run: E1 logged every 1.5 s on a simulated cell (800 000 samples in some 220 cycles),
recorded once per module and copied for each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest

from cyclerd.daemon.config import Lab
from cyclerd.daemon.service import Daemon
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

E1 = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
DENSE_E1 = E1.replace("every: 10 s", "every: 1.5 s").replace("voltage_change: 1 mV", "")
LONG_RUN_SAMPLES = 800_000  # of the 900 000 the whole run logs
STALL_S = 0.25  # the longest the event loop may go without turning while a channel takes a run up
# A worker thread still shares the GIL, and the YAML and pydantic parsers (C and Rust) keep it for
# a whole file at a time: a tenth of a second or two for the largest file the loader takes, and
# the busy channel's own writes, each waiting for the GIL, add to that (0.33-0.51 s measured on
# 2 cores when written; 0.64-0.75 s idle and 1.24 s in a CI run on this machine since). Compiled
# on the loop, the same file stands it still for the whole parse: 4.5 s.
COMPILE_STALL_S = 2.0


class LoopWatch:
    """How long the event loop went, at most, without running this task (which asks every 5 ms)."""

    def __init__(self) -> None:
        self.longest_s = 0.0
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            self.longest_s = max(self.longest_s, time.monotonic() - before - 0.005)

    def stop(self) -> float:
        self._task.cancel()
        return self.longest_s


def last_seq(store: Store, run_id: int) -> int:
    rows = store.read("SELECT MAX(last_seq) AS seq FROM sample_blocks WHERE run_id = ?", (run_id,))
    return -1 if rows[0]["seq"] is None else int(rows[0]["seq"])


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose run 1, on channel "ch1", the daemon left mid-run after 800 000 samples."""
    database = tmp_path_factory.mktemp("long") / "lab.db"
    lab = Lab.model_validate(
        {"lab": "lab", "database": database, "channels": [{"name": "ch1", "sim": "mgagsn"}]}
    )

    async def record() -> None:
        with Store(database) as store:
            store.jobs.submit("ch1", "E1", DENSE_E1, "e1.yaml", {})
            serving = asyncio.create_task(Daemon(lab).run())
            while last_seq(store, 1) < LONG_RUN_SAMPLES:
                assert all(r.state == "running" for r in store.runs()), "the run ended before its cut"
                await asyncio.sleep(0.01)
            serving.cancel()  # as at SIGTERM: the cell safe, the run kept resumable
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            assert store.run(1).state == "running"

    asyncio.run(record())
    return database


@pytest.fixture
def copy_of_long_run(long_run: Path, tmp_path: Path) -> Path:
    database = tmp_path / "lab.db"
    shutil.copy(long_run, database)
    return database


async def test_taking_a_long_run_up_does_not_stall_the_other_channels(copy_of_long_run: Path) -> None:
    lab = Lab.model_validate(
        {
            "lab": "lab",
            "database": copy_of_long_run,
            "channels": [{"name": "ch1", "sim": "mgagsn"}, {"name": "ch2", "sim": "mgagsn", "seed": 2}],
        }
    )
    with Store(copy_of_long_run) as store:
        store.jobs.submit("ch2", "E1", E1, "e1.yaml", {})
        before = last_seq(store, 1)
        watch = LoopWatch()
        serving = asyncio.create_task(Daemon(lab).run())
        try:
            while last_seq(store, 1) <= before:  # taken up: run 1 records again
                await asyncio.sleep(0.01)
        finally:
            longest = watch.stop()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        assert [e["kind"] for e in store.events(1)].count("gap") == 1
    assert longest < STALL_S, f"the event loop stood still for {longest:.2f} s"


@pytest.fixture
def smu() -> Iterator[tuple[Keithley2450Emulator, str]]:
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=3600.0)
    with running(device) as port:
        yield device, f"TCPIP::127.0.0.1::{port}::SOCKET"


async def test_an_instrument_left_driving_is_switched_off_before_the_history_is_read(
    copy_of_long_run: Path, smu: tuple[Keithley2450Emulator, str]
) -> None:
    """The daemon died and the instrument went on plating by itself; the channel is now served
    by that instrument. At the restart its output goes off at once, not after the take-up's
    bookkeeping."""
    device, resource = smu
    device.s.output = True  # what an SMU does when its host dies mid-step: it goes on
    lab = Lab.model_validate(
        {
            "lab": "lab",
            "database": copy_of_long_run,
            "speed": 3600.0,
            "instruments": [{"name": "smu", "driver": "keithley2450", "resource": resource, "poll_s": 10.0}],
            "channels": [{"name": "ch1", "instrument": "smu"}],
        }
    )
    started = time.monotonic()
    serving = asyncio.create_task(Daemon(lab).run())
    try:
        while device.s.output:
            await asyncio.sleep(0.002)
        off_after = time.monotonic() - started
        with Store(copy_of_long_run) as store:
            while [e["kind"] for e in store.events(1)].count("gap") == 0:
                await asyncio.sleep(0.01)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    assert off_after < STALL_S, f"the output stayed on {off_after:.2f} s after the restart"


PROTOCOL_HEAD = """\
name: many short rests
cell:
  area: 1 cm^2
safety:
  voltage_min: -1 V
  voltage_max: 3 V
  current_max: 5 mA
record:
  every: 10 s
steps:
"""


async def test_a_protocol_of_thousands_of_steps_is_compiled_off_the_event_loop(tmp_path: Path) -> None:
    """ch2's job is 9 990 steps (near the loader's limit): reading and compiling it takes
    seconds, in a worker thread, while ch1 acquires without a stall."""
    steps = "".join(f"  - rest: {1 + k % 7} s\n" for k in range(9_990))
    lab = Lab.model_validate(
        {
            "lab": "lab",
            "database": tmp_path / "lab.db",
            "channels": [{"name": "ch1", "sim": "mgagsn"}, {"name": "ch2", "sim": "mgagsn"}],
        }
    )
    with Store(lab.database) as store:
        store.jobs.submit("ch1", "E1", DENSE_E1, "e1.yaml", {})
        serving = asyncio.create_task(Daemon(lab).run())
        try:
            while last_seq(store, 1) < 1000:  # ch1 acquires
                await asyncio.sleep(0.01)
            watch = LoopWatch()
            store.jobs.submit("ch2", "rests", PROTOCOL_HEAD + steps, "rests.yaml", {})
            while not any(r.channel == "ch2" for r in store.runs()):  # ch2's run is compiled and starts
                await asyncio.sleep(0.01)
            longest = watch.stop()
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
    assert longest < COMPILE_STALL_S, f"the event loop stood still for {longest:.2f} s"
