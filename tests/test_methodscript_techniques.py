"""The MethodSCRIPT techniques, statements and options beyond battery cycling, as a client sees them.

Each script is ours, written from the argument lists the MethodSCRIPT manual documents (outputs
first, then inputs); replies are read with cyclerd's own line classifier and package decoder
(drivers/methodscript_packages), the parser a real host runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from test_methodscript_emulator import Client, pty_client

from cyclerd.drivers.methodscript_packages import LineKind, Value, decode_package, kind_of
from cyclerd.simulators.methodscript_emulator import MethodScriptEmulator

POTENTIOSTAT = "set_pgstat_chan 0\nset_pgstat_mode 3\nset_max_bandwidth 200\nset_autoranging ba 1n 100m\n"


@pytest.fixture
def client() -> Iterator[Client]:
    with MethodScriptEmulator(preset="mgagsn", seed=1).threaded() as emulator:
        yield pty_client(emulator)


def packages(reply: list[str], technique: int | None = None) -> list[tuple[Value, ...]]:
    """The decoded packages of a well-formed reply (no error, scopes closed, `*` after `M`)."""
    kinds = [kind_of(line) for line in reply]
    assert LineKind.ERROR not in kinds, reply
    assert kinds[0] is LineKind.ACK
    if technique is not None:
        assert reply[1] == f"M{technique:04X}", reply[:3]
        assert LineKind.MEASUREMENT_END in kinds
    return [decode_package(line) for line, kind in zip(reply, kinds, strict=True) if kind is LineKind.PACKAGE]


def sweep(name: str, outputs: str, inputs: str, adds: str, setup: str = POTENTIOSTAT) -> str:
    declared = "\n".join(f"var {v}" for v in outputs.split())
    body = "\n".join(f"  pck_add {v}" for v in adds.split())
    return f"""{declared}
{setup}set_e 1400m
cell_on
meas_loop_{name} {outputs} {inputs}
  pck_start
{body}
  pck_end
endloop
on_finished:
  cell_off"""


def test_dpv_reports_base_potentials_and_pulse_minus_base_current(client: Client) -> None:
    # E_begin E_end E_step E_pulse t_pulse scan_rate: 11 steps of 20 mV, 50 mV pulses of 20 ms
    rows = packages(client.run(sweep("dpv", "p c", "1400m 1600m 20m 50m 20m 200m", "p c")), 0x0001)
    assert [r[0].vartype for r in rows] == ["da"] * 11
    assert np.allclose([r[0].value for r in rows], np.linspace(1.4, 1.6, 11), atol=1e-9)
    assert all(r[1].vartype == "ba" and r[1].range_index is not None for r in rows)
    assert all(r[1].value > 0 for r in rows)  # a pulse up draws more (oxidising) current


def test_swv_difference_is_forward_minus_reverse(client: Client) -> None:
    # E_begin E_end E_step E_amplitude frequency; outputs E, I_fwd - I_rev, I_fwd, I_rev
    reply = client.run(sweep("swv", "p c f r", "1600m 1400m 10m 25m 50", "p c f r"))
    rows = packages(reply, 0x0002)
    assert np.allclose([r[0].value for r in rows], np.linspace(1.6, 1.4, 21), atol=1e-9)
    for _, diff, forward, reverse in rows:
        assert diff.value == pytest.approx(forward.value - reverse.value, rel=1e-5, abs=1e-12)
    assert all(r[2].value < r[3].value for r in rows)  # a cathodic scan: forward pulses go down


def test_npv_pulses_from_the_begin_potential(client: Client) -> None:
    # E_begin E_end E_step t_pulse scan_rate
    rows = packages(client.run(sweep("npv", "p c", "1400m 1500m 10m 10m 100m", "p c")), 0x0003)
    assert len(rows) == 11
    currents = [r[1].value for r in rows]
    assert currents[-1] > currents[0]  # larger pulses, larger currents


def test_acv_gives_dc_current_and_the_cells_impedance(client: Client) -> None:
    # outputs E_dc I_dc E_ac I_ac Z' Z''; inputs E_begin E_end E_step scan_rate E_amplitude frequency
    outputs = "e i ea ia zr zi"
    rows = packages(client.run(sweep("acv", outputs, "1450m 1500m 10m 50m 10m 100", outputs)), 0x0004)
    assert [v.vartype for v in rows[0]] == ["da", "ba", "dd", "ba", "cc", "cd"]
    for _, _, amplitude, i_ac, z_real, z_imag in rows:
        assert amplitude.value == pytest.approx(0.01)
        assert i_ac.value == pytest.approx(0.01 / abs(complex(z_real.value, z_imag.value)), rel=1e-3)
        assert z_real.value > 0


def test_lsp_sweeps_current_in_galvanostat_mode(client: Client) -> None:
    galvanostat = "set_pgstat_chan 0\nset_pgstat_mode 6\nset_range db 1m\n"
    # I_begin I_end I_step scan_rate (A/s)
    reply = client.run(sweep("lsp", "p c", "-100u 100u 20u 200u", "c p", galvanostat))
    rows = packages(reply, 0x000F)
    assert [(r[0].vartype, r[1].vartype) for r in rows] == [("db", "ab")] * 11
    assert np.allclose([r[0].value for r in rows], np.linspace(-1e-4, 1e-4, 11), atol=1e-12)
    potentials = [r[1].value for r in rows]
    assert potentials[-1] > potentials[0]  # charging current lifts the potential

    refused = client.run(sweep("lsp", "p c", "-100u 100u 20u 200u", "c p"))  # potentiostat mode
    assert refused[1].startswith("!0023"), refused


def test_pad_reports_the_current_of_the_chosen_mode(client: Client) -> None:
    # E_dc E_pulse t_pulse t_interval t_run mode (1 DC, 2 pulse, 3 difference)
    dc, pulse, diff = (
        packages(client.run(sweep("pad", "p c", f"1450m 1500m 10m 50m 500m {mode}", "p c")), 0x0008)
        for mode in (1, 2, 3)
    )
    assert len(dc) == len(pulse) == len(diff) == 10
    assert {r[0].value for r in dc} == {1.45}
    assert {r[0].value for r in pulse} == {1.5}
    assert all(r[1].value > 0 for r in diff)


def test_bad_technique_arguments_are_device_errors(client: Client) -> None:
    negative_step = client.run(sweep("dpv", "p c", "1400m 1600m -20m 50m 20m 200m", "p c"))
    assert negative_step[1] == "!001C: Line 9"
    pulse_too_long = client.run(sweep("npv", "p c", "1400m 1500m 10m 200m 100m", "p c"))
    assert pulse_too_long[1] == "!000D: Line 9"


def test_aa_vartype_float_to_int_and_computed_arrays(client: Client) -> None:
    reply = client.run(
        """
