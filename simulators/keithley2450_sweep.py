"""The Keithley 2450's linear source sweep (`:SOURce:SWEep:<function>:LINear`) run on the cell.

The command only sets up the sweep; `:INITiate` runs it, one reading per point into the named
buffer, as the trigger model the instrument builds for it does: clear the buffer, output on,
for each point source it, wait the delay, measure; output off at the end (or as soon as the
source limit holds the output when `failAbort` is ON). The level stays at the last point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cyclerd.simulators.scpi import Boolean, Choice, Command, Number, ScpiError, Token

if TYPE_CHECKING:
    from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator as K

log = logging.getLogger(__name__)
POINTS = Number(2, 1_000_000, 2, integer=True)
DELAY_S = Number(-1.0, 1e4, 0.0)  # -1: the source's auto delay (no extra time here)
SWEEPS = Number(1, 1_000_000, 1, integer=True)  # INF (a sweep without end) is refused
RANGE_TYPE = Choice("AUTO", "BEST", "FIXed")
FLAG = Boolean()
SPELLING = {"CURR": "CURRent", "VOLT": "VOLTage"}
ENVELOPE = {"CURR": Number(-1.05, 1.05, 0.0), "VOLT": Number(-210.0, 210.0, 0.0)}


@dataclass(frozen=True)
class Sweep:
    function: str  # CURR or VOLT
    levels: tuple[float, ...]  # one sweep, both directions when dual
    delay_s: float
    count: int
    range_type: str
    fail_abort: bool
    buffer: str


def linear(fn: str) -> Command[K]:
    """`[:SOURce[1]]:SWEep:<fn>:LINear <start>, <stop>, <points>[, <delay>, <count>, <rangeType>,
    <failAbort>, <dual>, "<bufferName>"]`: parsed whole before anything changes."""

    def put(k: K, args: list[Token]) -> None:
        if len(args) < 3:
            raise ScpiError(-109, "start, stop and points")
        if len(args) > 9:
            raise ScpiError(-108, f"{len(args)} parameters, at most 9")
        start, stop = (float(ENVELOPE[fn].parse(a)) for a in args[:2])
        points = int(POINTS.parse(args[2]))
        rest: list[Token | None] = [*args[3:], *[None] * (9 - len(args))]
        delay_s = 0.0 if rest[0] is None else float(DELAY_S.parse(rest[0]))
        count = 1 if rest[1] is None else int(SWEEPS.parse(rest[1]))
        range_type = "AUTO" if rest[2] is None else RANGE_TYPE.parse(rest[2])
        fail_abort = True if rest[3] is None else bool(FLAG.parse(rest[3]))
        dual = False if rest[4] is None else bool(FLAG.parse(rest[4]))
        buffer = k.buffer(rest[5])
        step = (stop - start) / (points - 1)
        levels = tuple(start + step * i for i in range(points))
        if dual:
            levels += levels[::-1]
        if range_type == "FIX" and not k.s.source_auto[fn]:
            most = max(abs(start), abs(stop))
            if most > 1.05 * k.s.source_range[fn]:
                raise ScpiError(-222, f"{most:g} beyond the fixed {k.s.source_range[fn]:g} range")
        k.s.source_function = fn
        k.sweep = Sweep(fn, levels, max(delay_s, 0.0), count, range_type, fail_abort, buffer)

    return Command(f"[:SOURce[1]]:SWEep:{SPELLING[fn]}:LINear", set=put)


def run(k: K, sweep: Sweep) -> None:
    """The sweep's trigger model, on the emulator's clock; leaves the output off."""
    s, fn = k.s, sweep.function
    k.buffers[sweep.buffer].clear()
    s.source_function = fn
    if sweep.range_type == "AUTO":
        s.source_auto[fn] = True
    elif sweep.range_type == "BEST":
        s.source_auto[fn] = False
        s.level[fn] = max(sweep.levels, key=abs)
        s.source_range[fn] = k.source_range_for(fn, s.level[fn])
    k.sync()
    s.output = True
    k.note_output()
    try:
        for _ in range(sweep.count):
            for level in sweep.levels:
                s.level[fn] = level
                k.wait(sweep.delay_s)
                k.take_reading(sweep.buffer)
                if sweep.fail_abort and k.limited():
                    log.info("sweep aborted: the source limit holds the output at %s %g", fn, level)
                    return
    finally:
        k.sync()
        s.output = False
        k.note_output()
