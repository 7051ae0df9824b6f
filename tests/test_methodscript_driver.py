"""The MethodSCRIPT driver against the emulated EmStat4, byte for byte over a real pty and TCP.

The emulator runs in virtual time (it streams as fast as the driver reads) around a cell with
closed-form answers, V = 3 V + q/1000 F + I·10 Ω, so every end condition has an exact time.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Literal, assert_never

import numpy as np
import pytest
from linear_cell import LinearCell

from cyclerd.drivers import methodscript_scripts as ms
from cyclerd.drivers.base import (
    INTERRUPT,
    SAFETY,
    Batch,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentFault,
    InstrumentGarbled,
    InstrumentTimeout,
    StepEnd,
    StepProgress,
)
from cyclerd.drivers.methodscript import BAUDRATE, SWEEP_DONE, MethodScriptChannel, NotSupported
from cyclerd.drivers.methodscript_link import Link, Package
from cyclerd.drivers.methodscript_packages import LineKind, decode_package, device_error, kind_of
from cyclerd.protocols.program import (
    CurrentCommand,
    CurrentVoltageCommand,
    EndConditions,
    ImpedanceSpec,
    RecordRule,
    RestCommand,
    SafetyLimits,
    StepCommand,
    SweepCommand,
    SweepSpec,
    VoltageCommand,
)
from cyclerd.simulators.methodscript_emulator import MethodScriptEmulator

LIMITS = SafetyLimits(voltage_min_V=2.0, voltage_max_V=4.5, current_max_A=0.05)
Bench = tuple[MethodScriptEmulator, LinearCell, str]  # the emulator, its cell, the driver's URL


# -- the wire vocabulary on its own ---------------------------------------------------------


def test_literals_are_integers_with_the_coarsest_si_prefix() -> None:
    assert ms.literal(4.2) == "4200m"
    assert ms.literal(-0.0005) == "-500u"
    assert ms.literal(36000) == "36k"
    assert ms.literal(5.850535) == "5850535u"
    assert ms.literal(0) == "0"
    assert "." not in ms.literal(1 / 3)
    with pytest.raises(ValueError, match="cannot be written"):
        ms.literal(math.nan)


def test_packages_decode_as_in_the_notes() -> None:
    potential, current = decode_package("Pda7F85F3Fu;ba48D503Dp,10,288")
    assert potential.value == pytest.approx(-0.499905)
    assert current.value == pytest.approx(-57.85e-6, rel=1e-4)
    assert (current.status, current.range_index) == (0, 0x88)
    f, z_real, z_imag = decode_package("PdcDF5DFF4u;cc896D904m,10,287;cd82DB1A8u,10,287")
    assert (f.value, z_real.value, z_imag.value) == pytest.approx((99.9997, 9885.956, 2.9946), rel=1e-5)
    error = device_error("l!4001: Line 1, Col 27")
    assert error is not None
    assert (error.code, error.where) == (0x4001, "Line 1, Col 27")
    assert kind_of("Z!0006") is LineKind.ERROR
    assert kind_of("") is LineKind.SCRIPT_END
    assert kind_of("M000A") is LineKind.MEASUREMENT_START


def test_scripts_have_no_empty_line_before_their_end() -> None:
    script = ms.galvanostatic(1e-3, 1.0, 10.5, (2.0, 4.5), 1e-3, (ms.Break("p", ">=", 4.2),))
    body, end = script[:-2], script[-2:]
    assert end == "\n\n"
    assert "\n\n" not in body
    assert "meas_loop_cp p c 1m 1 10500m" in script
    assert "if p >= 4200m\nbreakloop\nendif\n" in script


# -- against the emulator ------------------------------------------------------------------


@pytest.fixture(params=["pty", "socket"])
async def bench(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Bench]:
    cell = LinearCell()
    emulator = MethodScriptEmulator(cell, speed=None)
    await emulator.start()
    url = emulator.pty_path if request.param == "pty" else f"socket://127.0.0.1:{emulator.port}"
    assert url is not None
    try:
        yield emulator, cell, url
    finally:
        await emulator.stop()


def _url(emulator: MethodScriptEmulator, like: str) -> str:
    """The emulator's address over the same transport as `like` (a dropped pty gets a new path)."""
    if like.startswith("socket://"):
        return f"socket://127.0.0.1:{emulator.port}"
    assert emulator.pty_path is not None
    return emulator.pty_path


