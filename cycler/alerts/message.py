"""What an alert says: which run, channel and cell, how it ended and why, when, and what to do.

Pure functions of the facts, so every receiver (mail, Slack, Teams, a lab's own script) gets
the same words and the wording is tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cyclerd.alerts.config import Topic
from cyclerd.engine.states import RunState

# Cell facts worth a place in the one-line description, in this order (the rest go in the body).
CELL_HEADLINE = ("experiment", "cell_type", "seed", "binder")


@dataclass(frozen=True)
class Alert:
    """One notification: a subject line, a body, and the facts behind them (the json format)."""

    topic: Topic
    subject: str
    body: str
    facts: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """Subject and body as one message, for receivers with a single text field."""
        return f"{self.subject}\n\n{self.body}"


def when(unix: float) -> str:
    """A moment as the CLI shows it (UTC), so an alert and `cyclerd status` agree."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def ending_of(state: RunState, reason: str) -> Topic | None:
    """How a finished run ended, as an alert topic; None for a run that completed.

    The runner words its reasons "safety: ...", "instrument fault: ...", "stopped on request"
    (cyclerd.engine.runner), as the CLI's exit codes read them too.
    """
    if state is RunState.COMPLETED:
        return None
    if state is RunState.FAILED:
        return "failed"
    if reason.startswith("safety"):
        return "safety"
    if reason.startswith("instrument fault"):
        return "fault"
    return "stopped"


HEADLINES: dict[Topic, str] = {
    "safety": "stopped by a safety limit",
    "fault": "stopped by an instrument fault",
    "short": "shows a short circuit",
    "stopped": "stopped",
    "failed": "failed",
}


def _advice(topic: Topic, run_id: int, database: Path | None) -> str:
    where = "" if database is None else f" --db {database}"
    show = f"`cyclerd show {run_id}{where}`"
    return {
        "safety": f"The cell is off. Look at the cell before anything else, then run {show}.",
        "fault": f"The cell is off. Check the instrument, its cable or network, then run {show};"
        " submit the protocol again to start a new run.",
        "short": f"Look at the cell: it is probably shorted. Run {show} for its last cycles.",
        "stopped": f"The cell is off. Run {show} for what it did.",
        "failed": f"The cell is off. cyclerd itself failed (see `journalctl -u cyclerd`); run {show}.",
    }[topic]


def describe_cell(cell: Mapping[str, Any]) -> str:
    """'cell E1-03 (E8, MgAgSn, Elastane)': its id and a few telling facts, or '' if none."""
    facts = [str(cell[key]) for key in CELL_HEADLINE if cell.get(key) not in (None, "")]
    name = str(cell.get("cell", "")).strip()
    head = f"cell {name}" if name else ("cell" if facts else "")
    return f"{head} ({', '.join(facts)})" if facts else head


def run_alert(
    lab: str,
    topic: Topic,
    run_id: int,
    channel: str,
    reason: str,
    at_unix: float,
    *,
    name: str = "",
    cell: Mapping[str, Any] | None = None,
    database: Path | None = None,
) -> Alert:
    """A run that ended other than by completing (or showed a short): what, where, why, what now."""
    cell = cell or {}
    described = describe_cell(cell)
    on = f" on {channel}" + (f", {described}" if described else "")
    subject = f"[cyclerd {lab}] run {run_id}{on} {HEADLINES[topic]}"
    lines = [
        f"Run {run_id}" + (f" ({name})" if name else "") + f" on channel {channel} of lab {lab}.",
        f"What happened: {reason}",
        f"When: {when(at_unix)}",
    ]
    facts_of_cell = [f"{k} = {_value(v)}" for k, v in sorted(cell.items()) if v not in (None, "")]
    if facts_of_cell:
        lines.append("Cell: " + ", ".join(facts_of_cell))
    lines += ["", "What to do: " + _advice(topic, run_id, database)]
    facts = {
        "lab": lab,
        "topic": topic,
        "run": run_id,
        "name": name,
        "channel": channel,
        "cell": dict(cell),
        "reason": reason,
        "at": when(at_unix),
        "at_unix": at_unix,
    }
    return Alert(topic, subject, "\n".join(lines), facts)


def offline_alert(lab: str, since_unix: float | None, why: str, now_unix: float) -> Alert:
    """The daemon is gone: nothing records the cells or guards their safety limits."""
    since = "" if since_unix is None else f" since {when(since_unix)}"
    subject = f"[cyclerd {lab}] the daemon is offline{since}"
    body = "\n".join(
        [
            f"The cyclerd daemon of lab {lab} is offline{since}: {why}.",
            f"Noticed: {when(now_unix)}",
            "",
            "What to do: while it is away no channel is recorded and no safety limit is watched. On the"
            " lab PC: `systemctl status cyclerd`, `journalctl -u cyclerd -b`. A daemon that was killed"
            " (or a PC that lost power) may have left an instrument's output on: check the cells."
            " Unfinished runs are taken up when it starts again, as lab.toml's resume policy says.",
        ]
    )
    facts = {"lab": lab, "topic": "offline", "online": False, "why": why, "at_unix": now_unix}
    if since_unix is not None:
        facts.update(since=when(since_unix), since_unix=since_unix)
    return Alert("offline", subject, body, facts)


def back_alert(lab: str, since_unix: float | None, why: str, now_unix: float) -> Alert:
    """The daemon is running again (after an offline alert, or after a crash it noticed itself)."""
    away = (
        "" if since_unix is None else f" (offline since {when(since_unix)}, {_span(now_unix - since_unix)})"
    )
    subject = f"[cyclerd {lab}] the daemon is running again"
    body = "\n".join(
        [
            f"The cyclerd daemon of lab {lab} is running again{away}: {why}.",
            f"When: {when(now_unix)}",
            "",
            "What to do: `cyclerd status` shows which runs it took up and which it stopped safely"
            " (each stopped run sends an alert of its own).",
        ]
    )
    facts: dict[str, Any] = {"lab": lab, "topic": "offline", "online": True, "why": why, "at_unix": now_unix}
    if since_unix is not None:
        facts.update(since=when(since_unix), since_unix=since_unix)
    return Alert("offline", subject, body, facts)


def _value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
