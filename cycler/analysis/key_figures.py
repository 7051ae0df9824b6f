"""The key figures of one run, as experiments.md defines them: ICE, average CE up to the short,
capacity retention against its loop's first cycle, the first short. `cyclerd show` and the
report print the same numbers from the same function."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cyclerd.analysis.cycles import ShortCircuit, average_ce, detect_short, forward_voltage_stats
from cyclerd.analysis.paper import Reported
from cyclerd.analysis.plot_data import RunData

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class RunSummary:
    """The key numbers of one run, as experiments.md defines them, with the paper's beside them."""

    run_id: int
    cycles: int
    hours: float
    ice: float | None
    average_ce: float | None
    average_cycles: tuple[int, int] | None  # first and last cycle the average includes
    retention: float | None  # full cells: last cycle's discharge capacity over its reference's
    retention_cycle: int | None
    retention_reference: int | None  # the first cycle of its loop, or the cycle a person named
    short: ShortCircuit | None
    paper: Reported | None
    # The cell's active mass, and the charge each of the first and last cycles gave back
    # (discharged, stripped) per mass of it, in Ah/kg (= mAh/g); None when the mass is unknown.
    active_mass_kg: float | None = None
    specific_reverse_Ah_per_kg: tuple[float, float] | None = None


def summarise_run(run: RunData) -> RunSummary:
    """ICE, average CE (cycle 2 up to the last before a short), retention, and the first short.

    The short is the one the runner acted on (its event), else the one `detect_short` finds
    in the stored data, the same test `cyclerd show` applies. A shorted cycle's CE (up to
    200 %) says nothing about plating efficiency, so the average stops before it.
    """
    cycles = run.cycles
    short = _recorded_short(run)
    if short is None and cycles:
        short = detect_short(cycles, [forward_voltage_stats(run.samples, c) for c in cycles])
    last = cycles[-1].cycle if cycles else 0
    if short is not None:
        last = short.cycle - 1
    included = [c for c in cycles if 2 <= c.cycle <= last]
    retention, retention_cycle, retention_reference = None, None, None
    if run.full_cell and len(cycles) > 1:
        values, references = run.retention
        retention, retention_cycle, retention_reference = float(values[-1]), cycles[-1].cycle, references[-1]
    mass_kg = active_mass_kg(run.run.cell)
    specific = None
    if mass_kg is not None and cycles:
        first, final = (c.reverse_As / SECONDS_PER_HOUR / mass_kg for c in (cycles[0], cycles[-1]))
        specific = (first, final)
    return RunSummary(
        run_id=run.run.id,
        cycles=len(cycles),
        hours=run.hours,
        ice=cycles[0].coulombic_efficiency if cycles else None,
        average_ce=average_ce(included, first=2) if included else None,
        average_cycles=(included[0].cycle, included[-1].cycle) if included else None,
        retention=retention,
        retention_cycle=retention_cycle,
        retention_reference=retention_reference,
        short=short,
        paper=run.paper,
        active_mass_kg=mass_kg,
        specific_reverse_Ah_per_kg=specific,
    )


def active_mass_kg(cell: Mapping[str, Any]) -> float | None:
    """The active-material mass a run's cell was resolved with (its `active_mass_kg`), if any."""
    mass = cell.get("active_mass_kg")
    return float(mass) if isinstance(mass, int | float) and not isinstance(mass, bool) and mass > 0 else None


def _recorded_short(run: RunData) -> ShortCircuit | None:
    """The runner's short-circuit event as a ShortCircuit; its message reads 'short ... N: reason'."""
    cycle = run.short_cycle
    for event in run.events:
        if cycle is not None and event["kind"] == "short_circuit":
            message = str(event["message"])
            return ShortCircuit(cycle, message.partition(": ")[2] or message)
    return None
