"""cyclerd steps as Neware BTS step files, pure: a cyclerd step, or a whole program with its loops,
as the file the BTS runs (the file itself, both ways: `neware_stepfile`). One encoder
(`neware_step`) serves the driver's one-step files and `program_step_file`.

A step ends on what its Neware type offers: rest on time; constant current on time, capacity and
the cut-off in its own direction; constant voltage and CC-CV on time, capacity and a current
floor. The rest (|dV/dt|, a cut-off against the current, a floor under constant current) is left
to the host, which watches the records (`host_conditions`). Logging rules map one to one onto the
step's <Record>: time interval, voltage change, current change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import assert_never

from cyclerd.drivers.base import INTERRUPT, StepProgress
from cyclerd.drivers.neware_stepfile import (
    DISCHARGING,
    NewareStep,
    Protection,
    StepFile,
    StepFileError,
    StepType,
    parse_step_file,
    to_xml,
)
from cyclerd.protocols.program import (
    CurrentCommand,
    CurrentVoltageCommand,
    EndConditions,
    ImpedanceCommand,
    Loop,
    Node,
    Program,
    RecordRule,
    RestCommand,
    SafetyLimits,
    StepCommand,
    SweepCommand,
    VoltageCommand,
)

__all__ = [  # with the step file's own names, for those who compile and read files alike
    "NewareStep",
    "ProgramFile",
    "Protection",
    "StepFile",
    "StepFileError",
    "StepPlan",
    "StepType",
    "host_conditions",
    "neware_step",
    "parse_step_file",
    "plan_step",
    "program_step_file",
    "protection",
    "to_xml",
    "why_ended",
]

# Which end conditions each kind of step writes into its file; the rest are the host's.
WRITTEN = {
    "rest": frozenset({"duration_s"}),
    "cc": frozenset({"duration_s", "charge_As"}),  # and the cut-off in the current's direction
    "cv": frozenset({"duration_s", "charge_As", "current_below_A"}),
    "cccv": frozenset({"duration_s", "charge_As", "current_below_A"}),
}
VOLTAGE_TOLERANCE_V = 2e-3  # a record this close to a cut-off has reached it (the emulator's resolution)
TIME_TOLERANCE_S = 0.01  # records carry step time in ms


# -- one cyclerd step ----------------------------------------------------------------------------


def neware_step(
    command: StepCommand,
    *,
    end: EndConditions | None = None,
    charging: bool = True,
    current_limit_A: float | None = None,
    record: RecordRule | None = None,
) -> NewareStep:
    """`command` as one Neware step, ending on `end` (default: the command's own) as far as the
    step's type can say. `charging`: the direction of a constant-voltage step (Neware has one type
    each way); `current_limit_A`: a CV step's limit when the command gives none."""
    end = command.end if end is None else end
    rest = NewareStep(StepType.REST, time_s=end.duration_s, record=record)
    timed = dataclasses.replace(rest, capacity_As=end.charge_As)  # what every other type ends on too
    match command:
        case RestCommand():
            return rest
        case CurrentCommand():
            if command.current_A == 0:
                return rest
            up = command.current_A > 0
            return dataclasses.replace(
                timed,
                kind=StepType.CC_CHARGE if up else StepType.CC_DISCHARGE,
                current_A=abs(command.current_A),
                stop_voltage_V=end.voltage_above_V if up else end.voltage_below_V,
            )
        case VoltageCommand():
            limit = command.current_limit_A if command.current_limit_A is not None else current_limit_A
            return dataclasses.replace(
                timed,
                kind=StepType.CV_CHARGE if charging else StepType.CV_DISCHARGE,
                current_A=None if limit is None else abs(limit),
                voltage_V=command.voltage_V,
                stop_current_A=end.current_below_A,
            )
        case CurrentVoltageCommand():
            return dataclasses.replace(
                timed,
                kind=StepType.CCCV_CHARGE if command.current_A > 0 else StepType.CCCV_DISCHARGE,
                current_A=abs(command.current_A),
                voltage_V=command.voltage_V,
                stop_current_A=end.current_below_A,
            )
        case SweepCommand() | ImpedanceCommand():
            raise StepFileError(f"{command.source}: a Neware step file has no {command.kind} step")
        case _:
            assert_never(command)


def host_conditions(command: StepCommand) -> EndConditions:
    """The end conditions of `command` its Neware step cannot say: the host watches these."""
    kind = command.kind if not isinstance(command, CurrentCommand) else "cc" if command.current_A else "rest"
    written = set(WRITTEN.get(kind, WRITTEN["rest"]))
    if isinstance(command, CurrentCommand) and command.current_A != 0:
        written.add("voltage_above_V" if command.current_A > 0 else "voltage_below_V")
    left = {f.name: None for f in fields(EndConditions) if f.name in written}
    return dataclasses.replace(command.end, **left)


@dataclass(frozen=True)
class StepPlan:
    """What the driver starts for one cyclerd step (or the rest of one), and how to read its end."""

    file: StepFile
    host_end: EndConditions  # watched on the records by the host
    time_reason: str  # what the file's time limit stands for: "duration", or INTERRUPT (a pause)
    over: str | None = None  # nothing is left of the step: why it is over (no file to run)


