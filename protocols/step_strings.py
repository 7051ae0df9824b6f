"""PyBaMM experiment step strings ("Charge at 0.1C until 4.25 V") read into protocol steps.

The grammar is PyBaMM's documented one:

    (Charge|Discharge) at VALUE [for DURATION] [[or] until CONDITION] [(PERIOD period)]
    Hold at VOLTAGE [for DURATION] [[or] until CURRENT] [(PERIOD period)]
    Rest for DURATION [(PERIOD period)]

VALUE is a current (A, mA, µA) or a C-rate (1C, 0.5 C, C/20); durations are in seconds,
minutes or hours; CONDITION is a voltage, a current or a C-rate, optionally after '<' or '>'.
Words are matched without regard to case. The result is the same dict a YAML step gives, so
one model validates both. Differences from PyBaMM, on purpose:

- sign: PyBaMM counts discharge as positive; cyclerd counts charge as positive;
- a duration must be positive, and 'm' alone is refused (minutes or metres?);
- power and resistance control ("Discharge at 1 W") are refused: no instrument of ours does it.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["StepStringError", "parse"]


class StepStringError(ValueError):
    """The text is not a step string cyclerd understands; the message says what to write."""


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_GRAMMAR = re.compile(
    r"^\s*(?P<verb>charge|discharge|hold|rest)"
    r"(?:\s+at\s+(?P<value>.+?))?"
    r"(?:\s+for\s+(?P<duration>.+?))?"
    r"(?:\s+(?:or\s+)?until\s+(?P<until>.+?))?"
    r"(?:\s*\(\s*(?P<period>.+?)\s+period\s*\))?\s*$",
    re.IGNORECASE,
)
_TIME_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
}  # fmt: skip
_TIME = re.compile(rf"^\s*(?P<number>{_NUMBER})\s*(?P<unit>[a-zA-Z]+)\s*$")
_C_RATE = re.compile(rf"^\s*(?:(?P<mult>{_NUMBER})\s*C|C\s*/\s*(?P<div>{_NUMBER}))\s*$")
_ELECTRIC = re.compile(rf"^\s*(?P<number>{_NUMBER})\s*(?P<unit>[a-zA-Zµμ]+)\s*$")
_CURRENT_UNITS = {"A": 1.0, "mA": 1e-3, "uA": 1e-6, "µA": 1e-6, "μA": 1e-6}
_VOLTAGE_UNITS = {"V": 1.0, "mV": 1e-3}
_EXAMPLES = "'Charge at 0.1C until 4.25 V', 'Hold at 4.25 V until C/20', 'Rest for 10 minutes'"


def parse(text: str) -> dict[str, Any]:
    """The protocol step (a `kind`-tagged dict) that a PyBaMM step string describes."""
    m = _GRAMMAR.match(text)
    if m is None:
        raise StepStringError(
            f"cannot read {text!r} as a step string; it must start with Charge, Discharge, "
            f"Hold or Rest, e.g. {_EXAMPLES}"
        )
    verb = m["verb"].lower()
    step: dict[str, Any] = {}
    until: dict[str, str] = {}
    if m["duration"] is not None:
        until["duration"] = f"{_seconds(m['duration'], text)} s"
    if m["period"] is not None:
        step["record"] = {"every": f"{_seconds(m['period'], text)} s"}

    if verb == "rest":
        if m["value"] is not None:
            raise StepStringError(f"{text!r}: Rest takes no value; write 'Rest for 10 minutes'")
        if m["until"] is not None:
            raise StepStringError(f"{text!r}: Rest ends on a time; write 'Rest for 10 minutes'")
        if not until:
            raise StepStringError(f"{text!r}: say how long, e.g. 'Rest for 10 minutes'")
        return {"kind": "rest", **step, "until": until}

    if m["value"] is None:
        raise StepStringError(f"{text!r}: say what to {verb} at, e.g. {_EXAMPLES}")
    if m["duration"] is None and m["until"] is None:
        raise StepStringError(
            f"{text!r} never ends: add 'for DURATION' and/or 'until CONDITION', e.g. {_EXAMPLES}"
        )
    kind, value = _control(m["value"], text)
    if verb == "hold":
        if kind != "voltage":
            raise StepStringError(f"{text!r}: Hold is at a voltage, e.g. 'Hold at 4.25 V until C/20'")
        step = {"kind": "cv", "voltage": value, **step}
        charging = None
    else:
        if kind != "current":
            raise StepStringError(
                f"{text!r}: {verb.title()} is at a current or C-rate, e.g. 'Charge at 0.5C' or "
                f"'Discharge at 1 mA'; for a voltage write 'Hold at 4.25 V'"
            )
        current = value if verb == "charge" else _negate(value)
        step = {"kind": "cc", "current": current, **step}
        charging = None if float(current.rstrip("CA ")) == 0 else not current.startswith("-")
    if m["until"] is not None:
        key, limit = _condition(m["until"], charging, text)
        until[key] = limit
    step["until"] = until
    return step


def _seconds(duration: str, text: str) -> str:
    m = _TIME.match(duration)
    if m is None:
        raise StepStringError(f"{text!r}: cannot read the time {duration!r}; write e.g. '30 minutes'")
    unit = m["unit"].lower()
    if unit == "m":
        raise StepStringError(f"{text!r}: 'm' could be minutes or metres; write 'min' or 'minutes'")
    if unit not in _TIME_UNITS:
        raise StepStringError(
            f"{text!r}: time unit {m['unit']!r} is not seconds, minutes or hours; write e.g. '2 hours'"
        )
    seconds = float(m["number"]) * _TIME_UNITS[unit]
    if not seconds > 0:
        raise StepStringError(f"{text!r}: a time must be positive; write e.g. '10 minutes'")
    if not math.isfinite(seconds):
        raise StepStringError(f"{text!r}: {duration!r} is too long; write e.g. '10 hours'")
    return f"{seconds:.12g}"


def _control(value: str, text: str) -> tuple[str, str]:
    """('current' | 'voltage', canonical quantity text) of an instruction's value."""
    c = _C_RATE.match(value)
    if c is not None:
        rate = float(c["mult"]) if c["mult"] is not None else 1 / _nonzero(float(c["div"]), text)
        return "current", f"{_finite(rate, value, text):.12g}C"
    e = _ELECTRIC.match(value)
    if e is None:
        raise StepStringError(
            f"{text!r}: cannot read the value {value!r}; write e.g. '1 mA', '0.5C' or '4.2 V'"
        )
    number, unit = _finite(float(e["number"]), value, text), e["unit"]
    if unit in _CURRENT_UNITS:
        return "current", f"{number * _CURRENT_UNITS[unit]:.12g} A"
    if unit in _VOLTAGE_UNITS:
        return "voltage", f"{number * _VOLTAGE_UNITS[unit]:.12g} V"
    if unit.rstrip("s").lower() in ("w", "mw", "ohm", "mohm"):
        raise StepStringError(
            f"{text!r}: power and resistance control are not supported; use a current (A) or C-rate"
        )
    raise StepStringError(f"{text!r}: unknown unit {unit!r}; use A, mA, µA, V, mV or a C-rate")


def _condition(condition: str, charging: bool | None, text: str) -> tuple[str, str]:
    """The end-condition key and value of an 'until' clause."""
    operator = None
    stripped = condition.strip()
    if stripped[:1] in "<>":
        operator, stripped = stripped[0], stripped[1:]
    kind, value = _control(stripped, text)
    if kind == "current":
        if operator == ">":
            raise StepStringError(f"{text!r}: a current condition ends when |I| falls; drop the '>'")
        return "current_below", value.lstrip("-")
    if operator is not None:
        return ("voltage_above" if operator == ">" else "voltage_below"), value
    if charging is None:
        raise StepStringError(
            f"{text!r}: say which way the voltage must cross, e.g. 'until > 4.2 V' or 'until < 2.5 V'"
        )
    return ("voltage_above" if charging else "voltage_below"), value


def _finite(number: float, value: str, text: str) -> float:
    # '1e999 A' would become 'inf A', which the model then reports as someone else's text.
    if not math.isfinite(number):
        raise StepStringError(f"{text!r}: {value!r} is not a finite number; write e.g. '4.2 V'")
    return number


def _negate(value: str) -> str:
    return value[1:] if value.startswith("-") else f"-{value}"


def _nonzero(divisor: float, text: str) -> float:
    if divisor == 0:
        raise StepStringError(f"{text!r}: 'C/0' divides by zero; write e.g. 'C/20'")
    return divisor
