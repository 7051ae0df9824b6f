"""One self-contained HTML page for one run or a comparison of several (the paper's Fig. 2 side by side).

This module decides what goes in (summary figures computed with cyclerd.analysis.cycles, as `cyclerd show`
does, and the figures that make sense for the data present); `report_html` decides how it looks.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from matplotlib.figure import Figure

from cyclerd.analysis import report_html
from cyclerd.analysis.key_figures import summarise_run
from cyclerd.analysis.plot_cv import cv_figure, run_scans
from cyclerd.analysis.plot_cycles import ce_figure, cumulative_ce_figure, retention_figure
from cyclerd.analysis.plot_data import PlotError, RunData, load_run
from cyclerd.analysis.plot_eis import Trends, fit_rows, fit_runs, nyquist_figure, resistance_figure
from cyclerd.analysis.plot_profiles import dqdv_figure, profile_figure, voltage_figure
from cyclerd.analysis.plots import figure_bytes
from cyclerd.analysis.voltammetry import peak_rows, peaks, seed_metals
from cyclerd.store.database import Store


@dataclass(frozen=True)
class Panel:
    """One figure of the page: an SVG (as a data URI, so its ids and styles cannot clash) and words."""

    title: str
    caption: str
    svg: bytes
    wide: bool = False

    @property
    def data_uri(self) -> str:
        return "data:image/svg+xml;base64," + base64.b64encode(self.svg).decode("ascii")


def _panel(title: str, caption: str, draw: Callable[[], Figure], wide: bool = False) -> Panel | None:
    """The figure drawn, or None when the runs hold nothing it shows (the section then omits it)."""
    try:
        return Panel(title, caption, figure_bytes(draw(), "svg"), wide)
    except PlotError:
        return None


def sections(runs: Sequence[RunData], fits: Trends) -> list[tuple[str, list[Panel]]]:
    """The page's figure sections, each holding only the figures its runs have data for."""
    cycled = [r for r in runs if r.cycles]
    several = len(runs) > 1
    words = Captions(cycled)
    cycling: list[Panel | None] = []
    if cycled:
        cycling = [
            _panel("First-cycle voltage profile", words.first_cycle, lambda: profile_figure(cycled)),
            _panel("Coulombic efficiency", words.ce, lambda: ce_figure(cycled)),
            _panel("Cumulative coulombic efficiency", words.cumulative, lambda: cumulative_ce_figure(cycled)),
            _panel(
                "Capacity retention",
                Captions([r for r in cycled if r.full_cell]).retention,
                lambda: retention_figure([r for r in cycled if r.full_cell]),
            ),
            _panel("dQ/dV of the first cycle", words.dqdv, lambda: dqdv_figure(cycled)),
        ]
    voltammetry = [
        _panel(f"Cyclic voltammogram, {run.label}", Captions([run]).cv, partial(cv_figure, [run]))
        for run in runs
        if any(step["kind"] == "sweep" for step in run.steps)
    ]
    voltage = [
        _panel(
            "Voltage against time",
            Captions(runs).voltage + (", one panel per run" if several else "") + VOLTAGE,
            lambda: voltage_figure(runs),
            wide=True,
        )
    ]
    impedance: list[Panel | None] = []
    for run in (r for r in runs if r.spectra):
        words = Captions([run])
        impedance.append(
            _panel(f"Nyquist plot, {run.label}", words.nyquist, partial(nyquist_figure, [run], fits))
        )
        impedance.append(
            _panel(
                f"Fitted resistances, {run.label}", words.resistance, partial(resistance_figure, [run], fits)
            )
        )
    out = [("Cycling", cycling), ("Voltammetry", voltammetry), ("Voltage", voltage), ("Impedance", impedance)]
    return [(name, [p for p in panels if p is not None]) for name, panels in out if any(panels)]


