"""PyBaMM experiment step strings, read through a whole protocol file.

The expected values are what PyBaMM's own parser (`pybamm.step.string`) gives: "Charge at X"
is a current or C-rate of -X, "Discharge at X" of +X, "Hold at V" a voltage, durations and
periods in seconds, terminations "4.1 V" (voltage), "50 mA" (current, |I|), "C/50" (C-rate).
cyclerd counts charge as positive, so every current here is PyBaMM's with the sign flipped;
a voltage termination becomes voltage_above when charging and voltage_below when discharging.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclerd.protocols import ProtocolError, loads
from cyclerd.protocols.model import ConstantCurrent, ConstantVoltage, Rest
from cyclerd.protocols.units import Amount, Basis


@dataclass(frozen=True)
class PyBaMM:
    """What pybamm.step.string(text) holds: step class, value, duration, period, termination."""

    control: str  # "Current", "CRate", "Voltage"
    value: float
    duration: float | None = None
    period: float | None = None
    termination: tuple[str, float] | None = None  # ("voltage" | "current" | "C-rate", value)


ACCEPTED = [
    ("Charge at 0.1C until 4.25 V", PyBaMM("CRate", -0.1, termination=("voltage", 4.25))),
    ("Hold at 4.25 V until C/20", PyBaMM("Voltage", 4.25, termination=("C-rate", 0.05))),
    (
        "Discharge at 1 mA for 30 minutes or until 2.5 V",
        PyBaMM("Current", 0.001, duration=1800, termination=("voltage", 2.5)),
    ),
    ("Rest for 10 minutes", PyBaMM("Current", 0, duration=600)),
    (
        "Charge at 200 mA for 45 minutes (1 minute period)",
        PyBaMM("Current", -0.2, duration=2700, period=60),
    ),
    (
        "Discharge at C/5 for 10 hours or until 3.3V",
        PyBaMM("CRate", 0.2, duration=36000, termination=("voltage", 3.3)),
    ),
    ("Charge at 1 C until 4.1V", PyBaMM("CRate", -1, termination=("voltage", 4.1))),
    ("Hold at 4.1 V until 50mA", PyBaMM("Voltage", 4.1, termination=("current", 0.05))),
    ("Hold at 1V for 20 seconds", PyBaMM("Voltage", 1, duration=20)),
    ("Discharge at 1 A for 0.5 hours", PyBaMM("Current", 1, duration=1800)),
    ("Discharge at 1C for 0.5 hours", PyBaMM("CRate", 1, duration=1800)),
    ("Discharge at C/20 for 0.5 hours", PyBaMM("CRate", 0.05, duration=1800)),
    ("Charge at 0.5 C for 45 minutes", PyBaMM("CRate", -0.5, duration=2700)),
    ("Hold at 3V until C/50", PyBaMM("Voltage", 3, termination=("C-rate", 0.02))),
    (
        "Discharge at C/3 for 2 hours or until 2.5 V",
        PyBaMM("CRate", 1 / 3, duration=7200, termination=("voltage", 2.5)),
    ),
    ("Rest for 10 minutes (10 seconds period)", PyBaMM("Current", 0, duration=600, period=10)),
    (
        "Charge at 1 A for 1 hour or until 4.2 V (10 seconds period)",
        PyBaMM("Current", -1, duration=3600, period=10, termination=("voltage", 4.2)),
    ),
    ("Hold at 4200 mV until 10 uA", PyBaMM("Voltage", 4.2, termination=("current", 1e-5))),
    ("Discharge at 500 µA for 2 hours", PyBaMM("Current", 5e-4, duration=7200)),
    ("Discharge at 1 mA for 90 seconds", PyBaMM("Current", 0.001, duration=90)),
    # cyclerd matches the words without regard to case (PyBaMM wants "Charge", "Rest", ...).
    ("charge at 0.1C until 4.25 V", PyBaMM("CRate", -0.1, termination=("voltage", 4.25))),
    ("discharge at 1 A for 0.5 hours", PyBaMM("Current", 1, duration=1800)),
    ("hold at 4.1 V until 50mA", PyBaMM("Voltage", 4.1, termination=("current", 0.05))),
    ("rest for 10 minutes (10 seconds period)", PyBaMM("Current", 0, duration=600, period=10)),
    ("DISCHARGE AT C/5 FOR 10 HOURS OR UNTIL 3.3V", PyBaMM("CRate", 0.2, 36000, None, ("voltage", 3.3))),
]


def load_step(text: str) -> object:
    """The single step of a protocol whose only step is the step string `text`."""
    text = yaml.safe_dump({"name": "pybamm", "steps": [text]}, width=10_000)
    protocol = loads(text, "pybamm.yaml")
    (step,) = protocol.steps
    return step


def assert_matches_pybamm(step: object, expected: PyBaMM) -> None:
    """`step` (cyclerd) says what PyBaMM's parse says, with the current's sign flipped."""
    approx = pytest.approx
    if expected.control == "Voltage":
        assert isinstance(step, ConstantVoltage)
        assert step.voltage == approx(expected.value)
        charging = None
    elif expected.value == 0:
        assert isinstance(step, Rest)
        charging = None
    else:
        assert isinstance(step, ConstantCurrent)
        basis = Basis.C_RATE if expected.control == "CRate" else Basis.ABSOLUTE
        assert step.current.basis is basis
        assert step.current.value == approx(-expected.value, rel=1e-12)
        charging = step.current.value > 0
    assert step.until.duration == (None if expected.duration is None else approx(expected.duration))
    every = None if step.record is None else step.record.every
    assert every == (None if expected.period is None else approx(expected.period))

    until = step.until.model_dump(exclude_none=True)
    until.pop("duration", None)
    if expected.termination is None:
        assert until == {}
        return
    kind, value = expected.termination
    if kind == "voltage":
        assert charging is not None, "a voltage termination needs a direction"
        key = "voltage_above" if charging else "voltage_below"
        assert until == {key: approx(value)}
    else:
        basis = Basis.C_RATE if kind == "C-rate" else Basis.ABSOLUTE
        assert list(until) == ["current_below"]
        assert step.until.current_below == Amount(approx(value, rel=1e-12), basis)


@pytest.mark.parametrize(("text", "expected"), ACCEPTED, ids=[text for text, _ in ACCEPTED])
def test_accepted_step_string_means_what_pybamm_means(text: str, expected: PyBaMM) -> None:
    assert_matches_pybamm(load_step(text), expected)


def test_step_string_and_yaml_step_load_to_the_same_model() -> None:
    from_string = load_step("Charge at 0.1C for 1 hour or until 4.2 V (10 seconds period)")
    yaml_text = """
        name: pybamm
        steps:
          - cc:
              current: 0.1C
              until: {duration: 1 h, voltage_above: 4.2 V}
              record: {every: 10 s}
        """
    (from_yaml,) = loads(yaml_text.replace("\n        ", "\n"), "yaml.yaml").steps
    assert from_string == from_yaml


REJECTED = [
    ("Rest for 0 minutes", "a time must be positive", "write e.g. '10 minutes'"),
    ("Charge at 1 A for -1 hour", "a time must be positive", "write e.g. '10 minutes'"),
    ("Charge at 1 mA for 1 h (0 seconds period)", "a time must be positive", "'10 minutes'"),
    ("Rest for 5 m", "'m' could be minutes or metres", "write 'min' or 'minutes'"),
    ("Discharge at 1 mA for 10 m or until 2.5 V", "'m' could be minutes or metres", "'min'"),
    ("Charge at 1 mA for 1 h (5 m period)", "'m' could be minutes or metres", "'minutes'"),
    ("Discharge at 1W for 0.5 hours", "power and resistance control are not supported", "use a current"),
    ("Charge at 200mW for 45 minutes", "power and resistance control are not supported", "C-rate"),
    ("Discharge at 2 Ohm until 3 V", "power and resistance control are not supported", "C-rate"),
    ("Charge at 1 A", "never ends", "add 'for DURATION' and/or 'until CONDITION'"),
    ("Hold at 4.2 V", "never ends", "add 'for DURATION' and/or 'until CONDITION'"),
    ("Rest", "say how long", "'Rest for 10 minutes'"),
    ("Pulse at 1 A for 10 seconds", "must start with Charge, Discharge, Hold or Rest", "e.g."),
    ("Run US06 (A)", "must start with Charge, Discharge, Hold or Rest", "'Rest for 10 minutes'"),
    ("Charge at C/0 until 4.2 V", "'C/0' divides by zero", "write e.g. 'C/20'"),
    ("Hold at C/0 until 1 mA", "'C/0' divides by zero", "write e.g. 'C/20'"),
    ("Hold at 1 A until 4 V", "Hold is at a voltage", "'Hold at 4.25 V until C/20'"),
    ("Charge at 4.2 V for 1 hour", "Charge is at a current or C-rate", "write 'Hold at 4.25 V'"),
    ("Rest at 1 A for 1 hour", "Rest takes no value", "'Rest for 10 minutes'"),
    ("Rest until 4 V", "Rest ends on a time", "'Rest for 10 minutes'"),
    ("Charge at 1 mA for 2 fortnights", "not seconds, minutes or hours", "'2 hours'"),
    ("Charge at 1 kA for 1 hour", "unknown unit 'kA'", "use A, mA, µA, V, mV or a C-rate"),
    ("Charge at 1 mA until > 50 mA", "ends when |I| falls", "drop the '>'"),
    ("Hold at 4.1 V until 4.2 V", "say which way the voltage must cross", "'until > 4.2 V'"),
    ("Charge at 1e999 A until 4.2 V", "not a finite number", "write e.g."),
    ("Rest for 1e999 hours", "is too long", "write e.g. '10 hours'"),
]


@pytest.mark.parametrize(("text", "wrong", "fix"), REJECTED, ids=[text for text, _, _ in REJECTED])
def test_malformed_step_string_is_rejected_with_a_fix(text: str, wrong: str, fix: str) -> None:
    with pytest.raises(ProtocolError) as info:
        load_step(text)
    (problem,) = info.value.problems
    assert (problem.line, problem.column) == (3, 3)  # '- ' at column 1, the string at column 3
    assert text in problem.message
    assert wrong in problem.message
    assert fix in problem.message


# --- generated step strings ------------------------------------------------------------------

NUMBERS = st.builds(
    lambda whole, fraction, exponent: f"{whole}{fraction}{exponent}",
    st.integers(1, 9999),
    st.sampled_from(["", ".", ".5", ".25", ".001"]),
    st.sampled_from(["", "", "e-3", "e2", "E1"]),
)
SPACE = st.sampled_from([" ", "", "  "])
CURRENT_UNITS = {"A": 1.0, "mA": 1e-3, "uA": 1e-6, "µA": 1e-6}
VOLTAGE_UNITS = {"V": 1.0, "mV": 1e-3}
TIME_UNITS = {"s": 1, "sec": 1, "seconds": 1, "min": 60, "minute": 60, "minutes": 60}
TIME_UNITS |= {"h": 3600, "hr": 3600, "hour": 3600, "hours": 3600}
CASES = st.sampled_from([str, str.lower, str.upper, str.title])


@dataclass(frozen=True)
class Part:
    text: str
    value: float  # SI, or the C-rate multiplier
    basis: Basis | None  # None for a voltage


@st.composite
def currents(draw: st.DrawFn) -> Part:
    number, space = draw(NUMBERS), draw(SPACE)
    form = draw(st.sampled_from(["unit", "multiple", "fraction"]))
    if form == "multiple":
        return Part(f"{number}{space}C", float(number), Basis.C_RATE)
    if form == "fraction":
        return Part(f"C/{number}", 1 / float(number), Basis.C_RATE)
    unit = draw(st.sampled_from(sorted(CURRENT_UNITS)))
    return Part(f"{number}{space}{unit}", float(number) * CURRENT_UNITS[unit], Basis.ABSOLUTE)


@st.composite
def voltages(draw: st.DrawFn) -> Part:
    number, space, unit = draw(NUMBERS), draw(SPACE), draw(st.sampled_from(sorted(VOLTAGE_UNITS)))
    return Part(f"{number}{space}{unit}", float(number) * VOLTAGE_UNITS[unit], None)


@st.composite
def durations(draw: st.DrawFn) -> tuple[str, float]:
    number, unit = draw(NUMBERS), draw(st.sampled_from(sorted(TIME_UNITS)))
    return f"{number} {unit}", float(number) * TIME_UNITS[unit]


@dataclass(frozen=True)
class Generated:
    text: str
    verb: str
    control: Part | None
    duration: float | None
    until: Part | None
    period: float | None


@st.composite
def step_strings(draw: st.DrawFn) -> Generated:
    verb = draw(st.sampled_from(["Charge", "Discharge", "Hold", "Rest"]))
    case = draw(CASES)
    words = {word: case(word) for word in ("at", "for", "or until", "until")}
    control = None if verb == "Rest" else draw(voltages() if verb == "Hold" else currents())
    duration = draw(durations()) if verb == "Rest" else draw(st.none() | durations())
    until: Part | None = None
    if verb == "Hold":
        until = draw(currents()) if duration is None else draw(st.none() | currents())
    elif verb != "Rest":
        ends = currents() | voltages()
        until = draw(ends) if duration is None else draw(st.none() | ends)
    period = draw(st.none() | durations())

    text = case(verb)
    if control is not None:
        text += f" {words['at']} {control.text}"
    if duration is not None:
        text += f" {words['for']} {duration[0]}"
    if until is not None:
        joiner = draw(st.sampled_from([words["until"], words["or until"]])) if duration else "until"
        text += f" {joiner} {until.text}"
    if period is not None:
        text += f" ({period[0]} period)"
    return Generated(
        text,
        verb,
        control,
        None if duration is None else duration[1],
        until,
        None if period is None else period[1],
    )


@settings(max_examples=300, deadline=None)
@given(step_strings())
def test_generated_step_strings_round_trip_their_numbers(generated: Generated) -> None:
    step = load_step(generated.text)
    approx = pytest.approx
    assert step.until.duration == (None if generated.duration is None else approx(generated.duration))
    every = None if step.record is None else step.record.every
    assert every == (None if generated.period is None else approx(generated.period))

    charging: bool | None = None
    if generated.verb == "Rest":
        assert isinstance(step, Rest)
    elif generated.verb == "Hold":
        assert isinstance(step, ConstantVoltage)
        assert generated.control is not None
        assert step.voltage == approx(generated.control.value)
    else:
        assert isinstance(step, ConstantCurrent)
        assert generated.control is not None
        charging = generated.verb == "Charge"
        sign = 1 if charging else -1
        assert step.current == Amount(approx(sign * generated.control.value), generated.control.basis)

    until = generated.until
    if until is None:
        assert step.until.voltage_above is None
        assert step.until.voltage_below is None
        assert step.until.current_below is None
    elif until.basis is None:  # a voltage: the direction follows the current
        limit = step.until.voltage_above if charging else step.until.voltage_below
        assert limit == approx(until.value)
    else:
        assert step.until.current_below == Amount(approx(until.value), until.basis)
