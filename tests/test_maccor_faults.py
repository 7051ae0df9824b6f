"""Faults on an emulated Maccor, each injected while channel 1 plates and channel 2 charges: the
fault surfaces as the InstrumentFault it is, channel 1's cell ends safe (its bank channel's output
off, after the recovery the runner would do), and channel 2 goes on charging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import pytest

from cyclerd.drivers.base import (
    InstrumentDisconnected,
    InstrumentError,
    InstrumentFault,
    InstrumentGarbled,
    InstrumentTimeout,
    StepProgress,
)
from cyclerd.drivers.clock import AcceleratedClock
from cyclerd.drivers.maccor import MaccorCycler
from cyclerd.drivers.stepper import SteppedChannel
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.protocols.program import CurrentCommand, SafetyLimits
from cyclerd.simulators.maccor_emulator import MaccorEmulator, running

SPEED = 3600.0
POLL_S = 30.0
TIMEOUT_S = 0.25  # the driver's reply timeout, wall clock
LATE_S = 0.6  # a slow reply: well past the timeout
BYSTANDER_A = 0.5e-3
PLATE = compile_protocol(
    loads(
        """
name: long plate
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.5 V, voltage_max: 3 V}
record: {every: 30 s}
steps:
  - plate: {current: 1 mA/cm^2, until: {duration: 20 h}}
