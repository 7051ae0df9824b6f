"""The chaos run's instrument faults (bench/chaos.py): each case of tests/test_instrument_faults.py
injected once against an emulator, judged by that test's own verdict.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fault table


@dataclass
class FaultFigures:
    instrument: str
    fault: str
    injected: int
    struck: int
    handled: bool
    reaction_s: float  # the longest: instrument time from a fault to the output off
    state: str
    problems: list[str]


async def inject_faults(folder: Path, only: str | None) -> list[FaultFigures]:
    import test_instrument_faults as table

    figures = []
    for number, case in enumerate(table.CASES):
        if only is not None and only not in f"{case.instrument}: {case.name}":
            continue
        outcome = None
        try:
            outcome = await table.measure(case, folder / f"fault-{number:02d}.db")
            problems = table.handled(case, outcome)
        except (OSError, RuntimeError, TimeoutError) as exc:  # the case broke off: not handled
            problems = [f"{type(exc).__name__}: {exc}"]
        reactions = [] if outcome is None else outcome.reactions_s
        figures.append(
            FaultFigures(
                instrument=case.instrument,
                fault=case.name,
                injected=case.times,
                struck=len(reactions),
                handled=not problems,
                reaction_s=max(reactions, default=math.inf),
                state="-" if outcome is None else outcome.state.value,
                problems=problems,
            )
        )
        print(
            f"  {case.instrument}: {case.name}: " + ("handled" if not problems else "NOT handled"), flush=True
        )
    return figures
