"""Where each live run stands, read from the store, as the table `cyclerd status` prints.

Everything comes from what the run committed: its checkpoint (the cursor: where in the program
it is), the row of the step it is in (label, cycle, start) and its last sample (V, I, test
time). The
time left is the run's plan read from that cursor (cyclerd.engine.time_left); the program is
compiled once per run and kept (`Estimates`), since a protocol of thousands of steps takes
seconds to read and `status --watch` asks every second.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from rich.table import Table
from rich.text import Text

from cyclerd.engine.cursor import PERIODIC_PHASES, Cursor
from cyclerd.engine.session import prepare_stored
from cyclerd.engine.time_left import InStep, TimeLeft
from cyclerd.protocols import ProtocolError
from cyclerd.protocols.compiler import CellDataMissing
from cyclerd.protocols.plan import Span
from cyclerd.protocols.units import engineering
from cyclerd.store.database import Run, Store

NO_VALUE = "–"


class Estimates:
    """The time-left estimator of each run, made on first use and kept (None: the stored
    protocol cannot be compiled again, so nothing can be estimated)."""

    def __init__(self) -> None:
        self._by_run: dict[int, TimeLeft | None] = {}

    def of(self, store: Store, run: Run) -> TimeLeft | None:
        if run.id not in self._by_run:
            self._by_run[run.id] = _estimator(store, run)
        return self._by_run[run.id]


def _estimator(store: Store, run: Run) -> TimeLeft | None:
    try:
        text = store.protocol_text(run.id)
        program = prepare_stored(text, run.cell, str(run.source.get("path", ""))).program
    except (ProtocolError, CellDataMissing, KeyError):
        return None
    return TimeLeft(program)


@dataclass(frozen=True)
class Standing:
    """Where one run stands as of its last record; None where nothing is recorded yet."""

    run: int
    channel: str
    state: str
    step_label: str | None
    cycle: int | None
    step_time_s: float | None
    elapsed_s: float | None
    voltage_V: float | None
    current_A: float | None
    left: Span | None  # None: no estimate (the protocol cannot be compiled)


def standing(store: Store, run: Run, estimates: Estimates) -> Standing:
    """Run `run`'s standing from its checkpoint, its step's row and its last sample (a few
    indexed reads, however long the run)."""
    cursor = _cursor(store, run.id)
    step = _step(store, run.id, cursor)
    last = _last_sample(store, run.id)
    times = [t for t in (last.get("t"), None if cursor is None else cursor.t_s) if t is not None]
    elapsed = max(times) if times else None
    cycle = None
    if step is not None and step["cycle"]:
        cycle = int(step["cycle"])
    elif cursor is not None and cursor.cycles_begun:
        cycle = cursor.cycles_begun  # after a loop: the last cycle the run began
    estimator = estimates.of(store, run)
    left = None
    if estimator is not None:
        in_step = None if step is None else InStep(int(step["command"]), float(step["t_start"]))
        left = estimator.at(cursor, in_step, elapsed)
    return Standing(
        run=run.id,
        channel=run.channel,
        state=run.state,
        step_label=None if step is None else str(step["label"]),
        cycle=cycle,
        step_time_s=None if step is None or elapsed is None else max(elapsed - float(step["t_start"]), 0.0),
        elapsed_s=elapsed,
        voltage_V=last.get("voltage"),
        current_A=last.get("current"),
        left=left,
    )


def _cursor(store: Store, run_id: int) -> Cursor | None:
    checkpoint = store.checkpoint(run_id)
    if checkpoint is None:
        return None
    try:
        return Cursor.from_state(*checkpoint)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):  # a checkpoint of another version
        return None


def _step(store: Store, run_id: int, cursor: Cursor | None) -> dict[str, Any] | None:
    """The step the cell is in: the cursor's step, or while an every-block interrupts it, the
    block's latest step (the steps numbered after it); the latest step when nothing says."""
    query = "SELECT number, command, label, cycle, t_start FROM steps WHERE run_id = ?"
    latest = store.read(f"{query} ORDER BY number DESC LIMIT 1", (run_id,))
    if cursor is None or cursor.phase in PERIODIC_PHASES or not latest:
        return latest[0] if latest else None
    if latest[0]["number"] == cursor.step_number:
        return latest[0]
    own = store.read(f"{query} AND number = ?", (run_id, cursor.step_number))
    return own[0] if own else latest[0]


def _last_sample(store: Store, run_id: int) -> dict[str, float]:
    rows = store.read("SELECT MAX(last_seq) AS seq FROM sample_blocks WHERE run_id = ?", (run_id,))
    seq = rows[0]["seq"] if rows else None
    if seq is None:
        return {}
    columns = store.samples(run_id, after_seq=int(seq) - 1, limit=1)
    out = {}
    for name in ("t", "voltage", "current"):
        if len(columns[name]) and math.isfinite(value := float(columns[name][-1])):
            out[name] = value
    return out


# -- the table ------------------------------------------------------------------------------


def progress_table(rows: list[Standing]) -> Table:
    """One line per run, readable on a 100-column terminal: the channel and the step's label give
    way (cut with an ellipsis) before any number does. The run's state is on its own line above."""
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column("run", justify="right", no_wrap=True)
    table.add_column("channel", max_width=16)  # wrappable: shortened first when space runs out
    table.add_column("step", max_width=24)
    for name in ("cycle", "step time", "elapsed", "V", "I", "left"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            str(row.run),
            _cut(row.channel),
            _cut(row.step_label or NO_VALUE),
            NO_VALUE if row.cycle is None else str(row.cycle),
            clock(row.step_time_s),
            clock(row.elapsed_s),
            NO_VALUE if row.voltage_V is None else f"{row.voltage_V:.4f} V",
            NO_VALUE if row.current_A is None else engineering(row.current_A, "A"),
            left_text(row.left),
        )
    return table


def _cut(text: str) -> Text:
    return Text(text, no_wrap=True, overflow="ellipsis")


def clock(seconds: float | None) -> str:
    """A duration in two units at most ('45s', '12m05s', '3h07m', '2d03h'): short enough for a
    column, precise enough to see it move."""
    if seconds is None:
        return NO_VALUE
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def left_text(left: Span | None) -> str:
    """'3h07m' when the plan knows it, '≤ 3h07m' or '1h00m–3h07m' when the run may end sooner
    (on a voltage), '≥ 5h00m' or 'unknown' where the plan has no upper bound."""
    if left is None:
        return "unknown"
    if left.high is None:
        return f"≥ {clock(left.low)}" if left.low >= 0.5 else "unknown"
    if math.isclose(left.low, left.high, rel_tol=1e-6, abs_tol=0.5):
        return clock(left.high)
    if left.low < 0.5:
        return f"≤ {clock(left.high)}"
    return f"{clock(left.low)}–{clock(left.high)}"
