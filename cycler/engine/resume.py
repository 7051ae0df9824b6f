"""Where a run stood when the daemon died, read back from the store so the run can go on.

The runner commits its position with every batch of samples (same transaction), so the
checkpoint and the last stored sample always agree. What the runner keeps in memory besides —
the finished cycles, their voltage statistics, the samples of the cycle in progress — is
recomputed from the stored samples rather than trusted to the checkpoint: the store is the
source of truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cyclerd.analysis.cycles import CycleSummary, ShortCircuit, forward_voltage_stats
from cyclerd.drivers.base import StepProgress
from cyclerd.store.database import CYCLE_COLUMNS, Store

# Phases of one step command, in order. A checkpoint names the phase the run was in:
# an every-block ("at_start", "interrupt", "at_end") is run again whole on resuming, so an
# impedance spectrum cut off by the crash is measured again rather than continued halfway.
PHASES = ("at_start", "step", "interrupt", "at_end", "done")


@dataclass(frozen=True)
class ResumePoint:
    """A run's position: the step command, its phase and progress, and the loops around it."""

    command: int
    phase: str
    step_number: int
    progress: StepProgress
    pause_at_s: float | None
    loops: Mapping[int, tuple[int, float, int]]  # loop index -> (iteration, start t, first cycle)
    cycle: int
    t_s: float
    cutoff_missed: frozenset[int] = frozenset()
    short: ShortCircuit | None = None
    cell: str | None = None  # a simulated cell's own state (the physical cell keeps its state too)

    def as_state(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "phase": self.phase,
            "step_number": self.step_number,
            "progress": [self.progress.t_s, self.progress.charge_As, self.progress.energy_J],
            "pause_at": self.pause_at_s,
            "loops": {str(k): list(v) for k, v in self.loops.items()},
            "cycle": self.cycle,
            "cutoff_missed": sorted(self.cutoff_missed),
            "short": None if self.short is None else [self.short.cycle, self.short.reason],
            "cell": self.cell,
        }

    @classmethod
    def from_state(cls, t_s: float, state: Mapping[str, Any]) -> ResumePoint:
        short = state.get("short")
        return cls(
            command=int(state["command"]),
            phase=str(state["phase"]),
            step_number=int(state["step_number"]),
            progress=StepProgress(*(float(x) for x in state["progress"])),
            pause_at_s=None if state["pause_at"] is None else float(state["pause_at"]),
            loops={int(k): (int(v[0]), float(v[1]), int(v[2])) for k, v in state["loops"].items()},
            cycle=int(state["cycle"]),
            t_s=t_s,
            cutoff_missed=frozenset(int(c) for c in state.get("cutoff_missed", [])),
            short=None if short is None else ShortCircuit(int(short[0]), str(short[1])),
            cell=state.get("cell"),
        )


@dataclass
class History:
    """What the runner remembers of a run, rebuilt from the stored samples and cycles."""

    cycles: list[CycleSummary] = field(default_factory=list)
    voltage_stats: list[tuple[float, float]] = field(default_factory=list)
    current_cycle: dict[str, np.ndarray] = field(default_factory=dict)
    next_seq: int = 0
    last_step: int = 0
    last_spectrum: int = 0
    open_steps: list[int] = field(default_factory=list)


def load_point(store: Store, run_id: int) -> ResumePoint | None:
    """The run's last checkpoint, or None when it never got as far as one."""
    found = store.checkpoint(run_id)
    if found is None or "phase" not in found[1]:
        return None
    return ResumePoint.from_state(*found)


def load_history(store: Store, run_id: int, cycle: int) -> History:
    """Rebuild the runner's memory of `run_id` up to the cycle in progress (`cycle`)."""
    samples = store.samples(run_id)
    stored = store.cycles(run_id)
    history = History()
    for k in range(len(stored["cycle"])):
        row = {name: stored[name][k] for name in CYCLE_COLUMNS}
        if int(row["cycle"]) >= cycle:
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
