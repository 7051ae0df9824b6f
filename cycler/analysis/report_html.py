"""How a report looks: the page, its inline CSS and its tables. Every text from the store is escaped.

No scripts and no external resources: the page must open from file:// on a lab PC without
network, and a run name is user input (an HTML tag in it must show as text, never run).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING, Any

from cyclerd.analysis.plot_style import run_colour

if TYPE_CHECKING:
    from cyclerd.analysis.key_figures import RunSummary
    from cyclerd.analysis.plot_data import RunData
    from cyclerd.analysis.report import Panel

M2_PER_CM2 = 1e-4
AS_PER_MAH = 3.6
ROUTINE_EVENTS = ("state",)  # start/finish are in the run's card already
ALARMING_EVENTS = ("short_circuit", "safety", "fault", "gap")

CSS = """
:root { --ink: #1f2933; --muted: #6b7280; --line: #e5e7eb; --bg: #f6f7f9; --card: #fff;
  --accent: #0b5cad; --bad: #b42318; --bad-bg: #fee4e2; --warn: #b54708; --warn-bg: #fef0c7;
  --ok: #067647; --ok-bg: #dcfae6; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink); line-height: 1.45;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 28px 48px; }
header.top { border-bottom: 1px solid var(--line); margin-bottom: 22px; padding-bottom: 14px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 19px; margin: 34px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 0 0 8px; }
.sub, .note, .paper { color: var(--muted); font-size: 12.5px; }
.note, .paper { display: block; }
nav { font-size: 13px; margin-top: 8px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px;
  box-shadow: 0 1px 2px rgba(16, 24, 40, 0.04); }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: 0.04em; color: var(--muted);
  font-weight: 600; }
td.num, th.num { text-align: right; }
tr:last-child td, tr:last-child th { border-bottom: none; }
table.plain th { text-transform: none; letter-spacing: 0; font-size: 12.5px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 3px; margin-right: 7px;
  vertical-align: baseline; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600;
  background: var(--bg); color: var(--muted); white-space: nowrap; }
.badge.bad { background: var(--bad-bg); color: var(--bad); }
.badge.warn { background: var(--warn-bg); color: var(--warn); }
.badge.ok { background: var(--ok-bg); color: var(--ok); }
table.runs { font-size: 13.5px; }
table.runs td, table.runs th { padding: 5px 10px; }
table.runs th.field { text-transform: none; letter-spacing: 0; font-size: 13px; font-weight: 400;
  white-space: nowrap; }
