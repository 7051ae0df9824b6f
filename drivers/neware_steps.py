"""Neware BTS step files (XML), pure: a cyclerd step, or a whole program with its loops, as the file
the BTS runs, and any step file (ours, aurora-unicycler's) read back. One encoder (`neware_step`)
serves the driver's one-step files and `program_step_file`. In the file: mA, 0.1 mV, ms, mA·s.

A step ends on what its Neware type offers: rest on time; constant current on time, capacity and
the cut-off in its own direction; constant voltage and CC-CV on time, capacity and a current
floor. The rest (|dV/dt|, a cut-off against the current, a floor under constant current) is left
to the host, which watches the records (`host_conditions`). Logging rules map one to one onto the
step's <Record>: time interval, voltage change, current change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import assert_never

from cyclerd.drivers.base import INTERRUPT, StepProgress
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


class StepType(IntEnum):
    """Neware's step types (Step_Type) that cyclerd writes or reads."""

    CC_CHARGE = 1
    CC_DISCHARGE = 2
    CV_CHARGE = 3
    REST = 4
    CYCLE = 5
    END = 6
    CCCV_CHARGE = 7
    CV_DISCHARGE = 19
    CCCV_DISCHARGE = 20


# How inquire and the records name a step type: "rest", "cc", "dc" and "cv" are the BTS's own
# words; the others are this module's choice.
WORDS = {1: "cc", 2: "dc", 3: "cv", 4: "rest", 5: "cycle", 6: "end", 7: "cccv", 19: "cv_dc", 20: "cccv_dc"}
DISCHARGING = frozenset({StepType.CC_DISCHARGE, StepType.CV_DISCHARGE, StepType.CCCV_DISCHARGE})

# SI value = file value x unit: mA, 0.1 mV, ms, mA·s.
UNITS = {"Curr": 1e-3, "Volt": 1e-4, "Time": 1e-3, "Cap": 1e-3}
MAIN = {  # NewareStep field -> (path in <Limit>, unit)
    "current_A": ("Main/Curr", "Curr"),
    "voltage_V": ("Main/Volt", "Volt"),
    "stop_voltage_V": ("Main/Stop_Volt", "Volt"),
    "stop_current_A": ("Main/Stop_Curr", "Curr"),
    "time_s": ("Main/Time", "Time"),
    "capacity_As": ("Main/Cap", "Cap"),
}
RECORD = {  # RecordRule field -> (path in <Record>, unit)
    "every_s": ("Main/Time", "Time"),
    "voltage_change_V": ("Main/Volt", "Volt"),
    "current_change_A": ("Main/Curr", "Curr"),
}

# Which end conditions each kind of step writes into its file; the rest are the host's.
WRITTEN = {
    "rest": frozenset({"duration_s"}),
    "cc": frozenset({"duration_s", "charge_As"}),  # and the cut-off in the current's direction
    "cv": frozenset({"duration_s", "charge_As", "current_below_A"}),
    "cccv": frozenset({"duration_s", "charge_As", "current_below_A"}),
}
VOLTAGE_TOLERANCE_V = 2e-3  # a record this close to a cut-off has reached it (the emulator's resolution)
TIME_TOLERANCE_S = 0.01  # records carry step time in ms


class StepFileError(ValueError):
    """A step file that cannot be read, or a step that cannot be written as one."""


@dataclass(frozen=True)
class NewareStep:
    """One step of a step file, in SI. Currents are magnitudes: the type says the direction."""

    kind: StepType
    current_A: float | None = None  # CC level; the current limit of a CV step
    voltage_V: float | None = None  # the CV level
    stop_voltage_V: float | None = None  # a CC step's cut-off
    stop_current_A: float | None = None  # a CV phase's current floor
    time_s: float | None = None
    capacity_As: float | None = None
    record: RecordRule | None = None  # None: the file's (Whole_Prt) rule
    loop_to: int | None = None  # a cycle step: the step number it goes back to
    loop_count: int | None = None  # ... and how many passes in all

    @property
    def sign(self) -> float:
        """+1 when the step charges the cell (or rests), -1 when it discharges it."""
        return -1.0 if self.kind in DISCHARGING else 1.0

    @property
    def word(self) -> str:
        return WORDS[self.kind]


@dataclass(frozen=True)
class Protection:
    """The file's protection (Whole_Prt/Protect): the BTS stops the test beyond these."""

    voltage_max_V: float | None = None
    voltage_min_V: float | None = None
    current_max_A: float | None = None  # signed limits, as the BTS writes them
    current_min_A: float | None = None
    capacity_max_As: float | None = None
    delay_s: float | None = None


@dataclass(frozen=True)
class StepFile:
    steps: tuple[NewareStep, ...]  # numbered from 1; the last is the end step
    protection: Protection = field(default_factory=Protection)
    record: RecordRule = field(default_factory=RecordRule)
    remark: str = ""
    capacity_As: float | None = None  # the sample's nominal capacity (MultCap)


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


# -- XML both ways ---------------------------------------------------------------------------------

PROTECT = {  # Protection field -> (path in <Protect>, unit)
    "voltage_max_V": ("Main/Volt/Upper", "Volt"),
    "voltage_min_V": ("Main/Volt/Lower", "Volt"),
    "current_max_A": ("Main/Curr/Upper", "Curr"),
    "current_min_A": ("Main/Curr/Lower", "Curr"),
    "capacity_max_As": ("Main/Cap/Upper", "Cap"),
    "delay_s": ("Main/Delay_Time", "Time"),
}


