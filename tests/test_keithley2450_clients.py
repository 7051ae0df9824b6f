"""Third-party 2450 drivers against `cyclerd emulate keithley2450`: pymeasure's and QCoDeS's
`Keithley2450` over pyvisa-py, sending what they send to a real instrument (QCoDeS: long forms,
user delays, autozero, its buffer readout and its linear sweep; pymeasure: filters, beeper,
buffer statistics). Each ends with the instrument's error queue empty.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import pytest
from pymeasure.instruments.keithley import Keithley2450 as PymeasureKeithley2450  # type: ignore[import-untyped]
from qcodes.instrument_drivers.Keithley import Keithley2450 as QcodesKeithley2450

from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running

NO_ERROR = '0,"No error;0;0 0"'
_names = itertools.count()


@pytest.fixture
def resource() -> Iterator[str]:
    with running(Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=0)) as port:
        yield f"TCPIP::127.0.0.1::{port}::SOCKET"


@pytest.fixture
def pymeasure_2450(resource: str) -> Iterator[PymeasureKeithley2450]:
    smu = PymeasureKeithley2450(
        resource, visa_library="@py", read_termination="\n", write_termination="\n", timeout=2000
    )
    try:
        yield smu
    finally:
        smu.adapter.close()


@pytest.fixture
def qcodes_2450(resource: str) -> Iterator[QcodesKeithley2450]:
    smu = QcodesKeithley2450(f"smu{next(_names)}", resource, visalib="@py", timeout=2)
    try:
        yield smu
    finally:
        smu.close()


def test_pymeasure_identifies_sources_current_and_measures_voltage(
    pymeasure_2450: PymeasureKeithley2450,
) -> None:
    smu = pymeasure_2450
    assert "MODEL 2450" in smu.id
    smu.reset()
    smu.apply_current(compliance_voltage=4.5)
    smu.source_current = 1e-4
    smu.measure_voltage()
    smu.enable_source()
    volts = smu.voltage
    assert smu.source_current == pytest.approx(1e-4)
    assert 0.0 < volts < 4.5
    assert smu.check_errors() == []
    smu.shutdown()
    assert smu.source_enabled is False


def test_pymeasure_filters_beeper_and_buffer_statistics(
    pymeasure_2450: PymeasureKeithley2450,
) -> None:
    smu = pymeasure_2450
    smu.reset()
    smu.current_filter_type = "MOV"
    smu.current_filter_count = 20
    smu.current_filter_state = "ON"
    smu.voltage_filter_type = "REP"
    smu.beep(1000, 0.1)
    assert smu.current_filter_type == "MOV"
    assert smu.current_filter_count == 20
    assert smu.voltage_filter_type == "REP"
    smu.measure_voltage()
    readings = [smu.voltage for _ in range(4)]
    assert smu.means == pytest.approx(sum(readings) / 4, rel=1e-5)
    assert smu.maximums == pytest.approx(max(readings), rel=1e-5)
    assert smu.minimums == pytest.approx(min(readings), rel=1e-5)
    assert smu.check_errors() == []


def test_qcodes_identifies_sources_current_and_measures_voltage(
    qcodes_2450: QcodesKeithley2450,
) -> None:
    smu = qcodes_2450
    assert smu.get_idn()["model"] == "2450"  # QCoDeS drops the "MODEL " of the reply
    smu.reset()
    smu.source_function("current")
    smu.sense_function("voltage")
    smu.source.limit(4.5)
    smu.source.current(1e-4)
    smu.terminals("front")
    smu.output_enabled(True)
    volts = smu.sense.voltage()
    assert 0.0 < volts < 4.5
    assert smu.source.current() == pytest.approx(1e-4)
    assert smu.source.limit_tripped() is False
    smu.output_enabled(False)
    assert smu.ask(":SYSTem:ERRor?") == NO_ERROR


def test_qcodes_user_delays_autozero_and_status_clear(qcodes_2450: QcodesKeithley2450) -> None:
    smu = qcodes_2450
    smu.reset()
    smu.sense_function("current")
    smu.sense.user_number(3)
    smu.sense.user_delay(0.25)
    smu.sense.auto_zero_enabled(False)
    smu.sense.auto_zero_once()
    smu.source_function("voltage")
    smu.source.user_number(5)
    smu.source.user_delay(1.5)
    smu.clear_event_register()
    assert smu.sense.user_delay() == pytest.approx(0.25)
    assert smu.sense.auto_zero_enabled() is False
    assert smu.source.user_delay() == pytest.approx(1.5)
    smu.sense.user_number(1)
    assert smu.sense.user_delay() == 0.0  # each USER<n> holds its own value
    assert smu.ask(":SYSTem:ERRor?") == NO_ERROR


def test_qcodes_buffer_readout_sends_long_forms(qcodes_2450: QcodesKeithley2450) -> None:
    smu = qcodes_2450
    smu.reset()
    smu.source_function("current")
    smu.sense_function("voltage")
    smu.source.limit(4.5)
    smu.source.current(2e-4)
    smu.output_enabled(True)
    volts = [smu.sense.voltage() for _ in range(3)]
    smu.output_enabled(False)
    buffer = smu.buffer("defbuffer1")
    assert buffer.number_of_readings() == 3
    buffer.elements(["measurement", "source_value", "relative_time"])  # READing, SOURce, RELative
    last = buffer.get_last_reading().split(",")
    assert float(last[0]) == pytest.approx(volts[-1], rel=1e-6)
    assert float(last[1]) == pytest.approx(2e-4, rel=1e-3)
    data = buffer.get_data(1, 3)
    assert [float(v) for v in data[0::3]] == pytest.approx(volts, rel=1e-6)
    times = [float(t) for t in data[2::3]]
    assert times == sorted(times)
    assert smu.ask(":SYSTem:ERRor?") == NO_ERROR


def test_qcodes_linear_sweep_fills_the_buffer_one_reading_per_point(
    qcodes_2450: QcodesKeithley2450,
) -> None:
    smu = qcodes_2450
    smu.reset()
    smu.source_function("current")
    smu.sense_function("voltage")
    smu.source.limit(4.5)
    smu.buffer("defbuffer1").elements(["measurement", "source_value"])
    smu.source.sweep_setup(0.0, 1e-3, 5)
    volts = smu.sense.sweep()  # :SOURce:SWEep:current:LINear ..., :INITiate, *WAI, :TRACe:DATA?
    assert len(volts) == 5
    assert all(math.isfinite(v) and 0.0 < v < 4.5 for v in volts)
    assert list(volts) == sorted(volts)  # more current into the cell, a higher voltage
    extra = smu.sense.sweep._user_selected_data or []  # what QCoDeS read with the elements
    sourced = [float(v) for v in extra[1::2]]
    assert sourced == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3], abs=1e-9)
    assert smu.output_enabled() is False  # the sweep's trigger model ends with the output off
    assert smu.ask(":SYSTem:ERRor?") == NO_ERROR
