"""How much faster than real time a simulated cyclic voltammogram runs, against plating cycles.

Runs the library cv.yaml (E10: 1 h rest, three 2.0 V -> 0 V -> 2.0 V scans at 0.1 mV/s, ~34 h)
on each single-seed preset and on MgAgSn, and the first 20 cycles of plating_stripping.yaml (E1,
~40 h) on MgAgSn as the baseline, each through Runner and Store in virtual time. Prints test
time over wall time for each (target for the CV: >= 10 000x) and the CV's ratio to the baseline,
which shows what the sweep's one-hold-per-millivolt costs next to constant-current steps.
Run: .venv/bin/python bench/cv_speed.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from importlib.resources import files
from pathlib import Path

from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import Sinks, StoreSink
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Store

CV_PRESETS = ("mgagsn", "mg", "ag", "sn")


def speed_up(
    db: Path, protocol: str, preset: str, edit: tuple[str, str] | None = None
) -> tuple[float, float]:
    """(test hours, test time over wall time) of one simulated run of a library protocol."""
    text = (files("cyclerd.protocols") / "library" / protocol).read_text()
    if edit:
        text = text.replace(*edit)
    program = compile_protocol(loads(text))
    with Store(db) as store:
        run_id = store.create_run(program.name, "sim", text, {}, {"preset": preset, "seed": 1})
        clock = VirtualClock()
        channel = SimulatedChannel(make_cell(preset, seed=1), clock)
        runner = Runner(program, channel, clock, Sinks([StoreSink(store, run_id)]))
        start = time.perf_counter()
        asyncio.run(runner.run())
        wall = time.perf_counter() - start
    return clock.now() / 3600, clock.now() / wall


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        base_h, base = speed_up(
            Path(tmp) / "e1.db", "plating_stripping.yaml", "mgagsn", ("count: 250", "count: 20")
        )
        print(f"E1, 20 cycles, mgagsn     {base_h:6.1f} h  {base:>10,.0f}x real time  (baseline)")
        for preset in CV_PRESETS:
            hours, cv = speed_up(Path(tmp) / f"cv-{preset}.db", "cv.yaml", preset)
            print(
                f"E10 cv.yaml, {preset:<12} {hours:6.1f} h  {cv:>10,.0f}x real time  "
                f"{cv / base:.3f} of the baseline  (target >= 10,000x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