class Captions:
    """What each figure shows, in words that fit the runs' cells, with the paper's figure named only
    when every run reproduces the experiment it comes from (a full cell gets no half-cell words)."""

    def __init__(self, runs: Sequence[RunData]) -> None:
        done = {r.reproduces.experiment if r.reproduces else None for r in runs}
        self.experiment = done.pop() if len(done) == 1 else None
        self.cells = "full" if runs and all(r.full_cell for r in runs) else "half"
        if runs and any(r.full_cell for r in runs) and self.cells == "half":
            self.cells = "mixed"

    def _cite(self, by_experiment: dict[str, str], text: str) -> str:
        cited = by_experiment.get(self.experiment or "")
        return f"{cited}: {text}" if cited else text[:1].upper() + text[1:]

    @property
    def first_cycle(self) -> str:
        text = {
            "half": "the seeds alloy with Li in turn as the potential falls to 0 V, then Li metal plates;"
            " the stripping branch (dashed) ends at the ICE.",
            "full": "the first charge (solid) and discharge (dashed); the discharge ends at the"
            " first-cycle CE.",
            "mixed": "the forward branch (solid: plating or charging) and the reverse (dashed), which"
            " ends at the first-cycle CE.",
        }[self.cells]
        formation = "E7 (formation)"
        return self._cite({"E1": "E3 / Fig. 2a", "E7": formation, "E8": formation, "E9": formation}, text)

    @property
    def ce(self) -> str:
        text = {
            "half": "stripped over plated charge, per cycle.",
            "full": "discharged over charged capacity, per cycle.",
            "mixed": "stripped over plated charge (discharged over charged in a full cell), per cycle.",
        }[self.cells]
        return self._cite({"E1": "E1 / Fig. 2b"}, text)

    @property
    def cumulative(self) -> str:
        return self._cite({"E1": "E2 / Fig. 2c"}, "the product of the CEs up to each cycle.")

    @property
    def retention(self) -> str:
        return self._cite(
            {"E8": "E8 / Fig. 6d"}, "discharge capacity relative to cycle 2, the first after formation."
        )

    @property
    def dqdv(self) -> str:
        text = {
            "half": "each alloying plateau is a peak at its potential (Li metal plating and stripping are"
            " the tallest); charge binned by voltage.",
            "full": "each plateau of the cell voltage is a peak; charge binned by voltage.",
            "mixed": "each voltage plateau is a peak; charge binned by voltage.",
        }[self.cells]
        return self._cite({"E1": "E3"}, text)

    @property
    def cv(self) -> str:
        text = (
            "current density against potential, one line per scan; cathodic current (reduction) below"
            " zero, ▼ cathodic and ▲ anodic peaks as in the peak table."
        )
        return self._cite({"E10": "E10 / Fig. S8"}, text)

    @property
    def voltage(self) -> str:
        return self._cite({"E1": "Fig. 2d"}, "the whole run")

    @property
    def nyquist(self) -> str:
        text = "one colour per spectrum; lines are the fitted circuits."
        return self._cite({"E4": "E4 / Fig. 3", "E5": "E5 / Fig. 5c"}, text)

    @property
    def resistance(self) -> str:
        text = "R_b, R_SEI and R_CT of each spectrum with 1σ error bars."
        return self._cite({"E4": "Fig. 3e", "E5": "Fig. 5d–e"}, text)


VOLTAGE = "; dashed lines mark detected short circuits."


def voltammetry_rows(runs: Sequence[RunData]) -> list[dict[str, str]]:
    """The peak table: each cathodic and anodic peak of each scan of each run's sweeps."""
    rows = []
    for run in runs:
        metals = seed_metals(run.program.metadata.get("seed")) if run.program else ()
        for row in peak_rows(peaks(run_scans(run)), run.area_m2, metals):
            rows.append({"run": run.label, **row})
    return rows


def build_report(
    store: Store, run_ids: Sequence[int], title: str | None = None, reference_cycle: int | None = None
) -> str:
    """The HTML page for `run_ids` (KeyError, from the store, for a run it does not hold)."""
    runs = [load_run(store, run_id, reference_cycle) for run_id in run_ids]
    fits = fit_runs(store, runs)
    summaries = [summarise_run(run) for run in runs]
    if title is None:
        names = sorted({run.run.name for run in runs})
        ids = ", ".join(str(run.run.id) for run in runs)
        if len(runs) == 1:
            title = f"Run {ids}: {names[0]}"
        else:
            title = f"{names[0]} — runs {ids} compared" if len(names) == 1 else f"Runs {ids} compared"
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return report_html.page(
        title=title,
        subtitle=f"generated {generated} from {store.path.name}",
        runs=runs,
        summaries=summaries,
        sections=sections(runs, fits),
        fit_rows=fit_rows(runs, fits),
        peak_rows=voltammetry_rows(runs),
    )


def write_report(
    store: Store,
    run_ids: Sequence[int],
    path: Path,
    title: str | None = None,
    reference_cycle: int | None = None,
) -> None:
    path.write_text(build_report(store, run_ids, title, reference_cycle), encoding="utf-8")
