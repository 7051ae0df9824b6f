"""A readable plan of a compiled program: what each step does, how long, how much charge.

Durations are spans: the least and the most a step can take given its end conditions (a step
that may end early on a voltage has a lower bound of zero; one with no time bound has no upper
bound). The plan is plain data; the CLI renders it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import assert_never

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
from cyclerd.protocols.units import SECONDS_PER_HOUR, duration_text, engineering


@dataclass(frozen=True)
class Span:
    """How long something takes: at least `low`, at most `high` seconds (None: no bound)."""

    low: float
    high: float | None

    def __add__(self, other: Span) -> Span:
        high = None if self.high is None or other.high is None else self.high + other.high
        return Span(self.low + other.low, high)

    def times(self, low_count: int, high_count: int | None) -> Span:
        high = None if self.high is None or high_count is None else self.high * high_count
        return Span(self.low * low_count, high)

    def capped(self, limit: float | None) -> Span:
        if limit is None:
            return self
        high = limit if self.high is None else min(self.high, limit)
        return Span(min(self.low, high), high)

    def text(self) -> str:
        if self.high is None:
            return f"≥ {duration_text(self.low)}" if self.low > 0 else "until its conditions"
        if math.isclose(self.low, self.high, rel_tol=1e-6):
            return f"≈ {duration_text(self.high)}"
        return f"≤ {duration_text(self.high)}"


@dataclass(frozen=True)
class PlanLine:
    depth: int
    text: str
    span: Span


@dataclass(frozen=True)
class CycleCharge:
    """Charge moved in one cycle of an innermost loop, in A·s, per direction.

    `positive` is charge (strip, in a half-cell) and `negative` discharge (plate); each is a
    (least, most) pair, the most being None when no end condition bounds it.
    """

    loop: str
    half_cell: bool
    positive: tuple[float, float | None]
    negative: tuple[float, float | None]

    def text(self) -> str:
        names = ("stripped", "plated") if self.half_cell else ("charged", "discharged")
        parts = []
        for name, (low, high) in zip(names, (self.positive, self.negative), strict=True):
            if high == 0:
                continue
            if high is None:
                parts.append(f"{name} unbounded")
            elif math.isclose(low, high, rel_tol=1e-6):
                parts.append(f"{name} ≈ {engineering(high / SECONDS_PER_HOUR, 'Ah')}")
            else:
                parts.append(f"{name} ≤ {engineering(high / SECONDS_PER_HOUR, 'Ah')}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Plan:
    lines: list[PlanLine]
    total: Span
    cycles: list[CycleCharge]


def plan(program: Program) -> Plan:
    """The plan of `program`, with durations capped by its safety.duration_max."""
    lines: list[PlanLine] = []
    cycles: list[CycleCharge] = []
    total = _nodes(program.body, 0, lines, cycles)
    return Plan(lines, total.capped(program.safety.duration_max_s), cycles)


def _nodes(nodes: tuple[Node, ...], depth: int, lines: list[PlanLine], cycles: list[CycleCharge]) -> Span:
    total = Span(0.0, 0.0)
    for node in nodes:
        if isinstance(node, Loop):
            total = total + _loop(node, depth, lines, cycles)
        else:
            total = total + _command(node, depth, lines)
    return total


def _loop(loop: Loop, depth: int, lines: list[PlanLine], cycles: list[CycleCharge]) -> Span:
    at = len(lines)
    body = _nodes(loop.body, depth + 1, lines, cycles)
    may_stop_early = (
        loop.until.short_circuit
        or loop.until.coulombic_efficiency_below is not None
        or loop.until.capacity_retention_below is not None
        or loop.until.duration_s is not None
    )
    low_count = 1 if may_stop_early else (loop.count or 1)
    span = body.times(low_count, loop.count)
    if loop.until.duration_s is not None:
        span = span.capped(loop.until.duration_s + (body.high or 0.0))
    stops = []
    if loop.count is not None:
        noun = ("cycle" if loop.innermost else "time") + ("s" if loop.count != 1 else "")
        stops.append(f"{loop.count} {noun}")
    if loop.until.duration_s is not None:
        stops.append(f"{duration_text(loop.until.duration_s)} in the loop")
    if loop.until.coulombic_efficiency_below is not None:
        stops.append(f"CE < {100 * loop.until.coulombic_efficiency_below:.4g} %")
    if loop.until.capacity_retention_below is not None:
        stops.append(f"retention < {100 * loop.until.capacity_retention_below:.4g} %")
    if loop.until.short_circuit:
        stops.append("short circuit")
    lines.insert(at, PlanLine(depth, f"{loop.label}: until {' or '.join(stops)}", span))
    if loop.innermost:
        cycles.append(_cycle_charge(loop))
    return span


def _command(command: StepCommand, depth: int, lines: list[PlanLine]) -> Span:
    own = command_span(command)
    span = own
    lines.append(PlanLine(depth, describe(command), own))
    periodic = command.periodic
    if periodic is not None:
        body = Span(0.0, 0.0)
        for sub in periodic.body:
            body = body + command_span(sub)
        extra = int(periodic.at_start) + int(periodic.at_end)
        low_runs = _runs(own.low, periodic.interval_s) + extra
        high_runs = None if own.high is None else _runs(own.high, periodic.interval_s) + extra
        when = f"every {duration_text(periodic.interval_s)} of step time"
        if periodic.at_start:
            when += ", at the start"
        if periodic.at_end:
            when += ", at the end"
        count = (
            f"{low_runs}"
            if high_runs == low_runs
            else f"{low_runs}–{high_runs if high_runs is not None else '…'}"
        )
        lines.append(PlanLine(depth + 1, f"{when} ({count} times):", body))
        for sub in periodic.body:
            lines.append(PlanLine(depth + 2, describe(sub), command_span(sub)))
        span = span + body.times(low_runs, high_runs)
    return span


def _runs(step_s: float, interval_s: float) -> int:
    """Interruptions strictly inside a step of `step_s` seconds."""
    return max(0, math.ceil(step_s / interval_s - 1e-9) - 1)


def command_span(command: StepCommand) -> Span:
    """How long one step takes, from its end conditions."""
    if isinstance(command, SweepCommand) and command.spec.start_V is None:
        return Span(command.spec.duration_s(), None)  # its path depends on the OCV
    if isinstance(command, SweepCommand | ImpedanceCommand):  # they run to their deadline
        return Span(command.deadline_s or 0.0, command.deadline_s)
    end = command.end
    bounds = [end.duration_s] if end.duration_s is not None else []
    if end.charge_As is not None and isinstance(command, CurrentCommand) and command.current_A:
        bounds.append(end.charge_As / abs(command.current_A))
    if not bounds:
        return Span(0.0, None)
    high = min(bounds)
    early = (
        end.voltage_above_V is not None
        or end.voltage_below_V is not None
        or end.current_below_A is not None
        or end.dvdt_below_V_per_s is not None
        or isinstance(command, VoltageCommand | CurrentVoltageCommand)
    )
    return Span(0.0 if early else high, high)


def describe(command: StepCommand) -> str:
    """One line saying what the step does, in units a person reads."""
    parts = [command.label if command.label != command.kind else command.kind]
    match command:
        case ImpedanceCommand():
            return " ".join([*parts, _spectrum(command)])
        case SweepCommand():
            return " ".join([*parts, _sweep(command)])
        case RestCommand():
            parts.append("at open circuit")
        case CurrentCommand():
            if command.current_A:
                parts.append(f"at {engineering(command.current_A, 'A')}")
        case VoltageCommand():
            parts.append(f"at {command.voltage_V:g} V")
            if command.current_limit_A is not None:
                parts.append(f"(|I| ≤ {engineering(command.current_limit_A, 'A')})")
        case CurrentVoltageCommand():
            if command.current_A:
                parts.append(f"at {engineering(command.current_A, 'A')}")
            parts.append(f"to {command.voltage_V:g} V")
        case _:
            assert_never(command)
    parts.append("until " + " or ".join(_conditions(command)))
    return " ".join(parts)


def _spectrum(command: ImpedanceCommand) -> str:
    spec = command.spec
    unit = "A" if spec.galvanostatic else "V"
    dc = (
        "at OCV"
        if spec.dc_level is None
        else f"at {engineering(spec.dc_level, 'A' if spec.dc_is_current else 'V')}"
    )
    mode = "galvanostatic" if spec.galvanostatic else "potentiostatic"
    start, stop = (engineering(f, "Hz") for f in (spec.frequency_start_Hz, spec.frequency_stop_Hz))
    points = len(spec.frequencies_Hz())
    return f"{mode} {start} → {stop}, {points} points, {engineering(spec.amplitude, unit)} {dc}"


def _sweep(command: SweepCommand) -> str:
    sw = command.spec
    corners = (sw.start_V, *sw.vertices_V) if sw.start_V is not None else (None, *sw.vertices_V, None)
    path = " → ".join("OCV" if v is None else f"{v:g} V" for v in corners)
    return f"{path} at {engineering(sw.scan_rate_V_per_s, 'V/s')}, {sw.scans} scan(s)"


def _conditions(command: StepCommand) -> list[str]:
    end = command.end
    out = []
    if end.charge_As is not None:
        out.append(f"{engineering(end.charge_As / SECONDS_PER_HOUR, 'Ah')} passed")
    if end.voltage_above_V is not None:
        out.append(f"V > {end.voltage_above_V:g} V")
    if end.voltage_below_V is not None:
        out.append(f"V < {end.voltage_below_V:g} V")
    if end.current_below_A is not None:
        out.append(f"|I| < {engineering(end.current_below_A, 'A')}")
    if end.dvdt_below_V_per_s is not None:
        out.append(f"|dV/dt| < {engineering(end.dvdt_below_V_per_s * SECONDS_PER_HOUR, 'V/h')}")
    if end.duration_s is not None:
        out.append(duration_text(end.duration_s))
    return out


def _cycle_charge(loop: Loop) -> CycleCharge:
    totals = {True: [0.0, 0.0], False: [0.0, 0.0]}  # positive? -> [least, most]
    for node in loop.body:
        if not isinstance(node, CurrentCommand | CurrentVoltageCommand) or not node.current_A:
            continue
        span, total = command_span(node), totals[node.current_A > 0]
        total[0] += abs(node.current_A) * span.low
        total[1] = math.inf if span.high is None else total[1] + abs(node.current_A) * span.high
    half_cell = any(isinstance(n, CurrentCommand) and n.kind in ("plate", "strip") for n in loop.body)

    def pair(total: list[float]) -> tuple[float, float | None]:
        return total[0], None if math.isinf(total[1]) else total[1]

    return CycleCharge(loop.label, half_cell, pair(totals[True]), pair(totals[False]))
