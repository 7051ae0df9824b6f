"""Inputs that cannot be misread: unit slips refused with the spelling meant, EIS settings
checked against the safety limits, and every problem of a file reported in one go."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic_core import PydanticCustomError

from cyclerd.protocols import ProtocolError, loads, units
from cyclerd.protocols.units import Basis


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def problems(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(ProtocolError) as info:
        loads(doc(text), "p.yaml")
    return [(p.line, p.column, p.message) for p in info.value.problems]


def only_problem(text: str) -> tuple[int, int, str]:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


# --- unit slips -----------------------------------------------------------------------------------

# (where the text goes, the text, a fragment saying what is wrong, what to write instead)
SLIPS = [
    ("current", "1 ma", "'ma' is the milliyear", "'1 mA'"),
    ("current", "1 MA", "'MA' is the megaampere", "'1 mA'"),
    ("current", "1 ua", "'ua' is the microyear", "'1 uA'"),
    ("current", "0.1c", "capital C", "'0.1C'"),
    ("current", "0.1 C", "no space before the C", "'0.1C'"),
    ("current", "2 C", "no space before the C", "'2C'"),
    ("current", "-c/2", "capital C", "'-C/2'"),
    ("current_below", "c/20", "capital C", "'C/20'"),
    ("voltage_above", "4.2 v", "case-sensitive", "'4.2 V'"),
    ("voltage_above", "4200 mv", "case-sensitive", "'4200 mV'"),
    ("voltage_above", "4200 Mv", "case-sensitive", "'4200 mV'"),
    ("voltage_above", "4200 MV", "'MV' is the megavolt", "'4200 mV'"),
    ("duration", "10 Ms", "'Ms' is the megasecond", "'10 ms'"),
    ("duration", "10 MIN", "case-sensitive", "'10 min'"),
    ("duration", "1 H", "'H' is the henry", "'1 h'"),
    ("charge", "1 mah", "case-sensitive", "'1 mAh'"),
    ("charge", "1 MAh", "megaampere hour", "'1 mAh'"),
    ("charge", "3.6 C", "never as the coulomb", "'3.6 A*s'"),
    ("charge", "1 mAh/CM^2", "case-sensitive", "'1 mAh/cm^2'"),
]

SLIP_STEP = {
    "current": "- cc: {{current: {}, until: {{voltage_above: 4.2 V}}}}",
    "current_below": "- cv: {{voltage: 4.2 V, until: {{current_below: {}}}}}",
    "voltage_above": "- cc: {{current: 1 mA, until: {{voltage_above: {}}}}}",
    "duration": "- cc: {{current: 1 mA, until: {{duration: {}}}}}",
    "charge": "- cc: {{current: 1 mA, until: {{charge: {}}}}}",
}


@pytest.mark.parametrize(("field", "text", "wrong", "fix"), SLIPS, ids=[f"{f}={t}" for f, t, *_ in SLIPS])
def test_a_unit_slip_is_refused_where_it_stands_with_what_was_meant(
    field: str, text: str, wrong: str, fix: str
) -> None:
    step = SLIP_STEP[field].format(text)
    line, column, message = only_problem(f"name: x\ncell: {{capacity: 1 mAh}}\nsteps:\n  {step}\n")
    assert (line, column) == (4, 3 + step.index(text))
    assert wrong in message
    assert fix in message
    assert repr(text) in message


def test_slips_in_other_sections_name_their_place() -> None:
    found = problems("""
        name: x
        safety:
          voltage_max: 4300 mv
          temperature_max: 60 C
        steps:
          - eis: {frequency_start: 7 mhz, frequency_stop: 0.1 Hz, amplitude: 10 mv}
        """)
    assert [(line, column) for line, column, _ in found] == [(3, 16), (4, 20), (6, 28), (6, 70)]
    assert "'4300 mV'" in found[0][2]
    assert "is not a temperature" in found[1][2]
    assert "'60 degC'" in found[1][2]
    assert "'7 MHz' (megahertz) or '7 mHz' (millihertz)" in found[2][2]
    assert "'10 mV'" in found[3][2]


@pytest.mark.parametrize(
    ("text", "value", "basis"),
    [
        ("0.1C", 0.1, Basis.C_RATE),
        ("C/20", 0.05, Basis.C_RATE),
        ("C / 20", 0.05, Basis.C_RATE),
        ("-C/2", -0.5, Basis.C_RATE),
        ("2C", 2.0, Basis.C_RATE),
        ("1 mA", 1e-3, Basis.ABSOLUTE),
        ("1 µA", 1e-6, Basis.ABSOLUTE),
        ("1 uA", 1e-6, Basis.ABSOLUTE),
        ("1 mA/cm^2", 10.0, Basis.AREAL),
    ],
)
def test_currents_written_right_still_read(text: str, value: float, basis: Basis) -> None:
    amount = units.parse_current(text)
    assert amount.basis is basis
    assert amount.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["3.6 A*s", "3.6 coulomb", "3600 mC", "1 mAh"])
def test_a_charge_in_coulombs_is_written_without_a_bare_c(text: str) -> None:
    assert units.parse_charge(text).value == pytest.approx(3.6)


# Units as protocols write them, by kind; the case of each letter matters.
SPELLED = [
    (units.CURRENT, ("A", "mA", "uA", "nA")),
    (units.VOLTAGE, ("V", "mV", "uV")),
    (units.CHARGE, ("Ah", "mAh", "uAh")),
    (units.DURATION, ("s", "ms", "min", "h", "hours")),
    (units.FREQUENCY, ("Hz", "mHz", "kHz", "MHz")),
]


@st.composite
def slipped(draw: st.DrawFn) -> tuple[units.Dimension, str, str, str]:
    dim, symbols = draw(st.sampled_from(SPELLED))
    symbol = draw(st.sampled_from(symbols))
    flips = draw(st.lists(st.booleans(), min_size=len(symbol), max_size=len(symbol)))
    typed = "".join(c.swapcase() if flip else c for c, flip in zip(symbol, flips, strict=True))
    assume(typed == symbol or typed not in symbols)  # 'mHz' for 'MHz' is another unit, not a slip
    number = draw(st.sampled_from(["1", "0.5", "10", "250", "1e-3", "-2"]))
    return dim, number, symbol, typed


@settings(max_examples=300, deadline=None)
@given(slipped())
def test_any_case_slip_of_a_unit_symbol_is_refused_naming_the_symbol_meant(
    case: tuple[units.Dimension, str, str, str],
) -> None:
    dim, number, symbol, typed = case
    text = f"{number} {typed}"
    parse = units.parse_current if dim is units.CURRENT else units.parse_charge
    read = (
        (lambda t: parse(t).value)
        if dim in (units.CURRENT, units.CHARGE)
        else (lambda t: units.parse(t, dim))
    )
    if typed == symbol:
        read(text)  # the spelling meant reads
        return
    with pytest.raises(PydanticCustomError) as info:
        read(text)
    assert f"'{number} {symbol}'" in info.value.message()


@settings(max_examples=200, deadline=None)
@given(st.decimals(min_value=0, max_value=100, places=3, allow_nan=False), st.sampled_from([" ", "  ", "\t"]))
def test_a_c_rate_is_a_number_against_a_capital_c_and_nothing_else(number: object, space: str) -> None:
    written = f"{number}"
    assert units.parse_current(f"{written}C").value == pytest.approx(float(written))
    for slip in (f"{written}c", f"{written}{space}C", f"{written}{space}c"):
        with pytest.raises(PydanticCustomError) as info:
            units.parse_current(slip)
        assert f"write '{written}C'" in info.value.message()


# --- EIS settings -----------------------------------------------------------------------------------

EIS_HEAD = """
    name: x
    cell: {capacity: 1 mAh}
    safety: {voltage_min: 2.5 V, voltage_max: 4.3 V, current_max: 5 mA}
    steps:
"""


def eis(settings_text: str) -> str:
    return EIS_HEAD + f"      - eis: {{{settings_text}}}\n"


def test_a_potentiostatic_amplitude_that_cannot_fit_the_safety_window_is_refused() -> None:
    line, column, message = only_problem(
        eis("frequency_start: 7 MHz, frequency_stop: 0.1 Hz, amplitude: 10 V")
    )
    assert (line, column) == (5, 70)
    assert "more than the safety window [2.5 V, 4.3 V] holds around any open-circuit voltage" in message
    assert "√2 × the RMS amplitude" in message
    assert "use at most 636.4 mV" in message


def test_an_amplitude_around_a_dc_level_must_stay_in_the_window() -> None:
    settings_text = "frequency_start: 7 MHz, frequency_stop: 0.1 Hz, amplitude: 0.5 V, dc_level: 4.0 V"
    line, column, message = only_problem(eis(settings_text))
    assert (line, column) == (5, 70)
    assert "from 3.293 to 4.707 V around dc_level 4 V" in message
    assert "use at most 212.1 mV" in message
    loads(doc(eis("frequency_start: 7 MHz, frequency_stop: 0.1 Hz, amplitude: 10 mV, dc_level: 4.0 V")))


def test_a_dc_level_outside_the_window_is_refused() -> None:
    settings_text = "frequency_start: 7 MHz, frequency_stop: 0.1 Hz, amplitude: 10 mV, dc_level: 5 V"
    line, column, message = only_problem(eis(settings_text))
    assert (line, column) == (5, 87)
    assert "dc_level 5 V lies outside the safety window" in message


def test_a_galvanostatic_amplitude_must_stay_within_current_max() -> None:
    settings_text = "frequency_start: 7 MHz, frequency_stop: 0.1 Hz, amplitude: 4 mA, dc_level: 1 mA"
    line, column, message = only_problem(eis(settings_text))
    assert (line, column) == (5, 70)
    assert "reaches 6.657 mA" in message
    assert "safety.current_max (5 mA)" in message
    loads(doc(eis("frequency_start: 7 MHz, frequency_stop: 0.1 Hz, amplitude: 1C, dc_level: 0 A")))


@pytest.mark.parametrize(
    ("amplitude", "dc_level", "fix"),
    [
        ("10 mV", "1 mA", "write dc_level as a voltage or 'ocv'"),
        ("1 mA", "3.7 V", "write dc_level as a current"),
    ],
)
def test_the_dc_level_is_of_the_amplitudes_kind(amplitude: str, dc_level: str, fix: str) -> None:
    settings_text = (
        f"frequency_start: 7 MHz, frequency_stop: 0.1 Hz, amplitude: {amplitude}, dc_level: {dc_level}"
    )
    line, column, message = only_problem(eis(settings_text))
    assert (line, column) == (5, 70 + len(amplitude) + len(", dc_level: "))
    assert fix in message


def test_frequency_start_below_frequency_stop_is_refused() -> None:
    line, column, message = only_problem(
        eis("frequency_start: 0.1 Hz, frequency_stop: 7 MHz, amplitude: 10 mV")
    )
    assert (line, column) == (5, 28)
    assert "from the high to the low frequency" in message
    assert "'frequency_start: 7 MHz' and 'frequency_stop: 100 mHz'" in message


# --- every problem at once --------------------------------------------------------------------------

BROKEN = """
    name: all at once
    cell: {area: 1 cm^2, capacity: 1 mAh}
    safety: {voltage_min: 2.5 V, voltage_max: 4.3 V, current_max: 5 mA, duration_max: 10 dayz}
    steps:
      - cc: {current: 1 ma, until: {voltage_above: 4.2 V}}
      - cc: {current: 1 mA, until: {voltage_below: 4.0 V}}
      - rest: {until: {duration: 10 Min}}
      - repeat:
          count: ten
          steps:
            - cc: {current: 10 mA, until: {voltage_above: 4.4 V}}
            - eis: {frequency_start: 0.1 Hz, frequency_stop: 7 MHz, amplitude: 10 V}
      - plate: {current: 0.1 C, until: {charge: 3.6 C}}
      - cc: {current: 1 mA, until: {duration: 1 h}, label: [a, b]}
      - cv: {voltage: 4.5 V, until: {current_below: C/20}}
"""
MODEL_PROBLEMS = [
    (3, 83, "'10 dayz'"),
    (5, 19, "'1 ma'"),
    (7, 30, "'10 Min'"),
    (9, 14, "'count' must be a whole number"),
    (13, 22, "'0.1 C'"),
    (13, 45, "'3.6 C'"),
    (14, 49, "'label' must be text"),
]
CHECK_PROBLEMS = [
    (6, 33, "with a positive (charging) current the voltage rises"),
    (11, 25, "10 mA exceeds safety.current_max"),
    (11, 55, "4.4 V lies outside the safety window"),
    (12, 34, "frequency_start (100 mHz) is below frequency_stop (7 MHz)"),
    (12, 76, "an amplitude of 10 V swings the cell"),
    (15, 19, "4.5 V lies outside the safety window"),
]
FIXES = {
    "10 dayz": "10 day",
    "1 ma": "1 mA",
    "10 Min": "10 min",
    "count: ten": "count: 10",
    "0.1 C,": "0.1C,",
    "3.6 C}": "1 mAh}",
    "[a, b]": "ab",
}


def test_the_checks_run_on_what_validated_so_every_problem_comes_at_once() -> None:
    found = problems(BROKEN)
    expected = sorted(MODEL_PROBLEMS + CHECK_PROBLEMS)
    assert [(line, column) for line, column, _ in found] == [(line, column) for line, column, _ in expected]
    for (_, _, message), (_, _, fragment) in zip(found, expected, strict=True):
        assert fragment in message


def test_fixing_the_unreadable_values_leaves_exactly_the_contradictions_already_reported() -> None:
    fixed = BROKEN
    for wrong, right in FIXES.items():
        assert wrong in fixed
        fixed = fixed.replace(wrong, right)
    reported = problems(fixed)
    assert [(line, column) for line, column, _ in reported] == [
        (line, column) for line, column, _ in CHECK_PROBLEMS
    ]
    first = problems(BROKEN)
    assert all(problem in first for problem in reported)  # same place, same words


def test_an_unreadable_value_does_not_also_count_as_missing() -> None:
    # An unreadable count or safety.duration_max must not make a loop "unbounded", an unreadable
    # duration must not make its step "never end": they were given, only misspelt.
    found = problems("""
        name: x
        safety: {duration_max: 10 dayz}
        steps:
          - rest: {until: {duration: 10 Min}}
          - repeat:
              count: ten
              steps:
                - rest: 10 min
          - repeat:
              steps:
                - rest: 10 min
        """)
    assert [(line, column) for line, column, _ in found] == [(2, 24), (4, 30), (6, 14)]
    assert not any("no bound" in message or "never ends" in message for _, _, message in found)


def test_a_contradiction_inside_a_step_the_model_refused_is_not_guessed_at() -> None:
    # The plate step cannot be read (its current is a slip), so its window is not checked; the
    # next step's is.
    found = problems("""
        name: x
        safety: {voltage_min: -0.5 V}
        steps:
          - plate: {current: 1 ma, until: {voltage_below: -1 V}}
          - plate: {current: 1 mA, until: {voltage_below: -1 V}}
        """)
    assert [(line, column) for line, column, _ in found] == [(4, 22), (5, 51)]
    assert "outside the safety window" in found[1][2]
