"""End conditions, safety limits and charge counting on arrays of samples, shared by all channels.

The simulated channel, the software stepper (SMUs) and streaming potentiostats all see
samples in chunks; these helpers answer "where in this chunk must the step end, and why" and
keep the step's running charge and energy, so every channel ends steps the same way.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from numpy.typing import NDArray

from cyclerd.drivers.base import INTERRUPT, SAFETY, StepProgress
from cyclerd.protocols.program import SafetyLimits, StepCommand

FloatArray = NDArray[np.float64]
DVDT_WINDOW_S = 60.0  # |dV/dt| is judged over this much step time
CHARGE_TOLERANCE = 1e-12  # relative: a charge reached to rounding is reached

End = tuple[int, str, str]  # index in the chunk (-1: none), reason, detail
NO_END: End = (-1, "", "")
# Ends a sample meets by its own voltage or current (a cut-off, a floor, a safety limit), not
# by time, charge or history: between two samples such an end has a crossing to look for.
LEVELS = frozenset({"voltage_above", "voltage_below", "current_below", SAFETY})


def first(mask: NDArray[np.bool_]) -> int:
    """Index of the first True, or -1."""
    return int(np.argmax(mask)) if mask.any() else -1


def earliest(candidates: list[End]) -> End:
    found = [c for c in candidates if c[0] >= 0]
    return min(found, key=lambda c: c[0]) if found else NO_END


def safety_end(limits: SafetyLimits, voltage_V: FloatArray, current_A: FloatArray) -> End:
    """The first sample beyond a safety limit."""
    checks: list[End] = []
    v, i = voltage_V, current_A
    if limits.voltage_max_V is not None and (k := first(v > limits.voltage_max_V)) >= 0:
        checks.append((k, SAFETY, f"voltage {v[k]:.4g} V above {limits.voltage_max_V:g} V"))
    if limits.voltage_min_V is not None and (k := first(v < limits.voltage_min_V)) >= 0:
        checks.append((k, SAFETY, f"voltage {v[k]:.4g} V below {limits.voltage_min_V:g} V"))
    if limits.current_max_A is not None and (k := first(np.abs(i) > limits.current_max_A * (1 + 1e-9))) >= 0:
        checks.append((k, SAFETY, f"|current| {abs(i[k]):.4g} A above {limits.current_max_A:.4g} A"))
    return earliest(checks)


def safety_end_one(limits: SafetyLimits, voltage_V: float, current_A: float) -> End:
    """`safety_end` for a single sample, without numpy (the same limits, the same words)."""
    v, i = voltage_V, current_A
    if limits.voltage_max_V is not None and v > limits.voltage_max_V:
        return 0, SAFETY, f"voltage {v:.4g} V above {limits.voltage_max_V:g} V"
    if limits.voltage_min_V is not None and v < limits.voltage_min_V:
        return 0, SAFETY, f"voltage {v:.4g} V below {limits.voltage_min_V:g} V"
    if limits.current_max_A is not None and abs(i) > limits.current_max_A * (1 + 1e-9):
        return 0, SAFETY, f"|current| {abs(i):.4g} A above {limits.current_max_A:.4g} A"
    return NO_END


TIE_S = 1e-6  # scheduled ends closer than this are simultaneous (charge time vs a pause)


def scheduled_end(
    command: StepCommand, current_A: float, start: StepProgress, pause_at_s: float | None
) -> tuple[float, str]:
    """The step time at which a step ends if nothing else happens first, and why.

    Known in advance: its duration, its charge at a constant current, a pause for an
    every-block. On a tie the step's own end wins over a pause, so a block due exactly when
    the step ends runs once, as the step's at-end block.
    """
    ends = [(math.inf, "")]
    if command.end.duration_s is not None:
        ends.append((command.end.duration_s, "duration"))
    if command.end.charge_As is not None and current_A != 0:
        remaining = command.end.charge_As - abs(start.charge_As)
        ends.append((start.t_s + remaining / abs(current_A), "charge"))
    if pause_at_s is not None:
        ends.append((pause_at_s, INTERRUPT))
    soonest = min(t for t, _ in ends)
    tied = [end for end in ends if end[0] <= soonest + TIE_S]
    return min(tied, key=lambda end: end[1] == INTERRUPT)


class Counter:
    """The step's running charge (A·s) and energy (J), by the trapezoid rule over samples."""

    def __init__(self, start: StepProgress) -> None:
        self.charge_As = start.charge_As
        self.energy_J = start.energy_J
        self._start_t = start.t_s
        self._last: tuple[float, float, float] | None = None  # t, V, I of the previous sample

    def add(
        self, t_s: FloatArray, voltage_V: FloatArray, current_A: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        """Running totals at each new sample.

        A resumed step's first stretch, from where it stood to the first new sample, counts with
        that sample's values: nothing flows unmeasured.
        """
        if self._last is None:
            self._last = (min(self._start_t, float(t_s[0])), float(voltage_V[0]), float(current_A[0]))
        t0, v0, i0 = self._last
        t = np.concatenate(([t0], t_s))
        v = np.concatenate(([v0], voltage_V))
        i = np.concatenate(([i0], current_A))
        dt = np.diff(t)
        q = self.charge_As + np.cumsum(0.5 * (i[1:] + i[:-1]) * dt)
        p = v * i
        e = self.energy_J + np.cumsum(0.5 * (p[1:] + p[:-1]) * dt)
        self.charge_As, self.energy_J = float(q[-1]), float(e[-1])
        self._last = (float(t_s[-1]), float(voltage_V[-1]), float(current_A[-1]))
        return q, e

    def add_one(self, t_s: float, voltage_V: float, current_A: float) -> tuple[float, float]:
        """`add` for a single sample, without numpy: an SMU is polled one reading at a time."""
        t0, v0, i0 = self._last if self._last is not None else (min(self._start_t, t_s), voltage_V, current_A)
        dt = t_s - t0
        self.charge_As += 0.5 * (current_A + i0) * dt
        self.energy_J += 0.5 * (voltage_V * current_A + v0 * i0) * dt
        self._last = (t_s, voltage_V, current_A)
        return self.charge_As, self.energy_J


class EndWatch:
    """Watches a step's end conditions over successive chunks of samples."""

    def __init__(self, command: StepCommand, limits: SafetyLimits) -> None:
        self.command = command
        self.limits = limits
        self._history = np.empty((0, 2))  # recent (t, V) pairs, for |dV/dt|
        self._recent: deque[tuple[float, float]] = deque()  # the same, for check_one

    def check(
        self,
        t_s: FloatArray,
        voltage_V: FloatArray,
        current_A: FloatArray,
        charge_As: FloatArray,
        extra: End = NO_END,
    ) -> End:
        """The first sample of this chunk where the step must end; safety wins ties."""
        end = self.command.end
        v, i = voltage_V, current_A
        candidates: list[End] = [self._levels(v, i, extra)]
        if end.charge_As is not None:
            reached = np.abs(charge_As) >= end.charge_As * (1 - CHARGE_TOLERANCE)
            candidates.append((first(reached), "charge", ""))
        if end.duration_s is not None:
            candidates.append((first(t_s >= end.duration_s - 1e-9), "duration", ""))
        if end.dvdt_below_V_per_s is not None:
            candidates.append((self._dvdt(t_s, v, end.dvdt_below_V_per_s), "dvdt_below", ""))
        if end.dvdt_below_V_per_s is not None:  # the history serves |dV/dt| only
            self._remember(t_s, v)
        return self._safer(earliest(candidates), v, i)

    def levels(self, voltage_V: FloatArray, current_A: FloatArray, extra: End = NO_END) -> End:
        """`check` for the conditions a single sample meets by its level alone (LEVELS).

        Remembers nothing, so a channel may ask again about samples on a finer grid inside the
        interval where a level was crossed, to find the crossing.
        """
        return self._safer(self._levels(voltage_V, current_A, extra), voltage_V, current_A)

    def _levels(self, v: FloatArray, i: FloatArray, extra: End) -> End:
        end = self.command.end
        candidates: list[End] = [extra]
        if end.voltage_above_V is not None:
            candidates.append((first(v >= end.voltage_above_V), "voltage_above", ""))
        if end.voltage_below_V is not None:
            candidates.append((first(v <= end.voltage_below_V), "voltage_below", ""))
        if end.current_below_A is not None:
            candidates.append((first(np.abs(i) < end.current_below_A), "current_below", ""))
        return earliest(candidates)

    def _safer(self, found: End, v: FloatArray, i: FloatArray) -> End:
        """`found`, unless a safety limit is crossed at the same sample or sooner."""
        unsafe = safety_end(self.limits, v, i)
        if unsafe[0] >= 0 and (found[0] < 0 or unsafe[0] <= found[0]):
            return unsafe
        return found

    def check_one(self, t_s: float, voltage_V: float, current_A: float, charge_As: float) -> End:
        """`check` for a single sample, without numpy (same conditions, same precedence)."""
        end, v, i = self.command.end, voltage_V, current_A
        unsafe = safety_end_one(self.limits, v, i)
        if unsafe[0] >= 0:
            return unsafe
        if end.voltage_above_V is not None and v >= end.voltage_above_V:
            return 0, "voltage_above", ""
        if end.voltage_below_V is not None and v <= end.voltage_below_V:
            return 0, "voltage_below", ""
        if end.current_below_A is not None and abs(i) < end.current_below_A:
            return 0, "current_below", ""
        if end.charge_As is not None and abs(charge_As) >= end.charge_As * (1 - CHARGE_TOLERANCE):
            return 0, "charge", ""
        if end.duration_s is not None and t_s >= end.duration_s - 1e-9:
            return 0, "duration", ""
        if end.dvdt_below_V_per_s is not None and self._dvdt_one(t_s, v, end.dvdt_below_V_per_s):
            return 0, "dvdt_below", ""
        return NO_END

    def _dvdt_one(self, t_s: float, voltage_V: float, limit: float) -> bool:
        recent = self._recent
        recent.append((t_s, voltage_V))
        while len(recent) > 1 and recent[1][0] <= t_s - DVDT_WINDOW_S + 1e-9:
            recent.popleft()  # keep exactly one sample at least a window old, at the front
        t0, v0 = recent[0]
        span = t_s - t0
        return span >= DVDT_WINDOW_S - 1e-6 and abs(voltage_V - v0) / span < limit

    def _dvdt(self, t_s: FloatArray, voltage_V: FloatArray, limit: float) -> int:
        t = np.concatenate((self._history[:, 0], t_s))
        v = np.concatenate((self._history[:, 1], voltage_V))
        # The latest sample at least one window back (none yet: the first sample, span too short).
        back = np.maximum(np.searchsorted(t, t - DVDT_WINDOW_S + 1e-9, side="right") - 1, 0)
        span = t - t[back]
        with np.errstate(divide="ignore", invalid="ignore"):
            slope = np.abs(v - v[back]) / span
        ok = (span >= DVDT_WINDOW_S - 1e-6) & (slope < limit)
        return first(ok[len(self._history) :])

    def _remember(self, t_s: FloatArray, voltage_V: FloatArray) -> None:
        pairs = np.column_stack((t_s, voltage_V))
        history = np.concatenate((self._history, pairs))
        keep_from = np.searchsorted(history[:, 0], history[-1, 0] - DVDT_WINDOW_S - 1.0)
        self._history = history[keep_from:]
