"""Printing a run's cycle summary, recomputed from the stored samples, beside the paper's numbers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cyclerd.analysis.cycles import (
    CycleSummary,
    FloatArray,
    cumulative_ce,
    summarise,
)
from cyclerd.analysis.experiments import program_of
from cyclerd.analysis.key_figures import summarise_run
from cyclerd.analysis.plot_data import RunData
from cyclerd.store.database import Store

AH = 3600.0
SHOWN_AT_EACH_END = 5


def _pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f} %"


def _ref(value: float | None, digits: int = 2) -> str:
    """The paper's figure, or nothing where it reports none."""
    return "" if value is None else _pct(value, digits)


def render_summary(
    console: Console, store: Store, run_id: int, reference_cycle: int | None = None
) -> list[CycleSummary]:
    """The run's header, a table of cycles (first and last few) and the key figures.

    `reference_cycle`: capacity retention against this cycle rather than each loop's first."""
    run = store.run(run_id)
    samples = store.samples(run_id)
    cycles = summarise(samples)
    # What is not set (a daemon's sim channel has no instrument) is left out, not printed as None.
    given = {"cell": run.cell.get("cell")} | run.source
    source = ", ".join(f"{k} {v}" for k, v in given.items() if v is not None and v != "")
    hours = float(samples["t"][-1]) / AH if len(samples["t"]) else 0.0
    count = len(samples["t"])
    name = escape(run.name)
    console.print(f"[bold]run {run.id}[/bold] {name} — {run.state}, {hours:.1f} h, {count} samples")
    if source:
        console.print(f"  {source}", markup=False)
    for event in store.events(run_id):
        if event["kind"] in ("safety", "short_circuit", "loop", "fault"):
            console.print(f"  [yellow]{event['kind']}[/yellow]: {escape(event['message'])}")
    _peaks(console, store, run_id, samples)
    if not cycles:
        return cycles
    table = Table(box=None, header_style="bold", pad_edge=False)
    # A cycle's forward direction names the columns: plating first in a half-cell, charging in a full cell.
    forward, reverse = ("plated", "stripped") if cycles[0].forward_sign < 0 else ("charged", "discharged")
    mass_g = _active_mass_g(run.cell)
    specific = (f"{forward} / mAh/g", f"{reverse} / mAh/g") if mass_g is not None else ()
    for name in ("cycle", f"{forward} / mAh", f"{reverse} / mAh", *specific, "CE", "cumulative CE"):
        table.add_column(name, justify="right")
    for name in (f"⟨V⟩ {forward}", f"⟨V⟩ {reverse}"):
        table.add_column(name, justify="right")
    cumulative = cumulative_ce(cycles)
    shown = list(range(len(cycles)))
    if len(cycles) > 2 * SHOWN_AT_EACH_END:
        shown = [*range(SHOWN_AT_EACH_END), -1, *range(len(cycles) - SHOWN_AT_EACH_END, len(cycles))]
    for k in shown:
        if k < 0:
            table.add_row("…", *[""] * (len(table.columns) - 1))
            continue
        c = cycles[k]
        per_gram = [f"{q / AH * 1e3 / mass_g:.2f}" for q in (c.forward_As, c.reverse_As)] if mass_g else []
        table.add_row(
            str(c.cycle),
            f"{c.forward_As / AH * 1e3:.4f}",
            f"{c.reverse_As / AH * 1e3:.4f}",
            *per_gram,
            _pct(c.coulombic_efficiency),
            _pct(float(cumulative[k]), 1),
            f"{c.forward_mean_V:.4f}",
            f"{c.reverse_mean_V:.4f}",
        )
    console.print(table)
    _figures(console, store, run_id, cycles, samples, reference_cycle)
    return cycles


def _active_mass_g(cell: Mapping[str, Any]) -> float | None:
    """The run's active-material mass in grams, when its cell states one."""
    mass_kg = cell.get("active_mass_kg")
    return 1e3 * float(mass_kg) if isinstance(mass_kg, int | float) and mass_kg > 0 else None


def _figures(
    console: Console,
    store: Store,
    run_id: int,
    cycles: list[CycleSummary],
    samples: dict[str, FloatArray],
    reference_cycle: int | None,
) -> None:
    run = RunData(
        store.run(run_id),
        samples,
        cycles,
        store.steps(run_id),
        [],
        store.events(run_id),
        store.protocol_text(run_id),
        store.cycle_references(run_id),
        reference_cycle,
    )
    figures = summarise_run(run)
    # Only for a run that reproduces an experiment of the paper on the cell the paper reports it for.
    paper = figures.paper
    shown = paper is not None and any(
        value is not None for value in (paper.ice, paper.average_ce, paper.cycles, paper.retention)
    )
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("")
    table.add_column("this run", justify="right")
    if shown:
        table.add_column("paper", justify="right")
    short = figures.short
    if figures.average_cycles is not None:
        first, last = figures.average_cycles
        span = f"cycles {first}–{last}" + (", before the short" if short is not None else "")
    else:
        span = "cycles 2 on"
    rows: list[tuple[str, str, str]] = [
        ("first-cycle CE (ICE)", _pct(figures.ice, 1), _ref(paper.ice if paper else None, 1)),
        (f"average CE, {span}", _pct(figures.average_ce), _ref(paper.average_ce if paper else None)),
        ("cycles", str(len(cycles)), (paper.cycles or "") if paper else ""),
    ]
    # Retention is a full-cell figure: a half-cell's Li counter electrode is a reservoir.
    if figures.retention is not None:
        at = f" at {paper.over_cycles}" if paper and paper.retention else ""
        rows.append(
            (
                f"retention at cycle {figures.retention_cycle} (vs cycle {figures.retention_reference})",
                _pct(figures.retention, 1),
                _ref(paper.retention if paper else None, 0) + at,
            )
        )
    rows.append(("short circuit", f"cycle {short.cycle}: {short.reason}" if short else "none detected", ""))
    for row in rows:
        table.add_row(*(row if shown else row[:2]))
    console.print(table)
    if paper is not None and paper.note:
        console.print(f"  paper: {paper.note}", markup=False)


def _peaks(console: Console, store: Store, run_id: int, samples: dict[str, FloatArray]) -> None:
    """The cathodic and anodic peaks of each scan, for a run with sweep steps."""
    steps = store.steps(run_id)
    if not any(step["kind"] == "sweep" for step in steps):
        return
    # Here, not at the top: scipy.signal loads scipy.optimize and scipy.stats, which every command
    # would pay for (cyclerd.cli.main imports this module).
    from cyclerd.analysis.voltammetry import peak_rows, peaks, scans, seed_metals

    run = store.run(run_id)
    program = program_of(store.protocol_text(run_id), run.cell)
    area = run.cell.get("area_m2")
    metals = seed_metals(program.metadata.get("seed")) if program else ()
    rows = peak_rows(peaks(scans(samples, steps, program)), float(area) if area else None, metals)
    if not rows:
        console.print("  voltammetry: no peaks stand out of the scans' current")
        return
    table = Table(
        box=None, header_style="bold", pad_edge=False, title="peaks of each scan", title_justify="left"
    )
    for name in rows[0]:
        table.add_column(name, justify="left" if name == "peak" else "right")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
