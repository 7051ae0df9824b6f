"""The paper's figures from stored runs, by name: `figure("ce", runs)`, then `save_figure(fig, path)`.

Every kind is a function of `RunData` (read once with `load_run`) returning a matplotlib
`Figure` built without pyplot, so drawing is thread-safe and needs no display. A kind the
runs hold no data for raises `NoDataToPlot` instead of drawing empty axes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from cyclerd.analysis.plot_cv import cv_figure
from cyclerd.analysis.plot_cycles import ce_figure, cumulative_ce_figure, retention_figure
from cyclerd.analysis.plot_data import CycleNotInRun, NoDataToPlot, PlotError, RunData, load_run
from cyclerd.analysis.plot_eis import Trends, fit_runs, nyquist_figure, resistance_figure
from cyclerd.analysis.plot_profiles import dqdv_figure, profile_figure, voltage_figure
from cyclerd.store.database import Store

__all__ = [
    "FORMATS",
    "KINDS",
    "CycleNotInRun",
    "Kind",
    "NoDataToPlot",
    "PlotError",
    "RunData",
    "UnknownKind",
    "UnsupportedFormat",
    "figure",
    "figure_bytes",
    "figure_of",
    "fit_runs",
    "load_run",
    "save_figure",
]

FORMATS = ("png", "svg")
PNG_DPI = 150


class UnknownKind(PlotError):
    """A `--kind` that is not one of `KINDS`."""


class UnsupportedFormat(PlotError):
    """An output file whose suffix is neither .png nor .svg."""


@dataclass(frozen=True)
class Kind:
    draw: Callable[[Sequence[RunData], int | None, Trends], Figure]
    description: str
    uses_cycle: bool = False
    uses_fits: bool = False


KINDS: dict[str, Kind] = {
    "voltage": Kind(lambda runs, _, __: voltage_figure(runs), "voltage against time, one panel per run"),
    "first-cycle": Kind(
        lambda runs, cycle, _: profile_figure(runs, cycle),
        "voltage against areal capacity in the first cycle (or --cycle)",
        uses_cycle=True,
    ),
    "ce": Kind(lambda runs, _, __: ce_figure(runs), "coulombic efficiency per cycle"),
    "cumulative-ce": Kind(
        lambda runs, _, __: cumulative_ce_figure(runs), "product of the CEs up to each cycle"
    ),
    "retention": Kind(
        lambda runs, _, __: retention_figure(runs), "discharge capacity retention (full cells)"
    ),
    "nyquist": Kind(
        lambda runs, _, fits: nyquist_figure(runs, fits),
        "Z' against -Z'' per spectrum, with the fits",
        uses_fits=True,
    ),
    "resistance": Kind(
        lambda runs, _, fits: resistance_figure(runs, fits),
        "fitted R_b, R_SEI, R_CT per spectrum",
        uses_fits=True,
    ),
    "dqdv": Kind(
        lambda runs, cycle, _: dqdv_figure(runs, cycle),
        "dQ/dV against voltage for the first cycle (or --cycle)",
        uses_cycle=True,
    ),
    "cv": Kind(
        lambda runs, _, __: cv_figure(runs),
        "current density against potential of each sweep, one line per scan, peaks marked",
    ),
}


def figure(
    kind: str, runs: Sequence[RunData], cycle: int | None = None, fits: Trends | None = None
) -> Figure:
    """The figure `kind` of `runs` (overlaid, or one panel per run where overlays do not read).

    `fits` (from `fit_runs`) are needed by the impedance kinds; `figure_of` computes them.
    """
    if kind not in KINDS:
        raise UnknownKind(f"no plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    if cycle is not None and not KINDS[kind].uses_cycle:
        takes = ", ".join(name for name, k in KINDS.items() if k.uses_cycle)
        raise PlotError(f"--cycle does not apply to {kind!r}; only {takes} draw a chosen cycle")
    return KINDS[kind].draw(runs, cycle, fits or {})


def figure_of(
    store: Store,
    run_ids: Sequence[int],
    kind: str,
    cycle: int | None = None,
    reference_cycle: int | None = None,
) -> Figure:
    """Read the runs (KeyError for one the store lacks), fit their spectra if `kind` needs it, draw.

    `reference_cycle`: capacity retention against this cycle rather than each loop's first."""
    if kind not in KINDS:
        raise UnknownKind(f"no plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    runs = [load_run(store, run_id, reference_cycle) for run_id in run_ids]
    fits = fit_runs(store, runs) if KINDS[kind].uses_fits else {}
    return figure(kind, runs, cycle, fits)


def output_format(path: Path) -> str:
    """The file format named by the suffix; UnsupportedFormat if it is not one we write."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UnsupportedFormat(
            f"{path}: cannot tell the format from {path.suffix or 'no suffix'!r};"
            " end the file name in .png or .svg"
        )
    return suffix


def figure_bytes(figure: Figure, fmt: str) -> bytes:
    """The figure encoded as PNG or SVG (the SVG without a stored date, so equal data give equal files)."""
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else None
    figure.savefig(buffer, format=fmt, dpi=PNG_DPI, metadata=metadata, facecolor="white")
    return buffer.getvalue()


def save_figure(figure: Figure, path: Path) -> None:
    """Write `figure` to `path` in the format its suffix names."""
    path.write_bytes(figure_bytes(figure, output_format(path)))
