"""Printing a run's cycle summary, recomputed from the stored samples, beside the paper's numbers."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cyclerd.analysis.cycles import (
    CycleSummary,
    FloatArray,
    average_ce,
    capacity_retention,
    cumulative_ce,
    detect_short,
    forward_voltage_stats,
    summarise,
)
from cyclerd.analysis.paper import PAPER
from cyclerd.store.database import Store

AH = 3600.0
SHOWN_AT_EACH_END = 5


def _pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f} %"


def render_summary(console: Console, store: Store, run_id: int) -> list[CycleSummary]:
    """The run's header, a table of cycles (first and last few) and the key figures."""
    run = store.run(run_id)
    samples = store.samples(run_id)
    cycles = summarise(samples)
    source = ", ".join(f"{k} {v}" for k, v in run.source.items())
    hours = float(samples["t"][-1]) / AH if len(samples["t"]) else 0.0
    console.print(
        f"[bold]run {run.id}[/bold] {run.name} — {run.state}, {hours:.1f} h, {len(samples['t'])} samples"
    )
    if source:
        console.print(f"  {source}", markup=False)
    for event in store.events(run_id):
        if event["kind"] in ("safety", "short_circuit", "loop", "fault"):
            console.print(f"  [yellow]{event['kind']}[/yellow]: {event['message']}")
    if not cycles:
        return cycles
    table = Table(box=None, header_style="bold", pad_edge=False)
    # A cycle's forward direction names the columns: plating first in a half-cell, charging in a full cell.
    forward, reverse = ("plated", "stripped") if cycles[0].forward_sign < 0 else ("charged", "discharged")
    for name in ("cycle", f"{forward} / mAh", f"{reverse} / mAh", "CE", "cumulative CE"):
        table.add_column(name, justify="right")
    for name in (f"⟨V⟩ {forward}", f"⟨V⟩ {reverse}"):
        table.add_column(name, justify="right")
    cumulative = cumulative_ce(cycles)
    shown = list(range(len(cycles)))
    if len(cycles) > 2 * SHOWN_AT_EACH_END:
        shown = [*range(SHOWN_AT_EACH_END), -1, *range(len(cycles) - SHOWN_AT_EACH_END, len(cycles))]
    for k in shown:
        if k < 0:
            table.add_row("…", "", "", "", "", "", "")
            continue
        c = cycles[k]
        table.add_row(
            str(c.cycle),
            f"{c.forward_As / AH * 1e3:.4f}",
            f"{c.reverse_As / AH * 1e3:.4f}",
            _pct(c.coulombic_efficiency),
            _pct(float(cumulative[k]), 1),
            f"{c.forward_mean_V:.4f}",
            f"{c.reverse_mean_V:.4f}",
        )
    console.print(table)
    _figures(console, store, run_id, cycles, samples)
    return cycles


def _figures(
    console: Console, store: Store, run_id: int, cycles: list[CycleSummary], samples: dict[str, FloatArray]
) -> None:
    stats = [forward_voltage_stats(samples, c) for c in cycles]
    short = detect_short(cycles, stats)
    # Retention is a full-cell figure (a half-cell's Li counter electrode is a reservoir); the
    # first cycle is formation, so it is relative to cycle 2.
    full_cell = cycles[0].forward_sign > 0
    retention = capacity_retention(cycles[1:]) if full_cell and len(cycles) > 1 else None
    run = store.run(run_id)
    paper = PAPER.get(str(run.source.get("preset", "")))
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("")
    table.add_column("this run", justify="right")
    if paper is not None:
        table.add_column("paper", justify="right")
    rows: list[tuple[str, str, str]] = [
        (
            "first-cycle CE (ICE)",
            _pct(cycles[0].coulombic_efficiency, 1),
            _pct(paper.ice, 1) if paper else "",
        ),
        (
            f"average CE, cycles 2–{cycles[-1].cycle}",
            _pct(average_ce(cycles, first=2)) if len(cycles) > 1 else "—",
            _pct(paper.average_ce) if paper else "",
        ),
        ("cycles", str(len(cycles)), (paper.cycles or "") if paper else ""),
    ]
    if retention is not None and len(retention):
        rows.append(
            (
                f"retention at cycle {cycles[-1].cycle} (vs cycle 2)",
                _pct(float(retention[-1]), 1),
                _pct(paper.retention_100, 0) if paper and paper.retention_100 else "",
            )
        )
    rows.append(("short circuit", f"cycle {short.cycle}: {short.reason}" if short else "none detected", ""))
    for row in rows:
        table.add_row(*(row if paper is not None else row[:2]))
    console.print(table)
    if paper is not None and paper.note:
        console.print(f"  paper: {paper.note}", markup=False)