def _command(
    kind: Literal["rest", "cc", "cv", "cccv"] = "cc",
    record: RecordRule | None = None,
    current_A: float = 0.0,
    voltage_V: float = 0.0,
    **end: float,
) -> StepCommand:
    common = {"index": 1, "label": kind, "source": f"steps[0].{kind}"}
    conditions, rule = EndConditions(**end), record or RecordRule()
    match kind:
        case "rest":
            return RestCommand(**common, end=conditions, record=rule)
        case "cc":
            return CurrentCommand(**common, end=conditions, record=rule, kind="cc", current_A=current_A)
        case "cv":
            return VoltageCommand(**common, end=conditions, record=rule, voltage_V=voltage_V)
        case "cccv":
            return CurrentVoltageCommand(
                **common, end=conditions, record=rule, current_A=current_A, voltage_V=voltage_V
            )
        case _:
            assert_never(kind)


async def _run(
    channel: MethodScriptChannel,
    command: StepCommand,
    start: StepProgress | None = None,
    pause_at_s: float | None = None,
) -> tuple[Batch, StepEnd]:
    """All logged samples of one run() in one batch, and its end."""
    parts: list[Batch] = []
    end: StepEnd | None = None
    async for item in channel.run(command, start or StepProgress(), LIMITS, pause_at_s):
        if isinstance(item, StepEnd):
            end = item
        else:
            assert end is None, "nothing may follow the StepEnd"
            parts.append(item)
    assert end is not None
    joined = Batch(
        *(
            np.concatenate([getattr(p, k) for p in parts])
            for k in ("t_s", "voltage_V", "current_A", "charge_As", "energy_J")
        )
    )
    return joined, end


def _cell_is_off(emulator: MethodScriptEmulator) -> bool:
    return not emulator.frontend.on


async def test_identification(bench: Bench) -> None:
    emulator, _, url = bench
    channel = MethodScriptChannel(url)
    info = await channel.open()
    try:
        assert info.firmware.startswith("es4_hr1100#")
        assert info.family.name == "EmStat4 HR"
        assert info.serial_number == emulator.serial_number
        caps = channel.capabilities
        assert {"cc", "plate", "strip", "cv", "rest", "eis", "sweep"} <= caps.kinds
        assert caps.eis_modes == {"potentiostatic", "galvanostatic"}
    finally:
        await channel.close()


async def test_the_link_streams_a_script_until_cell_off_retires_it(bench: Bench) -> None:
    emulator, _, url = bench
    link = Link(url, BAUDRATE, "the link", timeout_s=2.0)
    info = await link.open()
    try:
        assert info.family.name == "EmStat4 HR"
        # long enough not to end before the first read: virtual time streams into the pty buffer
        token = await link.start(ms.galvanostatic(1e-3, 1.0, 1e5, (2.0, 4.5), 1e-3, ()))
        packages: list[Package] = []
        while not packages:
            more, over = await link.packages(token, 2.0)
            assert not over
            packages += more
        assert len(packages[0]) == 3  # time, potential, current
        assert emulator.frontend.on
        await link.cell_off()
        assert _cell_is_off(emulator)
        with pytest.raises(InstrumentFault, match="ended by safe_state"):
            await link.packages(token, 2.0)
        assert await link.collect(ms.cell_off(), 1.0) == []  # the link goes on after cell_off
    finally:
        await link.close()


async def test_a_charge_end_delivers_the_charge(bench: Bench) -> None:
    _, cell, url = bench
    async with MethodScriptChannel(url, interval_s=10.0) as channel:
        # 12.345 A·s at 10 mA: 1234.5 s, not a whole number of 10 s intervals.
        command = _command(current_A=0.01, charge_As=12.345, record=RecordRule(every_s=60.0))
        samples, end = await _run(channel, command)
    assert end.reason == "charge"
    assert end.progress.charge_As == pytest.approx(12.345, abs=0.01 * 10.0)
    assert cell.charge_As == pytest.approx(12.345, abs=0.01 * 10.0)  # what the device delivered
    assert samples.t_s[-1] == pytest.approx(1234.5, abs=10.0)
    assert samples.charge_As[-1] == end.progress.charge_As  # the last sample is logged
    assert samples.t_s[0] <= 10.0  # and the first
    assert np.all(np.diff(samples.t_s)[:-1] == pytest.approx(60.0, abs=10.0))


