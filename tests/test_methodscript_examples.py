"""What PalmSens' example scripts need beyond the battery techniques, as a client sees it over a pty.

The multiplexer (`mux_*`, the alternating loops), hibernation, the real-time clock, the aux DAC,
GPIO pull-ups, the EmStat4T's display and QR scanner, `abort`, bitwise conditions and the
secondary pgstat channel. Each script is ours, written from the argument lists the MethodSCRIPT
manual and the vendor examples document; replies are read with cyclerd's own line classifier and
package decoder (drivers/methodscript_packages), the parser a real host runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_methodscript_emulator import Client, pty_client

from cyclerd.drivers.methodscript_packages import LineKind, Value, decode_package, kind_of
from cyclerd.simulators.methodscript_emulator import MethodScriptEmulator
from cyclerd.simulators.methodscript_packages import parse_literal

POTENTIOSTAT = "set_pgstat_chan 0\nset_pgstat_mode 3\nset_max_bandwidth 200\nset_autoranging ba 1n 100m\n"
GALVANOSTAT = "set_pgstat_chan 0\nset_pgstat_mode 6\nset_max_bandwidth 200\nset_range db 1m\n"


@pytest.fixture
def client() -> Iterator[Client]:
    with MethodScriptEmulator(preset="mgagsn", seed=1).threaded() as emulator:
        yield pty_client(emulator)


def fresh(script: str) -> list[str]:
    """The reply of a new emulator (same preset and seed): for comparing two scripts' effect."""
    with MethodScriptEmulator(preset="mgagsn", seed=1).threaded() as emulator:
        return pty_client(emulator).run(script)


def rows(reply: list[str]) -> list[tuple[Value, ...]]:
    """The decoded packages of a reply that carries no error line."""
    kinds = [kind_of(line) for line in reply]
    assert LineKind.ERROR not in kinds, reply
    return [decode_package(line) for line, kind in zip(reply, kinds, strict=True) if kind is LineKind.PACKAGE]


def texts(reply: list[str]) -> list[str]:
    return [line[1:] for line in reply if kind_of(line) is LineKind.TEXT]


# -- the multiplexer -----------------------------------------------------------------------------


def test_a_mux8_r2_has_eight_channels_numbered_from_one(client: Client) -> None:
    reply = client.run(
        """
var n
mux_get_channel_count n
pck_start
  pck_add n
pck_end
mux_config 3i 0x0020
mux_get_channel_count n
pck_start
  pck_add n
pck_end
mux_set_channel 1i
mux_set_channel 8i"""
    )
    (before,), (after,) = rows(reply)
    assert (before.value, after.value) == (0, 8)
    assert client.run("mux_config 3i 0\nmux_set_channel 9i")[1] == "!0007: Line 2"
    assert client.run("mux_config 3i 0\nmux_set_channel 0")[1] == "!0007: Line 2"
    assert client.run("mux_config 4i 0")[1] == "!001B: Line 1"  # the EmStat Pico's MUX16


def ca(setup: str, t_int: str = "100m", t_run: str = "500m") -> str:
    return f"""
var p
var c
{POTENTIOSTAT}{setup}set_e 1500m
cell_on
meas_loop_ca p c 1500m {t_int} {t_run}
  pck_start
    pck_add p
    pck_add c
  pck_end
endloop
on_finished:
  cell_off"""


def test_selecting_a_channel_changes_nothing_the_cell_does() -> None:
    plain, multiplexed = (fresh(ca(setup)) for setup in ("", "mux_config 3i 0x0020\nmux_set_channel 5i\n"))
    assert len(rows(plain)) == 5
    assert multiplexed == plain


def alternating(name: str, outputs: str, inputs: str, adds: str, setup: str) -> str:
    return f"""
var e
var i
var k
array a 4i
{setup}mux_config 3i 0x0020
cell_on
meas_loop_{name}_alt_mux {outputs} {inputs} 2i 4i
  pck_start
{adds}
  pck_end
endloop
on_finished:
  cell_off"""


EACH = "    store_var k 0i ja\n    loop k < 3i\n      pck_add a[k]\n      add_var k 1i\n    endloop"
CA_ON = f"{POTENTIOSTAT}set_e 1500m\n"


def test_alternating_ca_reads_one_cell_on_each_channel_in_turn() -> None:
    # E I[] E_dc t_interval t_run first_channel last_channel: channels 2..4, 300 ms, 3 s
    reply = fresh(alternating("ca", "e a", "1500m 300m 3", f"    pck_add e\n{EACH}", CA_ON))
    assert reply[:2] == ["e", "M0011"]
    points = rows(reply)
    assert len(points) == 10
    assert all([v.vartype for v in point] == ["da", "ba", "ba", "ba"] for point in points)
    assert {point[0].value for point in points} == {1.5}
    # the same cell, a channel's share (100 ms) apart: the readings of a CA sampled every 100 ms
    every_share = [point[1].value for point in rows(fresh(ca("", "100m", "3")))]
    assert [v.value for point in points for v in point[1:]] == pytest.approx(every_share, rel=1e-9)


def test_alternating_cp_and_ocp_give_a_potential_per_channel(client: Client) -> None:
    cp = alternating("cp", "a i", "-100u 200m 1", f"{EACH}\n    pck_add i", GALVANOSTAT)
    reply = client.run(cp)
    assert reply[:2] == ["e", "M0012"]
    points = rows(reply)
    assert len(points) == 5
    assert all([v.vartype for v in point] == ["ab", "ab", "ab", "db"] for point in points)
    assert all(point[3].value == pytest.approx(-1e-4) for point in points)

    ocp = alternating("ocp", "a", "100m 300m", EACH, POTENTIOSTAT).replace("cell_on\n", "")
    reply = client.run(ocp)
    assert reply[:2] == ["e", "M0013"]
    points = rows(reply)
    assert len(points) == 3
    assert all([v.vartype for v in point] == ["ab", "ab", "ab"] for point in points)
    potentials = np.array([[v.value for v in point] for point in points])
    assert np.allclose(potentials, potentials[0, 0], atol=0.05)  # the resting cell, on every channel


def test_alternating_loops_refuse_what_the_multiplexer_cannot_do(client: Client) -> None:
    script = alternating("ca", "e a", "1500m 100m 1", "    pck_add e", CA_ON)
    assert client.run(script.replace("2i 4i", "2i 9i"))[1:] == ["!0007: Line 12"]  # a MUX8-R2 has 8
    assert client.run(script.replace("2i 4i", "1i 8i"))[1:] == ["!0007: Line 12"]  # 8 currents, 4 places
    no_mux = script.replace("mux_config 3i 0x0020\n", "")
    assert fresh(no_mux)[1:] == ["!0007: Line 11"]
    assert client.run(no_mux)[1] == "M0011"  # the configuration outlives a script, as the device's
    ocp_cell_on = alternating("ocp", "a", "100m 300m", "    pck_add a", POTENTIOSTAT)
    assert client.run(ocp_cell_on)[1:] == ["!0014: Line 11"]


# -- hibernation, the clock, the aux DAC and the GPIO pins ----------------------------------------


def test_hibernate_wakes_on_its_timer_with_the_cell_still_biased(client: Client) -> None:
    script = f"""
var t
var c
{POTENTIOSTAT}set_e 1500m
cell_on
timer_start
{{sleep}}
timer_get t
meas 100m c ba
pck_start
  pck_add t
  pck_add c
pck_end
on_finished:
  cell_off"""
    hibernated, waited = (rows(fresh(script.format(sleep=s))) for s in ("hibernate 0x04 30", "wait 30"))
    assert hibernated[0][0].value == pytest.approx(30.0)
    assert hibernated == waited  # the cell was held at 1.5 V all along
    ((woken, _),) = rows(client.run(script.format(sleep="hibernate 0x03 30")))
    assert woken.value == 0  # no pin, button or host to wait for: awake at once
    assert client.run("hibernate 0 30")[1] == "!0007: Line 1"


def test_the_real_time_clock_runs_with_device_time(client: Client) -> None:
    reply = client.run(
        """
array t 6i
rtc_get t[0i] t[1i] t[2i] t[3i] t[4i] t[5i]
send_string f"{t[0i]}-{t[1i]}-{t[2i]} {t[3i]}:{t[4i]}:{t[5i]}"
wait 90
rtc_get t[0i] t[1i] t[2i] t[3i] t[4i] t[5i]
send_string f"{t[0i]}-{t[1i]}-{t[2i]} {t[3i]}:{t[4i]}:{t[5i]}"
pck_start
  pck_add t[0i]
pck_end"""
    )
    first, second = (
        datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) for text in texts(reply)
    )
    assert second - first == timedelta(seconds=90)
    assert abs(first - datetime.now(UTC)) < timedelta(minutes=1)
    ((year,),) = rows(reply)
    assert (year.vartype, year.value) == ("ja", first.year)


def test_gpio_inputs_read_their_pull_ups_and_the_aux_dac_is_accepted(client: Client) -> None:
    reply = client.run(
        """
var g
var e
set_gpio_cfg 0b0111 0
set_gpio_pullup 0b0101 1
get_gpio g
pck_start
  pck_add g
pck_end
set_gpio_cfg 0b0001 1
get_gpio_msk g 0b0011
pck_start
  pck_add g
pck_end
store_var e 250m ja
set_e_aux e
set_e_aux -1"""
    )
    (pulled_up,), (masked,) = rows(reply)
    assert (pulled_up.vartype, pulled_up.value) == ("ec", 0b0101)
    assert masked.value == 0  # pin 0 is an output now, pin 1 has no pull-up


