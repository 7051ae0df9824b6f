"""Where a run stood when the daemon died, read back from the store so the run can go on.

The runner commits its position with every batch of samples (same transaction), so the
checkpoint and the last stored sample always agree. What the runner keeps in memory besides is
read back from the store, in a time that does not grow with the run: the finished cycles from
their stored summaries, the voltage statistics the short-circuit check compares them by from the
table they are kept in as each cycle closes (`VoltageStatsSink`), and only the samples of the
cycle in progress. A run recorded before the statistics were kept has them computed once from
its samples, in one pass, and stored. The daemon reads all this in a worker thread
(`read_history`), so the other channels go on meanwhile.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cyclerd.analysis.cycles import CycleSummary, ForwardStats, forward_voltage_stats
from cyclerd.engine.cursor import Cursor, Phase
from cyclerd.engine.sinks import Sink
from cyclerd.store.database import CYCLE_COLUMNS, Store

# Kept beside the cycles table, written by the runs themselves (like the heartbeats): a store no
# run of this version wrote to has no such table, and its runs have their statistics computed.
STATS_TABLE = """
CREATE TABLE IF NOT EXISTS cycle_voltage_stats (  -- what the short-circuit check judges a cycle by
    run_id INTEGER NOT NULL,
    cycle INTEGER NOT NULL,
    level_V REAL,                    -- median |V| on the forward plateau (NULL: none)
    noise_V REAL,                    -- robust rms of sample-to-sample V changes there
    current_A REAL,                  -- median |I| forward
    reverse_current_A REAL,          -- median |I| the other way
    PRIMARY KEY (run_id, cycle)
) WITHOUT ROWID"""
STATS_COLUMNS = ("level_V", "noise_V", "current_A", "reverse_current_A")

FIRST_WINDOW = 4096  # samples read back at first when looking for the start of the cycle in progress


@dataclass
class History:
    """What the runner remembers of a run, rebuilt from the stored samples and cycles."""

    cycles: list[CycleSummary] = field(default_factory=list)
    voltage_stats: list[ForwardStats] = field(default_factory=list)
    current_cycle: dict[str, np.ndarray] = field(default_factory=dict)
    next_seq: int = 0
    last_step: int = 0
    last_spectrum: int = 0
    open_steps: list[int] = field(default_factory=list)
    # Statistics computed here from samples, for the store to keep (by cycle).
    computed_stats: dict[int, ForwardStats] = field(default_factory=dict)


def load_cursor(store: Store, run_id: int) -> Cursor | None:
    """The run's last checkpoint, or None when it never got as far as one."""
    found = store.checkpoint(run_id)
    if found is None or "phase" not in found[1]:
        return None
    return Cursor.from_state(*found)


# Where in a step command a run was taken up, for the gap event: an every-block runs again whole.
_PHASE_WORDS = {
    Phase.AT_START: " (in its every-block at the start, which is run again whole)",
    Phase.INTERRUPT: " (in an every-block, which is run again whole)",
    Phase.AT_END: " (in its every-block at the end, which is run again whole)",
}


def gap_event(cursor: Cursor, outage_s: float, next_seq: int) -> tuple[str, dict[str, Any]]:
    """The audit event of a resumed run: where it took up, and what the gap may hide."""
    message = (
        f"resumed after a restart: step {cursor.step_number} at {cursor.progress.t_s:.1f} s of step"
        f" time{_PHASE_WORDS.get(cursor.phase, '')}, {cursor.progress.charge_As / 3.6:.4g} mAh"
        f" carried over; {outage_s:.1f} s of test time without the daemon, first new sample seq {next_seq}"
    )
    if outage_s > 0:
        message += (
            "; the output was switched off at the restart: what the instrument did while the"
            " daemon was away is not recorded"
        )
    data = {
        "step": cursor.step_number,
        "phase": cursor.phase.value,
        "step_time": cursor.progress.t_s,
        "charge_As": cursor.progress.charge_As,
        "outage_s": outage_s,
        "next_seq": next_seq,
    }
    return message, data


def load_history(store: Store, run_id: int, cycle: int) -> History:
    """Rebuild the runner's memory of `run_id` up to the cycle in progress (`cycle`)."""
    history = History(cycles=_summaries(store, run_id, cycle))
    kept = _kept_stats(store, run_id)
    missing = [c for c in history.cycles if c.cycle not in kept]
    if missing:
        history.computed_stats = _stats_from_samples(store, run_id, missing)
    computed = history.computed_stats
    history.voltage_stats = [kept[c.cycle] if c.cycle in kept else computed[c.cycle] for c in history.cycles]
    last_seq = store.read("SELECT MAX(last_seq) AS seq FROM sample_blocks WHERE run_id = ?", (run_id,))
    if last_seq[0]["seq"] is not None:
        history.next_seq = int(last_seq[0]["seq"]) + 1
    if cycle > 0:
        history.current_cycle = _current_cycle(store, run_id, cycle, history.next_seq - 1)
    steps = store.read(
        "SELECT MAX(number) AS last FROM steps WHERE run_id = ?"
        " UNION ALL SELECT number FROM steps WHERE run_id = ? AND t_end IS NULL",
        (run_id, run_id),
    )
    history.last_step = int(steps[0]["last"] or 0)
    history.open_steps = sorted(int(row["last"]) for row in steps[1:])
    spectra = store.read("SELECT MAX(sequence) AS last FROM spectra WHERE run_id = ?", (run_id,))
    history.last_spectrum = int(spectra[0]["last"] or 0)
    return history


