"""Which experiment of shared/experiments.md a stored run reproduces, from the protocol it ran.

A run reproduces experiment E when its protocol declares `cell.metadata.experiment: E` and runs
the library protocol that defines E under the same conditions: the same current-carrying steps
at the same current densities, charges, cut-offs and sweeps, in the same loops. Loop counts,
rests, backstop durations, logging and safety limits may differ; how many cycles the protocol
plans is kept, because some of the paper's figures (average CE, life) need that many.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any, assert_never

from cyclerd.protocols import ProtocolError, loads
from cyclerd.protocols.compiler import CellDataMissing, compile_for_stored_cell, compile_protocol
from cyclerd.protocols.program import (
    CurrentCommand,
    CurrentVoltageCommand,
    ImpedanceCommand,
    Loop,
    Node,
    Program,
    RestCommand,
    StepCommand,
    SweepCommand,
    VoltageCommand,
)

Fingerprint = tuple[Any, ...]


@dataclass(frozen=True)
class Reproduced:
    """The experiment a run reproduces and the most cycles any of its loops plans (None: no limit)."""

    experiment: str
    planned_cycles: int | None

    def plans_at_least(self, cycles: int) -> bool:
        return self.planned_cycles is None or self.planned_cycles >= cycles


def program_of(text: str, cell: Mapping[str, Any]) -> Program | None:
    """A stored run's protocol compiled again with its cell values; None if it no longer compiles."""
    return _compiled(text, tuple(sorted((k, v) for k, v in cell.items() if isinstance(v, int | float))))


@lru_cache(maxsize=64)
def _compiled(text: str, numbers: tuple[tuple[str, float], ...]) -> Program | None:
    try:
        return compile_for_stored_cell(loads(text, "<stored protocol>"), dict(numbers))
    except (ProtocolError, CellDataMissing):
        return None


def declared(program: Program) -> str | None:
    value = program.metadata.get("experiment")
    return str(value).strip().upper() if value not in (None, "") else None


def reproduced(program: Program | None) -> Reproduced | None:
    """The experiment `program` declares, if its conditions are those of the library's protocol for it."""
    if program is None:
        return None
    experiment = declared(program)
    if experiment is None:
        return None
    definitions = library_fingerprints().get(experiment, ())
    if fingerprint(program) not in definitions:
        return None
    return Reproduced(experiment, planned_cycles(program.body))


@lru_cache(maxsize=1)
def library_fingerprints() -> dict[str, tuple[Fingerprint, ...]]:
    """The conditions of each library protocol, by the experiment it declares."""
    out: dict[str, tuple[Fingerprint, ...]] = {}
    for path in sorted(files("cyclerd.protocols").joinpath("library").iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yaml"):
            continue
        program = compile_protocol(loads(path.read_text(encoding="utf-8"), path.name))
        experiment = declared(program)
        if experiment is not None:
            out[experiment] = (*out.get(experiment, ()), fingerprint(program))
    return out


def fingerprint(program: Program) -> Fingerprint:
    """The conditions that define an experiment, per unit area where the program knows its area."""
    return _nodes(program.body, program.area_m2 or 1.0)


def planned_cycles(nodes: tuple[Node, ...]) -> int | None:
    """The largest count of any loop (None when a loop has no count: it runs until its condition)."""
    counts: list[int | None] = []
    for node in nodes:
        if isinstance(node, Loop):
            counts.append(node.count)
            inner = planned_cycles(node.body)
            counts.append(None if node.count is None or inner is None else inner)
    if any(count is None for count in counts):
        return None
    return max((c for c in counts if c is not None), default=0)


def _nodes(nodes: tuple[Node, ...], area: float) -> Fingerprint:
    out: list[Any] = []
    for node in nodes:
        if isinstance(node, Loop):
            out.append(("repeat", _nodes(node.body, area)))
        elif (step := _step(node, area)) is not None:
            out.append(step)
    return tuple(out)


def _step(command: StepCommand, area: float) -> Fingerprint | None:
    """A step's defining values, rounded to 6 significant digits; rests carry none."""
    end = command.end
    limits: tuple[float | None, ...] = (
        _r(end.voltage_above_V),
        _r(end.voltage_below_V),
        _r(end.current_below_A, area),
        _r(end.charge_As, area),
    )
    if all(value is None for value in limits):  # a duration is the step's only end: it defines it
        limits = (*limits, _r(end.duration_s))
    every = None
    if command.periodic is not None:
        body = tuple(s for c in command.periodic.body if (s := _step(c, 1.0)) is not None)
        every = (_r(command.periodic.interval_s), body)
    match command:
        case RestCommand():
            return None
        case ImpedanceCommand():
            return ("eis",)
        case CurrentCommand():
            return ("current", _r(command.current_A, area), limits, every)
        case CurrentVoltageCommand():
            return ("cccv", _r(command.current_A, area), _r(command.voltage_V), limits, every)
        case VoltageCommand():
            return ("hold", _r(command.voltage_V), limits, every)
        case SweepCommand():
            spec = command.spec
            path = tuple(_r(v) for v in (spec.start_V, *spec.vertices_V))
            return ("sweep", path, _r(spec.scan_rate_V_per_s), every)
        case _:
            assert_never(command)


def _r(value: float | None, per: float = 1.0) -> float | None:
    return None if value is None else float(f"{value / per:.6g}")