def to_xml(file: StepFile, created: dt.datetime | None = None) -> str:
    """The step file as BTS 8.0 reads it (the layout aurora-unicycler writes)."""
    root = ET.Element("root")
    stamp = (created or dt.datetime.now()).strftime("%Y%m%d%H%M%S")
    stamped = {"type": "Step File", "version": "17", "client_version": "cyclerd", "date": stamp}
    config = ET.SubElement(root, "config", stamped, Guid=str(uuid.uuid4()))
    head = ET.SubElement(config, "Head_Info")
    for tag, value in (("Operate", "66"), ("Scale", "1"), ("Creator", "cyclerd"), ("Remark", file.remark)):
        ET.SubElement(head, tag, Value=value)
    ET.SubElement(head, "Start_Step", Value="1", Hide_Ctrl_Step="0")
    ET.SubElement(head, "RateType", Value="103")
    _put(head, "MultCap", file.capacity_As, "Cap")
    whole = ET.SubElement(config, "Whole_Prt")
    _fields(ET.SubElement(whole, "Protect"), file.protection, PROTECT)
    _fields(ET.SubElement(whole, "Record"), file.record, RECORD)
    info = ET.SubElement(config, "Step_Info", Num=str(len(file.steps)))
    for number, step in enumerate(file.steps, start=1):
        node = ET.SubElement(info, f"Step{number}", Step_ID=str(number), Step_Type=str(int(step.kind)))
        if step.kind is StepType.CYCLE:
            _put(node, "Limit/Other/Start_Step", step.loop_to)
            _put(node, "Limit/Other/Cycle_Count", step.loop_count)
        elif step.kind is not StepType.END:
            _fields(ET.SubElement(node, "Limit"), step, MAIN)
            if step.record is not None:
                _fields(ET.SubElement(node, "Record"), step.record, RECORD)
    ET.SubElement(ET.SubElement(config, "SMBUS"), "SMBUS_Info", Num="0", AdjacentInterval="0")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _fields(node: ET.Element, values: object, table: dict[str, tuple[str, str]]) -> None:
    for name, (path, unit) in table.items():
        _put(node, path, getattr(values, name), unit)


def _put(node: ET.Element, path: str, value: float | None, unit: str | None = None) -> None:
    """`<a><b Value=.../></a>` for path "a/b", reusing the elements on the way that exist."""
    if value is None:
        return
    *parents, leaf = path.split("/")
    for tag in parents:
        found = node.find(tag)
        node = found if found is not None else ET.SubElement(node, tag)
    ET.SubElement(node, leaf, Value=str(value) if unit is None else f"{value / UNITS[unit]:.6f}")


def parse_step_file(text: str) -> StepFile:
    """A BTS step file (cyclerd's, aurora-unicycler's) in SI; StepFileError says what is wrong."""
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError as exc:
        raise StepFileError(f"not a step file: not well-formed XML ({exc})") from None
    config = root.find("config")
    info = None if config is None else config.find("Step_Info")
    if config is None or info is None:
        raise StepFileError("not a step file: no <config> with a <Step_Info>")
    steps = tuple(_read_step(node, number) for number, node in enumerate(info, start=1))
    if not steps or steps[-1].kind is not StepType.END:
        raise StepFileError("the step file does not end with an end step (Step_Type 6)")
    protect = config.find("Whole_Prt/Protect")
    remark = config.find("Head_Info/Remark")
    return StepFile(
        steps,
        Protection(**{name: _read(protect, path, unit) for name, (path, unit) in PROTECT.items()}),
        _read_record(config.find("Whole_Prt/Record")) or RecordRule(),
        "" if remark is None else remark.get("Value", ""),
        _read(config, "Head_Info/MultCap", "Cap"),
    )


def _read_step(node: ET.Element, number: int) -> NewareStep:
    try:
        kind = StepType(int(node.get("Step_Type", "")))
    except ValueError:
        raise StepFileError(
            f"{node.tag}: step type {node.get('Step_Type')!r} is not one cyclerd runs"
        ) from None
    if kind is StepType.CYCLE:
        start, count = _read(node, "Limit/Other/Start_Step"), _read(node, "Limit/Other/Cycle_Count")
        if start is None or count is None or not 1 <= start < number or count < 1:
            raise StepFileError(f"{node.tag}: a cycle step needs a Start_Step before it and a Cycle_Count")
        return NewareStep(kind, loop_to=int(start), loop_count=int(count))
    main = {name: _read(node, f"Limit/{path}", unit) for name, (path, unit) in MAIN.items()}
    return NewareStep(
        kind,
        current_A=main["current_A"],
        voltage_V=main["voltage_V"],
        stop_voltage_V=main["stop_voltage_V"],
        stop_current_A=main["stop_current_A"],
        time_s=main["time_s"],
        capacity_As=main["capacity_As"],
        record=_read_record(node.find("Record")),
    )


def _read(node: ET.Element | None, path: str, unit: str | None = None) -> float | None:
    found = None if node is None else node.find(path)
    if found is None:
        return None
    try:
        value = float(found.get("Value", ""))
    except ValueError:
        raise StepFileError(f"{path}: Value={found.get('Value')!r} is not a number") from None
    return value if unit is None else value * UNITS[unit]


def _read_record(node: ET.Element | None) -> RecordRule | None:
    """A <Record>'s rule; a condition of 0 means none."""
    if node is None:
        return None
    return RecordRule(**{name: _read(node, path, unit) or None for name, (path, unit) in RECORD.items()})
