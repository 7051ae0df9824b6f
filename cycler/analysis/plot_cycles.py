"""Per-cycle figures: coulombic efficiency (Fig. 2b), cumulative CE (E2, Fig. 2c), retention (E8)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cyclerd.analysis.cycles import coulombic_efficiencies, cumulative_ce
from cyclerd.analysis.plot_data import NoDataToPlot, RunData
from cyclerd.analysis.plot_style import MUTED, integer_ticks, new_figure, run_colour

CE_AXIS_TOP = 102.0  # %: a shorted cycle's CE (up to 200 %) would flatten every other point


def _with_cycles(runs: Sequence[RunData], what: str) -> list[RunData]:
    having = [r for r in runs if r.cycles]
    if not having:
        ids = ", ".join(str(r.run.id) for r in runs)
        raise NoDataToPlot(f"run {ids} has no complete cycle: {what} needs at least one finished cycle")
    return having


def ce_figure(runs: Sequence[RunData]) -> Figure:
    """CE per cycle in %, runs overlaid; points above the axis (a short) are named at its top edge."""
    runs = _with_cycles(runs, "the CE plot")
    figure, (ax,) = new_figure()
    lowest = 100.0
    for i, run in enumerate(runs):
        ce = 100.0 * coulombic_efficiencies(run.cycles)
        cycle = np.array([c.cycle for c in run.cycles])
        ax.plot(cycle, ce, color=run_colour(i), marker="o", markersize=2.5, linewidth=0.8, label=run.label)
        finite = ce[np.isfinite(ce)]
        if len(finite):
            lowest = min(lowest, float(finite.min()))
        _name_off_scale(ax, cycle, ce, run_colour(i), i)
    ax.set_ylim(max(0.0, lowest - 3.0), CE_AXIS_TOP)
    ax.set_xlabel("cycle")
    integer_ticks(ax)
    ax.set_ylabel("coulombic efficiency / %")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return figure


def _name_off_scale(ax: Axes, cycle: np.ndarray, ce: np.ndarray, colour: str, row: int) -> None:
    """Name each point above the axis at its top edge; `row` stacks the names of different runs."""
    above = ce > CE_AXIS_TOP
    for n, value in zip(cycle[above].tolist(), ce[above].tolist(), strict=True):
        ax.plot([n], [CE_AXIS_TOP], marker="^", color=colour, markersize=5, clip_on=False)
        ax.annotate(f"cycle {n}: {value:.0f} %", (n, CE_AXIS_TOP), xytext=(4, -3 - 9 * row),
                    textcoords="offset points", ha="left", va="top", fontsize=7, color=colour)  # fmt: skip


def cumulative_ce_figure(runs: Sequence[RunData]) -> Figure:
    """The product of the CEs up to each cycle, in % (E2): every percent lost per cycle compounds.

    A line stops before the cycle a short circuit was detected in (marked ×): that cycle's
    "CE" of up to 200 % is charge from the short, and multiplying it in would lift the curve.
    """
    runs = _with_cycles(runs, "the cumulative CE plot")
    figure, (ax,) = new_figure()
    for i, run in enumerate(runs):
        short = run.short_cycle
        cycles = [c for c in run.cycles if short is None or c.cycle < short]
        if not cycles:
            continue
        product = 100.0 * cumulative_ce(cycles)
        ax.plot([c.cycle for c in cycles], product, color=run_colour(i), linewidth=1.2, label=run.label)
        if short is not None:
            ax.plot([cycles[-1].cycle], [product[-1]], marker="x", color=run_colour(i), markersize=7)
    ax.set_ylim(0.0, 100.0)
    ax.set_xlabel("cycle")
    integer_ticks(ax)
    ax.set_ylabel("cumulative CE / %")
    ax.legend(fontsize=8, frameon=False, loc="lower left")
    return figure


def retention_figure(runs: Sequence[RunData]) -> Figure:
    """Discharge capacity of each cycle over its loop's first cycle's (or a cycle a person named),
    full cells: a rate change between a formation loop and a cycling loop starts the cycling loop
    at 100 % rather than drawing the rate step as a loss.

    A half-cell's Li counter electrode is a reservoir, so its "retention" means nothing; such
    runs are refused rather than drawn.
    """
    full = [r for r in _with_cycles(runs, "the retention plot") if r.full_cell and len(r.cycles) > 1]
    if not full:
        ids = ", ".join(str(r.run.id) for r in runs)
        raise NoDataToPlot(
            f"run {ids}: capacity retention is drawn for full cells with a formation cycle and at least "
            "one more (a half-cell starts by plating; its Li counter electrode hides capacity fade)"
        )
    figure, (ax,) = new_figure()
    drawn: set[float] = set()
    named = {run.reference_cycle for run in full}
    for i, run in enumerate(full):
        values, _ = run.retention
        retention = 100.0 * values
        ax.plot([c.cycle for c in run.cycles], retention, color=run_colour(i), marker="o",
                markersize=2.5, linewidth=0.8, label=run.label)  # fmt: skip
        paper = run.paper  # only for a run that reproduces E8 over as many cycles as the paper
        if paper is not None and paper.retention is not None and paper.retention not in drawn:
            drawn.add(paper.retention)
            label = f"paper: {100 * paper.retention:.0f} % after {paper.over_cycles} cycles"
            ax.axhline(100 * paper.retention, color=MUTED, linestyle=":", linewidth=1.0, label=label)
    ax.set_xlabel("cycle")
    integer_ticks(ax)
    (reference,) = named if len(named) == 1 else (None,)
    ax.set_ylabel(
        "capacity retention / % of its loop's first cycle"
        if reference is None
        else f"capacity retention / % of cycle {reference}"
    )
    ax.legend(fontsize=8, frameon=False, loc="best")
    return figure
