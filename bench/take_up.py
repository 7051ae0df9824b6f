"""Taking a long run up after a restart: how long it takes, how long it stalls the other channels,
and how long an instrument left driving its cell stays on.

For each size, E1 (plating/stripping) logged every 1.5 s on a simulated cell is recorded up to
that many samples and the daemon cancelled there (as at SIGTERM: the run kept resumable). Then,
on a copy of that store each time:

- take-up: a daemon serving the run's channel and a second channel with a job of its own; the
  time until the run records again, and the longest the event loop went without turning
  meanwhile (a task asking every 5 ms), which is how long every channel was held up;
- the same for a store whose cycles' voltage statistics were not kept (a run recorded by an
  older cyclerd): they are computed once, from the samples, in a worker thread;
- output on: the run's channel served by a Keithley 2450 emulator whose output was left on (as a
  host that died mid-step leaves it); the time until the daemon switches it off.

Run: .venv/bin/python bench/take_up.py [--samples 200000 557000 825000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sqlite3
import statistics
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from cyclerd.daemon.config import Lab
from cyclerd.daemon.service import Daemon
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

E1 = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
DENSE_E1 = E1.replace("every: 10 s", "every: 1.5 s").replace("voltage_change: 1 mV", "")
SPEED = 3600.0


def last_seq(store: Store, run_id: int) -> int:
    rows = store.read("SELECT MAX(last_seq) AS seq FROM sample_blocks WHERE run_id = ?", (run_id,))
    return -1 if rows[0]["seq"] is None else int(rows[0]["seq"])


async def record(database: Path, samples: int) -> int:
    """Run 1 on channel ch1, cut off after `samples`; its number of finished cycles."""
    lab = Lab.model_validate(
        {"lab": "b", "database": database, "channels": [{"name": "ch1", "sim": "mgagsn"}]}
    )
    with Store(database) as store:
        store.jobs.submit("ch1", "E1", DENSE_E1, "e1.yaml", {})
        serving = asyncio.create_task(Daemon(lab).run())
        while last_seq(store, 1) < samples:
            await asyncio.sleep(0.01)
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        return len(store.cycles(1)["cycle"])


async def take_up(database: Path) -> tuple[float, float]:
    """Seconds until the run records again, and the event loop's longest stall meanwhile."""
    lab = Lab.model_validate(
        {
            "lab": "b",
            "database": database,
            "channels": [{"name": "ch1", "sim": "mgagsn"}, {"name": "ch2", "sim": "mgagsn", "seed": 2}],
        }
    )
    longest = 0.0

    async def watch() -> None:
        nonlocal longest
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.005)
            longest = max(longest, time.monotonic() - before - 0.005)

    with Store(database) as store:
        store.jobs.submit("ch2", "E1", E1, "e1.yaml", {})
        before = last_seq(store, 1)
        watching = asyncio.create_task(watch())
        started = time.monotonic()
        serving = asyncio.create_task(Daemon(lab).run())
        while last_seq(store, 1) <= before:
            await asyncio.sleep(0.002)
        took = time.monotonic() - started
        watching.cancel()
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    return took, longest


async def output_on(database: Path) -> float:
    """Seconds from the daemon's start until the instrument left driving is switched off."""
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=SPEED)
    with running(device) as port:
        device.s.output = True
        lab = Lab.model_validate(
            {
                "lab": "b",
                "database": database,
                "speed": SPEED,
                "instruments": [
                    {
                        "name": "smu",
                        "driver": "keithley2450",
                        "resource": f"TCPIP::127.0.0.1::{port}::SOCKET",
                        "poll_s": 10.0,
                    }
                ],
                "channels": [{"name": "ch1", "instrument": "smu"}],
            }
        )
        started = time.monotonic()
        serving = asyncio.create_task(Daemon(lab).run())
        while device.s.output:
            await asyncio.sleep(0.001)
        took = time.monotonic() - started
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
    return took


def without_stats(database: Path) -> None:
    """As an older cyclerd left the store: no voltage statistics kept per cycle."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("DROP TABLE IF EXISTS cycle_voltage_stats")
        db.commit()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, nargs="+", default=[200_000, 557_000, 825_000])
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    print(
        "samples  cycles  take-up s (median, range)  loop stall s (median, range)  output on s (median)"
        "  not kept: take-up s, stall s (medians)"
    )
    with tempfile.TemporaryDirectory() as folder:
        for samples in options.samples:
            original = Path(folder) / f"run-{samples}.db"
            cycles = asyncio.run(record(original, samples))
            took, stalls, on, older = [], [], [], []
            for k in range(options.repeat):
                copy = Path(folder) / f"copy-{samples}-{k}.db"
                shutil.copy(original, copy)
                t, stall = asyncio.run(take_up(copy))
                took.append(t)
                stalls.append(stall)
                copy = Path(folder) / f"smu-{samples}-{k}.db"
                shutil.copy(original, copy)
                on.append(asyncio.run(output_on(copy)))
                copy = Path(folder) / f"older-{samples}-{k}.db"
                shutil.copy(original, copy)
                without_stats(copy)
                older.append(asyncio.run(take_up(copy)))
            print(
                f"{samples:>7}  {cycles:>6}  {statistics.median(took):6.3f} ({min(took):.3f}-{max(took):.3f})"
                f"       {statistics.median(stalls):6.3f} ({min(stalls):.3f}-{max(stalls):.3f})"
                f"          {statistics.median(on):6.3f}"
                f"          {statistics.median(t for t, _ in older):6.3f}"
                f" {statistics.median(s for _, s in older):6.3f}"
            )


if __name__ == "__main__":
    main()