async def read_history(store: Store, run_id: int, cycle: int) -> History:
    """`load_history` in a worker thread over a connection of its own (the event loop, and every
    other channel with it, goes on meanwhile); statistics it had to compute are then kept."""

    def load() -> History:
        with Store(store.path) as own:
            return load_history(own, run_id, cycle)

    history = await asyncio.to_thread(load)
    if history.computed_stats:
        keep_stats(store, run_id, history.computed_stats)
    return history


def keep_stats(store: Store, run_id: int, stats: Mapping[int, ForwardStats]) -> None:
    """Store the voltage statistics of cycles of `run_id` (a cycle summarised again replaces its own)."""
    with store.transaction() as db:
        db.execute(STATS_TABLE)
        db.executemany(
            f"INSERT OR REPLACE INTO cycle_voltage_stats (run_id, cycle, {', '.join(STATS_COLUMNS)})"
            f" VALUES (?, ?{', ?' * len(STATS_COLUMNS)})",
            [(run_id, cycle, *(_sql(v) for v in found)) for cycle, found in stats.items()],
        )


class VoltageStatsSink(Sink):
    """Keeps each closed cycle's voltage statistics, as the run's cycle ledger computed them,
    so a restart reads them instead of recomputing them from every sample of the run.

    `latest` gives the ledger's last closed cycle and its statistics (None before the first).
    """

    def __init__(
        self, store: Store, run_id: int, latest: Callable[[], tuple[CycleSummary, ForwardStats] | None]
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.latest = latest

    def cycle_closed(self, summary: Mapping[str, float]) -> None:
        found = self.latest()
        if found is not None and found[0].cycle == int(summary["cycle"]):
            keep_stats(self.store, self.run_id, {found[0].cycle: found[1]})


def _summaries(store: Store, run_id: int, cycle: int) -> list[CycleSummary]:
    """The stored summaries of the cycles before `cycle` (0: of every cycle); the cycle in
    progress is summarised again when it ends."""
    stored = store.cycles(run_id)
    out = []
    for k in range(len(stored["cycle"])):
        row = {name: stored[name][k] for name in CYCLE_COLUMNS}
        if cycle > 0 and int(row["cycle"]) >= cycle:
            continue
        out.append(
            CycleSummary(
                cycle=int(row["cycle"]),
                forward_sign=int(row["forward_sign"]),
                forward_As=float(row["forward_As"]),
                reverse_As=float(row["reverse_As"]),
                forward_J=float(row["forward_J"]),
                reverse_J=float(row["reverse_J"]),
                forward_mean_V=float(row["forward_mean_V"]),
                reverse_mean_V=float(row["reverse_mean_V"]),
                duration_s=float(row["duration_s"]),
            )
        )
    return out


def _kept_stats(store: Store, run_id: int) -> dict[int, ForwardStats]:
    if not store.read("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'cycle_voltage_stats'"):
        return {}
    rows = store.read(
        f"SELECT cycle, {', '.join(STATS_COLUMNS)} FROM cycle_voltage_stats WHERE run_id = ?", (run_id,)
    )
    return {int(row["cycle"]): ForwardStats(*(_float(row[name]) for name in STATS_COLUMNS)) for row in rows}


def _stats_from_samples(store: Store, run_id: int, cycles: list[CycleSummary]) -> dict[int, ForwardStats]:
    """The statistics of `cycles` from the run's samples, in one pass over them (not one per cycle)."""
    samples = store.samples(run_id)
    numbers = samples["cycle"].astype(np.int64)
    order = np.argsort(numbers, kind="stable")  # each cycle's samples together, in seq order
    ordered = numbers[order]
    out = {}
    for summary in cycles:
        lo, hi = np.searchsorted(ordered, [summary.cycle, summary.cycle + 1])
        rows = order[lo:hi]
        part = {name: samples[name][rows] for name in ("t", "cycle", "voltage", "current")}
        out[summary.cycle] = forward_voltage_stats(part, summary)
    return out


def _current_cycle(store: Store, run_id: int, cycle: int, last_seq: int) -> dict[str, np.ndarray]:
    """The stored samples of the cycle in progress: read back from the run's end, a window twice
    as long each time, until one reaches a sample of an earlier cycle (or the run's start)."""
    window = FIRST_WINDOW
    while True:
        after = max(-1, last_seq - window)
        samples = store.samples(run_id, after_seq=after)
        if after < 0 or (len(samples["cycle"]) and int(samples["cycle"][0]) != cycle):
            break
        window *= 2
    mask = samples["cycle"].astype(int) == cycle
    return {
        name: (column[mask].astype(np.int64) if name in ("seq", "step", "cycle") else column[mask])
        for name, column in samples.items()
        if name != "temperature" or not np.isnan(column[mask]).all()
    }


def _sql(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
