"""Faults of an Arbin cycler under a running protocol: a late reply, a garbled one, a dropped link,
a channel that trips its own safety. Each ends with the cell safe and the cycler's other
channels running on; the transient ones are retried and the run completes.

Emulator and run share accelerated time; the emulator logs, in its own time, when each channel's
output switched, so the host's reaction is read from there.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from cyclerd.drivers.arbin import Arbin
from cyclerd.drivers.base import InstrumentDisconnected
from cyclerd.drivers.clock import AcceleratedClock
from cyclerd.drivers.stepper import SteppedChannel
from cyclerd.engine.cursor import Cursor
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import RunEvent, Sink, StepEnded
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.arbin_emulator import ArbinEmulator
from cyclerd.simulators.scpi_server import running

SPEED = 3600.0
POLL_S = 10.0
TIMEOUT_S = 0.2  # the driver's reply timeout, wall clock
LATE_S = 0.5  # a late reply: well past the timeout
INJECT_AFTER_S = 300.0  # step time at which the fault strikes
TRIP = "Aux temperature 61.2 C above the 60 C limit"

PLATE = """
name: plate for half an hour
safety: {voltage_min: -0.5 V, voltage_max: 3 V, current_max: 5 mA}
record: {every: 10 s}
steps:
  - plate: {current: 1 mA, until: {duration: 30 min}}
"""


class Record(Sink):
    def __init__(self) -> None:
        self.ended: list[StepEnded] = []
        self.events: list[RunEvent] = []

    def step_ended(self, step: StepEnded, cursor: Cursor | None) -> None:
        self.ended.append(step)

    def event(self, event: RunEvent) -> None:
        self.events.append(event)


async def strike(emulator: ArbinEmulator, case: Case) -> float:
    """Inject the fault once channel 1's step has run INJECT_AFTER_S; when, in cycler time."""
    channel = emulator.bank.channel(1)
    while not (channel.on and channel.step_time_s > INJECT_AFTER_S):
        await asyncio.sleep(0.002)
    case.inject(emulator)
    return emulator.bank.clock.now()


@dataclass(frozen=True)
class Case:
    name: str
    inject: Callable[[ArbinEmulator], None]
    event: str  # the fault event's message matches this
    state: RunState


def _late(emulator: ArbinEmulator) -> None:
    emulator.faults.delay_count = 1
    emulator.faults.delay_s = LATE_S


def _garble(emulator: ArbinEmulator) -> None:
    emulator.faults.garble_next = 1


def _drop(emulator: ArbinEmulator) -> None:
    emulator.faults.drop_connection()


def _trip(emulator: ArbinEmulator) -> None:
    emulator.bank.channel(1).faults.trip = TRIP


CASES = [
    Case("late reply", _late, rf"no reply within {TIMEOUT_S:g} s", RunState.COMPLETED),
    Case("garbled reply", _garble, r"unreadable reply: no CTI header", RunState.COMPLETED),
    Case("dropped link", _drop, r"closed the connection|link failed", RunState.COMPLETED),
    Case("channel trip", _trip, rf"the test ended, status Unsafe: {re.escape(TRIP)}", RunState.STOPPED),
]


@pytest.fixture
def cycler() -> Iterator[tuple[ArbinEmulator, int]]:
    emulator = ArbinEmulator("mgagsn", 3, seed=2, speed=SPEED)
    with running(emulator) as port:
        yield emulator, port


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_a_fault_leaves_the_cell_safe_and_the_other_channels_running(
    cycler: tuple[ArbinEmulator, int], case: Case
) -> None:
    emulator, port = cycler
    other = Arbin("127.0.0.1", port, 2, timeout_s=TIMEOUT_S)
    await other.open()
    await other.source_current(-2e-3, 3.0)  # channel 2 plates on its own all along

    clock = AcceleratedClock(SPEED)
    arbin = Arbin("127.0.0.1", port, 1, timeout_s=TIMEOUT_S)
    await arbin.open()
    record = Record()
    # A run hands over its samples once a (wall) second: the fault is timed by the cell instead.
    striking = asyncio.create_task(strike(emulator, case))
    try:
        result = await Runner(
            compile_protocol(loads(PLATE)),
            SteppedChannel(arbin, clock, POLL_S, rest_between_steps=True),
            clock,
            record,
        ).run()
    finally:
        striking.cancel()
        await arbin.close()
    injected = striking.result() if striking.done() and not striking.cancelled() else None
    assert injected is not None, "the step ended before the fault struck"

    assert result.state is case.state, [event.message for event in record.events]
    faults = [event.message for event in record.events if event.kind == "fault"]
    assert any(re.search(case.event, message) for message in faults), faults
    # The cell was made safe after the fault struck, and is safe now.
    assert any(t >= injected and not on for t, number, on in emulator.switches if number == 1)
    assert not emulator.bank.channel(1).on
    if case.state is RunState.COMPLETED:
        assert [(step.number, step.reason) for step in record.ended] == [(1, "duration")]
        assert not emulator.channels[0].test.running  # stopped on the way out
    else:
        assert emulator.channels[0].test.exit_condition == TRIP
    # The other channel never noticed.
    assert emulator.bank.channel(2).on
    assert emulator.channels[1].test.running
    assert emulator.bank.channel(2).drive.level == pytest.approx(-2e-3)
    assert [on for _, number, on in emulator.switches if number == 2] == [True]
    await other.close()
    assert not emulator.bank.channel(2).on


async def test_a_dropped_link_is_reopened_and_the_channel_put_to_rest(
    cycler: tuple[ArbinEmulator, int],
) -> None:
    emulator, port = cycler
    arbin = Arbin("127.0.0.1", port, 3, timeout_s=TIMEOUT_S)
    await arbin.open()
    await arbin.source_current(-1e-3, 3.0)
    emulator.faults.drop_connection()
    for _ in range(200):  # the emulator closes the link from its own thread
        if await arbin.in_worker(arbin.link_lost):
            break
        await asyncio.sleep(0.005)
    with pytest.raises(InstrumentDisconnected, match="closed the connection"):
        await arbin.measure()
    assert emulator.bank.channel(3).on  # an Arbin goes on driving the cell without its host
    await arbin.reopen()
    assert not emulator.bank.channel(3).on
    assert (await arbin.measure()).current_A == 0.0
    assert emulator.channels[2].test.running  # the same test, at rest
    await arbin.source_current(-1e-3, 3.0)  # and it goes on
    assert emulator.bank.channel(3).on
    await arbin.close()
    assert not emulator.bank.channel(3).on
    assert not emulator.channels[2].test.running


async def test_a_status_of_another_channel_is_never_read_as_this_ones() -> None:
    """A CTI server that answers channel 1's question with channel 4's status: the reading is
    refused as garbled, not taken for channel 1's."""
    import socket
    import threading

    from cyclerd.drivers import arbin_messages as cti
    from cyclerd.drivers.base import InstrumentGarbled

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)  # the login
            conn.sendall(cti.encode(cti.LoginFeedback(cti.LOGIN_OK, serial="SN1", nickname="x", channels=8)))
            conn.recv(65536)  # channel index 0's status, asked
            conn.sendall(cti.encode(cti.ChannelStatus(channels=1, channel=3, status=0, voltage_V=3.9)))
            conn.recv(65536)

    threading.Thread(target=serve, daemon=True).start()
    arbin = Arbin("127.0.0.1", port, 1, timeout_s=TIMEOUT_S)
    try:
        with pytest.raises(InstrumentGarbled, match="asked for channel index 0, got 3"):
            await arbin.open()  # a failed open releases the link itself
    finally:
        listener.close()
