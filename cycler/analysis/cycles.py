"""Cycle summaries from stored samples: capacities, coulombic efficiency, retention, shorts.

Pure functions over numpy columns (functional core): the same code summarises a finished run
from the store and decides a protocol's loop conditions live. A cycle's *forward* direction
is that of its first current-carrying step (plating in a half-cell, charging in a full cell);
its coulombic efficiency is the charge that came back over the charge that went in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# A CE this far above 100 % is not measurement error: charge came from somewhere else.
CE_SHORT_THRESHOLD = 1.005
# Forward-step |V| falling below this fraction of its usual level is a voltage collapse.
COLLAPSE_FRACTION = 0.3
# Forward-step voltage noise this many times its usual level (and above 1 mV) is a short.
NOISE_FACTOR = 5.0


@dataclass(frozen=True)
class CycleSummary:
    """One cycle. Charges in A·s (absolute values), energies in J, voltages in V."""

    cycle: int
    forward_sign: int  # -1: the cycle starts by discharging/plating; +1: by charging
    forward_As: float
    reverse_As: float
    forward_J: float
    reverse_J: float
    forward_mean_V: float
    reverse_mean_V: float
    duration_s: float

    @property
    def coulombic_efficiency(self) -> float:
        return self.reverse_As / self.forward_As if self.forward_As > 0 else float("nan")

    def as_row(self) -> dict[str, float]:
        """The summary as the store's cycles table holds it."""
        return {**dataclasses.asdict(self), "coulombic_efficiency": self.coulombic_efficiency}

    @property
    def charge_As(self) -> float:
        """Charge into the cell (positive current) in this cycle."""
        return self.forward_As if self.forward_sign > 0 else self.reverse_As

    @property
    def discharge_As(self) -> float:
        """Charge out of the cell (negative current): the plated charge in a half-cell."""
        return self.reverse_As if self.forward_sign > 0 else self.forward_As


def summarise(samples: Mapping[str, FloatArray]) -> list[CycleSummary]:
    """Per-cycle summary from sample columns t, step, cycle, voltage, current, charge, energy.

    Relies on each step's last sample being stored (the runner always logs it), so the last
    `charge` of a step is the step's charge. Cycle 0 (steps before any loop) is skipped.
    """
    step = np.asarray(samples["step"])
    if len(step) == 0:
        return []
    # A step an every-block interrupted comes back under its own number with its charge carried
    # over: its last sample is its last occurrence, wherever other steps came in between.
    numbers, first = np.unique(step, return_index=True)
    _, from_end = np.unique(step[::-1], return_index=True)
    last = len(step) - 1 - from_end
    order = np.argsort(last, kind="stable")
    first, last = first[order], last[order]
    del numbers
    cycle = np.asarray(samples["cycle"])[last].astype(int)
    charge = np.asarray(samples["charge"])[last]
    energy = np.asarray(samples["energy"])[last]
    t = np.asarray(samples["t"])
    summaries = []
    for n in np.unique(cycle[cycle > 0]).tolist():
        mine = np.flatnonzero(cycle == n)
        moved = mine[np.abs(charge[mine]) > 0]
        if len(moved) == 0:
            continue
        sign = int(np.sign(charge[moved[0]]))
        fwd = moved[np.sign(charge[moved]) == sign]
        rev = moved[np.sign(charge[moved]) == -sign]
        fq, rq = float(np.abs(charge[fwd]).sum()), float(np.abs(charge[rev]).sum())
        fe, re = float(np.abs(energy[fwd]).sum()), float(np.abs(energy[rev]).sum())
        summaries.append(
            CycleSummary(
                cycle=n,
                forward_sign=sign,
                forward_As=fq,
                reverse_As=rq,
                forward_J=fe,
                reverse_J=re,
                forward_mean_V=_mean_voltage(energy[fwd], charge[fwd]),
                reverse_mean_V=_mean_voltage(energy[rev], charge[rev]),
                duration_s=float(t[last[mine[-1]]] - t[first[mine[0]]]),
            )
        )
    return summaries


