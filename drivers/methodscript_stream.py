"""One script of a step on a MethodSCRIPT device: what it is asked to do (its Plan), and its packages
turned into the step's batches, with the end conditions, charge and logging rules every channel
shares checked on the host as they stream in.
"""

from __future__ import annotations

import copy
import math
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

import numpy as np

from cyclerd.drivers.base import SAFETY, Batch, InstrumentGarbled, StepEnd, StepProgress
from cyclerd.drivers.clock import Clock
from cyclerd.drivers.conditions import NO_END, Counter, End, EndWatch, FloatArray
from cyclerd.drivers.methodscript_link import Link
from cyclerd.drivers.methodscript_scripts import Break
from cyclerd.drivers.record import RecordState
from cyclerd.drivers.record import select as logged
from cyclerd.protocols.program import SafetyLimits, StepCommand

MAX_SCRIPT_S = 7 * 86400.0  # one script's loop time at most; a longer step goes on in a new script
INTERVAL_MIN_S = 1e-3  # finest sampling a script is asked for
CONTINUE = "continue"  # a capped script ended with nothing else due: the next one follows
HOLE_INTERVALS = 3.0  # consecutive samples further apart than this many intervals: packages were lost

Breaks = tuple[tuple[Break, str], ...]  # device-side conditions and the reason of each


@dataclass
class Plan:
    """One script of a step and what its end means."""

    script: str
    interval_s: float
    on_end: str  # the reason when the device ends the script and no condition holds
    breaks: Breaks = ()
    current: bool = True  # packages carry a current (not at open circuit)


def timing(
    command: StepCommand, finest_s: float, progress: StepProgress, t_stop: float, scheduled: str
) -> tuple[float, float, str]:
    """Sample interval, loop time of the next script and what its natural end means.

    The loop time is a whole number of intervals plus half a one, so that the device's last
    sample falls on the scheduled end whether it stops at or just before its loop time.
    """
    wanted = max(min(finest_s, command.record.every_s or math.inf), INTERVAL_MIN_S)
    remaining = t_stop - progress.t_s
    if remaining > MAX_SCRIPT_S:
        return wanted, MAX_SCRIPT_S, CONTINUE
    if remaining <= 1e-9:
        return wanted, 0.0, scheduled
    count = max(1, math.ceil(remaining / wanted - 1e-9))
    return remaining / count, (count + 0.5) * remaining / count, scheduled


def voltage_breaks(command: StepCommand, limits: SafetyLimits) -> Breaks:
    """The voltage conditions the device checks itself (§3.9: `if p >= …` / `breakloop`)."""
    end, found = command.end, []
    if end.voltage_above_V is not None:
        found.append((Break("p", ">=", end.voltage_above_V), "voltage_above"))
    if end.voltage_below_V is not None:
        found.append((Break("p", "<=", end.voltage_below_V), "voltage_below"))
    if limits.voltage_max_V is not None:
        found.append((Break("p", ">", limits.voltage_max_V), SAFETY))
    if limits.voltage_min_V is not None:
        found.append((Break("p", "<", limits.voltage_min_V), SAFETY))
    return tuple(found)


@dataclass
class Tally:
    """A step's samples as they stream in: end conditions, charge, logging (the shared rules)."""

    command: StepCommand
    start: StepProgress
    limits: SafetyLimits
    extra: Callable[[FloatArray], End] | None = None
    counter: Counter = field(init=False)
    watch: EndWatch = field(init=False)
    record: RecordState = field(default_factory=RecordState)
    progress: StepProgress = field(init=False)
    first: bool = True
    pending: Batch | None = None  # the latest sample, when the record rule did not log it
    last_voltage_V: float | None = None

    def __post_init__(self) -> None:
        self.counter = Counter(self.start)
        self.watch = EndWatch(self.command, self.limits)
        self.progress = self.start

    def end_in(self, t: FloatArray, v: FloatArray, i: FloatArray) -> End:
        q, _ = copy.copy(self.counter).add(t, v, i)  # a trial count: the step may end mid-chunk
        return self.watch.check(t, v, i, q, self.extra(v) if self.extra else NO_END)

    def take(self, t: FloatArray, v: FloatArray, i: FloatArray, final: bool) -> Batch | None:
        """Count these samples and return the ones to log (first and last of a step always)."""
        q, e = self.counter.add(t, v, i)
        keep = logged(self.command.record, t, v, i, self.record)
        keep[0] |= self.first
        keep[-1] |= final
        self.first = False
        self.progress = StepProgress(float(t[-1]), float(q[-1]), float(e[-1]))
        self.last_voltage_V = float(v[-1])
        self.pending = None if keep[-1] else Batch(t[-1:], v[-1:], i[-1:], q[-1:], e[-1:])
        return Batch(t[keep], v[keep], i[keep], q[keep], e[keep]) if keep.any() else None

    def tail(self) -> Batch | None:
        last, self.pending = self.pending, None
        return last


