"""Protocol -> Program: plain step commands in SI units, with loops and every-blocks explicit.

Compilation touches no instrument (a plan says what, the runner says how). It resolves
per-area currents and C-rates with the cell's area and capacity, merges logging rules, and
signs currents by our convention (positive charges the cell). The result is frozen data that
the runner interprets and `cyclerd validate` prints.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

from cyclerd.protocols.checks import signed_current
from cyclerd.protocols.model import (
    ConstantCurrent,
    ConstantCurrentConstantVoltage,
    ConstantVoltage,
    Impedance,
    Plate,
    Protocol,
    Record,
    Repeat,
    Rest,
    Strip,
    Sweep,
    Until,
)
from cyclerd.protocols.scale import CellScale
from cyclerd.protocols.units import Amount

StepKind = Literal["rest", "cc", "plate", "strip", "cv", "cccv", "eis", "sweep"]


class CellDataMissing(ValueError):
    """The protocol uses per-area values or C-rates and the cell's area or capacity is unknown."""

    def __init__(self, needs: dict[str, list[str]]) -> None:
        self.needs = needs
        lines = [f"{what} is needed for: {', '.join(where)}" for what, where in needs.items()]
        super().__init__("cannot resolve the protocol for this cell:\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class EndConditions:
    """A step ends when any condition holds. Voltages in V, currents in A, charge in A·s."""

    duration_s: float | None = None
    voltage_above_V: float | None = None
    voltage_below_V: float | None = None
    current_below_A: float | None = None
    charge_As: float | None = None
    dvdt_below_V_per_s: float | None = None


@dataclass(frozen=True)
class RecordRule:
    """Log a sample after `every_s`, or sooner when V or I has moved by the given change."""

    every_s: float | None = None
    voltage_change_V: float | None = None
    current_change_A: float | None = None


@dataclass(frozen=True)
class ImpedanceSpec:
    frequency_start_Hz: float
    frequency_stop_Hz: float
    points_per_decade: int
    amplitude: float  # V when potentiostatic, A when galvanostatic
    galvanostatic: bool
    dc_level: float | None  # V or A like the amplitude; None: around the open-circuit voltage
    dc_is_current: bool = False

    def frequencies_Hz(self) -> tuple[float, ...]:
        """Log-spaced frequencies from start to stop, both included."""
        lo, hi = math.log10(self.frequency_start_Hz), math.log10(self.frequency_stop_Hz)
        count = max(2, round(abs(hi - lo) * self.points_per_decade) + 1)
        return tuple(10 ** (lo + (hi - lo) * i / (count - 1)) for i in range(count))

    def duration_s(self) -> float:
        """Time a spectrum takes: 3 periods or 1 s per frequency, whichever is longer.

        An estimate of a real potentiostat (settling plus integration); simulators use the same
        figure so that virtual time matches what a user plans for.
        """
        return sum(max(3.0 / f, 1.0) for f in self.frequencies_Hz())


@dataclass(frozen=True)
class SweepSpec:
    start_V: float
    vertices_V: tuple[float, ...]
    scan_rate_V_per_s: float
    scans: int

    def duration_s(self) -> float:
        points = (self.start_V, *self.vertices_V)
        path = sum(abs(b - a) for a, b in pairwise(points))
        return path * self.scans / self.scan_rate_V_per_s


@dataclass(frozen=True)
class Periodic:
    """An every-block: `body` runs after each `interval_s` of the step's own time."""

    interval_s: float
    at_start: bool
    at_end: bool
    body: tuple[StepCommand, ...]


@dataclass(frozen=True)
class StepCommand:
    """One leaf step, ready for a channel: setpoints, end conditions, logging, deadline."""

    index: int  # unique, in file order
    kind: StepKind
    label: str
    source: str  # where in the protocol, e.g. "steps[2].repeat.steps[0].plate"
    end: EndConditions
    record: RecordRule
    current_A: float | None = None  # setpoint, signed: positive charges
    voltage_V: float | None = None  # setpoint of cv/cccv
    current_limit_A: float | None = None
    periodic: Periodic | None = None
    impedance: ImpedanceSpec | None = None
    sweep: SweepSpec | None = None

    @property
    def deadline_s(self) -> float | None:
        """The step's own time after which it ends whatever else happens."""
        if self.sweep is not None:
            return self.sweep.duration_s()
        if self.impedance is not None:
            return self.impedance.duration_s()
        return self.end.duration_s


@dataclass(frozen=True)
class CycleLimits:
    duration_s: float | None = None
    coulombic_efficiency_below: float | None = None
    capacity_retention_below: float | None = None
    short_circuit: bool = False


@dataclass(frozen=True)
class Loop:
    """A repeat block; when `innermost`, each pass is one cycle of the run."""

    index: int
    label: str
    source: str
    count: int | None
    until: CycleLimits
    body: tuple[Node, ...]
    innermost: bool


Node = StepCommand | Loop


@dataclass(frozen=True)
class SafetyLimits:
    voltage_min_V: float | None = None
    voltage_max_V: float | None = None
    current_max_A: float | None = None
    temperature_max_K: float | None = None
    duration_max_s: float | None = None


@dataclass(frozen=True)
class Program:
    """A compiled protocol for one cell."""

    name: str
    description: str
    area_m2: float | None
    capacity_As: float | None
    metadata: dict[str, object]
    safety: SafetyLimits
    body: tuple[Node, ...]
    record: RecordRule = field(default_factory=RecordRule)

    def commands(self) -> Iterator[StepCommand]:
        """Every step command, including those inside loops and every-blocks, in file order."""
        yield from _walk(self.body)

    def needs(self) -> Needs:
        """What an instrument channel must be able to do to run this program."""
        kinds: set[StepKind] = set()
        currents: list[float] = [0.0]
        # The instrument must measure across the whole safety window, not only at the setpoints.
        window = (self.safety.voltage_min_V, self.safety.voltage_max_V)
        voltages: list[float] = [v for v in window if v is not None]
        eis_modes: set[str] = set()
        frequencies: list[float] = []
        for command in self.commands():
            kinds.add(command.kind)
            for value in (command.current_A, command.current_limit_A, command.end.current_below_A):
                if value is not None:
                    currents.append(abs(value))
            for volts in (
                command.voltage_V,
                command.end.voltage_above_V,
                command.end.voltage_below_V,
            ):
                if volts is not None:
                    voltages.append(volts)
            if command.sweep is not None:
                voltages.extend((command.sweep.start_V, *command.sweep.vertices_V))
            if command.impedance is not None:
                spec = command.impedance
                eis_modes.add("galvanostatic" if spec.galvanostatic else "potentiostatic")
                frequencies.extend((spec.frequency_start_Hz, spec.frequency_stop_Hz))
        return Needs(
            kinds=frozenset(kinds),
            current_max_A=max(currents),
            voltage_range_V=(min(voltages), max(voltages)) if voltages else None,
            eis_modes=frozenset(eis_modes),
            frequency_range_Hz=(min(frequencies), max(frequencies)) if frequencies else None,
        )


@dataclass(frozen=True)
class Needs:
    """Instrument capabilities a program requires (checked against a channel before a run)."""

    kinds: frozenset[StepKind]
    current_max_A: float
    voltage_range_V: tuple[float, float] | None
    eis_modes: frozenset[str]
    frequency_range_Hz: tuple[float, float] | None


def _walk(nodes: tuple[Node, ...]) -> Iterator[StepCommand]:
    for node in nodes:
        if isinstance(node, Loop):
            yield from _walk(node.body)
        else:
            yield node
            if node.periodic is not None:
                yield from node.periodic.body


def compile_protocol(
    protocol: Protocol, area_m2: float | None = None, capacity: Amount | None = None
) -> Program:
    """Resolve `protocol` for one cell; `area_m2` and `capacity` override the file's cell section.

    Raises CellDataMissing naming every value that needs an area or capacity nobody gave.
    """
    scale = CellScale(
        area_m2 if area_m2 is not None else protocol.cell.area,
        capacity if capacity is not None else protocol.cell.capacity,
    )
    return _Compiler(protocol, scale).program()


class _Compiler:
    def __init__(self, protocol: Protocol, scale: CellScale) -> None:
        self.protocol = protocol
        self.scale = scale
        self.needs: dict[str, list[str]] = {}
        self.count = 0

    def program(self) -> Program:
        p = self.protocol
        safety = SafetyLimits(
            voltage_min_V=p.safety.voltage_min,
            voltage_max_V=p.safety.voltage_max,
            current_max_A=self._amount(p.safety.current_max, "safety.current_max"),
            temperature_max_K=p.safety.temperature_max,
            duration_max_s=p.safety.duration_max,
        )
        default = self._record(p.record, RecordRule(), "record")
        body = self._nodes(p.steps, "steps", default)
        if self.needs:
            raise CellDataMissing(self.needs)
        return Program(
            name=p.name,
            description=p.description,
            area_m2=self.scale.area_m2,
            capacity_As=self.scale.capacity_As,
            metadata=dict(p.cell.metadata),
            safety=safety,
            body=body,
            record=default,
        )

    def _amount(self, amount: Amount | None, where: str) -> float | None:
        if amount is None:
            return None
        value = self.scale.resolve(amount)
        if value is None:
            self.needs.setdefault(self.scale.needs(amount) or "cell data", []).append(where)
            return math.nan
        return value

    def _record(self, record: Record | None, base: RecordRule, where: str) -> RecordRule:
        if record is None:
            return base
        current_change = self._amount(record.current_change, f"{where}.current_change")
        return RecordRule(
            every_s=record.every if record.every is not None else base.every_s,
            voltage_change_V=(
                record.voltage_change if record.voltage_change is not None else base.voltage_change_V
            ),
            current_change_A=current_change if current_change is not None else base.current_change_A,
        )

    def _end(self, until: Until, where: str) -> EndConditions:
        charge = self._amount(until.charge, f"{where}.until.charge")
        return EndConditions(
            duration_s=until.duration,
            voltage_above_V=until.voltage_above,
            voltage_below_V=until.voltage_below,
            current_below_A=self._amount(until.current_below, f"{where}.until.current_below"),
            charge_As=None if charge is None else abs(charge),
            dvdt_below_V_per_s=until.dvdt_below,
        )

    def _nodes(self, steps: Sequence[object], path: str, record: RecordRule) -> tuple[Node, ...]:
        nodes: list[Node] = []
        for i, step in enumerate(steps):
            where = f"{path}[{i}].{getattr(step, 'kind', '?')}"
            if isinstance(step, Repeat):
                nodes.append(self._loop(step, where, record))
            else:
                nodes.append(self._command(step, where, record))
        return tuple(nodes)

    def _loop(self, loop: Repeat, where: str, record: RecordRule) -> Loop:
        index = self._next()
        body = self._nodes(loop.steps, f"{where}.steps", record)
        return Loop(
            index=index,
            label=loop.label or "repeat",
            source=where,
            count=loop.count,
            until=CycleLimits(
                duration_s=loop.until.duration,
                coulombic_efficiency_below=loop.until.coulombic_efficiency_below,
                capacity_retention_below=loop.until.capacity_retention_below,
                short_circuit=loop.until.short_circuit,
            ),
            body=body,
            innermost=not any(isinstance(node, Loop) for node in body),
        )

    def _next(self) -> int:
        self.count += 1
        return self.count

    def _command(self, step: object, where: str, record: RecordRule) -> StepCommand:
        index = self._next()
        if isinstance(step, Impedance):
            return self._impedance(step, index, where, record)
        if isinstance(step, Sweep):
            return StepCommand(
                index=index,
                kind="sweep",
                label=step.label or "sweep",
                source=where,
                end=EndConditions(),
                record=self._record(step.record, record, where),
                sweep=SweepSpec(step.start, tuple(step.vertices), step.scan_rate, step.scans),
            )
        assert isinstance(
            step,
            Rest | ConstantCurrent | Plate | Strip | ConstantVoltage | ConstantCurrentConstantVoltage,
        )
        current = None
        if isinstance(step, ConstantCurrent | Plate | Strip | ConstantCurrentConstantVoltage):
            current = self._amount(signed_current(step), f"{where}.current")
        limit = None
        if isinstance(step, ConstantVoltage):
            limit = self._amount(step.current_limit, f"{where}.current_limit")
        periodic = None
        if step.every is not None:
            body = self._nodes(step.every.steps, f"{where}.every.steps", record)
            periodic = Periodic(
                interval_s=step.every.interval,
                at_start=step.every.at_start,
                at_end=step.every.at_end,
                body=tuple(node for node in body if isinstance(node, StepCommand)),
            )
        return StepCommand(
            index=index,
            kind=step.kind,
            label=step.label or step.kind,
            source=where,
            end=self._end(step.until, where),
            record=self._record(step.record, record, where),
            current_A=0.0 if isinstance(step, Rest) else current,
            voltage_V=getattr(step, "voltage", None),
            current_limit_A=limit,
            periodic=periodic,
        )

    def _impedance(self, step: Impedance, index: int, where: str, record: RecordRule) -> StepCommand:
        amplitude: float | None
        if isinstance(step.amplitude, Amount):
            amplitude = self._amount(step.amplitude, f"{where}.amplitude")
        else:
            amplitude = step.amplitude
        dc: float | None
        if isinstance(step.dc_level, Amount):
            dc = self._amount(step.dc_level, f"{where}.dc_level")
        else:
            dc = None if step.dc_level == "ocv" else float(step.dc_level)
        return StepCommand(
            index=index,
            kind="eis",
            label=step.label or "eis",
            source=where,
            end=EndConditions(),
            record=record,
            impedance=ImpedanceSpec(
                frequency_start_Hz=step.frequency_start,
                frequency_stop_Hz=step.frequency_stop,
                points_per_decade=step.points_per_decade,
                amplitude=amplitude if amplitude is not None else math.nan,
                galvanostatic=step.galvanostatic,
                dc_level=dc,
                dc_is_current=isinstance(step.dc_level, Amount),
            ),
        )