def _mean_voltage(energy_J: FloatArray, charge_As: FloatArray) -> float:
    """∫V·I dt / ∫I dt: the charge-weighted mean voltage (signs cancel, so it is the real V)."""
    charge = float(charge_As.sum())
    return float(energy_J.sum()) / charge if charge else float("nan")


def coulombic_efficiencies(cycles: Sequence[CycleSummary]) -> FloatArray:
    return np.array([c.coulombic_efficiency for c in cycles], dtype=np.float64)


def cumulative_ce(cycles: Sequence[CycleSummary]) -> FloatArray:
    """Product of the per-cycle CEs up to each cycle (the paper's cumulative CE)."""
    return np.cumprod(coulombic_efficiencies(cycles), dtype=np.float64)


def average_ce(cycles: Sequence[CycleSummary], first: int = 2, last: int | None = None) -> float:
    """Mean CE over cycles `first`..`last` (inclusive; cycle numbers, not positions)."""
    chosen = [
        c.coulombic_efficiency for c in cycles if c.cycle >= first and (last is None or c.cycle <= last)
    ]
    return float(np.mean(chosen)) if chosen else float("nan")


def capacity_retention(cycles: Sequence[CycleSummary], reference_cycle: int | None = None) -> FloatArray:
    """Discharge capacity of each cycle over that of `reference_cycle` (default: the first)."""
    if not cycles:
        return np.array([], dtype=np.float64)
    capacities = np.array([c.discharge_As for c in cycles])
    ref = cycles[0] if reference_cycle is None else next(c for c in cycles if c.cycle == reference_cycle)
    return capacities / ref.discharge_As


def retention_against_references(
    cycles: Sequence[CycleSummary], references: Mapping[int, int], reference_cycle: int | None = None
) -> tuple[FloatArray, list[int]]:
    """Each cycle's discharge capacity over its reference cycle's, and those references.

    The reference is `reference_cycle` when a person names one; else the first cycle of the
    cycle's own loop (`references`, as the engine stored it when the cycle closed), which is
    what the loop's `capacity_retention_below` rule used; else the run's first cycle. So a
    change of rate between loops (0.1C formation, then 0.5C) starts a loop's retention at
    100 % instead of showing the rate step as a loss. A reference that is not among `cycles`
    gives NaN.
    """
    if not cycles:
        return np.array([], dtype=np.float64), []
    by_number = {c.cycle: c for c in cycles}
    chosen = [
        reference_cycle if reference_cycle is not None else references.get(c.cycle, cycles[0].cycle)
        for c in cycles
    ]
    retention = [
        c.discharge_As / by_number[ref].discharge_As if ref in by_number else float("nan")
        for c, ref in zip(cycles, chosen, strict=True)
    ]
    return np.array(retention, dtype=np.float64), chosen


@dataclass(frozen=True)
class ShortCircuit:
    cycle: int
    reason: str


def detect_short(
    cycles: Sequence[CycleSummary],
    voltage_stats: Sequence[ForwardStats],
    cutoff_missed: Mapping[int, bool] | None = None,
) -> ShortCircuit | None:
    """The first cycle showing a short circuit, and why; None if none does.

    Signatures (experiments.md): CE above 100 %, a reverse step that never reached its voltage
    cut-off (`cutoff_missed[cycle]`, from the steps' end reasons), or a forward-step voltage
    that collapses or turns noisy compared with the run's earlier cycles (`voltage_stats`,
    one `forward_voltage_stats` pair per cycle).
    """
    for i in range(len(cycles)):
        short = short_in_cycle(i, cycles, voltage_stats, cutoff_missed)
        if short is not None:
            return short
    return None