var n
var i
var x
var m
store_var n 4700m aa
float_to_int n
array a n
store_var i 0i aa
loop i < n
  copy_var i x
  pow_var x 2
  int_to_float x
  array_set a i x
  add_var i 1i
endloop
mean a m
array_get a 3i x
bit_or_var i 0b1000
pck_start
  pck_add n
  pck_add m
  pck_add x
  pck_add i
pck_end
float_to_int_round m
pck_start
  pck_add m
pck_end"""
    )
    (n, m, x, i), (rounded,) = packages(reply)
    assert (n.vartype, n.value) == ("aa", 4.0)  # truncated toward zero, an integer now
    assert m.value == pytest.approx((0 + 1 + 4 + 9) / 4)
    assert x.value == 9.0
    assert i.value == 12.0
    assert rounded.value == 4.0


def test_eis_tdd_fills_time_domain_arrays_per_frequency(client: Client) -> None:
    reply = client.run(
        f"""
var f
var zr
var zi
var n
var dt
var k
array u 32i
array c 32i
{POTENTIOSTAT}set_e 1450m
cell_on
meas_loop_eis f zr zi 10m 1k 10 3i 1450m eis_tdd(u c n dt 0)
  pck_start
    pck_add f
    pck_add n
    pck_add dt
  pck_end
  store_var k 0i ja
  loop k < n
    pck_start
      pck_add u[k]
      pck_add c[k]
    pck_end
    add_var k 1i
  endloop
endloop
on_finished:
  cell_off"""
    )
    rows = packages(reply, 0x000D)
    assert len(rows) == 3 * (1 + 32)
    head = rows[0]
    assert head[1].value == 32
    assert head[2].value == pytest.approx(1 / (1000 * 32), rel=1e-6)
    potentials = np.array([r[0].value for r in rows[1:33]])
    assert potentials.mean() == pytest.approx(1.45, abs=1e-4)
    assert potentials.max() - 1.45 == pytest.approx(0.01 * np.sqrt(2), rel=0.05)  # an RMS amplitude


def test_cell_on_at_the_open_circuit_potential(client: Client) -> None:
    reply = client.run(
        f"""
var e
var p
var c
{POTENTIOSTAT}meas 100m e ab
cell_on ocp(e)
meas_loop_ca p c 1450m 100m 200m
endloop
on_finished:
  cell_off"""
    )
    assert packages(reply, None) == []
    assert reply[-1] == "*"


def test_peripherals_are_accepted_and_do_nothing(client: Client) -> None:
    reply = client.run(
        """
var g
set_gpio_cfg 0b111 1
set_gpio 0x5
set_gpio_msk 0x1 1i
get_gpio g
beep 24 70 10m
file_open "run_&i.txt" 2
set_script_output 3
pck_start
  pck_add g
pck_end
set_script_output 2
send_string "to the file only"
file_close"""
    )
    assert reply == ["e", "Pec8000000i"]


def test_unknown_options_and_vartypes_are_still_refused(client: Client) -> None:
    client.send("e\nvar p\ncell_on nscans(2)\n\n")
    assert client.until_empty() == ["e", "!4008: Line 2, Col 9"]
    client.send("e\nvar p\nstore_var p 1 zz\n\n")
    assert client.until_empty() == ["e", "!4006: Line 2, Col 15"]
