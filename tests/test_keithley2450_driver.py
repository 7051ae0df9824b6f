"""The Keithley 2450 driver and the software stepper over a real TCP socket, against the emulator."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from watch import stored_and_watched

from cyclerd.analysis.cycles import summarise
from cyclerd.drivers.base import InstrumentDisconnected, InstrumentError, InstrumentTimeout, unmet_needs
from cyclerd.drivers.clock import VirtualClock
from cyclerd.drivers.keithley2450 import Keithley2450
from cyclerd.drivers.stepper import SteppedChannel
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import Columns, StoreSink
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

STEP_S = 10.0  # the emulator's virtual time per reading, and the stepper's poll interval

E1_FEW = """
name: E1, a few cycles
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.5 V, voltage_max: 3 V, current_max: 2 mA/cm^2}
record: {every: 10 s}
steps:
  - repeat:
      count: 3
      until: {short_circuit: true}
      steps:
        - plate: {current: 1 mA/cm^2, until: {charge: 1 mAh/cm^2}}
        - strip: {current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 2 h}}
"""


@pytest.fixture
def emulator() -> Iterator[tuple[Keithley2450Emulator, str]]:
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1), virtual_step_s=STEP_S)
    with running(device) as port:
        yield device, f"TCPIP::127.0.0.1::{port}::SOCKET"


def _run(program_text: str, channel: object, clock: VirtualClock, db: Path) -> tuple[Runner, Store, int]:
    program = compile_protocol(loads(program_text))
    store = Store(db)
    run_id = store.create_run(program.name, "test", program_text, {}, {})
    runner = Runner(program, channel, clock, StoreSink(store, run_id))  # type: ignore[arg-type]
    asyncio.run(runner.run())
    return runner, store, run_id


def test_identifies_and_configures_a_2450(emulator: tuple[Keithley2450Emulator, str]) -> None:
    device, resource = emulator

    async def check() -> None:
        smu = Keithley2450(resource)
        await smu.open()
        assert "MODEL 2450" in smu.identity
        assert await smu.errors() == []
        await smu.source_current(1e-4, 3.0)
        assert device.s.output
        reading = await smu.measure()
        assert reading.current_A == pytest.approx(1e-4, rel=1e-3)
        await smu.close()
        assert not device.s.output

    asyncio.run(check())


def test_e1_on_the_emulator_matches_the_in_process_simulator(
    emulator: tuple[Keithley2450Emulator, str], tmp_path: Path
) -> None:
    _, resource = emulator

    async def on_instrument() -> RunState:
        clock = VirtualClock()
        smu = Keithley2450(resource)
        await smu.open()
        channel = SteppedChannel(smu, clock, poll_interval_s=STEP_S)
        program = compile_protocol(loads(E1_FEW))
        assert unmet_needs(program.needs(), channel.capabilities, smu.name) == []
        store = Store(tmp_path / "instrument.db")
        run_id = store.create_run(program.name, "k2450", E1_FEW, {}, {})
        result = await Runner(program, channel, clock, StoreSink(store, run_id)).run()
        await smu.close()
        return result.state

    assert asyncio.run(on_instrument()) is RunState.COMPLETED
    clock = VirtualClock()
    _, reference, _ = _run(
        E1_FEW, SimulatedChannel(make_cell("mgagsn", seed=1), clock), clock, tmp_path / "sim.db"
    )
    measured = summarise(Store(tmp_path / "instrument.db").samples(1))
    expected = summarise(reference.samples(1))
    assert len(measured) == len(expected) == 3
    for m, e in zip(measured, expected, strict=True):
        # An SMU ends a step on the first reading past its condition: up to one poll late.
        assert m.forward_As == pytest.approx(e.forward_As, abs=7.85e-4 * STEP_S * 1.01)
        assert m.coulombic_efficiency == pytest.approx(e.coulombic_efficiency, abs=0.01)
        assert m.reverse_mean_V == pytest.approx(e.reverse_mean_V, abs=0.005)


def test_a_refused_setting_surfaces_the_instruments_own_error(
    emulator: tuple[Keithley2450Emulator, str],
) -> None:
    device, resource = emulator

    async def check() -> None:
        smu = Keithley2450(resource)
        await smu.open()
        with pytest.raises(InstrumentError) as err:
            await smu.source_current(5.0, 3.0)  # beyond the 2450's 1.05 A: -222
        assert err.value.code == -222
        assert "out of range" in err.value.text.lower()
        device.faults.error_next = (-310, "System error")
        with pytest.raises(InstrumentError, match="-310"):
            await smu.source_current(1e-4, 3.0)
        await smu.close()

    asyncio.run(check())


def test_a_persistent_timeout_stops_the_run_safely_and_keeps_the_data(
    emulator: tuple[Keithley2450Emulator, str], tmp_path: Path
) -> None:
    device, resource = emulator
    long_rest = "name: rest\nrecord: {every: 10 s}\nsteps:\n  - rest: 10 h\n"

    async def run() -> tuple[RunState, Store]:
        clock = VirtualClock()
        smu = Keithley2450(resource, timeout_s=0.3)
        await smu.open()
        store = Store(tmp_path / "fault.db")
        run_id = store.create_run("rest", "k2450", long_rest, {}, {})
        program = compile_protocol(loads(long_rest))

        def stall_after_some_samples(columns: Columns) -> None:
            if clock.now() > 600:
                device.faults.delay_s = 1.0  # every reply now comes too late: a stalled instrument

        runner = Runner(
            program,
            SteppedChannel(smu, clock, STEP_S),
            clock,
            stored_and_watched(store, run_id, stall_after_some_samples),
        )
        runner.retries = 1
        result = await runner.run()
        device.faults.delay_s = 0.0
        for _ in range(100):  # the stalled instrument works through the lines it was sent
            if not device.s.output:
                break
            await asyncio.sleep(0.1)
        await smu.close()
        return result.state, store

    state, store = asyncio.run(run())
    assert state is RunState.STOPPED
    faults = [e["message"] for e in store.events(1) if e["kind"] == "fault"]
    assert any("no reply within 0.3 s" in message for message in faults)
    assert len(store.samples(1)["seq"]) > 0  # what was stored before the stall is still there
    assert not device.s.output  # the output-off the runner sent was acted on once the stall ended
    assert any("could not confirm the cell is safe" in m for m in faults) or any(
        "cell made safe" in m for m in faults
    )


def test_the_emulator_timeout_maps_to_instrument_timeout(emulator: tuple[Keithley2450Emulator, str]) -> None:
    device, resource = emulator

    async def check() -> None:
        smu = Keithley2450(resource, timeout_s=0.2)
        await smu.open()
        device.faults.delay_s = 0.5
        with pytest.raises(InstrumentTimeout):
            await smu.measure()
        device.faults.delay_s = 0.0
        await smu.reopen()  # a fresh session: no late reply left in the buffer
        assert (await smu.measure()).voltage_V > 0
        await smu.close()

    asyncio.run(check())


@pytest.mark.parametrize("fault", ["garble", "drop"])
def test_a_transient_fault_is_retried_and_the_run_completes(
    emulator: tuple[Keithley2450Emulator, str], tmp_path: Path, fault: str
) -> None:
    device, resource = emulator
    text = "name: rest\nrecord: {every: 10 s}\nsteps:\n  - rest: 2 h\n"

    async def run() -> tuple[RunState, Store]:
        clock = VirtualClock()
        smu = Keithley2450(resource, timeout_s=0.5)
        await smu.open()
        store = Store(tmp_path / "transient.db")
        run_id = store.create_run("rest", "k2450", text, {}, {})
        injected = False

        def once(columns: Columns) -> None:
            nonlocal injected
            if not injected and clock.now() > 1800:
                injected = True
                if fault == "garble":
                    device.faults.garble_next = 1
                else:
                    device.faults.drop_connection()

        channel = SteppedChannel(smu, clock, STEP_S)
        result = await Runner(
            compile_protocol(loads(text)), channel, clock, stored_and_watched(store, run_id, once)
        ).run()
        await smu.close()
        return result.state, store

    state, store = asyncio.run(run())
    assert state is RunState.COMPLETED
    # One step fault, retried; after a dropped link the output-off cannot be confirmed either
    # (that is a second event), and the reopened, reset instrument has its output off anyway.
    faults = [e for e in store.events(1) if e["kind"] == "fault" and e["message"].startswith("step 1")]
    assert len(faults) == 1, [e["message"] for e in store.events(1)]
    assert faults[0]["data"]["transient"] is True
    samples = store.samples(1)
    # The step still lasted its 2 h of step time; test time also holds the recovery: backoff
    # and the readings between the last stored batch and the fault, which were not stored.
    assert 7200.0 <= samples["t"][-1] <= 7200.0 + 300.0
    assert (np.diff(samples["seq"]) == 1).all()


def test_a_shorted_cell_is_detected_and_ends_the_loop(
    emulator: tuple[Keithley2450Emulator, str], tmp_path: Path
) -> None:
    device, resource = emulator

    async def run() -> Store:
        clock = VirtualClock()
        smu = Keithley2450(resource)
        await smu.open()
        store = Store(tmp_path / "short.db")
        run_id = store.create_run("E1", "k2450", E1_FEW, {}, {})

        def short_in_cycle_two(columns: Columns) -> None:
            if runner.cycle >= 2:
                device.faults.short_cell = True

        runner = Runner(
            compile_protocol(loads(E1_FEW)),
            SteppedChannel(smu, clock, STEP_S),
            clock,
            stored_and_watched(store, run_id, short_in_cycle_two),
        )
        await runner.run()
        await smu.close()
        return store

    store = asyncio.run(run())
    shorts = [e for e in store.events(1) if e["kind"] == "short_circuit"]
    assert len(shorts) == 1
    assert "cycle 2" in shorts[0]["message"]
    assert store.run(1).state == "completed"  # the loop ended on its short-circuit condition
    assert not device.s.output


def test_an_error_queued_during_a_step_is_read_with_the_next_reading(
    emulator: tuple[Keithley2450Emulator, str],
) -> None:
    device, resource = emulator

    async def check() -> None:
        smu = Keithley2450(resource)
        await smu.open()
        await smu.source_current(1e-4, 3.0)
        await smu.measure()
        device.faults.error_next = (-222, "Parameter data out of range")  # queued mid-step
        with pytest.raises(InstrumentError) as raised:
            await smu.measure()
        assert (raised.value.code, raised.value.text) == (-222, "Parameter data out of range")
        assert await smu.errors() == []  # read and drained: not left to fail the next command
        await smu.close()

    asyncio.run(check())


def test_an_error_queued_mid_step_stops_the_run_with_the_output_off_at_once(
    emulator: tuple[Keithley2450Emulator, str], tmp_path: Path
) -> None:
    device, resource = emulator
    text = (
        "name: plate\ncell: {area: 0.785 cm^2}\nrecord: {every: 10 s}\n"
        "steps:\n  - plate: {current: 1 mA/cm^2, until: {duration: 10 h}}\n"
    )

    async def run() -> tuple[RunState, Store]:
        clock = VirtualClock()
        smu = Keithley2450(resource)
        await smu.open()
        store = Store(tmp_path / "error.db")
        run_id = store.create_run("plate", "k2450", text, {}, {})

        def once(columns: Columns) -> None:
            if not device.faults.struck:
                device.faults.error_next = (-222, "Parameter data out of range")

        channel = SteppedChannel(smu, clock, STEP_S)
        result = await Runner(
            compile_protocol(loads(text)), channel, clock, stored_and_watched(store, run_id, once)
        ).run()
        await smu.close()
        return result.state, store

    state, store = asyncio.run(run())
    assert state is RunState.STOPPED
    faults = [e["message"] for e in store.events(1) if e["kind"] == "fault"]
    assert len(faults) == 1
    assert "instrument error -222: Parameter data out of range" in faults[0]
    (struck, _), *_ = device.faults.struck
    # In virtual time the emulator's clock moves one step per reading: the reading that came
    # with the error was the last one with the output on.
    assert [t - struck for t, on in device.output_log if t >= struck] == [STEP_S]


def test_a_connection_the_instrument_closed_fails_at_once_not_after_a_timeout(
    emulator: tuple[Keithley2450Emulator, str],
) -> None:
    device, resource = emulator

    async def check() -> None:
        smu = Keithley2450(resource, timeout_s=2.0)
        await smu.open()
        await smu.source_current(1e-4, 3.0)
        assert not await smu.in_worker(smu.link_lost)
        device.faults.drop_connection()
        for _ in range(100):  # the FIN crosses the loopback in microseconds
            if await smu.in_worker(smu.link_lost):
                break
            await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(InstrumentDisconnected, match="closed the connection"):
            await smu.measure()
        assert time.monotonic() - started < 1.0
        with pytest.raises(InstrumentDisconnected):  # the output's state is unknown: not "safe"
            await smu.output_off()
        assert device.s.output  # the instrument on its own goes on sourcing
        await smu.close()  # closing reconnects: the reset leaves the output off
        assert not device.s.output

    asyncio.run(check())


def test_separate_recovered_faults_in_one_step_do_not_add_up_to_a_stop(
    emulator: tuple[Keithley2450Emulator, str], tmp_path: Path
) -> None:
    device, resource = emulator
    text = "name: rest\nrecord: {every: 10 s}\nsteps:\n  - rest: 12 h\n"

    async def run() -> tuple[RunState, Store]:
        clock = VirtualClock()
        smu = Keithley2450(resource, timeout_s=0.5)
        await smu.open()
        store = Store(tmp_path / "repeated.db")
        run_id = store.create_run("rest", "k2450", text, {}, {})
        injected = 0

        def after_each_recovery(columns: Columns) -> None:
            nonlocal injected
            if injected < 4 and len(device.faults.struck) == injected:  # the last one struck
                injected += 1
                device.faults.garble_next = 1

        channel = SteppedChannel(smu, clock, STEP_S)
        result = await Runner(
            compile_protocol(loads(text)),
            channel,
            clock,
            stored_and_watched(store, run_id, after_each_recovery),
        ).run()
        await smu.close()
        return result.state, store

    state, store = asyncio.run(run())
    faults = [e for e in store.events(1) if e["kind"] == "fault"]
    assert state is RunState.COMPLETED, [e["message"] for e in faults]
    assert [e["data"]["attempt"] for e in faults] == [1, 1, 1, 1]
    gaps = [e for e in store.events(1) if e["kind"] == "gap"]
    assert len(gaps) == 4
    assert all(e["data"]["hole_s"] > 0 for e in gaps)
    assert store.steps(1)[0]["end_reason"] == "duration"


def test_speed_zero_serves_the_2450_in_virtual_time(tmp_path: Path) -> None:
    """`cyclerd emulate keithley2450 --speed 0`: one second per reading, whatever the wall clock."""
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "cyclerd"),
            "emulate",
            "keithley2450",
            "--speed",
            "0",
            "--port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, line
        with socket.create_connection(("127.0.0.1", int(found.group(1))), timeout=5.0) as link:
            replies = link.makefile("r")
            times = []
            for _ in range(3):
                link.sendall(b':READ? "defbuffer1", REL\n')
                times.append(float(replies.readline()))
                time.sleep(0.05)
        assert np.diff(times) == pytest.approx([1.0, 1.0])
        assert "1 s per reading" in line
    finally:
        process.terminate()
        process.wait(5.0)
