"""Files that would take the daemon's memory or time: refused at once, with where and why.

A protocol arrives from an operator's editor or over MQTT; a few hundred bytes of nested
aliases stand for billions of values, and a file of a hundred thousand written-out steps would
stall every channel while it is read. Each is a ProtocolError that says what to write instead.
"""

from __future__ import annotations

import pytest

from cyclerd.protocols import ProtocolError, loads
from cyclerd.protocols.loader import MAX_STEPS, MAX_TEXT_CHARS

# 9 levels of 9 aliases: 9**9 (387 million) strings once written out, in 342 bytes.
ALIAS_BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]"
            for prev, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ProtocolError) as caught:
        loads(text, "p.yaml")
    return [str(problem) for problem in caught.value.problems]


def test_an_alias_bomb_is_refused_where_it_grows_too_large() -> None:
    (problem,) = problems_of(ALIAS_BOMB)
    assert problem.startswith("p.yaml:6:4: ")  # the first anchor worth over 100 000 values
    assert "aliases" in problem
    assert "repeat: {count: N}" in problem


def test_reused_steps_are_still_welcome() -> None:
    text = (
        "name: aliases\nsteps:\n  - repeat:\n      count: 3\n      steps:\n"
        "        - &rest {rest: 10 min}\n        - {cc: {current: 1 mA, until: {duration: 1 h}}}\n"
        "        - *rest\n"
    )
    assert loads(text).name == "aliases"


def test_a_file_too_long_to_be_a_protocol_is_refused_before_it_is_parsed() -> None:
    text = "name: x\nsteps:\n  - rest: 1 s\n# " + "x" * MAX_TEXT_CHARS + "\n"
    (problem,) = problems_of(text)
    assert problem.startswith("p.yaml:1:1: ")
    assert "characters" in problem
    assert "repeat" in problem


def test_too_many_written_steps_are_refused_at_the_steps_key() -> None:
    lines = ["name: many", "steps:", "  - repeat:", "      count: 2", "      steps:"]
    lines += ["        - rest: 1 s"] * MAX_STEPS
    (problem,) = problems_of("\n".join(lines) + "\n")
    assert problem.startswith("p.yaml:2:1: ")
    assert f"{MAX_STEPS + 1:,} steps" in problem
