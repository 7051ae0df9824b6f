"""Compilation: protocol -> program of SI step commands, with no instrument involved."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest

from cyclerd.protocols import loads
from cyclerd.protocols.compiler import CellDataMissing, compile_protocol
from cyclerd.protocols.plan import command_span, plan
from cyclerd.protocols.program import (
    CurrentCommand,
    CurrentVoltageCommand,
    ImpedanceCommand,
    Loop,
    RestCommand,
    SweepCommand,
)
from cyclerd.protocols.units import Amount, Basis

AREA_M2 = 0.785e-4
HALF_CELL = """
name: half cell
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.5 V, voltage_max: 1.5 V, current_max: 3 mA/cm^2}
record: {every: 30 s, voltage_change: 2 mV}
steps:
  - rest: 10 min
  - repeat:
      count: 3
      until: {short_circuit: true}
      steps:
        - plate:
            current: 1 mA/cm^2
            until: {charge: 1 mAh/cm^2}
            record: {every: 1 s}
            every:
              interval: 10 min
              at_end: true
              steps:
                - eis: {frequency_start: 1 MHz, frequency_stop: 1 Hz, amplitude: 10 mV}
        - strip: {current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 2 h}}
"""


def test_half_cell_values_are_si_and_signed_by_convention() -> None:
    program = compile_protocol(loads(HALF_CELL))
    rest, loop = program.body
    assert isinstance(rest, RestCommand)
    assert isinstance(loop, Loop)
    assert rest.kind == "rest"
    assert rest.end.duration_s == 600.0
    plate, strip = loop.body
    assert isinstance(plate, CurrentCommand)
    assert isinstance(strip, CurrentCommand)
    assert (plate.kind, strip.kind) == ("plate", "strip")
    # 1 mA/cm² on 0.785 cm² is 0.785 mA; plating is negative, stripping positive.
    assert plate.current_A == pytest.approx(-0.785e-3)
    assert strip.current_A == pytest.approx(+0.785e-3)
    # 1 mAh/cm² on 0.785 cm² is 0.785 mAh = 2.826 A·s.
    assert plate.end.charge_As == pytest.approx(0.785e-3 * 3600)
    assert strip.end.voltage_above_V == 1.0
    assert strip.end.duration_s == 7200.0
    assert loop.count == 3
    assert loop.innermost
    assert loop.until.short_circuit
    assert program.safety.current_max_A == pytest.approx(3e-3 * 0.785)


def test_record_rules_merge_step_over_protocol_defaults() -> None:
    program = compile_protocol(loads(HALF_CELL))
    commands = {c.kind: c for c in program.commands()}
    assert commands["rest"].record.every_s == 30.0
    assert commands["plate"].record.every_s == 1.0
    # The step only changed `every`; the protocol's voltage trigger still applies.
    assert commands["plate"].record.voltage_change_V == pytest.approx(2e-3)
    assert commands["strip"].record.every_s == 30.0


def test_every_block_is_explicit_and_its_spectra_are_log_spaced() -> None:
    program = compile_protocol(loads(HALF_CELL))
    plate = next(c for c in program.commands() if c.kind == "plate")
    assert plate.periodic is not None
    assert plate.periodic.interval_s == 600.0
    assert plate.periodic.at_end
    assert not plate.periodic.at_start
    (eis,) = plate.periodic.body
    assert isinstance(eis, ImpedanceCommand)
    assert eis.kind == "eis"
    freqs = eis.spec.frequencies_Hz()
    assert len(freqs) == 61  # 6 decades x 10 points + 1
    assert freqs[0] == pytest.approx(1e6)
    assert freqs[-1] == pytest.approx(1.0)
    ratios = [a / b for a, b in pairwise(freqs)]
    assert all(r == pytest.approx(10**0.1) for r in ratios)
    assert eis.spec.dc_level is None
    assert not eis.spec.galvanostatic


def test_indices_are_unique_and_in_file_order() -> None:
    program = compile_protocol(loads(HALF_CELL))
    indices = [c.index for c in program.commands()]
    assert indices == sorted(indices)
    assert len(set(indices)) == len(indices)


def test_plan_counts_six_spectra_in_one_hour_of_plating() -> None:
    program = compile_protocol(loads(HALF_CELL))
    plate = next(c for c in program.commands() if c.kind == "plate")
    assert command_span(plate).low == pytest.approx(3600.0)
    assert command_span(plate).high == pytest.approx(3600.0)
    lines = [line.text for line in plan(program).lines]
    assert any("(6 times)" in text for text in lines), lines


def test_c_rates_need_a_capacity_and_say_where() -> None:
    text = """
name: full cell
steps:
  - cccv: {current: 0.5C, voltage: 4.25 V, until: {current_below: C/20}}
  - Discharge at 0.5C until 2.5 V
"""
    protocol = loads(text)
    with pytest.raises(CellDataMissing) as err:
        compile_protocol(protocol)
    message = str(err.value)
    assert "nominal capacity" in message
    assert "steps[0].cccv.current" in message
    assert "steps[1].cc.current" in message
    program = compile_protocol(protocol, capacity=Amount(1.57e-3 * 3600, Basis.ABSOLUTE))
    cccv, discharge = program.body
    assert isinstance(cccv, CurrentVoltageCommand)
    assert isinstance(discharge, CurrentCommand)
    assert (cccv.kind, discharge.kind) == ("cccv", "cc")
    assert cccv.current_A == pytest.approx(0.785e-3)
    assert cccv.voltage_V == 4.25
    assert cccv.end.current_below_A == pytest.approx(1.57e-3 / 20)
    assert discharge.current_A == pytest.approx(-0.785e-3)
    assert discharge.end.voltage_below_V == 2.5


def test_areal_capacity_needs_the_area_too() -> None:
    text = "name: x\ncell: {capacity: 2 mAh/cm^2}\nsteps: [Charge at 1C for 1 hour]\n"
    with pytest.raises(CellDataMissing, match="electrode area"):
        compile_protocol(loads(text))
    program = compile_protocol(loads(text), area_m2=AREA_M2)
    (charge,) = program.body
    assert isinstance(charge, CurrentCommand)
    # 1C of 2 mAh/cm² on 0.785 cm² is 1.57 mA.
    assert charge.current_A == pytest.approx(1.57e-3)


def test_needs_list_what_the_instrument_must_do() -> None:
    needs = compile_protocol(loads(HALF_CELL)).needs()
    assert needs.kinds == {"rest", "plate", "strip", "eis"}
    assert needs.eis_modes == {"potentiostatic"}
    assert needs.frequency_range_Hz == (1.0, 1e6)
    assert needs.current_max_A == pytest.approx(0.785e-3)
    assert needs.voltage_range_V == (-0.5, 1.5)  # the safety window: the instrument must measure it all


def test_sweep_duration_follows_its_path() -> None:
    text = """
name: cv
steps:
  - sweep: {start: 1 V, vertices: [0 V, 1 V], scan_rate: 1 mV/s, scans: 2}
"""
    (sweep,) = compile_protocol(loads(text)).body
    assert isinstance(sweep, SweepCommand)
    assert sweep.kind == "sweep"
    # 1 V down and 1 V up at 1 mV/s is 2000 s per scan.
    assert sweep.deadline_s == pytest.approx(4000.0)
    assert math.isclose(command_span(sweep).high or 0.0, 4000.0)