table.runs td { overflow-wrap: anywhere; }
table.runs tr:first-child th { text-transform: none; letter-spacing: 0; font-size: 14px; color: var(--ink); }
.figures { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; }
figure.wide { grid-column: 1 / -1; }
figure img { width: 100%; height: auto; display: block; }
figure.wide img { max-width: 1100px; margin: 0 auto; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; }
figcaption b { color: var(--ink); font-weight: 600; }
.after { margin-top: 16px; }
.empty { color: var(--muted); font-style: italic; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
@media print { body { background: #fff; } nav { display: none; }
  .card { box-shadow: none; break-inside: avoid; } }
"""


def pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f} %"


def _paper(text: str | None) -> str:
    return f'<span class="paper">paper: {escape(text)}</span>' if text else ""


def _run_name(run: RunData, index: int) -> str:
    return f'<span class="swatch" style="background:{run_colour(index)}"></span>{escape(run.label)}'


def _state_badge(state: str) -> str:
    tone = {"completed": "ok", "failed": "bad", "stopped": "warn"}.get(state, "")
    return f'<span class="badge {tone}">{escape(state)}</span>'


def summary_table(runs: Sequence[RunData], summaries: Sequence[RunSummary]) -> str:
    """One row per run: the numbers experiments.md asks for, the paper's under ours where it has one."""
    head = (
        "<tr><th>run</th><th>state</th><th class=num>cycles</th><th class=num>test time</th>"
        "<th class=num>ICE</th><th class=num>average CE</th>"
        + ("<th class=num>retention</th>" if any(s.retention is not None for s in summaries) else "")
        + (
            "<th class=num>capacity / mAh/g</th>"
            if any(s.specific_reverse_Ah_per_kg is not None for s in summaries)
            else ""
        )
        + "<th>short circuit</th></tr>"
    )
    show_retention = "retention" in head
    show_specific = "mAh/g" in head
    rows = []
    for i, (run, s) in enumerate(zip(runs, summaries, strict=True)):
        paper = s.paper
        average_note = (
            f'<span class="note">cycles {s.average_cycles[0]}–{s.average_cycles[1]}</span>'
            if s.average_cycles
            else ""
        )
        cells = [
            f"<td>{_run_name(run, i)}{_paper(paper.note if paper else None)}</td>",
            f"<td>{_state_badge(run.run.state)}</td>",
            f"<td class=num>{s.cycles}{_paper(paper.cycles if paper else None)}</td>",
            f"<td class=num>{s.hours:.1f} h"
            f"{_paper(f'{paper.hours} h' if paper and paper.hours else None)}</td>",
            f"<td class=num>{pct(s.ice)}{_paper(pct(paper.ice) if paper and paper.ice else None)}</td>",
            f"<td class=num>{pct(s.average_ce, 2)}{average_note}"
            f"{_paper(pct(paper.average_ce, 2) if paper and paper.average_ce else None)}</td>",
        ]
        if show_retention:
            at = (
                f'<span class="note">cycle {s.retention_cycle} vs {s.retention_reference}</span>'
                if s.retention_cycle
                else ""
            )
            reported = (
                pct(paper.retention, 0) + f" at {paper.over_cycles}" if paper and paper.retention else None
            )
            cells.append(f"<td class=num>{pct(s.retention)}{at}{_paper(reported)}</td>")
        if show_specific:
            cells.append(f"<td class=num>{_specific(run, s)}</td>")
        short = (
            f'<span class="badge bad">cycle {s.short.cycle}</span> {escape(s.short.reason)}'
            if s.short
            else '<span class="badge ok">none detected</span>'
        )
        cells.append(f"<td>{short}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="card"><table>{head}{"".join(rows)}</table></div>'


def _specific(run: RunData, s: RunSummary) -> str:
    """The first and last cycles' returned capacity (discharged, stripped) per gram of active mass."""
    if s.specific_reverse_Ah_per_kg is None or not run.cycles:
        return "—"
    first, last = s.specific_reverse_Ah_per_kg  # Ah/kg = mAh/g
    what = "stripped" if run.cycles[0].forward_sign < 0 else "discharged"
    if len(run.cycles) == 1:
        return f'{first:.1f}<span class="note">{what}, cycle {run.cycles[0].cycle}</span>'
    span = f"{what}, cycle {run.cycles[0].cycle} → {run.cycles[-1].cycle}"
    return f'{first:.1f} → {last:.1f}<span class="note">{span}</span>'


def _source(source: Mapping[str, Any]) -> str:
    if "preset" in source:
        extra = f", overrides {', '.join(map(str, source['overrides']))}" if source.get("overrides") else ""
        return f"simulator preset {source['preset']}, seed {source.get('seed', '?')}{extra}"
    return ", ".join(f"{k} {v}" for k, v in source.items()) or "—"


def _cell_rows(cell: Mapping[str, Any]) -> dict[str, str]:
    rows = {}
    if isinstance(cell.get("area_m2"), int | float):
        rows["area"] = f"{cell['area_m2'] / M2_PER_CM2:.3f} cm²"
    if isinstance(cell.get("capacity_As"), int | float):
        rows["capacity"] = f"{cell['capacity_As'] / AS_PER_MAH:.3f} mAh"
    if isinstance(cell.get("active_mass_kg"), int | float):
        rows["active mass"] = f"{cell['active_mass_kg'] * 1e6:.3f} mg"
    for key, value in sorted(cell.items()):
        if key not in ("area_m2", "capacity_As", "active_mass_kg") and value not in (None, ""):
            rows[key.replace("_", " ")] = str(value)
    return rows


def _utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _run_rows(run: RunData) -> dict[str, str]:
    r = run.run
    rows = {
        "protocol": r.name,
        "channel": r.channel,
        "source": _source(r.source),
        "started": _utc(r.started_unix),
        "test time": f"{run.hours:.1f} h",
        "samples": f"{len(run.samples['t'])}",
        "spectra": f"{len(run.spectra)}",
    }
    if r.ended_unix is not None:
        rows["ended"] = f"{_utc(r.ended_unix)} ({r.ended_unix - r.started_unix:.0f} s of wall clock)"
    rows.update(_cell_rows(r.cell))
    return rows


def runs_table(runs: Sequence[RunData]) -> str:
    """Where each run came from and what cell it was, runs side by side; a value all runs share once."""
    columns = [_run_rows(run) for run in runs]
    fields = list(dict.fromkeys(name for rows in columns for name in rows))
    head = "<tr><th></th>" + "".join(f"<th>{_run_name(run, i)}</th>" for i, run in enumerate(runs)) + "</tr>"
    body = []
    for name in fields:
        values = [rows.get(name, "—") for rows in columns]
        if len(values) > 1 and len(set(values)) == 1:
            cells = f'<td colspan="{len(values)}">{escape(values[0])}</td>'
        else:
            cells = "".join(f"<td>{escape(v)}</td>" for v in values)
        body.append(f'<tr><th class="field">{escape(name)}</th>{cells}</tr>')
    return f'<div class="card"><table class="runs">{head}{"".join(body)}</table></div>'


def figure_block(panel: Panel) -> str:
    kind = "card wide" if panel.wide else "card"
    return (
        f'<figure class="{kind}"><img src="{panel.data_uri}" alt="{escape(panel.title)}">'
        f"<figcaption><b>{escape(panel.title)}.</b> {escape(panel.caption)}</figcaption></figure>"
    )


def events_table(runs: Sequence[RunData]) -> str:
    rows = []
    for i, run in enumerate(runs):
        for event in run.events:
            if event["kind"] in ROUTINE_EVENTS:
                continue
            tone = "bad" if event["kind"] in ALARMING_EVENTS else ""
            at = "—" if event["t"] is None else f"{event['t'] / 3600:.2f} h"
            rows.append(
                f"<tr><td>{_run_name(run, i)}</td><td class=num>{at}</td>"
                f'<td><span class="badge {tone}">{escape(event["kind"])}</span></td>'
                f"<td>{escape(event['message'])}</td></tr>"
            )
    if not rows:
        return '<p class="empty">No faults, shorts or loop ends were recorded.</p>'
    head = "<tr><th>run</th><th class=num>test time</th><th>kind</th><th>message</th></tr>"
    return f'<div class="card"><table>{head}{"".join(rows)}</table></div>'


def fit_table(rows: Sequence[Mapping[str, str]]) -> str:
    """The fitted values behind the resistance figures, for copying into a lab book."""
    return _plain_table("Fitted equivalent circuits", rows)


def peak_table(rows: Sequence[Mapping[str, str]]) -> str:
    """The voltammograms' peaks, per scan, for copying into a lab book."""
    return _plain_table("Peaks of each scan", rows)


def _plain_table(title: str, rows: Sequence[Mapping[str, str]]) -> str:
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(row[c])}</td>" for c in columns) + "</tr>" for row in rows)
    table = f'<table class="plain"><tr>{head}</tr>{body}</table>'
    return f'<div class="card"><h3>{escape(title)}</h3>{table}</div>'


def page(
    title: str,
    subtitle: str,
    runs: Sequence[RunData],
    summaries: Sequence[RunSummary],
    sections: Sequence[tuple[str, Sequence[Panel]]],
    fit_rows: Sequence[Mapping[str, str]],
    peak_rows: Sequence[Mapping[str, str]] = (),
) -> str:
    anchors = ["summary", "runs", *(name.lower() for name, _ in sections), "events"]
    nav = "".join(f'<a href="#{a}">{a.capitalize()}</a>' for a in anchors)
    body = [
        f'<header class="top"><h1>{escape(title)}</h1><div class="sub">{escape(subtitle)}</div>'
        f"<nav>{nav}</nav></header>",
        f'<section id="summary"><h2>Summary</h2>{summary_table(runs, summaries)}</section>',
        f'<section id="runs"><h2>Runs</h2>{runs_table(runs)}</section>',
    ]
    for name, panels in sections:
        blocks = "".join(figure_block(p) for p in panels)
        after = {"Impedance": fit_table(fit_rows), "Voltammetry": peak_table(peak_rows)}.get(name, "")
        fits = f'<div class="after">{after}</div>' if after else ""
        heading = f'<h2>{escape(name)}</h2><div class="figures">{blocks}</div>'
        body.append(f'<section id="{name.lower()}">{heading}{fits}</section>')
    body.append(f'<section id="events"><h2>Events</h2>{events_table(runs)}</section>')
    body.append(
        "<footer>cyclerd report · figures drawn from the stored samples · no scripts, no network</footer>"
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )
