"""One emulated Maccor channel as MacNet sees it: the test on it (none, a procedure, direct mode),
its output mode, and its status words, on top of a `BankChannel` that holds the cell, the output
stage and the channel's own safety limits.

Direct mode's mutual limits are a voltage source with a current limit: in charge mode the channel
holds `Voltage` with at most `Current` into the cell, so it charges at `Current` until the cell
reaches `Voltage`, then holds it (CC-CV); discharge mirrors it. A voltage beyond the channel's
range means no voltage limit (pure constant current). A channel asked to charge a cell already
above its `Voltage` (or discharge one below) passes no current. `Power` and `Resistance` are not
emulated. Each output command starts a new step: step time, capacity and energy from zero.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from cyclerd.drivers import maccor_wire as mn
from cyclerd.simulators.cycler_bank import BankChannel, ChannelLimits
from cyclerd.simulators.smu_output import RAIL_V, Drive

AMBIENT_C = 25.0  # what the channel's one auxiliary input (a thermocouple) reads
TEST_NAME_CHARS = 25


class Refused(Exception):
    """A request MacNet answers with a JSON-RPC error: `code`, and the reason."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def number(params: dict[str, Any], key: str) -> float:
    try:
        value = float(params[key])
    except (KeyError, TypeError, ValueError):
        raise Refused(mn.INVALID_PARAMS, f"{key}: a number is needed") from None
    if not math.isfinite(value):
        raise Refused(mn.INVALID_PARAMS, f"{key}: {value} is not a finite number")
    return value


def drive_for(mode: str, current_A: float, voltage_V: float, cell_V: float) -> Drive | None:
    """What the output stage forces for a direct-mode output; None: rest (output off)."""
    if mode == mn.REST:
        return None
    sign = 1.0 if mode == mn.CHARGE else -1.0
    low, high = mn.VOLTAGE_RANGE_V
    if current_A == 0:
        return Drive(True, 0.0, RAIL_V)
    if not low <= voltage_V <= high:  # no voltage limit: constant current
        return Drive(True, sign * current_A, RAIL_V)
    if sign * (voltage_V - cell_V) <= 0:  # the cell is past the limit already: nothing to push
        return Drive(True, 0.0, RAIL_V)
    return Drive(False, voltage_V, current_A)


def safety_end(reason: str) -> int:
    """The RF2 code of a safety stop, from the bank's reason."""
    words = reason.lower()
    if "voltage" in words:
        return mn.SAFETY_VOLTAGE
    if "capacity" in words:
        return mn.SAFETY_CAPACITY
    return mn.SAFETY_ABSOLUTE


@dataclass
class MacNetChannel:
    bank: BankChannel
    wall_origin: dt.datetime = field(default_factory=dt.datetime.now)
    stat: int = mn.AVAILABLE
    end: int = mn.NOT_ENDED
    mode: str = mn.REST
    direct: bool = False  # the test is in direct mode (not a procedure)
    test_name: str = ""
    procedure: str = ""
    comment: str = ""
    test_start_s: float = 0.0
    step_start_s: float = 0.0
    step: int = 0
    record_s: float = 0.0  # the test's data record interval (0: none)
    records: int = 0  # data records of the steps before this one
    last_output_s: float = -math.inf
    variables: dict[int, float] = field(default_factory=dict)
    limits: dict[str, float] = field(
        default_factory=lambda: {
            "VSafeMax": mn.VOLTAGE_RANGE_V[1],
            "VSafeMin": mn.VOLTAGE_RANGE_V[0],
            "ISafeChg": mn.CURRENT_MAX_A,
            "ISafeDis": mn.CURRENT_MAX_A,
            "PBatSafeChg": mn.POWER_MAX_W,
            "PBatSafeDis": mn.POWER_MAX_W,
        }
    )

    @property
    def chan(self) -> int:
        return self.bank.number - 1

    def now(self) -> float:
        return self.bank.clock.now()

    def follow(self) -> tuple[float, float]:
        """Bring the cell to now (its voltage and current); a safety stop the bank made suspends
        the test."""
        reading = self.bank.reading()
        if self.bank.tripped is not None and self.stat == mn.ACTIVE:
            self.stat, self.end = mn.SUSPENDED, safety_end(self.bank.tripped)
        return reading

    @property
    def rf1(self) -> int:
        if self.stat == mn.SUSPENDED:
            return mn.HALTED
        return mn.MODE_OF[self.mode] if self.stat == mn.ACTIVE else mn.IDLE

    def summary(self) -> dict[str, Any]:
        """The (4, 1) fields, as of the last `follow`."""
        return {"RF1": self.rf1, "RF2": self.end, "Stat": self.stat}

    def status(self) -> dict[str, Any]:
        """The (4, 7) fields: readings, counters and where the test stands."""
        voltage, current = self.follow()
        now = self.now()
        testing = self.stat != mn.AVAILABLE
        step_s = now - self.step_start_s if testing else 0.0
        driven = self.bank.on
        records = self.records + (int(step_s / self.record_s) if self.record_s > 0 else 0)
        return {
            "Chan": self.chan,
            **self.summary(),
            "LastRecNum": records,
            "Cycle": 0,
            "Step": self.step,
            "TestTime": now - self.test_start_s if testing else 0.0,
            "StepTime": step_s,
            "Capacity": abs(self.bank.charge_As) / 3600 if driven else 0.0,
            "Energy": abs(self.bank.energy_J) / 3600 if driven else 0.0,
            "Current": abs(current),
            "Voltage": voltage,
            "TesterTime": (self.wall_origin + dt.timedelta(seconds=now)).isoformat(timespec="seconds"),
        }

    def test_info(self) -> dict[str, Any]:
        return {
            "Chan": self.chan,
            "TestName": self.test_name,
            "ProcName": self.procedure,
            "Comment": self.comment,
        }

    def aux(self) -> dict[str, Any]:
        return {"Chan": self.chan, "Len": 1, "AuxValues": [AMBIENT_C]}

    # -- commands ------------------------------------------------------------------------

    def start_procedure(self, params: dict[str, Any]) -> dict[str, Any]:
        """(6, 2): there are no procedure files here; the test rests the cell until it is reset."""
        if (refusal := self._refuse_start()) is not None:
            return self._result(refusal)
        self._begin(params, direct=False)
        self.procedure = str(params.get("ProcName", "")).strip()
        self.comment = str(params.get("Comment", "")).strip()
        self._apply(mn.REST, 0.0, 0.0)
        return self._result(mn.OK)

    def start_direct(self, params: dict[str, Any]) -> dict[str, Any]:
        """(6, 7): a direct-mode test, its first output in the message."""
        mode, current, voltage = self._output(params)
        if (refusal := self._refuse_start()) is not None:
            return self._result(refusal)
        self._begin(params, direct=True)
        self.record_s = max(0.0, number(params, "DataTime")) if "DataTime" in params else 0.0
        self._apply(mode, current, voltage)
        return self._result(mn.OK)

    def set_output(self, params: dict[str, Any]) -> dict[str, Any]:
        """(6, 8): a direct-mode test's next output."""
        mode, current, voltage = self._output(params)
        self.follow()
        if self.stat != mn.ACTIVE:
            return self._result(mn.DIRECT_RESULTS[mn.NOT_ACTIVE])
        if not self.direct:
            return self._result(mn.DIRECT_RESULTS[mn.NOT_DIRECT])
        if self.now() - self.last_output_s < mn.COMMAND_GAP_S:
            return self._result(mn.DIRECT_RESULTS[mn.TOO_FAST])
        self._apply(mode, current, voltage)
        return self._result(mn.OK)

    def reset(self) -> dict[str, Any]:
        """(6, 5): the test stops, the output goes off, the channel is available."""
        self.follow()
        self.bank.rest()
        self.bank.tripped = None  # acknowledged: the bank keeps it until its next start otherwise
        self.stat, self.end, self.mode, self.direct = mn.AVAILABLE, mn.NOT_ENDED, mn.REST, False
        self.test_name = self.procedure = self.comment = ""
        return self._result(mn.OK)

    def set_limits(self, params: dict[str, Any]) -> dict[str, Any]:
        """(6, 10): the bank channel keeps one |I| limit, the larger of charge and discharge."""
        limits = {key: number(params, key) for key in self.limits}
        if limits["VSafeMin"] >= limits["VSafeMax"]:
            raise Refused(mn.INVALID_PARAMS, "VSafeMin must be below VSafeMax")
        self.follow()
        self.limits = limits
        self.bank.limits = ChannelLimits(
            voltage_max_V=limits["VSafeMax"],
            voltage_min_V=limits["VSafeMin"],
            current_max_A=max(abs(limits["ISafeChg"]), abs(limits["ISafeDis"])),
        )
        return {"Chan": self.chan, **limits}

    def set_variable(self, params: dict[str, Any]) -> dict[str, Any]:
        which = int(number(params, "VarNum"))
        if not 1 <= which <= 16:
            raise Refused(mn.INVALID_PARAMS, f"VarNum {which}: variables are 1 to 16")
        self.variables[which] = number(params, "Value")
        return self._result(mn.OK)

    # -- helpers -------------------------------------------------------------------------

    def _result(self, outcome: str) -> dict[str, Any]:
        return {"Chan": self.chan, "Result": outcome}

    def _refuse_start(self) -> str | None:
        self.follow()
        if self.stat in (mn.AVAILABLE, mn.RESET):
            return None
        return f"The channel is not available ({mn.STAT[self.stat]}): reset it first"

    def _begin(self, params: dict[str, Any], direct: bool) -> None:
        name = str(params.get("TestName", "Random")).strip()[:TEST_NAME_CHARS]
        if name == "Random":
            name = f"T{self.chan:03d}{dt.datetime.now():%H%M%S%f}"[:TEST_NAME_CHARS]
        self.stat, self.end, self.direct, self.test_name = mn.ACTIVE, mn.NOT_ENDED, direct, name
        self.test_start_s, self.step, self.records, self.record_s = self.now(), 0, 0, 0.0
        self.procedure = self.comment = ""

    def _output(self, params: dict[str, Any]) -> tuple[str, float, float]:
        mode = params.get("ChMode")
        if mode not in (mn.CHARGE, mn.DISCHARGE, mn.REST):
            raise Refused(mn.INVALID_PARAMS, f"ChMode {mode!r}: C, D or R")
        current = abs(number(params, "Current")) if mode != mn.REST else 0.0
        if current > mn.CURRENT_MAX_A:
            raise Refused(
                mn.INVALID_PARAMS, f"Current {current:g} A beyond the channel's {mn.CURRENT_MAX_A:g} A"
            )
        if "CurrentRange" in params and params["CurrentRange"] not in mn.CURRENT_RANGES_A:
            raise Refused(mn.INVALID_PARAMS, f"CurrentRange {params['CurrentRange']!r}: 1 to 4")
        voltage = number(params, "Voltage") if mode != mn.REST else 0.0
        return mode, current, voltage

    def _apply(self, mode: str, current_A: float, voltage_V: float) -> None:
        now = self.now()
        if self.record_s > 0 and self.step:
            self.records += int((now - self.step_start_s) / self.record_s)
        self.records += 1 if self.step else 0
        self.step += 1
        self.mode, self.step_start_s, self.last_output_s = mode, now, now
        drive = drive_for(mode, current_A, voltage_V, self.follow()[0])
        if drive is None:
            self.bank.rest()
        else:
            self.bank.start(drive)
