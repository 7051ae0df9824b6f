"""How soon the live short-circuit check catches a simulated short, and whether it cries wolf.

For each single-seed preset (mg, ag, sn) and seeds 1-10, E1 (plating_stripping.yaml, which stops
its loop on `until: {short_circuit: true}`) runs in virtual time; the cycle the runner reports
is compared with the cycle the simulator's short schedule starts leaking (its true onset).
False alarms are counted over runs that must not short: E1 on MgAgSn (250 cycles) and E9
(rate_capability.yaml) on the anode-less full cell.
Run: .venv/bin/python bench/short_detection.py [--seeds N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from importlib.resources import files
from pathlib import Path

from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import StoreSink
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Store

SINGLE_SEEDS = ("mg", "ag", "sn")


def library(name: str) -> str:
    return (files("cyclerd.protocols") / "library" / name).read_text()


def run(text: str, preset: str, seed: int, folder: Path) -> tuple[int | None, object, int]:
    """(the cycle the run reported a short in, the simulated cell, cycles run)."""
    program = compile_protocol(loads(text))
    store = Store(folder / f"{preset}-{seed}.db")
    run_id = store.create_run(program.name, "sim", text, {}, {"preset": preset, "seed": seed})
    clock = VirtualClock()
    cell = make_cell(preset, seed=seed, area_m2=program.area_m2)
    result = asyncio.run(
        Runner(program, SimulatedChannel(cell, clock), clock, StoreSink(store, run_id)).run()
    )
    store.close()
    return (None if result.short is None else result.short.cycle), cell, len(result.cycles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    seeds = range(1, parser.parse_args().seeds + 1)
    e1 = library("plating_stripping.yaml")
    delays: list[int] = []
    missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"{'preset':8} {'seed':>4} {'onset':>6} {'caught':>7} {'delay':>6}")
        for preset in SINGLE_SEEDS:
            for seed in seeds:
                caught, cell, _ = run(e1, preset, seed, folder)
                onset = cell.short_onset_cycle  # type: ignore[attr-defined]
                delay = None if caught is None or onset is None else caught - onset
                if delay is None:
                    missed += 1
                else:
                    delays.append(delay)
                shown = "-" if delay is None else f"{delay:+d}"
                print(f"{preset:8} {seed:>4} {onset or '-':>6} {caught or '-':>7} {shown:>6}")
        alarms: list[str] = []
        for text, preset, checked in (
            (e1, "mgagsn", (1, 2, 3)),
            (library("rate_capability.yaml"), "ncm811-anodeless", (1, 2, 3)),
        ):
            for seed in checked:
                caught, _, cycles = run(text, preset, seed, folder)
                verdict = "no short" if caught is None else f"SHORT reported in cycle {caught}"
                print(f"false-alarm check: {preset} seed {seed}: {cycles} cycles, {verdict}")
                if caught is not None:
                    alarms.append(f"{preset}/{seed}")
    print(
        f"detection delay (cycles after the true onset): median {statistics.median(delays):+.1f},"
        f" range {min(delays):+d} to {max(delays):+d} over {len(delays)} shorts; missed {missed}"
    )
    print(f"false alarms: {len(alarms)} ({', '.join(alarms) or 'none'})")


if __name__ == "__main__":
    main()
