"""Where a run stood when the daemon died, read back from the store so the run can go on.

The runner commits its position with every batch of samples (same transaction), so the
checkpoint and the last stored sample always agree. What the runner keeps in memory besides —
the finished cycles, their voltage statistics, the samples of the cycle in progress — is
recomputed from the stored samples rather than trusted to the checkpoint: the store is the
source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cyclerd.analysis.cycles import CycleSummary, ForwardStats, forward_voltage_stats
from cyclerd.engine.cursor import Cursor
from cyclerd.store.database import CYCLE_COLUMNS, Store


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


def load_cursor(store: Store, run_id: int) -> Cursor | None:
    """The run's last checkpoint, or None when it never got as far as one."""
    found = store.checkpoint(run_id)
    if found is None or "phase" not in found[1]:
        return None
    return Cursor.from_state(*found)


def gap_event(cursor: Cursor, outage_s: float, next_seq: int) -> tuple[str, dict[str, Any]]:
    """The audit event of a resumed run: where it took up, and what the gap may hide."""
    message = (
        f"resumed after a restart: step {cursor.step_number} ({cursor.phase}) at"
        f" {cursor.progress.t_s:.1f} s of step time, {cursor.progress.charge_As / 3.6:.4g} mAh"
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
    samples = store.samples(run_id)
    stored = store.cycles(run_id)
    history = History()
    for k in range(len(stored["cycle"])):
        row = {name: stored[name][k] for name in CYCLE_COLUMNS}
        if cycle > 0 and int(row["cycle"]) >= cycle:
            continue  # the cycle in progress is summarised again when it ends
        summary = CycleSummary(
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
        history.cycles.append(summary)
        history.voltage_stats.append(forward_voltage_stats(samples, summary))
    if cycle > 0:
        mask = samples["cycle"].astype(int) == cycle
        history.current_cycle = {
            name: (column[mask].astype(np.int64) if name in ("seq", "step", "cycle") else column[mask])
            for name, column in samples.items()
            if name != "temperature" or not np.isnan(column[mask]).all()
        }
    if len(samples["seq"]):
        history.next_seq = int(samples["seq"][-1]) + 1
    steps = store.steps(run_id)
    history.last_step = max((s["number"] for s in steps), default=0)
    history.open_steps = [s["number"] for s in steps if s["t_end"] is None]
    history.last_spectrum = max((s["sequence"] for s in store.spectra(run_id)), default=0)
    return history
