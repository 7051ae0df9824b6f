"""The MethodSCRIPT emulator through a plain pyserial client, byte for byte against the notes.

Scripts are composed from instrument-protocols.md §3.9; replies are parsed here with a few
lines of our own (not the driver's), so the emulator and the driver are checked independently.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import numpy as np
import pytest
import serial

from cyclerd.simulators.methodscript_emulator import MethodScriptEmulator, serve
from cyclerd.simulators.presets import make_cell

PREFIX = dict(zip("afpnum kMGTPE", [10.0**e for e in range(-18, 19, 3)], strict=True)) | {"i": 1.0}


def decode(field: str) -> tuple[str, float, list[str]]:
    """`ba48D503Dp,10,288` -> ("ba", -5.7850e-5, ["10", "288"]) per §3.5."""
    value, *meta = field.split(",")
    if value[2:] == "     nan":
        return value[:2], math.nan, meta
    return value[:2], (int(value[2:9], 16) - 0x8000000) * PREFIX[value[9]], meta


def package(line: str) -> dict[str, float]:
    assert line.startswith("P"), line
    return {vt: v for vt, v, _ in map(decode, line[1:].split(";"))}


class Client:
    """Lines from a pyserial port, read in chunks (pyserial's readline goes byte by byte)."""

    def __init__(self, port: serial.SerialBase, timeout_s: float = 5.0) -> None:
        self.port, self.timeout_s, self.buffer = port, timeout_s, b""
        port.timeout = timeout_s

    def send(self, text: str) -> None:
        self.port.write(text.encode("ascii"))

    def line(self) -> str:
        while b"\n" not in self.buffer:
            first = self.port.read(1)
            if not first:
                raise TimeoutError(f"no reply within {self.port.timeout} s")
            self.port.timeout = 0
            self.buffer += first + self.port.read(1 << 16)
            self.port.timeout = self.timeout_s
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("ascii")

    def until_empty(self) -> list[str]:
        lines: list[str] = []
        while (line := self.line()) != "":
            lines.append(line)
        return lines

    def run(self, script: str) -> list[str]:
        """`e` + the script's lines + an empty line; the reply up to its final empty line."""
        body = "\n".join(line for line in script.strip("\n").splitlines())
        self.send(f"e\n{body}\n\n")
        return self.until_empty()


def socket_client(emulator: MethodScriptEmulator) -> Client:
    return Client(serial.serial_for_url(f"socket://127.0.0.1:{emulator.port}", timeout=5))


def pty_client(emulator: MethodScriptEmulator) -> Client:
    assert emulator.pty_path is not None
    return Client(serial.Serial(emulator.pty_path, 921600, timeout=5))


@pytest.fixture
def emulator() -> Iterator[MethodScriptEmulator]:
    with MethodScriptEmulator(preset="mgagsn", seed=1).threaded() as emu:
        yield emu


@pytest.fixture
def client(emulator: MethodScriptEmulator) -> Client:
    """On the pty: pyserial's socket:// close sleeps 0.3 s, so most tests avoid it."""
    return pty_client(emulator)


def cc_script(current: str = "-100u", cutoff: str = "100m", t_run: str = "36000") -> str:
    """§3.9 CC with cut-off (a plating discharge: negative current, `if p <= ...`)."""
    return f"""
var p
var c
var t
set_pgstat_chan 0
set_pgstat_mode 6
set_max_bandwidth 585053u      # ~0.585 Hz for 10 s points
set_range_minmax ab 0 2000m
set_autoranging ab 0 2000m
set_range db 1m
cell_on
timer_start
meas_loop_cp p c {current} 10 {t_run}
  timer_get t
  pck_start
    pck_add t
    pck_add p
    pck_add c
  pck_end
  if p <= {cutoff}
    breakloop
  endif
endloop
on_finished:
  cell_off
"""


def rest_voltage(seed: int = 1) -> float:
    return float(make_cell("mgagsn", seed=seed).voltage_at_current(0.0, np.zeros(1))[0])


# -- online commands ---------------------------------------------------------------------------


def test_identification_on_the_pty_and_the_socket(emulator: MethodScriptEmulator) -> None:
    for client in (pty_client(emulator), socket_client(emulator)):
        client.send("t\n")
        assert client.port.read(len(b"tes4_hr1100#Jan 28 2022 11:04:43\nR*\n")) == (
            b"tes4_hr1100#Jan 28 2022 11:04:43\nR*\n"
        )
        client.send("\nv\ni\n")  # a bare newline (resync) gets no reply
        assert [client.line(), client.line()] == ["v1.8", "iES4HR22B0001"]


def test_unknown_commands_and_idle_abort_answer_with_error_codes(emulator: MethodScriptEmulator) -> None:
    client = socket_client(emulator)
    client.send("x\nZ\nr\nG0a\nGzz\nt1\n")
    assert [client.line() for _ in range(6)] == [
        "x!0003",
        "Z!0006",
        "r!000C",
        "G00000000",
        "G!0007",
        "t!0007",
    ]


# -- packages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [  # the notes' vendor lines (§3.5) and their decoded values
        ("Pda84E63DAn;ba82AB973f,14,284", {"da": 5.13737e-3, "ba": 2.80e-9}),
        ("Pda7F85F3Fu;ba48D503Dp,10,288", {"da": -0.499905, "ba": -57.85e-6}),
        ("PdcDF5DFF4u;cc896D904m,10,287;cd82DB1A8u,10,287", {"dc": 99.9997, "cc": 9885.956, "cd": 2.9946}),
        ("Pda800000Am;ba7FFFFF6m", {"da": 0.01, "ba": -0.01}),
    ],
)
def test_the_test_decoder_reads_the_notes_examples(line: str, expected: dict[str, float]) -> None:
    assert package(line) == pytest.approx(expected, rel=1e-3)


def test_packages_are_byte_exact_with_the_finest_prefix(client: Client) -> None:
    client.send(
        "e\nvar a\nvar b\nvar n\nvar v\narray k 3i\nstore_var a 10m da\nstore_var b -10m ba\n"
        "store_var n 11i ja\nstore_var v 4300m ab\nstore_var k[2] 0x0f ee\n"
        "pck_start\npck_add a\npck_add b\npck_add n\npck_add v\npck_add k[2]\npck_end\n\n"
    )
    expected = b"e\nPda8989680n;ba7676980n;ja800000Bi;ab8419CE0u;ee800000Fi\n\n"
    assert client.port.read(len(expected)) == expected
    assert package(expected.decode().split("\n")[1]) == pytest.approx(
        {"da": 0.01, "ba": -0.01, "ja": 11, "ab": 4.3, "ee": 15}
    )


# -- the battery scripts of §3.9 ------------------------------------------------------------


def test_cc_discharge_runs_to_its_cut_off_on_the_device(emulator: MethodScriptEmulator) -> None:
    reply = socket_client(emulator).run(cc_script())
    assert reply[:2] == ["e", "M000A"]
    assert reply[-1] == "*"
    points = [package(line) for line in reply[2:-1]]
    fields = [line[1:].split(";") for line in reply[2:-1]]
    for f in fields:  # ab: status OK, a potential range of the autoranging window (50 mV..1 V)
        assert decode(f[1])[2][0] == "10"
        assert decode(f[1])[2][1] in ("202", "203", "204", "205", "206")
    assert [p["eb"] for p in points] == pytest.approx([10.0 * (k + 1) for k in range(len(points))])
    assert [p["db"] for p in points] == pytest.approx([-100e-6] * len(points))
    voltages = [p["ab"] for p in points]
    assert voltages[-1] <= 0.1 < min(voltages[:-1])
    assert voltages[0] == pytest.approx(rest_voltage(), abs=0.2)
    assert 10 < len(points) < 3600  # the cut-off, not t_run, ended it


def test_cv_hold_and_its_current_cut_off(client: Client) -> None:
    hold = """
var p
var c
set_pgstat_mode 3
set_max_bandwidth 5850535u
set_range da 1500m
set_range_minmax ba -1m 1m
set_autoranging ba 100n 1m
set_e 1000m
cell_on
meas_loop_ca p c 1000m 1 30
  pck_start
    pck_add p
    pck_add c
  pck_end
{condition}
endloop
on_finished:
  cell_off
"""
    reply = client.run(hold.format(condition="  # no cut-off (an empty line would end the script)"))
    assert reply[:2] == ["e", "M0007"]
    assert reply[-1] == "*"
    assert len(reply) == 33
    for line in reply[2:-1]:
        (_, e, e_meta), (_, i, i_meta) = map(decode, line[1:].split(";"))
        assert e == pytest.approx(1.0)
        assert e_meta == []
        assert i_meta[0] in ("10", "14")
        assert int(i_meta[1][1:], 16) in (9, 12, 15, 18, 21)
        assert abs(i) < 1e-3
    reply = client.run(hold.format(condition="  if c <= 5m\n    breakloop\n  endif"))
    assert len(reply) == 4  # e, M0007, one package, * : the µA current is below 5 mA at once


def test_ocv_rest_measures_the_cell_at_rest(client: Client) -> None:
    reply = client.run(
        "var p\ncell_off\nset_range ab 4\nmeas_loop_ocp p 1 60\n  pck_start\n  pck_add p\n  pck_end\nendloop"
    )
    assert reply[:2] == ["e", "M000B"]
    assert reply[-1] == "*"
    assert len(reply) == 63
    assert [package(line)["ab"] for line in reply[2:-1]] == pytest.approx([rest_voltage()] * 60, abs=2e-3)


def test_cv_sweep_follows_the_triangle_in_scans(client: Client) -> None:
    reply = client.run(
        "var e\nvar i\nset_pgstat_mode 3\nset_max_bandwidth 200\nset_e 1400m\ncell_on\n"
        "meas_loop_cv e i 1400m 1500m 1300m 10m 100m nscans(2)\n  pck_start\n  pck_add e\n  pck_add i\n"
        "  pck_end\nendloop\non_finished:\n  cell_off"
    )
    assert reply[:3] == ["e", "M0005", "C0000"]
    assert reply[-1] == "*"
    second = reply.index("C0001")
    assert reply[second - 1] == "-"
    assert reply[-2] == "-"
    up, down = np.linspace(1.4, 1.5, 11), np.linspace(1.5, 1.3, 21)
    triangle = [*up, *down[1:], *np.linspace(1.3, 1.4, 11)[1:]]
    first_scan = [package(line)["da"] for line in reply[3 : second - 1]]
    second_scan = [package(line)["da"] for line in reply[second + 1 : -2]]
    assert first_scan == pytest.approx(triangle, abs=1e-9)
    assert second_scan == pytest.approx(triangle[1:], abs=1e-9)


def test_eis_returns_the_cell_impedance_at_the_swept_frequencies(emulator: MethodScriptEmulator) -> None:
    e_dc = f"{round(rest_voltage() * 1e3)}m"
    reply = socket_client(emulator).run(
        f"var f\nvar zr\nvar zi\nset_pgstat_mode 3\nset_max_bandwidth 1M\nset_e {e_dc}\ncell_on\n"
        f"meas_loop_eis f zr zi 10m 100k 100m 11i {e_dc}\n  pck_start\n  pck_add f\n  pck_add zr\n"
        "  pck_add zi\n  pck_end\nendloop\non_finished:\n  cell_off"
    )
    assert reply[:2] == ["e", "M000D"]
    assert reply[-1] == "*"
    assert len(reply) == 14
    points = [package(line) for line in reply[2:-1]]
    freqs = np.logspace(5, -1, 11)
    assert [p["dc"] for p in points] == pytest.approx(freqs, rel=1e-6)
    z = make_cell("mgagsn", seed=1).impedance(freqs)
    measured = np.array([p["cc"] + 1j * p["cd"] for p in points])
    noise = make_cell("mgagsn").params.eis_noise_fraction  # type: ignore[attr-defined]
    assert np.all(np.abs(measured - z) <= 5 * noise * np.abs(z))
    assert min(p["cd"] for p in points) < 0  # the device sends Z'' itself: capacitive is negative
    assert all(len(decode(f)[2]) == 2 for line in reply[2:-1] for f in line[1:].split(";")[1:])


def test_galvanostatic_eis(client: Client) -> None:
    reply = client.run(
        "var f\nvar zr\nvar zi\nset_pgstat_mode 6\nset_max_bandwidth 1M\nset_i 0\ncell_on\n"
        "meas_loop_geis f zr zi 10u 10k 1 5i 0\n  pck_start\n  pck_add f\n  pck_add zr\n  pck_add zi\n"
        "  pck_end\nendloop\non_finished:\n  cell_off"
    )
    assert reply[:2] == ["e", "M000E"]
    assert len(reply) == 8
    z = make_cell("mgagsn", seed=1).impedance(np.logspace(4, 0, 5))
    measured = np.array([package(line)["cc"] + 1j * package(line)["cd"] for line in reply[2:-1]])
    assert np.all(np.abs(measured - z) <= 0.01 * np.abs(z))


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("var p\nfoo 1", "!4001: Line 2, Col 1"),  # unknown command
        ("var p\n  set_bipot_mode 1", "!4001: Line 2, Col 3"),  # no bipotentiostat here
        ("var p\nmeas_loop_ocp p 1 2 nscans(2)\nendloop", "!4008: Line 2, Col 21"),  # not its option
        ("store_var q 1 ja", "!4007: Line 1, Col 11"),  # undeclared variable
        ("var p\nstore_var p 1.5 ja", "!4004: Line 2, Col 14"),  # no decimals: the '.'
        ("var p\nstore_var p 1 zz", "!4006: Line 2, Col 15"),  # unknown variable type
        ("var p\nmeas_loop_ocp p 1 10", "!4000: Line 2, Col 1"),  # no endloop
        ("var p\nstore_var p 1", "!4002: Line 2, Col 14"),  # missing argument
        ("var P", "!000A: Line 1, Col 5"),  # not a variable name
        ("var p\nif p >> 1\nendif", "!4002: Line 2, Col 6"),  # not an operator
    ],
)
def test_malformed_scripts_are_refused_at_load_time(client: Client, script: str, error: str) -> None:
    client.send(f"e\n{script}\n\n")
    expected = f"e\n{error}\n\n".encode()
    assert client.port.read(len(expected)) == expected


def test_control_flow_variables_and_text(client: Client) -> None:
    reply = client.run(
        """
var i
var x
array a 3i
store_var i 0i ja
loop i < 3i
  copy_var i a[i]
  add_var i 1i
endloop
store_var x 2500m ab
mul_var x 2
if x > 6
  send_string "big"
elseif x >= 5
  send_string f"x = {x} V, i = {i}"
else
  send_string "small"
endif
pck_start
  pck_add a[2]
  pck_add x
pck_end
set_script_output 0
pck_start
pck_end
"""
    )
    assert reply == ["e", "L", "+", "Tx = 5 V, i = 3", "Pja8000002i;ab84C4B40u"]


def test_load_then_run_and_a_one_shot_measurement(client: Client) -> None:
    client.send("l\nvar p\ncell_off\nmeas 100m p ab\npck_start\npck_add p\npck_end\n\n")
    assert client.line() == "l"
    client.send("r\n")
    assert client.until_empty()[0] == "r"
    client.send("r\n")
    reply = client.until_empty()
    assert reply[0] == "r"
    assert package(reply[1])["ab"] == pytest.approx(rest_voltage(), abs=2e-3)
    client.send("l\nbogus\n\n")
    assert client.line() == "l!4001: Line 1, Col 1"


async def test_serve_prints_where_drivers_connect(capsys: pytest.CaptureFixture[str]) -> None:
    task = asyncio.create_task(serve(port=0, pty=True, speed=None, seed=1))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if out := capsys.readouterr().out:
            break
    assert "/dev/pts/" in out
    port = int(out.rsplit("socket://127.0.0.1:", 1)[1].split()[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"t\n")
    assert await reader.readline() == b"tes4_hr1100#Jan 28 2022 11:04:43\n"
    writer.close()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_runtime_errors_name_the_line_then_on_finished_runs(client: Client) -> None:
    done = 'on_finished:\n  send_string "finished"'
    wrong_mode = f"var p\nvar c\nset_pgstat_mode 3\ncell_on\nmeas_loop_cp p c 1m 1 10\nendloop\n{done}"
    assert client.run(wrong_mode) == ["e", "!0023: Line 5", "Tfinished"]
    ocp_cell_on = f"var p\nset_pgstat_mode 3\ncell_on\nmeas_loop_ocp p 1 10\nendloop\n{done}"
    assert client.run(ocp_cell_on) == ["e", "!0014: Line 4", "Tfinished"]
    division = "var a\nstore_var a 1 ja\ndiv_var a 0"
    assert client.run(division) == ["e", "!0010: Line 3"]


# -- abort, time -------------------------------------------------------------------------------


def test_abort_stops_a_streaming_loop_and_runs_on_finished(client: Client) -> None:
    client.send(
        "e\n"
        + cc_script(current="100u", cutoff="-1", t_run="10M")
        .replace("on_finished:", 'on_finished:\n  send_string "aborted"')
        .strip("\n")
        + "\n\n"
    )
    assert [client.line(), client.line()] == ["e", "M000A"]
    assert all(client.line().startswith("P") for _ in range(5))
    client.send("Z\n")
    while (line := client.line()) != "Z":
        assert line.startswith("P")
    tail = client.until_empty()
    assert tail[-1] == "Taborted"
    assert all(line.startswith("P") for line in tail[:-1])
    assert len(tail) < 5
    client.send("Z\n")
    assert client.line() == "Z!0006"


def test_accelerated_time_paces_points_and_abort_is_prompt() -> None:
    with MethodScriptEmulator(seed=1, speed=50.0).threaded() as emulator:
        client = socket_client(emulator)
        client.send("e\n" + cc_script(current="100u", cutoff="-1", t_run="10M").strip("\n") + "\n\n")
        start = time.monotonic()
        assert [client.line(), client.line()] == ["e", "M000A"]
        times = [package(client.line())["eb"] for _ in range(3)]  # 10 s points: 0.2 s apart
        elapsed = time.monotonic() - start
        assert 0.5 < elapsed < 1.5
        # The timer is read when the emulator's thread wakes: 40 ms of scheduling delay on a
        # loaded machine is 2 s of device time at 50x (0.5 s, i.e. 10 ms, failed once in CI).
        assert times == pytest.approx([10.0, 20.0, 30.0], abs=2.0)
        client.send("Z\n")
        start = time.monotonic()
        while client.line() != "Z":
            pass
        client.until_empty()
        assert time.monotonic() - start < 0.3


def test_virtual_time_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[str]:
        with MethodScriptEmulator(seed=seed).threaded() as emulator:
            return socket_client(emulator).run(cc_script())

    first = run(1)
    assert run(1) == first
    assert run(2) != first


# -- faults ---------------------------------------------------------------------------------------


def test_slow_and_silent_replies(emulator: MethodScriptEmulator, client: Client) -> None:
    emulator.set_delay(0.3)
    start = time.monotonic()
    client.send("i\n")
    assert client.line() == "iES4HR22B0001"
    assert time.monotonic() - start >= 0.3
    emulator.set_delay(math.inf)
    client.send("i\n")
    client.port.timeout = client.timeout_s = 0.3
    with pytest.raises(TimeoutError):
        client.line()
    emulator.set_delay(0.0)
    client.send("v\n")
    assert client.line() == "v1.8"  # the unanswered `i` stays unanswered


def test_dropped_connections(emulator: MethodScriptEmulator) -> None:
    tcp, pty = socket_client(emulator), pty_client(emulator)
    for client in (tcp, pty):  # connected and known to the emulator
        client.send("v\n")
        assert client.line() == "v1.8"
    old_path = emulator.pty_path
    emulator.drop_connection()
    with pytest.raises(serial.SerialException):
        tcp.port.read(1)
    with pytest.raises(serial.SerialException):
        pty.port.read(1)
    assert emulator.pty_path != old_path
    for client in (socket_client(emulator), pty_client(emulator)):
        client.send("v\n")
        assert client.line() == "v1.8"


def test_garbled_package(emulator: MethodScriptEmulator, client: Client) -> None:
    emulator.garble_packages(1)
    reply = client.run("var p\ncell_off\nmeas_loop_ocp p 1 3\n  pck_start\n  pck_add p\n  pck_end\nendloop")
    garbled, *good = reply[2:-1]
    with pytest.raises(ValueError, match="invalid literal"):
        package(garbled)
    assert len(garbled) == len(good[0])
    assert len(good) == 2
    assert all(package(line)["ab"] == pytest.approx(rest_voltage(), abs=2e-3) for line in good)


def test_device_error_during_a_script(emulator: MethodScriptEmulator, client: Client) -> None:
    emulator.inject_error(0x0032, after_packages=2)
    reply = client.run(
        cc_script(current="100u", cutoff="-1").replace("  cell_off", '  cell_off\n  send_string "finished"')
    )
    assert reply[:2] == ["e", "M000A"]
    assert [line[0] for line in reply[2:4]] == ["P", "P"]
    assert reply[4:] == ["!0032: Line 18", "Tfinished"]  # the pck_end line


def test_shorted_cell(emulator: MethodScriptEmulator, client: Client) -> None:
    ocv = "var p\ncell_off\nmeas_loop_ocp p 1 5\n  pck_start\n  pck_add p\n  pck_end\nendloop"
    assert package(client.run(ocv)[-2])["ab"] == pytest.approx(rest_voltage(), abs=2e-3)
    emulator.short_cell(1e-3)
    assert abs(package(client.run(ocv)[-2])["ab"]) < 1e-3
    reply = client.run(
        "var f\nvar zr\nvar zi\nset_pgstat_mode 6\nset_i 0\ncell_on\nmeas_loop_geis f zr zi 1m 1k 1 2i 0\n"
        "  pck_start\n  pck_add zr\n  pck_add zi\n  pck_end\nendloop\non_finished:\n  cell_off"
    )
    assert [package(line)["cc"] for line in reply[2:-1]] == pytest.approx([1e-3, 1e-3], rel=0.01)
    emulator.clear_short()
    assert abs(package(client.run(ocv)[-2])["ab"]) > 0.05
