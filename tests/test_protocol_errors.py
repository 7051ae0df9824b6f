"""Broken protocol files: each must fail with a ProtocolError that points at the offending key
or value (line and column, 1-based) and says both what is wrong and what to write instead."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from cyclerd.protocols import Problem, ProtocolError, load, loads


@dataclass(frozen=True)
class Broken:
    id: str
    text: str
    at: str  # "line:column" of the offending key or value, 1-based
    wrong: str  # a fragment saying what is wrong
    fix: str  # a fragment saying what to write instead


def doc(text: str) -> str:
    """The YAML of an indented triple-quoted string, starting at line 1."""
    return textwrap.dedent(text).lstrip("\n")


CASES = [
    # --- misspelt keys and kinds -------------------------------------------------------------
    Broken(
        "misspelt-top-level-key",
        doc("""
            name: x
            saftey:
              voltage_max: 4.2 V
            steps:
              - rest: 10 min
            """),
        at="2:1",
        wrong="unknown key 'saftey'",
        fix="did you mean 'safety'?",
    ),
    Broken(
        "misspelt-key-deep-in-a-step",
        doc("""
            name: x
            steps:
              - repeat:
                  count: 3
                  steps:
                    - plate:
                        current: 1 mA
                        until: {charge: 1 mAh, voltage_blow: -0.4 V}
            """),
        at="8:36",
        wrong="unknown key 'voltage_blow'",
        fix="did you mean 'voltage_below'?",
    ),
    Broken(
        "misspelt-setting-of-a-step",
        doc("""
            name: x
            steps:
              - cc:
                  curent: 1 mA
                  until: {duration: 1 h}
            """),
        at="4:7",
        wrong="unknown key 'curent'",
        fix="did you mean 'current'?",
    ),
    Broken(
        "misspelt-step-kind",
        doc("""
            name: x
            steps:
              - plte:
                  current: 1 mA
                  until: {charge: 1 mAh}
            """),
        at="3:5",
        wrong="unknown step kind 'plte'",
        fix="did you mean 'plate'?",
    ),
    Broken(
        "misspelt-step-kind-in-a-loop",
        doc("""
            name: x
            steps:
              - repeat:
                  count: 2
                  steps:
                    - rst: 10 min
            """),
        at="6:11",
        wrong="unknown step kind 'rst'",
        fix="did you mean 'rest'?",
    ),
    Broken(
        "number-as-top-level-key",
        doc("""
            name: x
            1: 2
            steps:
              - rest: 10 min
            """),
        at="2:1",
        wrong="unknown key '1'",
        fix="allowed here: cell, description, name",
    ),
    # --- quantities ----------------------------------------------------------------------------
    Broken(
        "duration-without-unit",
        doc("""
            name: x
            steps:
              - rest:
                  until:
                    duration: 600
            """),
        at="5:19",
        wrong="600 has no unit",
        fix="write a duration such as '10 min'",
    ),
    Broken(
        "duration-in-volts",
        doc("""
            name: x
            steps:
              - rest:
                  until:
                    duration: 10 V
            """),
        at="5:19",
        wrong="'10 V' is a voltage",
        fix="write a duration such as '10 min'",
    ),
    Broken(
        "ten-m-is-metres-not-minutes",
        doc("""
            name: x
            steps:
              - rest: 10 m
            """),
        at="3:11",
        wrong="'m' is metres",
        fix="write 'min' for minutes",
    ),
    Broken(
        "negative-duration",
        doc("""
            name: x
            steps:
              - cc:
                  current: 1 mA
                  until: {duration: -5 min}
            """),
        at="5:25",
        wrong="a duration must be positive",
        fix="write e.g. '10 min'",
    ),
    Broken(
        "zero-duration",
        doc("""
            name: x
            steps:
              - rest: 0 s
            """),
        at="3:11",
        wrong="a duration must be positive",
        fix="write e.g. '10 min'",
    ),
    Broken(
        "unknown-unit",
        doc("""
            name: x
            record:
              every: 10 blargs
            steps:
              - rest: 10 min
            """),
        at="3:10",
        wrong="unknown unit 'blargs'",
        fix="write a duration such as '10 min'",
    ),
    Broken(
        "unit-without-number",
        doc("""
            name: x
            steps:
              - rest: min
            """),
        at="3:11",
        wrong="one number, then its unit",
        fix="write a duration such as '10 min'",
    ),
    Broken(
        "arithmetic-instead-of-a-number",
        doc("""
            name: x
            steps:
              - rest: 10 ** 1000 s
            """),
        at="3:11",
        wrong="cannot read '10 ** 1000 s'",
        fix="write a duration such as '10 min'",
    ),
    Broken(
        "not-a-number-voltage",
        doc("""
            name: x
            safety:
              voltage_max: nan V
            steps:
              - rest: 10 min
            """),
        at="3:16",
        wrong="not a finite number",
        fix="write a voltage such as '4.25 V'",
    ),
    Broken(
        "c-rate-divided-by-zero",
        doc("""
            name: x
            steps:
              - cc:
                  current: C/0
                  until: {voltage_above: 4.2 V}
            """),
        at="4:16",
        wrong="divides by zero",
        fix="such as 'C/20'",
    ),
    Broken(
        "c-rate-written-as-a-charge",
        doc("""
            name: x
            steps:
              - plate:
                  current: 1 mA
                  until: {charge: C/20}
            """),
        at="5:23",
        wrong="reads as a C-rate, not a charge",
        fix="write e.g. '1 mAh'",
    ),
    Broken(
        "percentage-above-100",
        doc("""
            name: x
            steps:
              - repeat:
                  count: 10
                  until: {coulombic_efficiency_below: 150 %}
                  steps:
                    - rest: 10 min
            """),
        at="5:43",
        wrong="must lie between 0 % and 100 %",
        fix="e.g. '95 %'",
    ),
    Broken(
        "eis-amplitude-without-unit",
        doc("""
            name: x
            steps:
              - eis:
                  frequency_start: 100 kHz
                  frequency_stop: 0.1 Hz
                  amplitude: 10
            """),
        at="6:18",
        wrong="the number 10 has no unit",
        fix="or write a voltage such as '10 mV'",
    ),
    # --- the shape of steps ---------------------------------------------------------------------
    Broken(
        "settings-not-indented-under-the-kind",
        doc("""
            name: x
            steps:
              - plate:
                current: 1 mA
                until: {charge: 1 mAh}
            """),
        at="3:5",
        wrong="found plate, current, until",
        fix="indent the step's settings under its kind",
    ),
    Broken(
        "two-kinds-in-one-step",
        doc("""
            name: x
            steps:
              - rest: 10 min
                cc: {current: 1 mA, until: {voltage_above: 4.2 V}}
            """),
        at="3:5",
        wrong="found rest, cc",
        fix="start each step on its own line with '- '",
    ),
    Broken(
        "step-is-a-number",
        doc("""
            name: x
            steps:
              - 42
            """),
        at="3:5",
        wrong="a step is a mapping with one key naming its kind",
        fix="'Rest for 10 minutes'",
    ),
    Broken(
        "list-where-a-mapping-is-expected",
        doc("""
            name: x
            cell:
              - area: 1 cm^2
            steps:
              - rest: 10 min
            """),
        at="2:1",
        wrong="'cell' must be a mapping",
        fix="e.g. 'cell: {area: 0.785 cm^2}'",
    ),
    Broken(
        "until-written-as-a-list",
        doc("""
            name: x
            steps:
              - cc:
                  current: 1 mA
                  until:
                    - duration: 1 h
            """),
        at="5:7",
        wrong="'until' must be a mapping",
        fix="e.g. 'until: {duration: 1 h}'",
    ),
    Broken(
        "steps-not-a-list",
        doc("""
            name: x
            steps:
              rest: 10 min
            """),
        at="2:1",
        wrong="'steps' must be a list",
        fix="lines starting with '- '",
    ),
    Broken(
        "missing-name",
        doc("""
            description: no name
            steps:
              - rest: 10 min
            """),
        at="1:1",
        wrong="missing 'name'",
        fix="add 'name: ",
    ),
    Broken(
        "metadata-value-is-a-list",
        doc("""
            name: x
            cell:
              metadata:
                binders: [PVDF, CMC]
            steps:
              - rest: 10 min
            """),
        at="4:5",
        wrong="a metadata value is one piece of text",
        fix="write a list or mapping as text",
    ),
    Broken(
        "count-not-a-whole-number",
        doc("""
            name: x
            steps:
              - repeat:
                  count: ten
                  steps:
                    - rest: 10 min
            """),
        at="4:14",
        wrong="'count' must be a whole number",
        fix="e.g. 'count: 100'",
    ),
    # --- steps and loops that never end ---------------------------------------------------------
    Broken(
        "step-that-never-ends",
        doc("""
            name: x
            steps:
              - cc: {current: 1 mA}
            """),
        at="3:5",
        wrong="this step never ends",
        fix="e.g. 'until: {voltage_above: 4.2 V}'",
    ),
    Broken(
        "rest-that-never-ends",
        doc("""
            name: x
            steps:
              - rest:
                  label: wait
            """),
        at="3:5",
        wrong="this step never ends",
        fix="e.g. 'until: {duration: 10 min}'",
    ),
    Broken(
        "loop-with-no-bound",
        doc("""
            name: x
            steps:
              - repeat:
                  until: {short_circuit: true}
                  steps:
                    - rest: 10 min
            """),
        at="3:5",
        wrong="this loop has no bound",
        fix="add 'count: N'",
    ),
    # --- every-blocks ---------------------------------------------------------------------------
    Broken(
        "every-interval-as-long-as-the-step",
        doc("""
            name: x
            steps:
              - plate:
                  current: 1 mA
                  until: {duration: 10 min}
                  every:
                    interval: 10 min
                    at_end: true
                    steps:
                      - rest: 1 min
            """),
        at="7:19",
        wrong="the every-block would never run",
        fix="shorten the interval",
    ),
    Broken(
        "every-interval-longer-than-the-charge-takes",
        doc("""
            name: x
            steps:
              - plate:
                  current: 1 mA
                  until: {charge: 0.1 mAh}
                  every:
                    interval: 10 min
                    at_end: false
                    steps:
                      - eis: {frequency_start: 10 kHz, frequency_stop: 1 Hz, amplitude: 10 mV}
            """),
        at="7:19",
        wrong="is not shorter than the step (6 min)",
        fix="shorten the interval",
    ),
    Broken(
        "repeat-inside-an-every-block",
        doc("""
            name: x
            steps:
              - plate:
                  current: 1 mA
                  until: {duration: 1 h}
                  every:
                    interval: 10 min
                    at_end: true
                    steps:
                      - repeat:
                          count: 2
                          steps:
                            - rest: 1 min
            """),
        at="10:13",
        wrong="may hold only rest and eis steps",
        fix="move this step out of the every-block",
    ),
    Broken(
        "every-block-inside-an-every-block",
        doc("""
            name: x
            steps:
              - plate:
                  current: 1 mA
                  until: {duration: 1 h}
                  every:
                    interval: 10 min
                    at_end: true
                    steps:
                      - rest:
                          until: {duration: 1 min}
                          every:
                            interval: 10 s
                            at_end: false
                            steps:
                              - rest: 1 s
            """),
        at="12:15",
        wrong="cannot hold another every-block",
        fix="remove this 'every'",
    ),
    Broken(
        "every-without-at-end",
        doc("""
            name: x
            steps:
              - plate:
                  current: 1 mA
                  until: {duration: 1 h}
                  every:
                    interval: 10 min
                    steps:
                      - rest: 1 min
            """),
        at="6:7",
        wrong="missing 'at_end'",
        fix="'at_end: true' or 'at_end: false'",
    ),
    # --- limits that contradict -----------------------------------------------------------------
    Broken(
        "voltage-min-above-voltage-max",
        doc("""
            name: x
            safety:
              voltage_min: 4.2 V
              voltage_max: 2.5 V
            steps:
              - rest: 10 min
            """),
        at="3:16",
        wrong="must be below voltage_max",
        fix="lower voltage_min or raise voltage_max",
    ),
    Broken(
        "cv-voltage-outside-the-safety-window",
        doc("""
            name: x
            safety:
              voltage_min: 2.5 V
              voltage_max: 4.2 V
            steps:
              - cv:
                  voltage: 4.5 V
                  until: {current_below: C/20}
            """),
        at="7:16",
        wrong="4.5 V lies outside the safety window [2.5 V, 4.2 V]",
        fix="change one of them",
    ),
    Broken(
        "charging-cc-ending-on-voltage-below",
        doc("""
            name: x
            steps:
              - cc:
                  current: 1 mA
                  until: {voltage_below: 2.5 V}
            """),
        at="5:15",
        wrong="with a positive (charging) current the voltage rises",
        fix="end on 'voltage_above'",
    ),
    Broken(
        "discharging-cc-ending-on-voltage-above",
        doc("""
            name: x
            steps:
              - cc:
                  current: -1 mA
                  until:
                    voltage_above: 4.2 V
            """),
        at="6:9",
        wrong="with a negative (discharging/plating) current the voltage falls",
        fix="end on 'voltage_below'",
    ),
    Broken(
        "plate-with-negative-current",
        doc("""
            name: x
            steps:
              - plate:
                  current: -1 mA/cm^2
                  until: {duration: 1 h}
            """),
        at="4:16",
        wrong="plate takes the size of the current",
        fix="write e.g. 'current: 1 mA/cm²'",
    ),
    Broken(
        "current-above-safety-current-max",
        doc("""
            name: x
            safety:
              current_max: 5 mA
            steps:
              - cc:
                  current: 10 mA
                  until: {duration: 1 h}
            """),
        at="6:16",
        wrong="10 mA exceeds safety.current_max (5 mA)",
        fix="lower the current or raise the limit",
    ),
    Broken(
        "c-rate-above-areal-current-max",
        doc("""
            name: x
            cell: {area: 1 cm^2, capacity: 2 mAh/cm^2}
            safety: {current_max: 3 mA/cm^2}
            steps:
              - cc: {current: 2C, until: {voltage_above: 4.2 V}}
            """),
        at="5:19",
        wrong="4 mA exceeds safety.current_max (3 mA)",
        fix="lower the current or raise the limit",
    ),
    # --- YAML itself ----------------------------------------------------------------------------
    Broken(
        "duplicate-top-level-key",
        doc("""
            name: x
            name: y
            steps:
              - rest: 10 min
            """),
        at="2:1",
        wrong="'name' appears twice in this mapping (first at line 1)",
        fix="keep one",
    ),
    Broken(
        "duplicate-key-in-a-step",
        doc("""
            name: x
            steps:
              - cc:
                  current: 1 mA
                  until: {voltage_above: 4.2 V}
                  current: 2 mA
            """),
        at="6:7",
        wrong="'current' appears twice",
        fix="keep one",
    ),
    Broken(
        "tab-indentation",
        "name: x\nsteps:\n\t- rest: 10 min\n",
        at="3:1",
        wrong="found character '\\t'",
        fix="indent with spaces, not tabs",
    ),
    Broken(
        "entry-indented-one-space-too-far",
        doc("""
            name: x
            steps:
              - rest: 10 min
               - rest: 5 min
            """),
        at="4:4",
        wrong="expected <block end>",
        fix="line this entry up with the ones above it",
    ),
    Broken(
        "unclosed-bracket",
        doc("""
            name: x
            steps: [{rest: 10 min}
            """),
        at="2:8",
        wrong="expected ',' or ']'",
        fix="close the list with ']'",
    ),
    Broken(
        "unclosed-quote",
        doc("""
            name: 'E1 test
            steps:
              - rest: 10 min
            """),
        at="1:7",
        wrong="end of stream",
        fix="close the quoted text with the same quote",
    ),
    Broken(
        "key-without-colon",
        doc("""
            name: x
            description
            steps:
              - rest: 10 min
            """),
        at="2:1",
        wrong="could not find expected ':'",
        fix="write 'key: value'",
    ),
    Broken(
        "python-tag",
        doc("""
            name: !!python/object/apply:os.system [echo hi]
            steps:
              - rest: 10 min
            """),
        at="1:7",
        wrong="could not determine a constructor",
        fix="remove the '!' tag",
    ),
    Broken(
        "alias-inside-its-own-anchor",
        doc("""
            name: x
            steps: &loop
              - rest: 10 min
              - *loop
            """),
        at="2:8",  # the anchored value that contains itself
        wrong="inside its own anchor",
        fix="write the inner one out",
    ),
    Broken(
        "control-character",
        "name: E1\x07\nsteps:\n  - rest: 10 min\n",
        at="1:9",
        wrong="is not allowed here",
        fix="delete it",
    ),
    Broken("empty-file", "", at="1:1", wrong="the file is empty", fix="a protocol needs name and steps"),
    Broken(
        "only-a-comment",
        "# TODO: write the protocol\n",
        at="1:1",
        wrong="the file is empty",
        fix="a protocol needs name and steps",
    ),
    Broken(
        "a-list-instead-of-a-protocol",
        "- rest: 10 min\n- Charge at 1C until 4.2 V\n",
        at="1:1",
        wrong="a protocol is a mapping of keys to values",
        fix="'name: ...' followed by 'steps:'",
    ),
    # --- PyBaMM step strings --------------------------------------------------------------------
    Broken(
        "step-string-in-watts",
        doc("""
            name: x
            steps:
              - Charge at 1 W until 4 V
            """),
        at="3:5",
        wrong="power and resistance control are not supported",
        fix="use a current (A) or C-rate",
    ),
    Broken(
        "step-string-in-ohms",
        doc("""
            name: x
            steps:
              - Discharge at 10 Ohm for 1 hour
            """),
        at="3:5",
        wrong="power and resistance control are not supported",
        fix="use a current (A) or C-rate",
    ),
    Broken(
        "step-string-rest-for-5-m",
        doc("""
            name: x
            steps:
              - Rest for 5 m
            """),
        at="3:5",
        wrong="'m' could be minutes or metres",
        fix="write 'min' or 'minutes'",
    ),
    Broken(
        "step-string-negative-time",
        doc("""
            name: x
            steps:
              - Discharge at 1 mA for -3 minutes
            """),
        at="3:5",
        wrong="a time must be positive",
        fix="write e.g. '10 minutes'",
    ),
    Broken(
        "step-string-never-ends",
        doc("""
            name: x
            steps:
              - rest: 10 min
              - Charge at 1 mA
            """),
        at="4:5",
        wrong="never ends",
        fix="add 'for DURATION' and/or 'until CONDITION'",
    ),
    Broken(
        "step-string-unknown-verb",
        doc("""
            name: x
            steps:
              - Pulse at 1 A for 10 seconds
            """),
        at="3:5",
        wrong="must start with Charge, Discharge, Hold or Rest",
        fix="'Rest for 10 minutes'",
    ),
    Broken(
        "step-string-infinite-current",
        doc("""
            name: x
            steps:
              - Charge at 1e999 A until 4.2 V
            """),
        at="3:5",
        wrong="'1e999 A' is not a finite number",
        fix="write e.g. '4.2 V'",
    ),
    Broken(
        "step-string-hold-until-a-voltage",
        doc("""
            name: x
            steps:
              - Hold at 4.2 V until 4.3 V
            """),
        at="3:5",
        wrong="say which way the voltage must cross",
        fix="'until > 4.2 V'",
    ),
    Broken(
        "step-string-charging-beyond-safety",
        doc("""
            name: x
            safety: {voltage_max: 4.2 V}
            steps:
              - Charge at 1 mA until 4.3 V
            """),
        at="4:5",
        wrong="4.3 V lies outside the safety window",
        fix="change one of them",
    ),
]


def _problems_at(error: ProtocolError, line: int, column: int) -> list[Problem]:
    return [p for p in error.problems if (p.line, p.column) == (line, column)]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_broken_protocol_names_place_problem_and_fix(case: Broken) -> None:
    with pytest.raises(ProtocolError) as info:
        loads(case.text, "broken.yaml")
    error = info.value
    line, column = map(int, case.at.split(":"))
    here = _problems_at(error, line, column)
    assert here, f"nothing reported at {case.at}; got:\n{error}"
    assert all(p.file == "broken.yaml" for p in error.problems)
    messages = [p.message for p in here]
    assert any(case.wrong in m and case.fix in m for m in messages), (
        f"expected {case.wrong!r} and {case.fix!r} at {case.at}; got {messages}"
    )


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


THREE_PROBLEMS = doc("""
    name: three problems
    saftey:
      voltage_max: 4.2 V
    steps:
      - rest: 10 m
      - cc:
          current: 1 mA
          until: {voltage_abve: 4.1 V}
    """)


def test_every_independent_problem_is_reported_at_its_own_place() -> None:
    with pytest.raises(ProtocolError) as info:
        loads(THREE_PROBLEMS, "broken.yaml")
    found = [(p.line, p.column) for p in info.value.problems]
    assert found == [(2, 1), (5, 11), (8, 15)]
    first, second, third = (p.message for p in info.value.problems)
    assert "did you mean 'safety'?" in first
    assert "'m' is metres" in second
    assert "did you mean 'voltage_above'?" in third


def test_every_contradiction_is_reported_not_just_the_first() -> None:
    text = doc("""
        name: three contradictions
        safety:
          voltage_min: 4.2 V
          voltage_max: 2.5 V
        steps:
          - cc: {current: 1 mA}
          - plate:
              current: -1 mA
              until: {duration: 1 h}
        """)
    with pytest.raises(ProtocolError) as info:
        loads(text, "broken.yaml")
    found = {(p.line, p.column): p.message for p in info.value.problems}
    assert set(found) == {(3, 16), (6, 5), (8, 16)}
    assert "must be below voltage_max" in found[3, 16]
    assert "never ends" in found[6, 5]
    assert "takes the size of the current" in found[8, 16]


def test_str_lists_file_line_column_of_each_problem() -> None:
    with pytest.raises(ProtocolError) as info:
        loads(THREE_PROBLEMS, "broken.yaml")
    lines = str(info.value).splitlines()
    assert lines[0] == "3 problems in broken.yaml"
    assert lines[1].startswith("broken.yaml:2:1: unknown key 'saftey'")
    assert lines[2].startswith("broken.yaml:5:11: '10 m' is ")
    assert lines[3].startswith("broken.yaml:8:15: unknown key 'voltage_abve'")


def test_single_problem_is_counted_in_the_singular() -> None:
    with pytest.raises(ProtocolError) as info:
        loads("", "empty.yaml")
    assert str(info.value).splitlines() == [
        "1 problem in empty.yaml",
        "empty.yaml:1:1: the file is empty; a protocol needs name and steps",
    ]


def test_problems_are_value_errors_so_callers_can_catch_them_broadly() -> None:
    with pytest.raises(ValueError, match=r"broken\.yaml:3:11: "):
        loads("name: x\nsteps:\n  - rest: 10 m\n", "broken.yaml")


def test_load_names_the_file_it_read(tmp_path: Path) -> None:
    path = tmp_path / "e1.yaml"
    path.write_text("name: x\nsteps:\n  - rest: -1 min\n", encoding="utf-8")
    with pytest.raises(ProtocolError) as info:
        load(path)
    assert [str(p) for p in info.value.problems] == [
        f"{path}:3:11: '-1 min': a duration must be positive; write e.g. '10 min'"
    ]


def test_load_of_a_missing_file_is_a_protocol_error(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError, match="cannot read the file"):
        load(tmp_path / "nope.yaml")


def test_percentages_are_read_as_fractions() -> None:
    # pint calls '%' unitless, which once made every percentage "have no unit".
    text = doc("""
        name: percent
        steps:
          - repeat:
              count: 100
              until: {coulombic_efficiency_below: 95 %, capacity_retention_below: 70%}
              steps:
                - rest: 10 min
        """)
    (loop,) = loads(text, "percent.yaml").steps
    assert loop.until.coulombic_efficiency_below == pytest.approx(0.95)
    assert loop.until.capacity_retention_below == pytest.approx(0.70)


def test_merge_keys_still_work_next_to_the_duplicate_key_check() -> None:
    # `<<` may appear in several mappings and is overridden by explicit keys; that is not a
    # duplicate.
    text = doc("""
        name: merged
        steps:
          - cc:
              <<: {current: 1 mA, until: {duration: 1 h}}
              current: 2 mA
          - cc:
              <<: {current: 1 mA, until: {duration: 1 h}}
        """)
    protocol = loads(text, "merged.yaml")
    assert [step.current.value for step in protocol.steps] == [0.002, 0.001]
