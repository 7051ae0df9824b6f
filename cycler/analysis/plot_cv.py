"""The voltammogram (E10): current density against potential, one line per scan, peaks marked."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cyclerd.analysis.plot_data import NoDataToPlot, RunData
from cyclerd.analysis.plot_style import GRID, INK, new_figure
from cyclerd.analysis.voltammetry import MA_PER_CM2, Peak, Scan, peaks, scans

# Scans of one run, first to last: light to dark blue, so the order reads without the legend.
SCAN_COLOURS = ("#7fb8dc", "#4a98cc", "#2171b5", "#08519c", "#08306b")


def run_scans(run: RunData) -> list[Scan]:
    return scans(run.samples, run.steps, run.program)


def current_scale(run: RunData) -> tuple[float, str]:
    """A -> the axis unit: mA/cm² when the run knows its electrode area, else mA."""
    if run.area_m2 is not None:
        return MA_PER_CM2 / run.area_m2, "current density / mA cm⁻²"
    return 1e3, "current / mA"


def cv_figure(runs: Sequence[RunData]) -> Figure:
    """Current (density) against potential for every sweep, one panel per run, one line per scan.

    Cathodic current (reduction: Li alloying with the seeds, Li plating) is below zero;
    the peaks `voltammetry.peaks` finds are marked ▼ (cathodic) and ▲ (anodic).
    """
    having = [(run, s) for run in runs if (s := run_scans(run))]
    if not having:
        ids = ", ".join(str(r.run.id) for r in runs)
        raise NoDataToPlot(f"run {ids} has no sweep steps: a voltammogram needs a `sweep` in the protocol")
    figure, axes = new_figure(len(having), sharex=False, panel_in=3.2)
    for ax, (run, found) in zip(axes, having, strict=True):
        scale, label = current_scale(run)
        ax.axhline(0.0, color=GRID, linewidth=1.2, zorder=0)
        several_steps = len({s.step for s in found}) > 1
        for k, scan in enumerate(found):
            name = f"step {scan.step} scan {scan.number}" if several_steps else f"scan {scan.number}"
            colour = SCAN_COLOURS[_shade(k, len(found))]
            ax.plot(scan.potential_V, scan.current_A * scale, color=colour, linewidth=1.0, label=name)
        _mark(ax, peaks(found), scale)
        ax.set_xlabel("potential / V")
        ax.set_ylabel(label)
        ax.set_title(run.label, fontsize=9, loc="left")
        if len(found) > 1:
            ax.legend(fontsize=8, frameon=False, loc="lower right")
    return figure


def _mark(ax: Axes, found: Sequence[Peak], scale: float) -> None:
    for p in found:
        marker = "v" if p.direction == "cathodic" else "^"
        ax.plot([p.potential_V], [p.current_A * scale], linestyle="none", marker=marker,
                markersize=5, color=INK, zorder=3)  # fmt: skip


def _shade(k: int, scans: int) -> int:
    """Scan `k` of `scans`: spread over the palette (a run of two scans is light and dark)."""
    if scans <= 1:
        return len(SCAN_COLOURS) - 2
    return round(k * (len(SCAN_COLOURS) - 1) / (scans - 1))