async def test_a_voltage_cut_off_ends_a_galvanostatic_step(
    bench: Bench,
) -> None:
    emulator, cell, url = bench
    async with MethodScriptChannel(url, interval_s=2.0) as channel:
        # V = 3 + q/1000 + 0.1 V: 3.12 V once 20 A·s have passed at 10 mA, after 2000 s.
        command = _command(current_A=0.01, voltage_above_V=3.12, duration_s=5000.0)
        samples, end = await _run(channel, command)
        assert _cell_is_off(emulator)
    assert end.reason == "voltage_above"
    assert samples.voltage_V[-1] >= 3.12
    assert samples.t_s[-1] == pytest.approx(2000.0, abs=2.0)
    assert cell.charge_As == pytest.approx(20.0, abs=0.01 * 2.0)  # the device stopped there itself


async def test_a_safety_limit_ends_the_step_on_the_device(bench: Bench) -> None:
    emulator, cell, url = bench
    limits = SafetyLimits(voltage_min_V=2.0, voltage_max_V=3.11)
    async with MethodScriptChannel(url, interval_s=2.0) as channel:
        command = _command(current_A=0.01, duration_s=5000.0)
        items = [item async for item in channel.run(command, StepProgress(), limits)]
        assert _cell_is_off(emulator)
    end = items[-1]
    assert isinstance(end, StepEnd)
    assert end.reason == SAFETY
    assert "above 3.11 V" in end.detail
    assert cell.charge_As == pytest.approx(10.0, abs=0.01 * 2.0)  # 3.11 V at 1000 s


async def test_cccv_holds_after_the_constant_current_phase(bench: Bench) -> None:
    _, _, url = bench
    async with MethodScriptChannel(url, interval_s=20.0) as channel:
        # 10 mA to 3.15 V (q = 50 A·s, 5000 s), then 3.15 V until I = 10 mA·exp(-t/10000 s) < 2 mA.
        command = _command("cccv", current_A=0.01, voltage_V=3.15, current_below_A=2e-3)
        samples, end = await _run(channel, command)
    assert end.reason == "current_below"
    switch = int(np.argmax(np.isclose(samples.voltage_V, 3.15)))
    assert samples.t_s[switch] == pytest.approx(5000.0, abs=20.0)
    assert end.progress.t_s == pytest.approx(5000.0 + 10000 * math.log(5), abs=40.0)
    assert np.all(np.diff(samples.charge_As) >= 0)


async def test_a_voltage_hold_ends_on_current_below(
    bench: Bench,
) -> None:
    _, _, url = bench
    async with MethodScriptChannel(url, interval_s=20.0) as channel:
        # Holding 3.2 V: I = 20 mA · exp(-t / 10000 s), below 5 mA after 10000 ln 4 = 13863 s.
        command = _command("cv", voltage_V=3.2, current_below_A=5e-3, duration_s=40000.0)
        samples, end = await _run(channel, command)
    assert end.reason == "current_below"
    assert abs(samples.current_A[-1]) < 5e-3
    assert samples.t_s[-1] == pytest.approx(10000 * math.log(4), abs=20.0)
    assert np.all(samples.voltage_V == pytest.approx(3.2))


async def test_an_interrupted_step_resumes_with_its_charge(
    bench: Bench,
) -> None:
    _, cell, url = bench
    command = _command(current_A=0.01, charge_As=10.0, record=RecordRule(every_s=50.0))
    spec = ImpedanceSpec(1e3, 1.0, 2, 5e-3, galvanostatic=False, dc_level=None)
    async with MethodScriptChannel(url, interval_s=5.0) as channel:
        first, paused = await _run(channel, command, pause_at_s=300.0)
        assert paused.reason == INTERRUPT
        assert paused.progress.t_s == pytest.approx(300.0, abs=1e-6)
        assert paused.progress.charge_As == pytest.approx(3.0, rel=1e-6)
        charge_at_pause = cell.charge_As
        await channel.impedance(spec)  # the every-block's EIS, at rest
        assert cell.charge_As == pytest.approx(charge_at_pause, abs=1e-9)
        rest, end = await _run(channel, command, start=paused.progress)
    assert end.reason == "charge"
    assert rest.t_s[0] > first.t_s[-1]
    assert end.progress.t_s == pytest.approx(1000.0, abs=5.0)
    assert end.progress.charge_As == pytest.approx(10.0, abs=0.01 * 5.0)
    assert cell.charge_As == pytest.approx(10.0, abs=0.01 * 5.0)