"""
    )
)


@pytest.fixture
def cycler() -> Iterator[tuple[MaccorEmulator, str]]:
    emulator = MaccorEmulator("mgagsn", 3, seed=2, speed=SPEED)
    with running(emulator) as port:
        yield emulator, f"tcp://127.0.0.1:{port}"


async def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.005)


@asynccontextmanager
async def maccor(resource: str, number: int) -> AsyncIterator[MaccorCycler]:
    cycler = MaccorCycler(resource, number, AcceleratedClock(SPEED), timeout_s=TIMEOUT_S)
    try:
        await cycler.open()
        yield cycler
    finally:
        await cycler.close()


@asynccontextmanager
async def bench(resource: str) -> AsyncIterator[tuple[SteppedChannel, MaccorCycler]]:
    """Channel 1 as cyclerd steps it, and channel 2 charging at BYSTANDER_A."""
    async with maccor(resource, 1) as victim, maccor(resource, 2) as bystander:
        await bystander.source_current(BYSTANDER_A, 3.0)
        yield SteppedChannel(victim, AcceleratedClock(SPEED), POLL_S, rest_between_steps=True), bystander


async def fault_in_a_plate(
    emulator: MaccorEmulator, channel: SteppedChannel, inject: Callable[[], None]
) -> InstrumentFault:
    """Start the long plate on `channel`, inject once its output is on; the fault it ends with."""
    (command,) = PLATE.body
    assert isinstance(command, CurrentCommand)

    async def step() -> None:
        async for _ in channel.run(command, StepProgress(), PLATE.safety):
            pass

    running_step = asyncio.create_task(step())
    await until(lambda: emulator.bank.channel(1).on)
    inject()
    with pytest.raises(InstrumentFault) as raised:
        await asyncio.wait_for(running_step, 5.0)
    return raised.value


async def make_safe(channel: SteppedChannel) -> None:
    """What the runner does after a fault: the cell safe, through a new link if need be."""
    try:
        await channel.safe_state()
    except InstrumentFault:
        await channel.reconnect()
        await channel.safe_state()


async def bystander_still_charges(emulator: MaccorEmulator, bystander: MaccorCycler) -> None:
    assert emulator.bank.channel(2).on
    assert (await bystander.measure()).current_A == pytest.approx(BYSTANDER_A)


async def test_a_late_reply_is_a_timeout_and_the_cell_is_made_safe(
    cycler: tuple[MaccorEmulator, str],
) -> None:
    emulator, resource = cycler
    async with bench(resource) as (channel, bystander):

        def slow() -> None:
            emulator.faults.delay_count, emulator.faults.delay_s = 1, LATE_S

        fault = await fault_in_a_plate(emulator, channel, slow)
        assert isinstance(fault, InstrumentTimeout)
        assert "no reply within 0.25 s" in str(fault)
        await make_safe(channel)
        assert not emulator.bank.channel(1).on
        await bystander_still_charges(emulator, bystander)


async def test_a_late_reply_is_not_taken_for_the_next_one(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, resource = cycler
    async with maccor(resource, 1) as victim:
        await victim.source_current(-1e-3, 3.0)
        emulator.faults.delay_count, emulator.faults.delay_s = 1, 0.4
        with pytest.raises(InstrumentTimeout):
            await victim.measure()
        await until(lambda: bool(emulator.faults.struck))  # the late reply is on its way
        # Each of these would read the reply before it if ids were not matched: a status where a
        # command's result is due is a mismatch, not a reply.
        assert (await victim.measure()).current_A == pytest.approx(-1e-3)
        await victim.output_off()
        assert not emulator.bank.channel(1).on
        assert (await victim.measure()).current_A == 0


async def test_a_garbled_reply_fails_the_step_which_turns_the_output_off(
    cycler: tuple[MaccorEmulator, str],
) -> None:
    emulator, resource = cycler
    async with bench(resource) as (channel, bystander):

        def garble() -> None:
            emulator.faults.garble_next = 1

        fault = await fault_in_a_plate(emulator, channel, garble)
        assert isinstance(fault, InstrumentGarbled)
        assert "unreadable reply" in str(fault)
        assert not emulator.bank.channel(1).on  # the stepper's own output-off went through
        await bystander_still_charges(emulator, bystander)


async def test_a_dropped_link_is_a_disconnect_and_reopening_works(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, resource = cycler
    async with bench(resource) as (channel, bystander):
        fault = await fault_in_a_plate(emulator, channel, emulator.faults.drop_connection)
        assert isinstance(fault, InstrumentDisconnected)
        assert emulator.bank.channel(1).on  # the cycler goes on with the test: no link, no rest
        await make_safe(channel)  # reconnects
        assert not emulator.bank.channel(1).on
        assert emulator.channels[0].stat == 2  # the test still holds the channel, at rest
        assert await bystander.in_worker(bystander.link_lost)  # every client was dropped
        with pytest.raises(InstrumentDisconnected):
            await bystander.measure()
        await bystander.reopen()
        await bystander_still_charges(emulator, bystander)


async def test_a_channel_that_trips_its_own_safety_fails_in_maccors_words(
    cycler: tuple[MaccorEmulator, str],
) -> None:
    emulator, resource = cycler
    async with bench(resource) as (channel, bystander):

        def trip() -> None:
            emulator.bank.channel(1).faults.trip = "over-temperature"

        fault = await fault_in_a_plate(emulator, channel, trip)
        assert isinstance(fault, InstrumentError)
        assert "Suspended (Safety Absolute)" in fault.text
        assert fault.code == 253
        assert not emulator.bank.channel(1).on
        await make_safe(channel)  # nothing to do: the output is off
        await bystander_still_charges(emulator, bystander)
    assert emulator.channels[0].stat == 0  # closing reset the suspended test


async def test_the_cyclers_own_voltage_limit_comes_from_the_steps_window(
    cycler: tuple[MaccorEmulator, str],
) -> None:
    emulator, resource = cycler
    async with maccor(resource, 3) as cycler_3:
        cycler_3.safety = SafetyLimits(voltage_min_V=1.2)  # the fresh cell's OCV is about 1.5 V
        await cycler_3.source_current(-2e-3, 3.0)
        assert emulator.bank.channel(3).limits.voltage_min_V == pytest.approx(1.15)
        # No host asks: the channel checks its limits itself and stops the test.
        await until(lambda: emulator.bank.channel(3).tripped is not None)
        assert not emulator.bank.channel(3).on
        with pytest.raises(InstrumentError, match=r"Suspended \(Safety Voltage\)"):
            await cycler_3.measure()
        # The stop stands until the channel is closed (its test reset): a next step fails the same way.
        with pytest.raises(InstrumentError, match=r"Suspended \(Safety Voltage\)"):
            await cycler_3.source_current(1e-3, 3.0)
        assert not emulator.bank.channel(3).on
    assert emulator.channels[2].stat == 0
    async with maccor(resource, 3) as cycler_3:  # a new run's channel starts afresh
        await cycler_3.source_current(1e-3, 3.0)
        assert emulator.bank.channel(3).on


async def test_an_error_macnet_answers_is_an_instrument_error(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, resource = cycler
    async with maccor(resource, 1) as victim:
        emulator.faults.error_next = (-32000, "MacTest32 is busy")
        with pytest.raises(InstrumentError) as raised:
            await victim.measure()
        assert (raised.value.code, raised.value.text) == (-32000, "MacTest32 is busy")
        assert (await victim.measure()).current_A == 0
