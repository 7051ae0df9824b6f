"""Which measured samples to keep: the logging rules (every Δt, ΔV, ΔI) applied to arrays.

Shared by every channel that measures more often than it logs (the simulator's fine grid, the
software stepper's polls). The step's first and last samples are always kept by the caller.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cyclerd.protocols.compiler import RecordRule

BoolArray = NDArray[np.bool_]
FloatArray = NDArray[np.float64]


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
    if (
        rule.every_s is not None
        and t_s[0] - state.t_s >= rule.every_s - 1e-9
        and (n == 1 or np.diff(t_s).min() >= rule.every_s - 1e-9)
    ):
        keep[:] = True  # logging at least as often as the samples come: all of them, whatever changed
    else:
        _choose(rule, t_s, voltage_V, current_A, keep, state)
    kept = np.flatnonzero(keep)
    if len(kept):
        last = kept[-1]
        state.t_s, state.voltage_V, state.current_A = (
            float(t_s[last]),
            float(voltage_V[last]),
            float(current_A[last]),
        )
    return keep


def _choose(
    rule: RecordRule,
    t_s: FloatArray,
    voltage_V: FloatArray,
    current_A: FloatArray,
    keep: BoolArray,
    state: RecordState,
) -> None:
    dv, di = rule.voltage_change_V, rule.current_change_A
    quiet = (dv is None or np.ptp(voltage_V) + abs(voltage_V[0] - state.voltage_V) < dv) and (
        di is None or np.ptp(current_A) + abs(current_A[0] - state.current_A) < di
    )
    if rule.every_s is not None and quiet:
        # Fast path: no change trigger can fire in this chunk; only the clock decides.
        _by_time(rule.every_s, t_s, keep, state)
    elif rule.every_s is not None or dv is not None or di is not None:
        _sequential(rule, t_s, voltage_V, current_A, keep, state)


def _by_time(every_s: float, t_s: FloatArray, keep: BoolArray, state: RecordState) -> None:
    # Keep the first sample at or after each multiple of `every_s` counted from the last kept one.
    anchor = state.t_s
    if not math.isfinite(anchor):
        keep[0] = True
        anchor = float(t_s[0])
    ticks = np.floor((t_s - anchor) / every_s + 1e-9)
    keep |= ticks > np.concatenate(([0.0], ticks[:-1]))


def _sequential(
    rule: RecordRule,
    t_s: FloatArray,
    voltage_V: FloatArray,
    current_A: FloatArray,
    keep: BoolArray,
    state: RecordState,
) -> None:
    every = math.inf if rule.every_s is None else rule.every_s
    dv = math.inf if rule.voltage_change_V is None else rule.voltage_change_V
    di = math.inf if rule.current_change_A is None else rule.current_change_A
    last_t, last_v, last_i = state.t_s, state.voltage_V, state.current_A
    for j, (t, v, i) in enumerate(zip(t_s.tolist(), voltage_V.tolist(), current_A.tolist(), strict=True)):
        if t - last_t >= every - 1e-9 or not abs(v - last_v) < dv or not abs(i - last_i) < di:
            keep[j] = True
            last_t, last_v, last_i = t, v, i


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