async def stream(link: Link, plan: Plan, tally: Tally, clock: Clock) -> AsyncGenerator[Batch | StepEnd, None]:
    """Run one script; turn its packages into batches until it or an end condition ends it.

    A package is due every interval of the device's time (`clock` keeps it); one that does not
    come within the link's timeout after that is a stalled device or a dead line.
    """
    token = await link.start(plan.script)
    origin = previous = tally.progress.t_s  # device time 0 (timer_start) is this step time
    patience_s = clock.wall_s(plan.interval_s) + link.timeout_s
    while True:
        packages, over = await link.packages(token, patience_s)
        rows = [p for p in packages if len(p) >= (3 if plan.current else 2)]
        if rows:
            t = origin + np.array([p[0].value for p in rows])
            _check_continuous(link, previous, t, plan.interval_s)
            previous = float(t[-1])
            v = np.array([p[1].value for p in rows])
            i = np.array([p[2].value for p in rows]) if plan.current else np.zeros(len(rows))
            index, reason, detail = tally.end_in(t, v, i)
            if index >= 0:
                if not over:
                    await link.abort(token)  # a host-side end: stop the device first
                if (batch := tally.take(t[: index + 1], v[: index + 1], i[: index + 1], True)) is not None:
                    yield batch
                yield StepEnd(reason, tally.progress, detail)
                return
            if (batch := tally.take(t, v, i, final=False)) is not None:
                yield batch
        if over:
            reason, detail = _device_reason(plan, tally)
            if reason != CONTINUE and (last := tally.tail()) is not None:
                yield last
            yield StepEnd(reason, tally.progress, detail)
            return


def _check_continuous(link: Link, previous: float, t: FloatArray, interval_s: float) -> None:
    """The device samples on its own timer, so a jump in its timestamps is data lost on the way
    (an overrun, a hiccup of the line): the step cannot count across what it did not see."""
    steps = np.diff(t, prepend=previous)
    k = int(np.argmax(steps))
    if steps[k] > HOLE_INTERVALS * interval_s:
        raise InstrumentGarbled(
            link.name,
            f"lost packages: no sample for {steps[k]:.3g} s of device time (step time"
            f" {t[k] - steps[k]:.1f} to {t[k]:.1f} s), where one comes every {interval_s:.3g} s",
        )


def _device_reason(plan: Plan, tally: Tally) -> tuple[str, str]:
    """Why the device ended a script when no host-side condition held: a breakloop whose
    value the wire rounded across the limit, else the loop's scheduled end."""
    last = tally.last_voltage_V
    for brk, reason in sorted(plan.breaks, key=lambda b: b[1] != SAFETY):
        if last is not None and _holds(brk, last):
            return reason, f"device breakloop: {brk.variable} {brk.op} {brk.limit:g}"
    return plan.on_end, ""


def _holds(brk: Break, value: float) -> bool:
    """A device-side condition on a value as received (the wire rounds to about 1 ppm)."""
    slack = 1e-6 * max(abs(brk.limit), 1e-3)
    if brk.op in (">=", ">"):
        return value >= brk.limit - slack
    if brk.op in ("<=", "<"):
        return value <= brk.limit + slack
    return abs(value - brk.limit) <= slack