def plan_step(
    command: StepCommand,
    start: StepProgress,
    limits: SafetyLimits,
    pause_at_s: float | None = None,
    *,
    charging: bool = True,
    current_limit_A: float | None = None,
) -> StepPlan:
    """A one-step file for `command` from `start` (a step taken up again runs its remainder)."""
    end = command.end
    time_s, time_reason = end.duration_s, "duration"
    if pause_at_s is not None and (time_s is None or pause_at_s < time_s):
        time_s, time_reason = pause_at_s, INTERRUPT
    left_s = None if time_s is None else time_s - start.t_s
    left_As = None if end.charge_As is None else end.charge_As - abs(start.charge_As)
    remainder = dataclasses.replace(end, duration_s=left_s, charge_As=left_As)
    over = time_reason if left_s is not None and left_s <= 0 else None
    if over is None and left_As is not None and left_As <= 0:
        over = "charge"
    step = neware_step(
        command, end=remainder, charging=charging, current_limit_A=current_limit_A, record=None
    )
    file = StepFile(
        (step, NewareStep(StepType.END)),
        protection=protection(limits),
        record=command.record,
        remark=f"cyclerd {command.source}",
    )
    return StepPlan(file, host_conditions(command), time_reason, over)


def protection(limits: SafetyLimits) -> Protection:
    """The run's safety limits as the file's protection (|I| at most current_max, both ways)."""
    top = limits.current_max_A
    return Protection(
        voltage_max_V=limits.voltage_max_V,
        voltage_min_V=limits.voltage_min_V,
        current_max_A=top,
        current_min_A=None if top is None else -top,
    )


def why_ended(
    step: NewareStep, t_s: float, voltage_V: float, current_A: float, capacity_As: float, time_reason: str
) -> str | None:
    """Which of the step's ends its last record meets (cyclerd's name), None if none does.

    The BTS says only that the step is over; which limit ended it is read off the last record,
    as one reads a BTS data file. The cut-off wins over the others, then the current floor, the
    capacity and the time.
    """
    if step.stop_voltage_V is not None:
        if step.kind is StepType.CC_CHARGE and voltage_V >= step.stop_voltage_V - VOLTAGE_TOLERANCE_V:
            return "voltage_above"
        if step.kind is StepType.CC_DISCHARGE and voltage_V <= step.stop_voltage_V + VOLTAGE_TOLERANCE_V:
            return "voltage_below"
    if step.stop_current_A is not None and abs(current_A) <= step.stop_current_A * (1 + 1e-3) + 1e-12:
        return "current_below"
    if step.capacity_As is not None and abs(capacity_As) >= step.capacity_As * (1 - 1e-3):
        return "charge"
    if step.time_s is not None and t_s >= step.time_s - TIME_TOLERANCE_S:
        return time_reason
    return None


# -- a whole program -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProgramFile:
    file: StepFile
    left_out: tuple[str, ...]  # what the file cannot say, each naming where in the protocol
    numbers: dict[int, int]  # cyclerd command index -> its step number in the file


def program_step_file(program: Program, current_limit_A: float | None = None) -> ProgramFile:
    """`program` as one step file: loops as cycle steps (Cycle_Count passes in all).

    Left out, and listed: impedance and sweep steps, every-blocks, the `until` limits of loops
    (the BTS counts passes only; a loop without a count is written as one pass), and the end
    conditions only the host could watch.
    """
    steps: list[NewareStep] = []
    left_out: list[str] = []
    numbers: dict[int, int] = {}
    charging = True  # a CV step holds in the direction of the step before it (charge at first)

    def walk(nodes: tuple[Node, ...]) -> None:
        nonlocal charging
        for node in nodes:
            if isinstance(node, Loop):
                first = len(steps) + 1
                walk(node.body)
                if len(steps) < first:
                    continue  # nothing of the body could be written: no cycle over nothing
                if node.count is None:
                    left_out.append(f"{node.source}: a loop without a count, written as one pass")
                if node.until != type(node.until)():
                    left_out.append(f"{node.source}: its until limits (the BTS counts passes only)")
                steps.append(NewareStep(StepType.CYCLE, loop_to=first, loop_count=node.count or 1))
                continue
            if isinstance(node, SweepCommand | ImpedanceCommand):
                left_out.append(f"{node.source}: a Neware step file has no {node.kind} step")
                continue
            if node.periodic is not None:
                left_out.append(f"{node.source}: its every-block")
            host = host_conditions(node)
            unsaid = [f.name for f in fields(EndConditions) if getattr(host, f.name) is not None]
            if unsaid:
                left_out.append(f"{node.source}: until {', '.join(unsaid)} (only the host can watch it)")
            record = None if node.record == program.record else node.record
            step = neware_step(node, charging=charging, current_limit_A=current_limit_A, record=record)
            if step.kind is not StepType.REST:
                charging = step.kind not in DISCHARGING
            steps.append(step)
            numbers[node.index] = len(steps)

    walk(program.body)
    steps.append(NewareStep(StepType.END))
    file = StepFile(
        tuple(steps), protection(program.safety), program.record, program.name, program.capacity_As
    )
    return ProgramFile(file, tuple(left_out), numbers)