# -- the language and the pgstat ------------------------------------------------------------------


def test_abort_ends_the_script_and_runs_on_finished(client: Client) -> None:
    reply = client.run(
        'send_string "before"\nabort\nsend_string "after"\non_finished:\n  send_string "finished"'
    )
    assert reply == ["e", "Tbefore", "Tfinished"]


def test_bitwise_conditions_test_for_a_bit_in_common(client: Client) -> None:
    reply = client.run(
        """
var d
store_var d 0x84i ja
if d & 0x80i
  send_string "bit 7"
endif
if d & 0x01i
  send_string "bit 0"
endif
if d | 0
  send_string "some bit"
endif"""
    )
    assert texts(reply) == ["bit 7", "some bit"]


def test_a_plain_loop_takes_device_time(client: Client) -> None:
    """A script polling a timer without `wait` must see it advance (a millisecond per iteration)."""
    reply = client.run(
        """
var t
var n
store_var n 0i ja
timer_start
loop t < 1
  timer_get t
  add_var n 1i
endloop
pck_start
  pck_add n
pck_end"""
    )
    ((iterations,),) = rows(reply)
    assert iterations.value == pytest.approx(1001, abs=1)


def test_the_second_pgstat_channel_can_only_be_switched_off(client: Client) -> None:
    reply = client.run(
        f"""
var p
var c
set_pgstat_chan 1
set_pgstat_mode 0
{POTENTIOSTAT}set_e 1450m
cell_on
meas_loop_ca p c 1450m 100m 200m
endloop
on_finished:
  cell_off"""
    )
    assert reply == ["e", "M0007", "*"]
    assert client.run("set_pgstat_chan 1\nset_pgstat_mode 3")[1] == "!001B: Line 2"
    assert client.run("set_pgstat_chan 2")[1] == "!0007: Line 1"


def test_emstat4t_display_and_qr_scanner_answer_as_if_left_alone(client: Client) -> None:
    reply = client.run(
        """
var b
var n
var m
array codes 4i
display_clear
display_text "Measuring" 0
display_btns b "Left" "Right"
display_progress 50i
display_icon 3i
display_inp_num "A number" n 0
display_scroll_add "One"
display_scroll_get "Pick" m
display_draw
qr_scan codes n
pck_start
  pck_add b
  pck_add m
  pck_add n
pck_end"""
    )
    ((button, choice, codes),) = rows(reply)
    assert (button.value, choice.value, codes.value) == (0, 0, -3)


def test_eis_accepts_eis_opt_and_measures_as_without_it() -> None:
    script = f"""
var f
var zr
var zi
{POTENTIOSTAT}set_e 1450m
cell_on
meas_loop_eis f zr zi 10m 10k 100 3i 1450m{{option}}
  pck_start
    pck_add f
    pck_add zr
    pck_add zi
  pck_end
endloop
on_finished:
  cell_off"""
    with_option = rows(fresh(script.format(option=" eis_opt(100u 1)")))
    assert [v.vartype for v in with_option[0]] == ["dc", "cc", "cd"]
    assert with_option == rows(fresh(script.format(option="")))


def test_an_lsv_gives_one_point_per_step_into_an_array_sized_by_the_script(client: Client) -> None:
    """The scripts size arrays from their sweep: (E_end - E_begin) / E_step elements, one per point
    (PalmSens' LPR-versus-time example does, for an EmStat4): the count must come out whole, and
    the sweep must not measure one point more than its steps."""
    reply = client.run(
        f"""
var p
var c
var n
var i
var span
var step
store_var i 0i aa
store_var span 20m ia
store_var step 100u ia
copy_var span n
div_var n step
array ps n
{POTENTIOSTAT}set_e 0
cell_on
meas_loop_lsv p c 0 span step 100m
  copy_var p ps[i]
  add_var i 1i
  pck_start
    pck_add p
  pck_end
endloop
cell_off"""
    )
    potentials = [row[0].value for row in rows(reply)]
    assert len(potentials) == 200
    assert potentials[0] == pytest.approx(0.0, abs=1e-9)
    assert potentials[-1] == pytest.approx(0.0199, abs=1e-9)  # one step short of E_end
    assert np.allclose(np.diff(potentials), 100e-6)


@given(st.integers(-(10**7), 10**7), st.sampled_from("afpnumkMGTPE "))
def test_a_literal_is_the_double_nearest_what_is_written(digits: int, prefix: str) -> None:
    exponent = {"a": -18, "f": -15, "p": -12, "n": -9, "u": -6, "m": -3, " ": 0}.get(prefix)
    exponent = exponent if exponent is not None else 3 * ("kMGTPE".index(prefix) + 1)
    value, is_int = parse_literal(f"{digits}{prefix.strip()}")
    assert not is_int
    assert value == float(Fraction(digits) * Fraction(10) ** exponent)
