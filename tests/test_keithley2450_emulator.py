"""The Keithley 2450 emulator, driven over a plain TCP socket with the sequences of
instrument-protocols.md §1.5/§1.6: replies byte for byte, the error queue, CC→CV physics,
virtual-time determinism and every injectable fault. No driver is involved on purpose: this
is the reference the drivers are tested against.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import time
from collections.abc import Iterator

import pytest

from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running

NR3 = re.compile(r"-?\d\.\d{6}E[+-]\d{2}")
ERROR = re.compile(r'(-\d+),"([^;"]+);1;\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}"')
NO_ERROR = '0,"No error;0;0 0"'
INIT = [  # §1.5 common init
    "*RST",
    "*CLS",
    ":OUTP:CURR:SMOD HIMP",
    ":OUTP:VOLT:SMOD HIMP",
    ':SENS:FUNC "VOLT"',
    ":SENS:VOLT:RSEN ON",
    ":SENS:VOLT:RANG:AUTO ON",
    ":SENS:VOLT:NPLC 1",
]
C_RATE_A = 1.57e-3  # 1C of the default 0.785 cm² ncm811-anodeless cell


class Client:
    """A bare LF-framed socket client: exactly the bytes a driver would see."""

    def __init__(self, port: int, timeout_s: float = 2.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self._pending = b""

    def write(self, *messages: str) -> None:
        for message in messages:
            self.sock.sendall(message.encode("ascii") + b"\n")

    def read(self) -> str:
        while b"\n" not in self._pending:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the emulator closed the connection")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("ascii")

    def query(self, message: str) -> str:
        self.write(message)
        return self.read()

    def errors(self) -> list[str]:
        """Drain :SYST:ERR? until the queue is empty (the driver rule of §1.3)."""
        found = []
        while (reply := self.query(":SYST:ERR?")) != NO_ERROR:
            found.append(reply)
        return found

    def close(self) -> None:
        self.sock.close()


def precharged(seconds: float, seed: int = 1) -> Keithley2450Emulator:
    """An ncm811-anodeless cell charged at 1C for `seconds` (3000 s: just below 4.2 V at 1C)."""
    cell = make_cell("ncm811-anodeless", seed=seed)
    cell.advance_at_current(C_RATE_A, seconds)
    return Keithley2450Emulator(cell, virtual_step_s=30.0)


@pytest.fixture
def emulator() -> Keithley2450Emulator:
    return Keithley2450Emulator(make_cell("mgagsn", seed=1), virtual_step_s=1.0)


@pytest.fixture
def client(emulator: Keithley2450Emulator) -> Iterator[Client]:
    with running(emulator) as port:
        c = Client(port)
        yield c
        c.close()


def test_identity_status_and_empty_queue_replies(client: Client) -> None:
    assert client.query("*IDN?") == "KEITHLEY INSTRUMENTS,MODEL 2450,04123456,1.7.12b"
    assert client.query("*LANG?") == "SCPI"
    assert client.query("*OPC?") == "1"
    assert client.query(":SYST:ERR?") == NO_ERROR
    assert client.query(":SYST:ERR:COUN?") == "0"
    assert client.query(":SYST:LFR?") == "50"


def test_common_init_then_the_reply_forms_of_section_1_6(client: Client) -> None:
    client.write(*INIT)
    assert client.query(":SYST:ERR?") == NO_ERROR
    assert client.query(":SENS:FUNC?") == '"VOLT:DC"'
    assert client.query(":SENS:VOLT:RSEN?") == "1"
    assert client.query(":OUTP:CURR:SMOD?") == "HIMP"
    assert client.query(":SENS:VOLT:NPLC?") == "1.000000E+00"
    client.write(
        ":SOUR:FUNC CURR", ":SOUR:CURR:RANG 1", ":SOUR:CURR:VLIM 4.2", ":SOUR:CURR -0.5e-4", ":OUTP ON"
    )
    assert client.query(":SOUR:FUNC?") == "CURR"
    assert client.query(":OUTP?") == "1"
    assert client.query(":SOUR:CURR:RANG?") == "1.000000E+00"
    assert NR3.fullmatch(client.query(":READ?"))
    value, source, rel = client.query(':READ? "defbuffer1", READ, SOUR, REL').split(",")
    assert NR3.fullmatch(value)
    assert 0.5 < float(value) < 2.0
    assert (source, rel) == ("-5.000000E-05", "2.000000E+00")  # virtual time: 1 s per reading
    assert client.query(":SOUR:CURR:VLIM:TRIP?") == "0"
    assert client.query(':TRAC:ACT? "defbuffer1"') == "2"
    assert client.query(':FETC? "defbuffer1", SOUR, REL') == "-5.000000E-05,2.000000E+00"
    client.write(":SOUR:CURR 0", ":OUTP OFF")  # shutdown
    assert client.query(":OUTP?") == "0"
    assert client.errors() == []


def test_grammar_forms_compounds_and_bounds(client: Client) -> None:
    client.write(":source:current:level:immediate:amplitude 0.25")
    assert client.query(":SOUR1:CURR?") == "2.500000E-01"
    assert client.query("sour:curr:lev?") == "2.500000E-01"  # no leading colon, lower case
    client.write(":SOUR:CURR 0.1;CURR:VLIM 4.1")  # the second unit is relative to :SOUR
    assert client.query(":SOURce:CURRent:VLIMit?") == "4.100000E+00"
    client.write("*RST;:stat:pres;:*CLS;")  # pymeasure's reset, K6
    client.write(":SENS:FUNC 'VOLT';:SENS:VOLT:NPLC 1.000000;")  # single quotes, trailing ;
    client.write(":SENS:CURR:RANG:AUTO 0;:SENS:CURR:RANG 0.01\r")  # CR tolerated
    assert client.query(":SENS:CURR:RANG?;:SENS:CURR:RANG:AUTO?") == "1.000000E-02;0"
    client.write(":SOUR:CURR:VLIM MAX")
    assert client.query(":SOUR:CURR:VLIM?") == "2.100000E+02"
    client.write(":SOUR:CURR:VLIM -4.2")  # the magnitude is the limit
    assert client.query(":SOUR:CURR:VLIM?") == "4.200000E+00"
    assert client.query(":SOUR:VOLT:ILIM? DEF") == "1.050000E-04"
    client.write(":SOUR:CURR:RANG 0.05")  # the lowest range that holds it; auto off
    assert client.query(":SOUR:CURR:RANG?;:SOUR:CURR:RANG:AUTO?") == "1.000000E-01;0"
    client.write(":OUTP:STAT ON", ":OUTPut OFF")
    assert client.query("OUTPUT?") == "0"
    assert client.query(":FORM:ASC:PREC?") == "0"
    assert client.errors() == []


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (":BOGUS 1", -113),
        (":SOURC:CURR 1", -113),  # neither the short nor the long form
        (":SOUR:CURR abc", -104),
        (":SOUR:CURR:VLIM 500", -222),
        (":SOUR:CURR 2", -222),
        (":SOUR2:CURR 0.1", -114),
        (":SOUR:CURR", -109),
        (":OUTP ON, OFF", -108),
        (":SOUR:FUNC WATT", -224),
        (":SENS:FUNC VOLT", -104),  # a function name is a string
        (':SENS:FUNC "VOLT', -102),
        (":SOUR:CURR:VLIM:TRIP 1", -113),  # query only
        (':FETC? "defbuffer1"', -230),  # empty buffer
        (":READ?:X", -102),
    ],
)
def test_failed_commands_queue_their_error_and_reply_nothing(client: Client, message: str, code: int) -> None:
    client.write(":SOUR:CURR:VLIM 4.2")
    client.write(message)
    assert client.query("*OPC?") == "1"  # nothing arrived in between: a failed query is silent
    errors = client.errors()
    assert len(errors) == 1
    m = ERROR.fullmatch(errors[0])
    assert m is not None
    assert int(m.group(1)) == code
    assert client.query(":SOUR:CURR:VLIM?") == "4.200000E+00"  # a rejected value leaves the old one


def test_error_queue_is_fifo_kept_by_rst_cleared_by_cls(client: Client) -> None:
    client.write(":BOGUS", ":SOUR:CURR:VLIM 500", "*RST")
    assert client.query(":SYST:ERR:COUN?") == "2"
    assert client.query("*ESR?") == str(32 | 16)  # command error, execution error
    assert client.query("*ESR?") == "0"
    first, second = client.query(":SYST:ERR?"), client.query(":SYSTem:ERRor:NEXT?")
    assert first.startswith('-113,"Undefined header;1;')
    assert second.startswith('-222,"Data out of range;1;')
    assert client.query(":SYST:ERR?") == NO_ERROR
    client.write(":BOGUS", "*CLS")
    assert client.query(":SYST:ERR?") == NO_ERROR


def test_error_queue_overflow_ends_with_350(client: Client) -> None:
    client.write(*[":BOGUS"] * 40)
    assert client.query(":SYST:ERR:COUN?") == "32"
    assert client.query("*STB?") == "4"  # error available
    codes = [int(ERROR.fullmatch(e).group(1)) for e in client.errors()]  # type: ignore[union-attr]
    assert codes == [-113] * 31 + [-350]


def test_cc_charge_turns_into_cv_at_vlim_with_trip_and_taper() -> None:
    with running(precharged(3000.0)) as port:
        c = Client(port)
        c.write(*INIT, ":SOUR:FUNC CURR", ":SOUR:CURR:RANG:AUTO ON", ":SOUR:CURR:VLIM 4.2")
        c.write(f":SOUR:CURR {C_RATE_A}", ":OUTP ON")
        volts, amps, trips = [], [], []
        for _ in range(30):  # SOUR with readback on: the current at the same instant as READ
            volt, amp = c.query(':READ? "defbuffer1", READ, SOUR').split(",")
            volts.append(volt)
            amps.append(float(amp))
            trips.append(c.query(":SOUR:CURR:VLIM:TRIP?"))
        clamped = trips.index("1")
        assert 0 < clamped < 10
        assert trips[clamped:] == ["1"] * (30 - clamped)
        assert all(float(v) < 4.2 for v in volts[:clamped])
        assert set(volts[clamped:]) == {"4.200000E+00"}
        assert amps[:clamped] == [C_RATE_A] * clamped
        taper = amps[clamped:]
        assert taper[0] < C_RATE_A
        assert taper[-1] < 0.5 * taper[0]
        assert all(b < a for a, b in itertools.pairwise(taper))
        assert 0 < float(c.query(":MEAS:CURR?")) < taper[-1]  # §1.5: the CV phase read with :MEAS:CURR?
        c.write(":OUTP OFF")
        assert c.errors() == []
        c.close()


def test_cc_discharge_ocv_rest_and_cv_hold() -> None:
    with running(precharged(3600.0)) as port:
        c = Client(port)
        c.write(*INIT, ":SOUR:FUNC CURR", ":SOUR:CURR:VLIM 5", f":SOUR:CURR {-C_RATE_A / 2}", ":OUTP ON")
        discharge = [float(c.query(":READ?")) for _ in range(10)]
        assert all(b < a for a, b in itertools.pairwise(discharge))
        assert c.query(":SOUR:CURR:VLIM:TRIP?") == "0"
        c.write(":SOUR:CURR 0")  # OCV rest with the output on: the voltage relaxes upwards
        rest = [float(c.query(":READ?")) for _ in range(5)]
        assert min(rest) > discharge[-1] + 0.01  # the IR drop is gone
        c.write(":OUTP OFF", ":SOUR:FUNC VOLT", ":SOUR:VOLT:ILIM 1.0", ":SOUR:VOLT 4.2", ':SENS:FUNC "CURR"')
        c.write(":OUTP ON")
        hold = [float(c.query(":READ?")) for _ in range(10)]
        assert 0 < hold[-1] < hold[0]
        assert c.query(":SOUR:VOLT:ILIM:TRIP?") == "0"
        c.write(":SOUR:VOLT:ILIM 1e-5")  # now the current limit holds: a current source at ILIM
        assert c.query(":READ?") == "1.000000E-05"
        assert c.query(":SOUR:VOLT:ILIM:TRIP?") == "1"
        v = float(c.query(':READ? "defbuffer1", SOUR').split(",")[0])  # readback: measured V
        assert v < 4.2
        c.write(":OUTP OFF")
        assert c.errors() == []
        c.close()


def test_output_off_measures_the_open_circuit_voltage(client: Client) -> None:
    client.write(*INIT)  # K4: HIMP off state, the cell rests and :READ? answers
    first = float(client.query(":READ?"))
    assert 1.0 < first < 2.0
    assert client.query(":MEAS:CURR?") == "0.000000E+00"
    client.write(":SENS:VOLT:RSEN OFF", ":OUTP ON", ":SENS:VOLT:RSEN ON")  # K7: output goes off
    assert client.query(":OUTP?") == "0"


def _session(seed: int) -> list[str]:
    emulator = Keithley2450Emulator(make_cell("mgagsn", seed=seed), virtual_step_s=60.0)
    with running(emulator) as port:
        c = Client(port)
        c.write(*INIT, ":SOUR:FUNC CURR", ":SOUR:CURR:VLIM 2", ":SOUR:CURR -2e-4", ":OUTP ON")
        replies = [c.query(':READ? "defbuffer1", READ, SOUR, REL') for _ in range(20)]
        c.close()
    return replies


def test_virtual_time_is_deterministic_per_seed() -> None:
    first = _session(seed=4)
    assert _session(seed=4) == first
    assert _session(seed=5) != first
    assert first[-1].endswith(",1.200000E+03")  # 20 readings x 60 s


def test_accelerated_time_runs_real_time_times_speed() -> None:
    emulator = Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=1000.0)
    with running(emulator) as port:
        c = Client(port)
        c.write("*RST")
        t0 = float(c.query(':READ? "defbuffer1", REL'))
        time.sleep(0.2)
        t1 = float(c.query(':READ? "defbuffer1", REL'))
        assert 150.0 < t1 - t0 < 1000.0  # 0.2 s (+ a 20 ms reading) x 1000
        c.close()


def test_fault_delay_makes_the_client_time_out(emulator: Keithley2450Emulator) -> None:
    with running(emulator) as port:
        c = Client(port, timeout_s=0.2)
        emulator.faults.delay_s = 0.5
        with pytest.raises(TimeoutError):
            c.query("*IDN?")
        emulator.faults.delay_s = 0.0
        c.sock.settimeout(2.0)
        assert c.read().startswith("KEITHLEY")  # the late reply is still on its way
        c.close()


def test_fault_drop_closes_the_socket_and_a_new_client_gets_in(emulator: Keithley2450Emulator) -> None:
    with running(emulator) as port:
        c = Client(port)
        c.write(":SOUR:CURR:VLIM 3")
        assert c.query("*OPC?") == "1"  # connected and served before the cable is pulled
        emulator.faults.drop_connection()
        with pytest.raises(ConnectionError):
            c.read()
        c.close()
        again = Client(port)
        assert again.query(":SOUR:CURR:VLIM?") == "3.000000E+00"  # the instrument kept its state
        third = Client(port)  # one client at a time: the newest replaces the previous
        assert third.query("*OPC?") == "1"
        with pytest.raises(ConnectionError):
            again.read()
        again.close()
        third.close()


def test_fault_garble_error_and_short(client: Client, emulator: Keithley2450Emulator) -> None:
    client.write(*INIT, ":SOUR:FUNC CURR", ":SOUR:CURR:VLIM 5", ":SOUR:CURR 0", ":OUTP ON")
    emulator.faults.garble_next = 1
    garbled = client.query(":READ?")
    with pytest.raises(ValueError, match="could not convert"):
        float(garbled)
    assert NR3.fullmatch(client.query(":READ?"))  # only the next reply was hit
    emulator.faults.error_next = (-310, "System error")
    errors = client.errors()
    assert len(errors) == 1
    assert errors[0].startswith('-310,"System error;1;')
    assert float(client.query(":READ?")) > 1.0
    emulator.faults.short_cell = True
    assert abs(float(client.query(":READ?"))) < 0.05  # the voltage collapses
    emulator.faults.short_cell = False


def test_fault_open_circuit_during_discharge_drives_to_minus_vlim() -> None:
    emulator = precharged(3000.0)
    with running(emulator) as port:
        c = Client(port)
        c.write(*INIT, ":SOUR:FUNC CURR", ":SOUR:CURR:VLIM 5", f":SOUR:CURR {-C_RATE_A}", ":OUTP ON")
        assert float(c.query(":READ?")) > 3.5
        assert c.query(":SOUR:CURR:VLIM:TRIP?") == "0"
        emulator.faults.open_circuit = True  # §1.5 safety note: the SMU drives towards -VLIM
        assert c.query(":READ?") == "-5.000000E+00"
        assert c.query(":SOUR:CURR:VLIM:TRIP?") == "1"
        emulator.faults.open_circuit = False  # reconnected: back to the cell's voltage
        assert float(c.query(":READ?")) > 3.5
        assert c.query(":SOUR:CURR:VLIM:TRIP?") == "0"
        c.close()


async def test_async_api_serves_on_a_free_port() -> None:
    emulator = Keithley2450Emulator(make_cell("ncm811-anodeless", seed=2), virtual_step_s=1.0)
    port = await emulator.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"*IDN?;:SYST:ERR?\n")
        line = await asyncio.wait_for(reader.readline(), 2.0)
        assert line == b'KEITHLEY INSTRUMENTS,MODEL 2450,04123456,1.7.12b;0,"No error;0;0 0"\n'
        writer.close()
    finally:
        await emulator.stop()
