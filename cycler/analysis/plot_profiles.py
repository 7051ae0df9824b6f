"""Figures of the voltage itself: voltage–time, one cycle's profile against capacity, and dQ/dV.

The numeric parts (`envelope`, `cycle_profile`, `dq_dv`) are pure numpy functions so tests and
notebooks can use them without drawing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from cyclerd.analysis.cycles import CycleSummary, FloatArray
from cyclerd.analysis.plot_data import NoDataToPlot, RunData, areal_divisor, capacity_unit
from cyclerd.analysis.plot_style import GRID, MUTED, new_figure, run_colour

DECIMATE_ABOVE = 200_000  # points; below this every sample is drawn
ENVELOPE_COLUMNS = 2_000  # ≥ the pixel width of any figure we save (6.4 in at 300 dpi)
RASTERIZE_ABOVE = 5_000  # points: an SVG path of more is megabytes; an embedded bitmap is not
SMOOTH_BINS = 3  # half-width of the Gaussian (σ = 1 bin) that smooths dQ/dV
DQDV_BIN_V = 0.005  # separates the Li–Mg (0.09 V) and Li–Ag (0.07 V) plateaus at 1 mA/cm²


@dataclass(frozen=True)
class Branch:
    """One direction of one cycle: capacity passed so far (A·s, from 0) against voltage."""

    sign: int  # sign of the current: -1 plating/discharging, +1 stripping/charging
    capacity_As: FloatArray
    voltage: FloatArray


def envelope(t: FloatArray, v: FloatArray, columns: int = ENVELOPE_COLUMNS) -> tuple[FloatArray, FloatArray]:
    """The min and max of `v` in each of `columns` equal slices of `t` (sorted), in time order.

    Drawing the envelope instead of every sample looks the same at that resolution, yet keeps a
    single-sample voltage collapse (a short) visible, which plain subsampling would drop.
    """
    if len(t) <= 2 * columns:
        return t, v
    span = float(t[-1] - t[0]) or 1.0
    column = np.minimum(((t - t[0]) / span * columns).astype(np.int64), columns - 1)
    starts = np.flatnonzero(np.r_[True, column[1:] != column[:-1]])
    ends = np.r_[starts[1:], len(t)] - 1
    low = np.minimum.reduceat(v, starts)
    high = np.maximum.reduceat(v, starts)
    rising = v[starts] <= v[ends]  # draw the extreme met first first, so the line stays continuous
    x = np.column_stack([t[starts], t[ends]]).ravel()
    y = np.column_stack([np.where(rising, low, high), np.where(rising, high, low)]).ravel()
    return x, y


def cycle_profile(samples: Mapping[str, FloatArray], cycle: CycleSummary) -> list[Branch]:
    """The forward then the reverse branch of `cycle`, each from zero capacity.

    Charge is counted per step (the samples' `charge` restarts at each step), so a direction
    made of several steps (CC then CV), or one interrupted for EIS (the step number stays, its
    charge carries on), adds up; rests carry no charge and drop out.
    """
    mask = np.asarray(samples["cycle"]).astype(int) == cycle.cycle
    step = np.asarray(samples["step"])[mask].astype(int)
    charge = np.asarray(samples["charge"])[mask]
    voltage = np.asarray(samples["voltage"])[mask]
    numbers, first = np.unique(step, return_index=True)
    numbers = numbers[np.argsort(first)]  # in the order the steps ran
    branches = []
    for sign in (cycle.forward_sign, -cycle.forward_sign):
        offset = 0.0
        parts_q: list[FloatArray] = []
        parts_v: list[FloatArray] = []
        for number in numbers.tolist():
            mine = step == number
            q = charge[mine]
            final = q[np.argmax(np.abs(q))]
            if np.sign(final) != sign:
                continue
            parts_q.append(offset + np.abs(q))
            parts_v.append(voltage[mine])
            offset += abs(float(final))
        if parts_q:
            branches.append(Branch(sign, np.concatenate(parts_q), np.concatenate(parts_v)))
    return branches


def dq_dv(branch: Branch, bin_V: float = DQDV_BIN_V) -> tuple[FloatArray, FloatArray]:
    """Bin centres (V) and |dQ/dV| (A·s/V) of a branch: the charge passed in each voltage bin / bin width.

    Binning charge by voltage is robust where raw finite differences are not: on a plateau dV
    between samples is noise, and dQ/dV from it swings wildly. A 3-bin Gaussian smooths the
    histogram without moving its peaks (the kernel is symmetric) or its area.
    """
    if len(branch.voltage) < 2:
        return np.array([], dtype=np.float64), np.array([], dtype=np.float64)
    dq = np.abs(np.diff(branch.capacity_As))
    v_mid = 0.5 * (branch.voltage[1:] + branch.voltage[:-1])
    # Room for the kernel's tails on both sides, so smoothing keeps all the charge on the axis.
    low = (np.floor(v_mid.min() / bin_V) - SMOOTH_BINS) * bin_V
    count = int(np.ceil((v_mid.max() - low) / bin_V)) + SMOOTH_BINS + 1
    edges = low + bin_V * np.arange(count + 1)
    charge_in_bin, _ = np.histogram(v_mid, bins=edges, weights=dq)
    kernel = np.exp(-0.5 * np.arange(-SMOOTH_BINS, SMOOTH_BINS + 1) ** 2)
    smooth = np.convolve(charge_in_bin, kernel / kernel.sum(), mode="same")
    return 0.5 * (edges[1:] + edges[:-1]), smooth / bin_V


def voltage_figure(runs: Sequence[RunData]) -> Figure:
    """Voltage against test time, one panel per run (Fig. 2d), shorts marked where detected."""
    runs = [r for r in runs if len(r.samples["t"])]
    if not runs:
        raise NoDataToPlot("no samples stored for the run(s): nothing to draw against time")
    # Wide and low: a long run is many thin cycles side by side, and the report shows it full width.
    figure, axes = new_figure(len(runs), width_in=9.6, panel_in=1.8, single_in=3.0)
    for i, (ax, run) in enumerate(zip(axes, runs, strict=True)):
        t, v = run.samples["t"], run.samples["voltage"]
        if len(t) > DECIMATE_ABOVE:
            t, v = envelope(t, v)
        ax.plot(t / 3600.0, v, color=run_colour(i), linewidth=0.6, rasterized=len(t) > RASTERIZE_ABOVE)
        for event in run.events:
            if event["kind"] == "short_circuit" and event["t"] is not None:
                ax.axvline(event["t"] / 3600.0, color=MUTED, linestyle="--", linewidth=0.8)
                ax.annotate(
                    "short", (event["t"] / 3600.0, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -10), textcoords="offset points", fontsize=8, color=MUTED,
                )  # fmt: skip
        ax.set_ylabel("voltage / V")
        ax.set_title(run.label, fontsize=9, loc="left", color=run_colour(i))
    axes[-1].set_xlabel("time / h")
    return figure


def profile_figure(runs: Sequence[RunData], cycle: int | None = None) -> Figure:
    """Voltage against capacity in one cycle (default the first), runs overlaid (Fig. 2a, E3).

    In a half-cell the first plating shows the seeds alloying with Li in turn as the potential
    falls to 0 V, then Li metal plating just below it.
    """
    unit = capacity_unit(list(runs))
    figure, (ax,) = new_figure()
    ax.axhline(0.0, color=GRID, linewidth=1.2, zorder=0)
    for i, run in enumerate(runs):
        chosen = run.cycle(cycle)
        scale = areal_divisor(run, unit)
        for k, branch in enumerate(cycle_profile(run.samples, chosen)):
            ax.plot(
                branch.capacity_As / scale, branch.voltage, color=run_colour(i), linewidth=1.2,
                linestyle="-" if k == 0 else "--", label=run.label if k == 0 else None,
            )  # fmt: skip
    names = sorted({run.cycle(cycle).cycle for run in runs})
    ax.set_xlabel(f"capacity / {unit}")
    ax.set_ylabel("voltage / V")
    which = "first cycle" if cycle is None and len(names) == 1 and names[0] == 1 else f"cycle {names[0]}"
    ax.set_title(f"{which}: solid forward (plate/charge), dashed reverse", fontsize=9, loc="left")
    if len(runs) > 1:
        ax.legend(fontsize=8, frameon=False)
    return figure


def dqdv_figure(runs: Sequence[RunData], cycle: int | None = None, bin_V: float = DQDV_BIN_V) -> Figure:
    """dQ/dV against voltage for one cycle: each alloying plateau is a peak at its potential.

    Plotted with the current's sign (plating/discharge below zero, stripping/charge above).
    The axis holds every peak (`dqdv_limits`). When one peak dwarfs the rest (Li metal plating
    and stripping in a half-cell, ~20x the alloy peaks) a second panel below zooms on the others,
    so the alloy peaks stay readable and no peak is ever cut off unseen.
    """
    unit = capacity_unit(list(runs))
    curves: list[tuple[int, int, FloatArray, FloatArray]] = []
    for i, run in enumerate(runs):
        chosen = run.cycle(cycle)
        scale = areal_divisor(run, unit)
        for k, branch in enumerate(cycle_profile(run.samples, chosen)):
            volts, density = dq_dv(branch, bin_V)
            curves.append((i, k, volts, branch.sign * density / scale))
    whole, zoom = dqdv_limits([y for *_, y in curves])
    figure, axes = new_figure(1 if zoom is None else 2, panel_in=2.3)
    for ax, limits in zip(axes, (whole, zoom), strict=False):
        ax.axhline(0.0, color=GRID, linewidth=1.2, zorder=0)
        for i, k, volts, y in curves:
            ax.plot(
                volts, y, color=run_colour(i), linewidth=1.2,
                linestyle="-" if k == 0 else "--", label=runs[i].label if k == 0 else None,
            )  # fmt: skip
        if limits is not None:
            ax.set_ylim(*limits)
        ax.set_ylabel(f"dQ/dV / {unit} V⁻¹")
    axes[-1].set_xlabel("voltage / V")
    names = sorted({run.cycle(cycle).cycle for run in runs})
    axes[0].set_title(
        f"cycle {', '.join(map(str, names))}: {1e3 * bin_V:g} mV bins; solid forward, dashed reverse",
        fontsize=9,
        loc="left",
    )
    if zoom is not None:
        axes[1].set_title(
            "zoom on the smaller peaks (the tallest runs off this axis)", fontsize=9, loc="left"
        )
    if len(runs) > 1:
        axes[0].legend(fontsize=8, frameon=False)
    return figure


def dqdv_limits(
    curves: Sequence[FloatArray], margin: float = 0.08, dwarfs: float = 5.0
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """The y range that holds every peak of `curves` (with `margin`), and a zoom if one dwarfs the rest.

    The curves are binned and smoothed (`dq_dv`), so their extremes are peaks, not single-sample
    noise. The zoom is (±1.3 x the tallest other peak) when the tallest peak is `dwarfs` times that.
    """
    finite = [y[np.isfinite(y)] for y in curves]
    finite = [y for y in finite if len(y)]
    if not finite:
        return None, None
    top = max(0.0, max(float(y.max()) for y in finite))
    bottom = min(0.0, min(float(y.min()) for y in finite))
    if top == bottom:
        return None, None
    pad = margin * (top - bottom)
    whole = (bottom - (pad if bottom < 0 else 0.0), top + (pad if top > 0 else 0.0))
    elsewhere = max(_second_peak(np.abs(y)) for y in finite)
    tallest = max(top, -bottom)
    if elsewhere <= 0 or tallest <= dwarfs * elsewhere:
        return whole, None
    return whole, (-1.3 * elsewhere, 1.3 * elsewhere)


def _second_peak(y: FloatArray) -> float:
    """The height of the tallest peak once the tallest one (if it dwarfs the rest) is left out."""
    peaks = y[1:-1][(y[1:-1] >= y[:-2]) & (y[1:-1] >= y[2:])]
    if len(peaks) < 2:
        return float(y.max())
    top, second = np.sort(peaks)[-2:][::-1]
    return float(second if top > 5 * second else top)
