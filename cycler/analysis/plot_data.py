"""What a figure needs from the store, read once per run, and the errors a plot request can meet.

A report draws many figures of the same runs; reading each run's samples once (a 500 h run has
hundreds of thousands of rows) keeps it quick. Figures are pure functions of these objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cyclerd.analysis.cycles import CycleSummary, FloatArray, retention_against_references, summarise
from cyclerd.analysis.experiments import Reproduced, program_of, reproduced
from cyclerd.analysis.paper import Reported, reference_for
from cyclerd.protocols.program import Program
from cyclerd.store.database import CYCLE_COLUMNS, Run, Store

AS_PER_MAH = 3.6
AREAL = "mAh cm⁻²"
M2_PER_CM2 = 1e-4
SUMMARY_FIELDS = CYCLE_COLUMNS[:-1]  # the stored CE is derived (reverse / forward), not a field


class PlotError(ValueError):
    """A figure that cannot be drawn from what the user asked for; the message says what to do."""


class NoDataToPlot(PlotError):
    """The run holds nothing this kind of figure shows (e.g. a Nyquist plot of a run without EIS)."""


class CycleNotInRun(PlotError):
    """A `--cycle` the run never reached."""


@dataclass(frozen=True)
class RunData:
    """One run as figures see it. Cycles come from the store's cycles table (what `show` prints)."""

    run: Run
    samples: dict[str, FloatArray]
    cycles: list[CycleSummary]
    steps: list[dict[str, Any]]
    spectra: list[dict[str, Any]]
    events: list[dict[str, Any]]
    protocol: str = ""  # the protocol text the run ran
    references: dict[int, int] = field(default_factory=dict)  # cycle -> its loop's first cycle
    reference_cycle: int | None = None  # a cycle a person named (--reference-cycle) for retention

    @cached_property
    def retention(self) -> tuple[FloatArray, list[int]]:
        """Each cycle's discharge capacity over its reference cycle's, and those references.

        The reference is the cycle a person named, else the first cycle of the cycle's own loop
        (what the loop's capacity_retention_below used), as the engine stored it. A run without
        stored references (imported) counts from cycle 2, after formation, on a full cell.
        """
        references = self.references
        if not references and self.full_cell and len(self.cycles) > 1:
            second = self.cycles[1].cycle
            references = {c.cycle: (second if c.cycle >= second else c.cycle) for c in self.cycles}
        return retention_against_references(self.cycles, references, self.reference_cycle)

    @cached_property
    def program(self) -> Program | None:
        """The run's protocol compiled again (None when there is none or it no longer compiles)."""
        return program_of(self.protocol, self.run.cell) if self.protocol else None

    @cached_property
    def reproduces(self) -> Reproduced | None:
        """The experiment this run reproduces (its protocol declares it, under the library's conditions)."""
        return reproduced(self.program)

    @cached_property
    def paper(self) -> Reported | None:
        """What the paper reports that this run can be compared with, if anything."""
        return reference_for(self.reproduces, self.run.source)

    @property
    def label(self) -> str:
        """Legend text: the simulator preset, else the cell's seed (what tells runs apart in Fig. 2)."""
        preset = self.run.source.get("preset")
        seed = self.run.cell.get("seed")
        name = str(preset) if preset else str(seed) if seed else self.run.channel
        return f"run {self.run.id} · {name}"

    @property
    def area_m2(self) -> float | None:
        area = self.run.cell.get("area_m2")
        return float(area) if isinstance(area, int | float) and area > 0 else None

    @property
    def full_cell(self) -> bool:
        """A cell whose cycles start by charging (positive current) is a full cell (cycles.py)."""
        return bool(self.cycles) and self.cycles[0].forward_sign > 0

    @property
    def short_cycle(self) -> int | None:
        """The cycle in which the runner detected a short circuit (its event), if it did."""
        for event in self.events:
            if event["kind"] == "short_circuit" and isinstance(event["data"].get("cycle"), int):
                return int(event["data"]["cycle"])
        return None

    @property
    def hours(self) -> float:
        t = self.samples["t"]
        return float(t[-1]) / 3600.0 if len(t) else 0.0

    def cycle(self, number: int | None) -> CycleSummary:
        """Cycle `number`, or the first cycle when None; CycleNotInRun says which cycles exist."""
        if not self.cycles:
            raise NoDataToPlot(
                f"run {self.run.id} has no complete cycle yet: nothing was plated/charged in a loop"
            )
        if number is None:
            return self.cycles[0]
        for cycle in self.cycles:
            if cycle.cycle == number:
                return cycle
        raise CycleNotInRun(
            f"run {self.run.id} has no cycle {number}; its cycles are "
            f"{self.cycles[0].cycle}–{self.cycles[-1].cycle}: choose one of those with --cycle"
        )


def load_run(store: Store, run_id: int, reference_cycle: int | None = None) -> RunData:
    """Everything figures and reports use of one run; KeyError (from the store) if there is no such run.

    `reference_cycle`: measure capacity retention against this cycle rather than each loop's first.
    """
    run = store.run(run_id)
    samples = store.samples(run_id)
    table = store.cycles(run_id)
    rows = zip(*(table[name].tolist() for name in SUMMARY_FIELDS), strict=True)
    cycles = [CycleSummary(int(row[0]), int(row[1]), *row[2:]) for row in rows]
    if not cycles and len(samples["t"]):
        # A run cut off before its first cycle summary was stored still has its samples.
        cycles = summarise(samples)
    return RunData(
        run,
        samples,
        cycles,
        store.steps(run_id),
        store.spectra(run_id),
        store.events(run_id),
        store.protocol_text(run_id),
        store.cycle_references(run_id),
        reference_cycle,
    )


def capacity_unit(runs: list[RunData]) -> str:
    """Areal capacity (mAh/cm², as the paper plots) when every run knows its electrode area, else mAh."""
    return AREAL if all(r.area_m2 is not None for r in runs) else "mAh"


def areal_divisor(run: RunData, unit: str) -> float:
    """A·s -> the axis unit for this run (its own area when the unit is areal)."""
    if unit == AREAL and run.area_m2 is not None:
        return AS_PER_MAH * run.area_m2 / M2_PER_CM2
    return AS_PER_MAH
