"""E1 on MgAgSn for the full ~500 h at 1 s logging, through Runner and Store, against raw SQLite.

Prints samples/s of the whole simulated run (model, channel, runner, store), samples/s of
plain `executemany` inserts of the very same rows into a one-row-per-sample table (batches of
the same size, one transaction each, same pragmas), their ratio, and the growth of the peak
resident memory during the run. The store keeps samples as blocks (cyclerd.store.blocks),
which is why the whole run can beat the raw inserts. Run: .venv/bin/python bench/sim_throughput.py
"""

from __future__ import annotations

import asyncio
import resource
import sqlite3
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import numpy as np

from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.cursor import Cursor
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import Columns, Sink, Sinks, StoreSink
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import SAMPLE_COLUMNS, Store
from cyclerd.store.migrate import SAMPLES_V0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class BatchSizes(Sink):
    """Notes each batch's length, so that the baseline inserts the same batches."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        self.sizes.append(len(columns["seq"]))


def simulated_run(db: Path) -> tuple[int, float, list[int]]:
    text = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
    text = text.replace("every: 10 s", "every: 1 s")
    program = compile_protocol(loads(text))
    store = Store(db)
    run_id = store.create_run(program.name, "sim", text, {}, {"preset": "mgagsn", "seed": 1})
    clock = VirtualClock()
    channel = SimulatedChannel(make_cell("mgagsn", seed=1), clock)
    sizes: list[int] = []
    runner = Runner(program, channel, clock, Sinks([StoreSink(store, run_id), BatchSizes(sizes)]))
    start = time.perf_counter()
    asyncio.run(runner.run())
    elapsed = time.perf_counter() - start
    store.close()
    return sum(sizes), elapsed, sizes


def raw_inserts(source: Path, target: Path, sizes: list[int]) -> float:
    with Store(source) as store:
        samples = store.samples(1)
    ints = {"seq", "step", "cycle"}
    columns = [samples[n].astype(np.int64) if n in ints else samples[n] for n in SAMPLE_COLUMNS[:-1]]
    rows = list(
        zip([1] * len(columns[0]), *(c.tolist() for c in columns), [None] * len(columns[0]), strict=True)
    )
    db = sqlite3.connect(target, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(SAMPLES_V0)
    insert = "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    bounds = np.cumsum([0, *sizes])
    start = time.perf_counter()
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(insert, rows[lo:hi])
        db.execute("COMMIT")
    return time.perf_counter() - start


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        before = peak_rss_mb()
        count, run_s, sizes = simulated_run(Path(tmp) / "run.db")
        growth = peak_rss_mb() - before
        raw_s = raw_inserts(Path(tmp) / "run.db", Path(tmp) / "raw.db", sizes)
    run_rate, raw_rate = count / run_s, count / raw_s
    print(f"samples                      {count:>12,}  in {len(sizes):,} batches")
    print(f"simulated E1 (Runner+Store)  {run_rate:>12,.0f} samples/s  ({run_s:.2f} s)")
    print(f"raw SQLite executemany       {raw_rate:>12,.0f} samples/s  ({raw_s:.2f} s)")
    print(f"ratio                        {run_rate / raw_rate:>12.2f}  (target >= 0.5)")
    print(f"peak RSS growth during run   {growth:>12.1f} MB (target <= 30 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
