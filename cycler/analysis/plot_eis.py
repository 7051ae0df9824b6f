"""Impedance figures: Nyquist plots with their fitted circuits, and fitted resistances per spectrum.

Fits come from `eis_trends.spectrum_trends` (every spectrum fitted with and without an SEI arc,
the arc kept when an F-test needs it), computed once per run by `fit_runs` and shared by the
Nyquist plot, the resistance plot and the report's fit table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from cyclerd.analysis.eis_trends import EisTrends, spectrum_trends
from cyclerd.analysis.eisfit import FitInputError
from cyclerd.analysis.plot_data import NoDataToPlot, RunData
from cyclerd.analysis.plot_style import new_figure, new_grid
from cyclerd.store.database import Store

Trends = Mapping[int, EisTrends]  # run id -> its fitted spectra
FIT_POINTS = 300
RESISTANCES = (  # column, label, colour
    ("R_b", "R_b (bulk)", "#0072B2"),
    ("R_SEI", "R_SEI", "#E69F00"),
    ("R_CT", "R_CT (charge transfer)", "#D55E00"),
)


def fit_runs(store: Store, runs: Sequence[RunData]) -> dict[int, EisTrends]:
    """Fit every spectrum of the runs that have any (a run without spectra costs nothing).

    A run whose spectra cannot be fitted at all (e.g. NaN points from an instrument) is left
    out: its Nyquist plot then shows the measured points only and says so.
    """
    fitted = {}
    for run in (r for r in runs if r.spectra):
        try:
            fitted[run.run.id] = spectrum_trends(store, run.run.id)
        except FitInputError:
            continue
    return fitted


def _with_spectra(runs: Sequence[RunData], what: str) -> list[RunData]:
    having = [r for r in runs if r.spectra]
    if not having:
        ids = ", ".join(str(r.run.id) for r in runs)
        raise NoDataToPlot(
            f"run {ids} has no impedance spectra, so there is no {what}: run a protocol with EIS steps "
            "(e.g. eis_after_cycling.yaml or insitu_eis.yaml)"
        )
    return having


def spectrum_label(trends: EisTrends, k: int) -> str:
    """When a spectrum was taken, in the paper's words: 'plate 3' (E5 sequence) or 'after cycle 5' (E4)."""
    kind = str(trends.step_kind[k])
    if kind in ("rest", ""):
        return f"after cycle {int(trends.cycle[k])}"
    return f"{kind} {int(trends.step_sequence[k])}"


def nyquist_figure(runs: Sequence[RunData], trends: Trends | None = None) -> Figure:
    """Z' against −Z'' with equal axes, one colour per spectrum (early dark, late light), fits as lines.

    Without `trends` (or where a spectrum could not be fitted) only the measured points are drawn.
    """
    runs = _with_spectra(runs, "Nyquist plot")
    figure, axes = new_grid(len(runs))
    for ax, run in zip(axes, runs, strict=True):
        fitted = (trends or {}).get(run.run.id)
        colours = colormaps["viridis"](np.linspace(0.0, 0.85, len(run.spectra)))
        for k, (spectrum, colour) in enumerate(zip(run.spectra, colours, strict=True)):
            z = spectrum["impedance_ohm"]
            label = (
                f"{spectrum['sequence']}: {spectrum_label(fitted, k)}"
                if fitted
                else f"{spectrum['sequence']}"
            )
            ax.plot(z.real, -z.imag, "o", markersize=2.8, color=colour, label=label)
            fit = fitted.fits[k] if fitted is not None else None
            if fit is not None:
                f = spectrum["frequency_Hz"]
                dense = np.geomspace(float(f.min()), float(f.max()), FIT_POINTS)
                z_fit = fit.predict(dense)
                ax.plot(z_fit.real, -z_fit.imag, "-", linewidth=0.9, color=colour)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("Z′ / Ω")
        ax.set_ylabel("−Z″ / Ω")
        note = "points measured, lines fitted" if fitted is not None else "measured (not fitted)"
        ax.set_title(f"{run.label}: {note}", fontsize=9, loc="left")
        ax.legend(fontsize=7, frameon=False, ncol=2 if len(run.spectra) > 6 else 1, title="spectrum",
                  title_fontsize=7, loc="upper left")  # fmt: skip
    return figure


def resistance_figure(runs: Sequence[RunData], trends: Trends) -> Figure:
    """R_b, R_SEI and R_CT of each spectrum with 1σ error bars, one panel per run (Fig. 3e, 5d–e)."""
    runs = _with_spectra(runs, "resistance plot")
    figure, axes = new_figure(len(runs), sharex=False)
    for ax, run in zip(axes, runs, strict=True):
        fitted = trends.get(run.run.id)
        if fitted is None or not np.isfinite(fitted.R_b_ohm).any():
            raise NoDataToPlot(f"run {run.run.id}: none of its {len(run.spectra)} spectra could be fitted")
        x = np.arange(len(fitted))
        for offset, (name, label, colour) in zip((-0.12, 0.0, 0.12), RESISTANCES, strict=True):
            value = getattr(fitted, f"{name}_ohm")
            error = getattr(fitted, f"{name}_stderr_ohm")
            if not np.isfinite(value).any():
                continue  # no spectrum needed an SEI arc
            ax.errorbar(x + offset, value, yerr=error, fmt="o-", markersize=4, linewidth=1.0, capsize=3,
                        color=colour, label=label)  # fmt: skip
        ax.set_xticks(x, [spectrum_label(fitted, k) for k in range(len(fitted))], rotation=30, ha="right",
                      fontsize=8)  # fmt: skip
        ax.set_ylabel("resistance / Ω")
        ax.set_ylim(bottom=0.0)
        ax.set_title(run.label, fontsize=9, loc="left")
        ax.legend(fontsize=8, frameon=False)
    return figure


def fit_rows(runs: Sequence[RunData], trends: Trends) -> list[dict[str, str]]:
    """One row of text per fitted spectrum, for the report's table."""
    rows = []
    for run in runs:
        fitted = trends.get(run.run.id)
        for k in range(len(fitted) if fitted is not None else 0):
            assert fitted is not None
            rows.append({
                "run": run.label, "spectrum": str(int(fitted.sequence[k])),
                "taken": spectrum_label(fitted, k),
                "circuit": str(fitted.circuit[k]) or "no fit",
                "R_b / Ω": _pm(fitted.R_b_ohm[k], fitted.R_b_stderr_ohm[k]),
                "R_SEI / Ω": _pm(fitted.R_SEI_ohm[k], fitted.R_SEI_stderr_ohm[k]),
                "R_CT / Ω": _pm(fitted.R_CT_ohm[k], fitted.R_CT_stderr_ohm[k]),
                "χ²_red": "—" if math.isnan(fitted.chi2_reduced[k]) else f"{fitted.chi2_reduced[k]:.3g}",
            })  # fmt: skip
    return rows


def _pm(value: float, error: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:.2f} ± {error:.2f}"
