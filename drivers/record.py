"""Which measured samples to keep: the logging rules (every Δt, ΔV, ΔI) applied to arrays.

Shared by every channel that measures more often than it logs (the simulator's fine grid, the
software stepper's polls). The step's first and last samples are always kept by the caller.

`select` keeps exactly the samples `select_one` would keep one at a time (the same float
comparisons, chunk after chunk), but walks only from kept sample to kept sample: after a keep
the reference is that sample itself, so numpy can work out beforehand, for every sample, which
one the rule would log next if it were the last kept (`_next_keeps`). A shortcut through a
clock grid, floor((t - anchor) / every), would not do: on uneven times it keeps other samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cyclerd.protocols.program import RecordRule

BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]
OffsetArray = NDArray[np.int32]

WINDOW = 32  # farthest offset checked for every sample at once (bits of a uint32); then `_first`
SLACK_S = 1e-9  # a sample this much early still counts as due, against float round-off in t


@dataclass
class RecordState:
    """What was logged last, carried from one chunk of samples to the next."""

    t_s: float = -math.inf
    voltage_V: float = math.nan
    current_A: float = math.nan


def select(
    rule: RecordRule, t_s: FloatArray, voltage_V: FloatArray, current_A: FloatArray, state: RecordState
) -> BoolArray:
    """Mask of samples to log; updates `state` to the last one kept.

    Time: a sample is kept when `every_s` has passed since the last kept one. Changes: a sample
    is kept when V or I has moved by at least the rule's change since the last kept sample (a
    deadband, so noise smaller than the change never logs).
    """
    n = len(t_s)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, silently, as in select_one
        everything = (
            rule.every_s is not None
            and t_s[0] - state.t_s >= rule.every_s - SLACK_S
            and (n == 1 or np.diff(t_s).min() >= rule.every_s - SLACK_S)
        )
    if everything:
        keep[:] = True  # logging at least as often as the samples come: all of them, whatever changed
    elif rule.every_s is not None or rule.voltage_change_V is not None or rule.current_change_A is not None:
        keep = _kept(rule, t_s, voltage_V, current_A, state)
    kept = np.flatnonzero(keep)
    if len(kept):
        last = kept[-1]
        state.t_s, state.voltage_V, state.current_A = (
            float(t_s[last]),
            float(voltage_V[last]),
            float(current_A[last]),
        )
    return keep


def _kept(rule: RecordRule, t: FloatArray, v: FloatArray, i: FloatArray, state: RecordState) -> BoolArray:
    """Mask of the samples to log, visiting only those (a Python step per kept sample).

    The first keep is measured against `state`, whose sample is not in the arrays; each next
    one is read off `_next_keeps`, or searched for by `_first` when it lies beyond the window.
    """
    n = len(t)
    mark = bytearray(n)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, silently, as in select_one
        k = _first(rule, t, v, i, 0, n, (state.t_s, state.voltage_V, state.current_A))
        if k < n:
            window = _window(rule.every_s, t)
            step = _next_keeps(rule, t, v, i, window).data  # a memoryview: plain ints, fast to index
            while k < n:
                mark[k] = 1
                d = step[k]
                k = k + d if d else _first(rule, t, v, i, k + window + 1, n, (t[k], v[k], i[k]))
    return np.frombuffer(mark, dtype=bool)


def _window(every_s: float | None, t: FloatArray) -> int:
    """How many offsets `_next_keeps` looks at: enough for the clock to log after any sample
    (on a regular grid, the samples in `every_s`), at most WINDOW.

    Only speed depends on it: a keep farther away is found by `_first`.
    """
    most = min(WINDOW, len(t) - 1)
    if every_s is None or most < 1:
        return most
    least = every_s - SLACK_S
    d = min(most, max(1, int(np.searchsorted(t, t[0] + least))))  # what the first sample needs
    while d < most and not (t[d:] - t[:-d] >= least).all():
        d += 1
    return d


def _next_keeps(rule: RecordRule, t: FloatArray, v: FloatArray, i: FloatArray, window: int) -> OffsetArray:
    """For every sample k, the offset d <= window of the first later sample the rule logs if k
    is the last one kept, 0 when none: one numpy pass per offset, not a Python step per sample.

    A quantity whose range in the chunk is below its change cannot move that far between two
    of its samples, so it is left out; so is the clock at offsets below one where it logs
    nothing, when the times are ordered. Offsets are gathered as bits, not written where they
    fire: a mask that follows noise makes a masked write slow.
    """
    n = len(t)
    fired = np.zeros(n, dtype=np.uint32)  # bit d - 1 of k: the rule logs k + d after k
    parts = [
        (x, change)
        for x, change in ((v, rule.voltage_change_V), (i, rule.current_change_A))
        if change is not None and not np.ptp(x) < change
    ]
    clock = rule.every_s is not None
    least = math.inf if rule.every_s is None else rule.every_s - SLACK_S
    ordered = clock and bool((t[1:] >= t[:-1]).all())
    for d in range(window, 0, -1):  # downwards, so the clock can stop where it logs nothing
        fires = [~(np.abs(x[d:] - x[:-d]) < change) for x, change in parts]
        if clock:
            due = t[d:] - t[:-d] >= least
            clock = not ordered or bool(due.any())
            fires.append(due)
        for hit in fires:
            fired[:-d] |= np.left_shift(hit, d - 1, dtype=np.uint32)
    lowest = fired & (~fired + np.uint32(1))  # two's complement keeps the lowest bit, 2 ** (d - 1)
    return np.frexp(lowest)[1]  # 2 ** (d - 1) = 0.5 * 2 ** d: exponent d; 0 when no bit


def _first(
    rule: RecordRule, t: FloatArray, v: FloatArray, i: FloatArray, lo: int, hi: int, ref: tuple[float, ...]
) -> int:
    """First index in [lo, hi) that the rule logs against the reference sample, else `hi`.

    Looks at growing blocks, so that a keep soon after `lo` costs little.
    """
    size = 64
    while lo < hi:
        top = min(hi, lo + size)
        fires = np.zeros(top - lo, dtype=bool)
        if rule.every_s is not None:
            fires |= t[lo:top] - ref[0] >= rule.every_s - SLACK_S
        if rule.voltage_change_V is not None:
            fires |= ~(np.abs(v[lo:top] - ref[1]) < rule.voltage_change_V)
        if rule.current_change_A is not None:
            fires |= ~(np.abs(i[lo:top] - ref[2]) < rule.current_change_A)
        if fires.any():
            return lo + int(np.argmax(fires))
        lo, size = top, 4 * size
    return hi


def select_one(rule: RecordRule, t_s: float, voltage_V: float, current_A: float, state: RecordState) -> bool:
    """`select` for a single sample, without numpy: whether to log it (updates `state`)."""
    due = rule.every_s is not None and t_s - state.t_s >= rule.every_s - 1e-9
    moved = (
        rule.voltage_change_V is not None and not abs(voltage_V - state.voltage_V) < rule.voltage_change_V
    ) or (rule.current_change_A is not None and not abs(current_A - state.current_A) < rule.current_change_A)
    if due or moved:
        state.t_s, state.voltage_V, state.current_A = t_s, voltage_V, current_A
        return True
    return False
