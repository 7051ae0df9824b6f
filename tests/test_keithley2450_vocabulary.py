"""The 2450 emulator's vocabulary as clients spell it: every header and enumerated parameter in
short or long form and any case (hypothesis over the whole command table), and the reference-manual
commands beyond the battery subset (user delays, autozero, filters, beeper, data format, buffer
statistics, the linear source sweep) over a socket.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_keithley2450_emulator import ERROR, NO_ERROR, Client

from cyclerd.simulators.keithley2450_commands import COMMANDS, DISPATCH, ELEMENT, FORMAT, SMOD
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.keithley2450_sweep import RANGE_TYPE
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi import Choice, Command, Node, Token
from cyclerd.simulators.scpi_server import running


def any_case(word: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda upper: "".join(c.upper() if u else c.lower() for c, u in zip(word, upper, strict=True))
    )


@st.composite
def spelled(draw: st.DrawFn, command: Command[Keithley2450Emulator]) -> tuple[str, str, bool]:
    """A header of `command` in mixed forms and case, the same nodes in short form, query or not."""
    query = command.set is None or (command.query is not None and draw(st.booleans()))
    mixed, short = [], []
    for node in command.nodes:
        if node.optional and not draw(st.booleans()):
            continue
        suffix = node.number or (draw(st.sampled_from(["", "1"])) if node.suffix else "")
        form = draw(st.sampled_from([node.short, node.long]))
        mixed.append(draw(any_case(form)) + suffix)
        short.append(node.short + suffix)
    mark = "?" if query else ""
    lead = "" if mixed[0].startswith("*") else ":"
    return lead + ":".join(mixed) + mark, lead + ":".join(short) + mark, query


def full_short(nodes: tuple[Node, ...]) -> str:
    return ":".join(n.short + n.number for n in nodes)


@given(st.sampled_from(COMMANDS).flatmap(lambda c: st.tuples(st.just(c), spelled(c))))
def test_every_header_takes_short_and_long_forms_in_any_case(
    drawn: tuple[Command[Keithley2450Emulator], tuple[str, str, bool]],
) -> None:
    command, (mixed, short, query) = drawn
    assert DISPATCH.command_for(mixed) is DISPATCH.command_for(short)
    every_node = full_short(command.nodes) + ("?" if query else "")
    assert DISPATCH.command_for(every_node if every_node.startswith("*") else ":" + every_node) is command


CHOICES = [ELEMENT, FORMAT, SMOD, RANGE_TYPE, Choice("REPeat", "MOVing"), Choice("CURRent", "VOLTage")]


@given(st.sampled_from(CHOICES).flatmap(lambda c: st.tuples(st.just(c), st.sampled_from(sorted(c.words)))))
def test_every_enumerated_parameter_takes_short_and_long_forms_in_any_case(drawn: tuple[Choice, str]) -> None:
    choice, word = drawn
    assert choice.parse(Token(word.lower())) == choice.parse(Token(word)) == choice.words[word]
    assert choice.words[word] in choice.shorts


@pytest.fixture
def client() -> Iterator[Client]:
    with running(Keithley2450Emulator(make_cell("mgagsn", seed=1), virtual_step_s=1.0)) as port:
        c = Client(port)
        yield c
        c.close()


def test_buffer_elements_in_long_form_read_like_the_short_form(client: Client) -> None:
    client.write(":SOUR:FUNC CURR", ":SOUR:CURR 1e-4", ':SENS:FUNC "VOLT"', ":OUTP ON")
    client.query(":READ?")
    long_form = client.query(':FETCh? "defbuffer1", READing, SOURce, RELative, SEConds')
    assert long_form == client.query(':fetch? "defbuffer1", read, sour, rel, sec')
    assert client.query(
        ':TRACe:DATA? 1, 1, "defbuffer1", reading, UNIT, sourunit'
    ) == "{},Volt DC,Amp DC".format(long_form.split(",")[0])
    assert client.errors() == []


def test_settings_of_the_reference_manual_read_back(client: Client) -> None:
    client.write(
        ":SENS:VOLT:AZER OFF",
        ":SENSe:AZERo:ONCE",
        ":SENS:CURR:DEL:USER2 0.5",
        ":SOURce:VOLTage:DELay:USER5 2",
        ":SENS:VOLT:AVER ON",
        ":SENS:VOLT:AVER:TCON MOVing",
        ":SENS:VOLT:AVER:COUN 42",
        ":STATus:CLEar",
        ":SYSTem:BEEPer:IMMediate 440, 0.2",
        ":FORMat:DATA REAL",
    )
    assert client.query(":SENS:VOLT:AZER:STAT?") == "0"
    assert client.query(":SENS:CURR:AZER?") == "1"
    assert client.query(":SENS:CURR:DEL:USER2?") == "5.000000E-01"
    assert client.query(":SENS:CURR:DEL:USER1?") == "0.000000E+00"
    assert client.query(":SOUR:VOLT:DEL:USER5?") == "2.000000E+00"
    assert client.query(":SENS:VOLT:AVER?;:SENS:VOLT:AVER:TCON?;:SENS:VOLT:AVER:COUN?") == "1;MOV;42"
    assert client.query(":FORM?") == "REAL"
    client.write(":FORM REAL, 32")
    assert client.query(":FORM:DATA?") == "SRE"
    client.write(":FORM ASCii")
    assert client.query(":FORM?") == "ASC"
    assert client.errors() == []
    client.write("*RST")
    assert client.query(":SENS:VOLT:AZER?;:SENS:CURR:DEL:USER2?;:FORM?") == "1;0.000000E+00;ASC"


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (":SENS:CURR:DEL:USER6 1", -114),
        (":SENS:CURR:DEL:USER 1", -114),
        (":SENS:CURR:AVER:COUN 101", -222),
        (":SENS:CURR:AVER:TCON MOVE", -224),
        (":SYST:BEEP 10, 1", -222),
        (":SYST:BEEP 440", -109),
        (":FORM SREal, 32", -224),
        (":SOUR:SWE:CURR:LIN 0, 1e-3", -109),
        (":SOUR:SWE:CURR:LIN 0, 2, 5", -222),
        (":SOUR:SWE:VOLT:LIN 0, 1, 5, 0, 1, SOMETIMES", -224),
        (":SOUR:SWE:CURR:LIN 0, 1e-3, 5, 0, INF", -104),
        (':SOUR:SWE:CURR:LIN 0, 1e-3, 5, 0, 1, AUTO, ON, OFF, "nobuffer"', -224),
        (":FORM REAL;:READ?", -221),  # binary data is not served
    ],
)
def test_new_commands_refuse_bad_input(client: Client, message: str, code: int) -> None:
    client.write(message)
    assert client.query("*OPC?") == "1"
    m = ERROR.fullmatch(client.query(":SYST:ERR?"))
    assert m is not None
    assert int(m.group(1)) == code
    assert client.query(":SYST:ERR?") == NO_ERROR


def test_linear_sweep_runs_on_init_and_fills_the_buffer(client: Client) -> None:
    client.write(':SENS:FUNC "VOLT"', ":SOUR:CURR:VLIM 4.5", ":READ?")
    client.read()
    client.write(":SOURce:SWEep:CURRent:LINear 0, 1e-3, 3, 0.5, 2, BEST, ON, ON, 'defbuffer1'")
    assert client.query(":SOUR:FUNC?") == "CURR"
    client.write(":INIT", "*WAI")
    assert client.query(':TRAC:ACT? "defbuffer1"') == "12"  # 3 points there and back, twice
    data = client.query(':TRACe:DATA? 1, 12, "defbuffer1", SOURce, READing, RELative').split(",")
    sourced = [float(v) for v in data[0::3]]
    assert sourced == pytest.approx([0, 5e-4, 1e-3, 1e-3, 5e-4, 0] * 2, abs=1e-6)
    times = [float(t) for t in data[2::3]]
    assert [b - a for a, b in itertools.pairwise(times)] == pytest.approx([1.5] * 11)  # step + delay
    assert client.query(":OUTP?") == "0"
    assert client.query(":SOUR:CURR:RANG:AUTO?;:SOUR:CURR:RANG?") == "0;1.000000E-03"  # BEST range
    mean = sum(float(v) for v in data[1::3]) / 12
    assert float(client.query(":TRACe:STATistics:AVERage?")) == pytest.approx(mean, rel=1e-6)
    client.write(":INIT")  # the sweep stays set up: it runs again into a cleared buffer
    assert client.query(":TRAC:ACT?") == "12"
    assert client.errors() == []


def test_sweep_with_fail_abort_stops_when_the_limit_holds_the_output(client: Client) -> None:
    client.write(':SENS:FUNC "VOLT"', ":SOUR:CURR:VLIM 0.5")  # below the cell voltage: clamped at once
    client.write(":SOUR:SWE:CURR:LIN -1e-3, -1e-3, 5", ":INIT")
    assert client.query(":TRAC:ACT?") == "1"
    assert client.query(":OUTP?") == "0"
    client.write(":SOUR:SWE:CURR:LIN -1e-3, -1e-3, 5, 0, 1, AUTO, OFF", ":INIT")
    assert client.query(":TRAC:ACT?") == "5"
    assert client.errors() == []


def test_statistics_of_an_empty_buffer_answer_the_overflow_value(client: Client) -> None:
    assert client.query(':TRAC:STAT:AVER? "defbuffer2"') == "9.900000E+37"
    client.write(":TRAC:CLE")
    assert client.query(":TRAC:STAT:STDD?") == "9.900000E+37"
