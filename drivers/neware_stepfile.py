"""The Neware BTS step file (XML) both ways, pure: its steps, protection and record conditions
in SI (`StepFile`), written as BTS 8.0 reads it (`to_xml`, the layout aurora-unicycler writes) and
read back from ours or aurora-unicycler's (`parse_step_file`). In the file: mA, 0.1 mV, ms, mA·s.

Shared by the driver, which compiles cyclerd steps to these (`neware_steps`), and the emulator,
which runs them.
"""

from __future__ import annotations

import datetime as dt
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from enum import IntEnum

from cyclerd.protocols.program import RecordRule


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