async def test_a_spectrum_matches_the_cells_impedance(
    bench: Bench,
) -> None:
    _, cell, url = bench
    spec = ImpedanceSpec(100e3, 0.1, 5, 10e-3, galvanostatic=False, dc_level=None)
    async with MethodScriptChannel(url) as channel:
        spectrum = await channel.impedance(spec)
        galvanostatic = await channel.impedance(
            ImpedanceSpec(10e3, 1.0, 3, 1e-3, galvanostatic=True, dc_level=None, dc_is_current=True)
        )
    expected_f = np.array(spec.frequencies_Hz())
    assert spectrum.frequency_Hz == pytest.approx(expected_f, rel=1e-5)  # 1 mHz on the wire
    np.testing.assert_allclose(spectrum.impedance_ohm, cell.impedance(expected_f), rtol=1e-3)
    assert len(galvanostatic.frequency_Hz) == 13
    np.testing.assert_allclose(
        galvanostatic.impedance_ohm, cell.impedance(galvanostatic.frequency_Hz), rtol=1e-3
    )
    # Held at the OCV it measured first: that potential, at zero current, through the spectrum.
    rest_V = float(cell.voltage_at_current(0.0, np.zeros(1))[0])
    assert spectrum.dc_potential_V == pytest.approx(rest_V, abs=2e-3)
    assert spectrum.potential is not None
    assert spectrum.potential.t_s[-1] == pytest.approx(spec.duration_s())
    assert np.all(spectrum.potential.voltage_V == spectrum.dc_potential_V)
    assert np.all(spectrum.potential.current_A == 0.0)
    assert galvanostatic.potential is None  # under a DC current the potential is not reported


async def test_a_sweep_streams_to_its_end(bench: Bench) -> None:
    _, _, url = bench
    command = SweepCommand(
        index=1, label="cv", source="steps[0].sweep", end=EndConditions(), record=RecordRule(every_s=5.0),
        spec=SweepSpec(3.0, (3.1, 2.9, 3.0), 1e-3, 2),
    )  # fmt: skip
    async with MethodScriptChannel(url, sweep_step_V=5e-3) as channel:
        samples, end = await _run(channel, command)
    assert end.reason == SWEEP_DONE
    assert samples.voltage_V.max() == pytest.approx(3.1)
    assert samples.voltage_V.min() == pytest.approx(2.9)
    assert end.progress.t_s == pytest.approx(800.0, abs=5.0)  # one step (5 s) at the start


async def test_a_device_error_is_raised_with_its_code_and_the_cell_left_off(
    bench: Bench,
) -> None:
    emulator, _, url = bench
    async with MethodScriptChannel(url) as channel:
        emulator.inject_error(0x0032, after_packages=5)
        with pytest.raises(InstrumentError, match="overload") as raised:
            await _run(channel, _command(current_A=0.01, duration_s=100.0))
        assert raised.value.code == 0x0032
        assert _cell_is_off(emulator)
        await channel.safe_state()  # again, on an off cell: no error
        assert _cell_is_off(emulator)


async def test_a_refused_script_is_raised_with_its_code(
    bench: Bench,
) -> None:
    _, _, url = bench
    async with MethodScriptChannel(url) as channel:
        # 1 A is beyond the EmStat4's top current range: the device refuses the level.
        with pytest.raises(InstrumentError) as raised:
            await _run(channel, _command(current_A=1.0, duration_s=10.0))
        assert raised.value.code == 0x0007
        _, end = await _run(channel, _command(current_A=0.001, duration_s=10.0))  # still usable
        assert end.reason == "duration"


async def test_no_reply_is_a_timeout_and_safe_state_recovers(
    bench: Bench,
) -> None:
    emulator, _, url = bench
    async with MethodScriptChannel(url, timeout_s=0.3) as channel:
        emulator.set_delay(math.inf)
        with pytest.raises(InstrumentTimeout):
            await _run(channel, _command(current_A=0.01, duration_s=100.0))
        emulator.set_delay(0.0)
        await channel.safe_state()
        assert _cell_is_off(emulator)