def short_in_cycle(
    i: int,
    cycles: Sequence[CycleSummary],
    voltage_stats: Sequence[ForwardStats],
    cutoff_missed: Mapping[int, bool] | None = None,
) -> ShortCircuit | None:
    """Whether cycle `cycles[i]` shows a short, judged against the cycles before it.

    The runner asks this once per finished cycle, so a long run costs one check per cycle.
    """
    c = cycles[i]
    # Lithium stranded at a high rate comes back when the rate drops (a rate test's 0.1C after
    # 1C): more than 100 % then is the cell catching up, not a short. At the same rates it is.
    now, before = voltage_stats[i], voltage_stats[i - 1] if i else None
    same_rate = before is None or (
        _same_current(now.current_A, before.current_A)
        and _same_current(now.reverse_current_A, before.reverse_current_A)
    )
    if c.coulombic_efficiency > CE_SHORT_THRESHOLD and same_rate:
        return ShortCircuit(c.cycle, f"CE {100 * c.coulombic_efficiency:.1f} % is above 100 %")
    if (cutoff_missed or {}).get(c.cycle, False):
        return ShortCircuit(c.cycle, "the voltage never reached its cut-off")
    if i < 3:
        return None
    # Cycle 1 is left out of the reference: its seed plateaus are not the steady state.
    level = median([stat.level_V for stat in voltage_stats[1:i]])
    noise = median([stat.noise_V for stat in voltage_stats[1:i]])
    now_level, now_noise = voltage_stats[i].level_V, voltage_stats[i].noise_V
    if now_level < COLLAPSE_FRACTION * level:
        return ShortCircuit(
            c.cycle, f"the voltage collapsed to {now_level * 1e3:.1f} mV from {level * 1e3:.1f} mV"
        )
    if now_noise > max(NOISE_FACTOR * noise, 1e-3):
        return ShortCircuit(c.cycle, f"the voltage turned noisy ({now_noise * 1e3:.1f} mV rms)")
    return None


def _same_current(a: float, b: float) -> bool:
    """Equal within 2 %; a current not measured (NaN, zero) does not tell the rates apart."""
    return not (a > 0 and b > 0) or abs(a - b) <= 0.02 * max(a, b)


def median(values: Sequence[float] | FloatArray) -> float:
    """np.median's value without its overhead (it runs on short lists each time a cycle closes):
    the middle value, or the mean of the two middle ones; NaN when empty or when a value is NaN."""
    x = np.sort(np.asarray(values, dtype=np.float64))  # NaNs sort last
    n = len(x)
    if n == 0 or math.isnan(x[-1]):
        return math.nan
    mid = n // 2
    return float(x[mid]) if n % 2 else float((x[mid - 1] + x[mid]) / 2.0)


class ForwardStats(NamedTuple):
    """What a cycle shows of the cell: the level and noise of its forward step's voltage on
    the plateau, and the currents that flowed each way (its rates)."""

    level_V: float  # median |V| on the forward plateau
    noise_V: float  # robust rms of sample-to-sample V changes on the forward plateau
    current_A: float  # median |I| forward
    reverse_current_A: float = math.nan  # median |I| the other way


def forward_voltage_stats(samples: Mapping[str, FloatArray], cycle: CycleSummary) -> ForwardStats:
    """The forward step's plateau: its second half in time.

    A plating step first runs down through the seed's alloying plateaus, tens of millivolts
    apart; measured over the whole step, those falls would set the "usual" noise far above a
    soft short's. The second half is the plating plateau itself. The noise is the median
    absolute sample-to-sample change scaled to an rms (1.4826 x MAD), which one logging jump
    does not move.
    """
    mask = (np.asarray(samples["cycle"]).astype(int) == cycle.cycle) & (
        np.sign(np.asarray(samples["current"])) == cycle.forward_sign
    )
    current_A = np.asarray(samples["current"])
    in_cycle = np.asarray(samples["cycle"]).astype(int) == cycle.cycle
    reverse = median(np.abs(current_A[in_cycle & (np.sign(current_A) == -cycle.forward_sign)]))
    t = np.asarray(samples["t"])[mask]
    v = np.asarray(samples["voltage"])[mask]
    current = median(np.abs(current_A[mask]))
    if len(t) == 0:
        return ForwardStats(math.nan, 0.0, current, reverse)
    plateau = t >= t[0] + (t[-1] - t[0]) / 2
    v = v[plateau]
    level = median(np.abs(v))
    steps = np.diff(v)
    noise = 1.4826 * median(np.abs(steps - median(steps))) if len(steps) > 2 else 0.0
    return ForwardStats(level, noise, current, reverse)
