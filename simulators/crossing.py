"""Where between two samples of the simulated channel's grid a step's cut-off is crossed.

The grid finds the first sample past a level (a voltage cut-off, a current floor, a safety
limit); at the end of a strip the voltage can rise by 0.3 V between two such samples. Under a
constant current or voltage the cell's response is a function of time alone, so the crossing
is looked for on finer grids inside that interval until the sample past the level lies within
CLOSE_V (and CLOSE_REL of the current) of the one before it: the step ends there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from cyclerd.drivers.conditions import End
from cyclerd.simulators.cell import FloatArray

POINTS = 256  # samples of each finer grid: a model call costs little more than for one
CLOSE_V = 2e-3  # a crossing sample this close in voltage to the sample before it is found...
CLOSE_REL = 1e-3  # ...when its current is also this close (relative)
SHORTEST_S = 1e-4  # an interval this short is not divided again (noise can keep the two apart)
ROUNDS = 4  # finer grids at most, whatever the noise
_FRACTIONS = np.arange(1, POINTS + 1, dtype=np.float64) / POINTS  # a finer grid, in its interval


class Sample(NamedTuple):
    t_s: float  # time from the start of the model's response (the chunk's start)
    voltage_V: float
    current_A: float


Respond = Callable[[FloatArray], tuple[FloatArray, FloatArray]]  # times -> (voltage, current)
Levels = Callable[[FloatArray, FloatArray, FloatArray], End]  # (t, V, I) -> first sample past a level


def close(a: Sample, b: Sample) -> bool:
    """Two samples near enough for the later one to stand for the crossing between them."""
    return abs(b.voltage_V - a.voltage_V) <= CLOSE_V and abs(b.current_A - a.current_A) <= CLOSE_REL * max(
        abs(a.current_A), abs(b.current_A)
    )


def crossing(respond: Respond, levels: Levels, before: Sample, after: Sample, end: End) -> tuple[Sample, End]:
    """The first sample past a level between `before` (short of every level) and `after` (past
    one, why: `end`), and why it ends the step there.

    Each round asks the model once for POINTS samples up to the latest crossing sample found.
    The model draws new noise each time: when a finer grid finds no sample past the level, the
    crossing sample found so far stands.
    """
    for _ in range(ROUNDS):
        if close(before, after) or after.t_s - before.t_s <= SHORTEST_S:
            break
        t = before.t_s + (after.t_s - before.t_s) * _FRACTIONS
        t[-1] = after.t_s  # exactly: the interval's end is a sample already asked for
        voltage, current = respond(t)
        index, reason, detail = levels(t, voltage, current)
        if index < 0:
            break
        if index > 0:
            before = Sample(float(t[index - 1]), float(voltage[index - 1]), float(current[index - 1]))
        after, end = (
            Sample(float(t[index]), float(voltage[index]), float(current[index])),
            (index, reason, detail),
        )
    return after, end