async def test_a_dropped_link_is_a_disconnect_and_reconnecting_makes_the_cell_safe(
    bench: Bench,
) -> None:
    emulator, _, url = bench
    channel = MethodScriptChannel(url)
    await channel.open()

    async def pull_the_cable() -> None:
        async for item in channel.run(_command(current_A=0.01, duration_s=1e5), StepProgress(), LIMITS):
            if isinstance(item, Batch):
                emulator.drop_connection()

    try:
        with pytest.raises(InstrumentDisconnected):
            await pull_the_cable()
        assert emulator.frontend.on  # the device still drives the cell: nobody could tell it otherwise
        if url.startswith("socket://"):  # the same address again: the channel gets the cell back
            await channel.reconnect()
            assert _cell_is_off(emulator)
            _, end = await _run(channel, _command(current_A=0.001, duration_s=10.0))
            assert end.reason == "duration"
        else:  # a pty comes back under a new name: the old one leads nowhere, and says so
            with pytest.raises(InstrumentDisconnected):
                await channel.reconnect()
            with pytest.raises(InstrumentDisconnected, match="state is unknown"):
                await channel.safe_state()
    finally:
        await channel.close()
    async with MethodScriptChannel(_url(emulator, url)) as again:
        await again.safe_state()
        assert _cell_is_off(emulator)


async def test_a_rebooted_device_is_taken_up_again(bench: Bench) -> None:
    emulator, _, url = bench
    if not url.startswith("socket://"):
        pytest.skip("a pty comes back under a new name")

    async def reboot_mid_step(channel: MethodScriptChannel) -> None:
        async for item in channel.run(_command(current_A=0.01, duration_s=1e5), StepProgress(), LIMITS):
            if isinstance(item, Batch):
                emulator.power_cycle()

    async with MethodScriptChannel(url) as channel:
        with pytest.raises(InstrumentDisconnected):
            await reboot_mid_step(channel)
        assert _cell_is_off(emulator)  # the reboot switched it off
        await channel.reconnect()
        _, end = await _run(channel, _command(current_A=0.001, duration_s=10.0))
        assert end.reason == "duration"


async def test_a_garbled_package_is_a_fault_not_a_silent_hole(bench: Bench) -> None:
    emulator, _, url = bench
    async with MethodScriptChannel(url) as channel:
        emulator.garble_packages(1)
        with pytest.raises(InstrumentGarbled, match="unreadable package"):
            await _run(channel, _command(current_A=0.01, duration_s=100.0))
        assert _cell_is_off(emulator)
        _, end = await _run(channel, _command(current_A=0.001, duration_s=10.0))  # still usable
        assert end.reason == "duration"


async def test_lost_packages_are_a_fault_not_a_silent_hole(bench: Bench) -> None:
    emulator, _, url = bench
    async with MethodScriptChannel(url, interval_s=1.0) as channel:
        emulator.lose_packages(7.5)  # the step's first seven 1 s samples
        with pytest.raises(InstrumentGarbled, match=r"lost packages: no sample for 8 s"):
            await _run(channel, _command(current_A=0.01, duration_s=100.0))
        assert _cell_is_off(emulator)


async def test_closing_or_cancelling_a_step_leaves_the_cell_off(bench: Bench) -> None:
    emulator, _, url = bench
    endless = _command(current_A=0.01, duration_s=1e5)
    async with MethodScriptChannel(url) as channel:
        stream = channel.run(endless, StepProgress(), LIMITS)
        async for item in stream:
            assert isinstance(item, Batch)
            assert emulator.frontend.on
            break
        await stream.aclose()  # what the runner does when a run is paused
        assert _cell_is_off(emulator)

        task = asyncio.create_task(_run(channel, endless))
        while not emulator.frontend.on:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _cell_is_off(emulator)

        samples, end = await _run(channel, _command("rest", current_A=0.0, duration_s=30.0))
        assert end.reason == "duration"
        assert np.all(samples.current_A == 0.0)


async def test_a_pico_cannot_run_constant_current() -> None:
    emulator = MethodScriptEmulator(LinearCell(), speed=None, variant="espico", tcp=False)
    await emulator.start()
    try:
        assert emulator.pty_path is not None
        async with MethodScriptChannel(emulator.pty_path) as channel:
            assert "cc" not in channel.capabilities.kinds
            assert channel.capabilities.eis_modes == {"potentiostatic"}
            with pytest.raises(NotSupported, match="cannot run cc"):
                await _run(channel, _command(current_A=0.01, duration_s=10.0))
    finally:
        await emulator.stop()


async def test_a_device_that_is_not_an_emstat4_is_refused() -> None:
    emulator = MethodScriptEmulator(LinearCell(), speed=None, variant="espbl", tcp=False)
    await emulator.start()
    try:
        assert emulator.pty_path is not None
        with pytest.raises(NotSupported, match="bootloader"):
            await MethodScriptChannel(emulator.pty_path).open()
    finally:
        await emulator.stop()
