"""The run's cycles: the samples of the cycle in progress, the finished summaries, and the
cycle-level reasons a loop ends (short circuit, CE or capacity retention below its limit).

Kept apart from the runner, which only says when a cycle starts and ends and what its steps
logged; summaries are computed from the logged samples, as `cyclerd show` computes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from cyclerd.analysis.cycles import (
    CycleSummary,
    ForwardStats,
    ShortCircuit,
    capacity_retention,
    forward_voltage_stats,
    short_in_cycle,
    summarise,
)
from cyclerd.protocols.program import CycleLimits

# What the summaries read: not seq, nor temperature, which only some batches carry.
SUMMARISED_COLUMNS = ("t", "step", "cycle", "voltage", "current", "charge", "energy")


@dataclass
class CycleLedger:
    cycles: list[CycleSummary] = field(default_factory=list)
    voltage_stats: list[ForwardStats] = field(default_factory=list)
    cutoff_missed: dict[int, bool] = field(default_factory=dict)
    short: ShortCircuit | None = None
    # The logged samples of the cycle in progress (one cycle, never the whole run).
    parts: list[Mapping[str, np.ndarray]] = field(default_factory=list)

    def start_cycle(self) -> None:
        self.parts = []

    def log(self, columns: Mapping[str, np.ndarray]) -> None:
        self.parts.append(columns)

    def missed_cutoff(self, cycle: int) -> None:
        """A step with a voltage cut-off ended on its duration: a short-circuit signature."""
        self.cutoff_missed[cycle] = True

    def close_cycle(self, until: CycleLimits, first_cycle: int) -> tuple[CycleSummary | None, str]:
        """Summarise the cycle just finished; it and the reason its loop must end ('' to go on).

        A cycle summarised once before a restart is summarised again and replaces the first.
        """
        if not self.parts:
            return None, ""
        columns = {key: np.concatenate([p[key] for p in self.parts]) for key in SUMMARISED_COLUMNS}
        summaries = summarise(columns)
        if not summaries:
            return None, ""
        (summary,) = summaries
        if self.cycles and self.cycles[-1].cycle == summary.cycle:
            self.cycles.pop()
            self.voltage_stats.pop()
        self.cycles.append(summary)
        self.voltage_stats.append(forward_voltage_stats(columns, summary))
        self.cutoff_missed.setdefault(summary.cycle, False)
        if until.short_circuit and self.short is None:
            self.short = short_in_cycle(
                len(self.cycles) - 1, self.cycles, self.voltage_stats, self.cutoff_missed
            )
            if self.short is not None:
                return summary, "short circuit"
        ce = summary.coulombic_efficiency
        if until.coulombic_efficiency_below is not None and ce < until.coulombic_efficiency_below:
            return summary, f"CE {100 * ce:.2f} % below {100 * until.coulombic_efficiency_below:g} %"
        if until.capacity_retention_below is not None:
            # Against the loop's reference cycle (its first, or the one the protocol names).
            in_loop = [c for c in self.cycles if c.cycle >= first_cycle]
            retention = float(capacity_retention(in_loop)[-1]) if in_loop else 1.0
            limit = until.capacity_retention_below
            if retention < limit:
                return summary, f"capacity retention {100 * retention:.1f} % below {100 * limit:g} %"
        return summary, ""
