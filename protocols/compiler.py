"""Protocol -> Program: plain step commands in SI units, with loops and every-blocks explicit.

Compilation touches no instrument (a plan says what, the runner says how). It resolves
per-area and per-mass currents and C-rates with the cell's area, capacity and active mass,
merges logging rules, and signs currents by our convention (positive charges the cell). The
result is the frozen data
of `cyclerd.protocols.program`, which the runner interprets and `cyclerd validate` prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

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
from cyclerd.protocols.program import (
    CurrentCommand,
    CurrentVoltageCommand,
    CycleLimits,
    EndConditions,
    ImpedanceCommand,
    ImpedanceSpec,
    Loop,
    Node,
    Periodic,
    Program,
    RecordRule,
    RestCommand,
    SafetyLimits,
    StepCommand,
    SweepCommand,
    SweepSpec,
    VoltageCommand,
)
from cyclerd.protocols.scale import CellScale
from cyclerd.protocols.units import Amount, Basis


class CellDataMissing(ValueError):
    """The protocol uses per-area or per-mass values or C-rates and the cell's area, active mass
    or capacity is unknown."""

    def __init__(self, needs: dict[str, list[str]]) -> None:
        self.needs = needs
        lines = [f"{what} is needed for: {', '.join(where)}" for what, where in needs.items()]
        super().__init__("cannot resolve the protocol for this cell:\n  " + "\n  ".join(lines))


def compile_for_stored_cell(protocol: Protocol, cell: Mapping[str, Any]) -> Program:
    """Compile `protocol` again with the cell values a run was resolved with, as its record keeps
    them (`area_m2`, `capacity_As`, `active_mass_kg`: SI, absolute), so that a restarted run, an
    export and a report all see the program the run ran."""

    def number(key: str) -> float | None:
        value = cell.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    capacity_As, mass_kg = number("capacity_As"), number("active_mass_kg")
    return compile_protocol(
        protocol,
        number("area_m2"),
        None if capacity_As is None else Amount(capacity_As, Basis.ABSOLUTE),
        None if mass_kg is None else Amount(mass_kg, Basis.ABSOLUTE),
    )


def compile_protocol(
    protocol: Protocol,
    area_m2: float | None = None,
    capacity: Amount | None = None,
    mass: Amount | None = None,
) -> Program:
    """Resolve `protocol` for one cell; `area_m2`, `capacity` and `mass` (the active mass, kg or
    kg/m²) override the file's cell section. A capacity given here also overrides the file's
    `specific_capacity` (it is the nominal capacity then).

    Raises CellDataMissing naming every value that needs an area, mass or capacity nobody gave.
    """
    return _Compiler(protocol, cell_scale(protocol, area_m2, capacity, mass)).program()


def cell_scale(
    protocol: Protocol,
    area_m2: float | None = None,
    capacity: Amount | None = None,
    mass: Amount | None = None,
) -> CellScale:
    """The cell's values: those given when the run starts, else the file's cell section."""
    cell = protocol.cell
    return CellScale(
        area_m2 if area_m2 is not None else cell.area,
        capacity if capacity is not None else cell.capacity,
        mass if mass is not None else cell.active_mass,
        None if capacity is not None else cell.specific_capacity,
    )


class _Common(TypedDict):
    """The fields every step type has, as keyword arguments."""

    index: int
    label: str
    source: str
    end: EndConditions
    record: RecordRule
    periodic: Periodic | None


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
            active_mass_kg=self.scale.mass_kg,
            metadata=dict(p.cell.metadata),
            safety=safety,
            body=body,
            record=default,
        )

    def _amount(self, amount: Amount | None, where: str) -> float | None:
        return None if amount is None else self._value(amount, where)

    def _value(self, amount: Amount, where: str) -> float:
        """`amount` in SI for this cell; NaN, and noted in `needs`, when cell data is missing."""
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
            retention_reference=loop.retention_reference,
        )

    def _next(self) -> int:
        self.count += 1
        return self.count

    def _command(self, step: object, where: str, record: RecordRule) -> StepCommand:
        index = self._next()
        if isinstance(step, Impedance):
            return self._impedance(step, index, where, record)
        if isinstance(step, Sweep):
            return SweepCommand(
                index=index,
                label=step.label or "sweep",
                source=where,
                end=EndConditions(),
                record=self._record(step.record, record, where),
                spec=SweepSpec(
                    None if step.start == "ocv" else step.start,
                    tuple(step.vertices),
                    step.scan_rate,
                    step.scans,
                ),
            )
        assert isinstance(
            step,
            Rest | ConstantCurrent | Plate | Strip | ConstantVoltage | ConstantCurrentConstantVoltage,
        )
        periodic = None
        if step.every is not None:
            body = self._nodes(step.every.steps, f"{where}.every.steps", record)
            periodic = Periodic(
                interval_s=step.every.interval,
                at_start=step.every.at_start,
                at_end=step.every.at_end,
                body=tuple(node for node in body if not isinstance(node, Loop)),
            )
        common = _Common(
            index=index,
            label=step.label or step.kind,
            source=where,
            end=self._end(step.until, where),
            record=self._record(step.record, record, where),
            periodic=periodic,
        )
        if isinstance(step, Rest):
            return RestCommand(**common)
        if isinstance(step, ConstantVoltage):
            limit = self._amount(step.current_limit, f"{where}.current_limit")
            return VoltageCommand(**common, voltage_V=step.voltage, current_limit_A=limit)
        current = self._value(signed_current(step), f"{where}.current")
        if isinstance(step, ConstantCurrentConstantVoltage):
            return CurrentVoltageCommand(**common, current_A=current, voltage_V=step.voltage)
        return CurrentCommand(**common, kind=step.kind, current_A=current)

    def _impedance(self, step: Impedance, index: int, where: str, record: RecordRule) -> StepCommand:
        amplitude: float
        if isinstance(step.amplitude, Amount):
            amplitude = self._value(step.amplitude, f"{where}.amplitude")
        else:
            amplitude = step.amplitude
        dc: float | None
        if isinstance(step.dc_level, Amount):
            dc = self._value(step.dc_level, f"{where}.dc_level")
        else:
            dc = None if step.dc_level == "ocv" else float(step.dc_level)
        return ImpedanceCommand(
            index=index,
            label=step.label or "eis",
            source=where,
            end=EndConditions(),
            record=record,
            spec=ImpedanceSpec(
                frequency_start_Hz=step.frequency_start,
                frequency_stop_Hz=step.frequency_stop,
                points_per_decade=step.points_per_decade,
                amplitude=amplitude,
                galvanostatic=step.galvanostatic,
                dc_level=dc,
                dc_is_current=isinstance(step.dc_level, Amount),
            ),
        )
