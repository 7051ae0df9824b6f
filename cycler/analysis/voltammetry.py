"""Cyclic voltammetry: a run's sweeps cut into scans, and the cathodic and anodic peaks of each scan.

The numeric parts (`segments`, `scan_peaks`) are pure numpy/scipy functions of potential and
current; `scans` cuts a run's stored samples using the protocol's sweep (scan rate and path).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import find_peaks

from cyclerd.analysis.cycles import FloatArray
from cyclerd.protocols.program import Program, SweepCommand

PROMINENCE = 0.05  # of the scan's current range: a peak must stand this far above its surroundings
HYSTERESIS = 0.02  # of the scan's potential range: a turn smaller than this is noise, not a vertex
SMOOTH_MAX_V = 0.02  # noisy current is averaged over at most this much potential (peaks are wider)
NOISE_SIGMAS = 4.0  # noise is smoothed until this many standard deviations are below the threshold
MA_PER_CM2 = 0.1  # per A/m²

Direction = Literal["cathodic", "anodic"]

# Where each seed metal's alloying (cathodic) and de-alloying (anodic) peaks are expected, V vs
# Li: the plateaus of shared/cell-physics.md §1 (Li–Sn after Wang, Raistrick & Huggins [src];
# Li–Mg and Li–Ag [lit]), widened by the few tens of mV a peak sits past its plateau at
# 0.1 mV/s. Li–Mg and Li–Ag overlap below ~0.12 V, so a peak there is named as either.
ALLOY_WINDOWS_V: Mapping[str, Mapping[Direction, tuple[float, float]]] = {
    "Sn": {"cathodic": (0.30, 0.80), "anodic": (0.40, 0.90)},
    "Mg": {"cathodic": (-0.01, 0.12), "anodic": (0.08, 0.30)},
    "Ag": {"cathodic": (-0.01, 0.12), "anodic": (0.10, 0.35)},
}


@dataclass(frozen=True)
class Scan:
    """One scan of a sweep step: the path from the start through every vertex, once."""

    step: int  # the run's step number
    number: int  # 1, 2, ... within the step
    t: FloatArray
    potential_V: FloatArray
    current_A: FloatArray


@dataclass(frozen=True)
class Peak:
    """A current peak: cathodic (reduction, I < 0) on a falling sweep, anodic (I > 0) on a rising one.

    `current_A` is that of the scan as `smoothed_current` gives it (the raw current unless the
    scan is noisy, where the raw sample at the peak would be biased by the noise).
    """

    step: int
    scan: int
    direction: Direction
    potential_V: float
    current_A: float


def segments(potential: FloatArray, hysteresis_V: float) -> list[tuple[int, int]]:
    """(first, last) index of each stretch over which the potential moves one way.

    A vertex is where the potential turns back by more than `hysteresis_V` from its running
    extreme, so measurement noise on a real potentiostat does not cut a sweep into pieces.
    """
    n = len(potential)
    if n < 2:
        return [(0, n - 1)] if n else []
    bounds = [0]
    direction = 0.0
    extreme = 0
    for k in range(1, n):
        if direction == 0.0:
            moved = potential[k] - potential[0]
            if abs(moved) >= hysteresis_V:
                direction = float(np.sign(moved))
                extreme = int(np.argmax(direction * potential[: k + 1]))
            continue
        if direction * (potential[k] - potential[extreme]) > 0:
            extreme = k
        elif direction * (potential[extreme] - potential[k]) >= hysteresis_V:
            bounds.append(extreme)
            direction = -direction
            extreme = k
    if bounds[-1] != n - 1:
        bounds.append(n - 1)
    return list(pairwise(bounds))


def scan_peaks(
    potential: FloatArray, current: FloatArray, prominence: float = PROMINENCE
) -> list[tuple[Direction, int]]:
    """The peaks of one scan, in time order, as (direction, sample index).

    Peaks are looked for within each one-way stretch (a vertex, where the current is largest
    only because the sweep turns, is never one): cathodic peaks of -I where the potential falls,
    anodic of I where it rises. A peak must stand above the current around it by `prominence`
    times the scan's current range, so the size of the features sets the threshold, not the
    units; noisy data are first smoothed just enough that noise cannot reach that threshold
    (`smoothed_current`).
    """
    potential = np.asarray(potential, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    if len(current) < 3 or float(np.ptp(potential)) <= 0 or float(np.ptp(current)) <= 0:
        return []
    curve, noise_A, stretches = _smoothed(potential, current, prominence)
    height = max(prominence * float(np.ptp(curve)), NOISE_SIGMAS * noise_A)
    found: list[tuple[Direction, int]] = []
    for first, last in stretches:
        falling = potential[last] < potential[first]
        sign = -1.0 if falling else 1.0
        stretch = sign * curve[first : last + 1]
        indices, _ = find_peaks(stretch, prominence=height)
        for i in indices.tolist():
            if stretch[i] > 0:  # a cathodic peak is a reduction current, an anodic an oxidation
                found.append(("cathodic" if falling else "anodic", first + i))
    return found


def smoothed_current(
    potential: FloatArray, current: FloatArray, prominence: float = PROMINENCE
) -> FloatArray:
    """The current as `scan_peaks` sees it: unchanged when its noise is well below the peak
    threshold, else a moving average over just enough samples (at most `SMOOTH_MAX_V` of
    potential) to bring the noise to a quarter of it, one stretch at a time."""
    potential = np.asarray(potential, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    if len(current) < 3 or float(np.ptp(potential)) <= 0:
        return current
    return _smoothed(potential, current, prominence)[0]


def _smoothed(
    potential: FloatArray, current: FloatArray, prominence: float
) -> tuple[FloatArray, float, list[tuple[int, int]]]:
    """The smoothed current, the standard deviation of the noise left in it, and the stretches."""
    stretches = segments(potential, HYSTERESIS * float(np.ptp(potential)))
    # White noise from successive differences (a smooth voltammogram barely changes between samples).
    steps = np.diff(current)
    sigma = 1.4826 * float(np.median(np.abs(steps - np.median(steps)))) / np.sqrt(2.0)
    threshold = prominence * float(np.ptp(current))
    if sigma <= 0 or threshold <= 0 or NOISE_SIGMAS * sigma <= threshold:
        return current, sigma, stretches
    step_V = float(np.median(np.abs(np.diff(potential))))
    most = max(1, int(SMOOTH_MAX_V / step_V)) if step_V > 0 else 1
    window = min(most, int(np.ceil((NOISE_SIGMAS * sigma / threshold) ** 2)))
    curve = current.copy()
    for first, last in stretches:
        curve[first : last + 1] = uniform_filter1d(current[first : last + 1], window, mode="nearest")
    return curve, sigma / float(np.sqrt(window)), stretches


def scans(
    samples: Mapping[str, FloatArray], steps: Sequence[Mapping[str, Any]], program: Program | None
) -> list[Scan]:
    """Every scan of every sweep step of a run, in time order.

    A sweep step is cut into scans by time from its start: each scan takes the path length
    over the scan rate (the protocol's sweep). Without the protocol a step is one scan.
    """
    specs = (
        {}
        if program is None
        else {c.index: c.spec for c in program.commands() if isinstance(c, SweepCommand)}
    )
    out: list[Scan] = []
    number_of = np.asarray(samples["step"]).astype(int)
    for step in (s for s in steps if s["kind"] == "sweep"):
        mine = number_of == int(step["number"])
        if not np.any(mine):
            continue
        t = np.asarray(samples["t"])[mine]
        potential = np.asarray(samples["voltage"])[mine]
        current = np.asarray(samples["current"])[mine]
        spec = specs.get(int(step["command"]))
        start = float(step["t_start"]) if step.get("t_start") is not None else float(t[0])
        if spec is None or spec.scans < 1:
            which = np.zeros(len(t), dtype=np.int64)
        else:
            # A sweep from the OCV started at its first sample's potential.
            scan_s = spec.duration_s(None if spec.start_V is not None else float(potential[0])) / spec.scans
            which = np.clip(np.floor((t - start) / scan_s + 1e-9).astype(np.int64), 0, spec.scans - 1)
        for k in np.unique(which).tolist():
            part = which == k
            if np.count_nonzero(part) >= 2:
                out.append(Scan(int(step["number"]), k + 1, t[part], potential[part], current[part]))
    return out


def peaks(run_scans: Sequence[Scan], prominence: float = PROMINENCE) -> list[Peak]:
    """The cathodic and anodic peaks of each scan (see `scan_peaks`)."""
    found = []
    for scan in run_scans:
        curve = smoothed_current(scan.potential_V, scan.current_A)
        for direction, i in scan_peaks(scan.potential_V, scan.current_A, prominence):
            found.append(Peak(scan.step, scan.number, direction, float(scan.potential_V[i]), float(curve[i])))
    return found


def seed_metals(seed: object) -> tuple[str, ...]:
    """The seed metals a protocol's `cell.metadata.seed` names ("MgAgSn" -> Mg, Ag, Sn)."""
    return tuple(dict.fromkeys(re.findall("|".join(ALLOY_WINDOWS_V), seed))) if isinstance(seed, str) else ()


def alloy_of(peak: Peak, metals: Sequence[str]) -> str:
    """The Li alloys of `metals` whose peaks are expected at this peak's potential ("" if none)."""
    names = []
    for metal in metals:
        low, high = ALLOY_WINDOWS_V[metal][peak.direction]
        if low <= peak.potential_V <= high:
            names.append(f"Li–{metal}")
    return " or ".join(names)


def peak_rows(
    found: Sequence[Peak], area_m2: float | None, metals: Sequence[str] = ()
) -> list[dict[str, str]]:
    """The peaks as text for a table: per scan, cathodic then anodic, each by potential; with
    the alloy each may belong to when the seed metals are known (`seed_metals`)."""
    several_steps = len({p.step for p in found}) > 1
    # In the order a sweep meets them: cathodic from high to low potential, then anodic upwards.
    ordered = sorted(
        found,
        key=lambda p: (
            p.step,
            p.scan,
            p.direction != "cathodic",
            p.potential_V * (-1 if p.direction == "cathodic" else 1),
        ),
    )
    rows = []
    for p in ordered:
        scan = f"{p.step}.{p.scan}" if several_steps else str(p.scan)
        if area_m2:
            current = f"{p.current_A / area_m2 * MA_PER_CM2:+.4f} mA/cm²"
        else:
            current = f"{p.current_A * 1e3:+.4f} mA"
        row = {"scan": scan, "peak": p.direction, "potential": f"{p.potential_V:.3f} V", "current": current}
        if metals:
            row["alloy (by potential)"] = alloy_of(p, metals) or "—"
        rows.append(row)
    return rows
