"""Faults on an emulated Neware cycler: a late reply, broken XML, a dropped link and a channel that
trips its own protection each leave the faulty channel stopped and the others running; a test
stopped on the BTS is the cycler's error; a garbled reply mid-step is recovered by the runner.

Helpers (the driver's channel, steps, a raw request) are test_neware's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from test_neware import LIMITS, SEED, SMALL, SPEED, ask, channel, opened, plate, rest, run
from watch import stored_and_watched

from cyclerd.drivers import neware_wire as wire
from cyclerd.drivers.base import (
    SAFETY,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentFault,
    InstrumentGarbled,
    InstrumentTimeout,
    StepEnd,
    StepProgress,
)
from cyclerd.drivers.clock import AcceleratedClock
from cyclerd.drivers.neware import open_cycler_channel
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import Columns
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.protocols.program import EndConditions
from cyclerd.simulators.neware_emulator import NewareEmulator
from cyclerd.store.database import Store


@pytest.fixture
async def emulator() -> AsyncIterator[NewareEmulator]:
    device = NewareEmulator("mgagsn", channels=4, seed=SEED, speed=SPEED)
    await device.start()
    yield device
    await device.stop()


def late(device: NewareEmulator) -> None:
    device.faults.delay_count, device.faults.delay_s = 1, 1.0  # the next reply only


FAULTS: dict[str, tuple[Callable[[NewareEmulator], object], type[Exception] | None, str]] = {
    "late reply": (late, InstrumentTimeout, wire.STOP),
    "broken XML": (lambda e: setattr(e.faults, "garble_next", 1), InstrumentGarbled, wire.STOP),
    "dropped link": (lambda e: e.faults.drop_connection(), InstrumentDisconnected, wire.STOP),
    "channel trip": (lambda e: setattr(e.bank.channel(1).faults, "trip", "overheated"), None, wire.PROTECT),
}


@pytest.mark.parametrize("name", FAULTS)
async def test_a_fault_leaves_its_channel_stopped_and_the_others_running(
    emulator: NewareEmulator, name: str
) -> None:
    inject, raised, status = FAULTS[name]
    bystander = channel(emulator, 2)
    await bystander.open()
    others = bystander.run(rest(36000.0), StepProgress(), LIMITS)
    await anext(others)  # channel 2 runs a long rest, its host idle
    faulty = channel(emulator, 1, timeout_s=0.3)
    await faulty.open()
    steps = faulty.run(plate(EndConditions(duration_s=36000.0)), StepProgress(), LIMITS)
    try:
        await anext(steps)
        inject(emulator)
        if raised is None:
            items = [item async for item in steps]
            end = items[-1]
            assert isinstance(end, StepEnd)
            assert (end.reason, end.detail) == (
                SAFETY,
                "the cycler stopped the step: protect, channel protection",
            )
        else:
            with pytest.raises(raised):
                async for _ in steps:
                    pass
            try:  # what the engine does: make the channel safe, through a new link if need be
                await faulty.safe_state()
            except InstrumentFault:
                await faulty.reconnect()
        assert emulator.slots[0].status == status
        assert emulator.slots[1].status == wire.WORKING
        _, after_end = await run(faulty, rest(120.0))  # the channel works again
        assert after_end.reason == "duration"
    finally:
        await steps.aclose()
        await faulty.close()
        await others.aclose()
        await bystander.close()


async def test_a_test_stopped_on_the_bts_is_an_instrument_error(emulator: NewareEmulator) -> None:
    async with opened(emulator, 1) as ch:
        steps = ch.run(plate(EndConditions(duration_s=36000.0)), StepProgress(), LIMITS)
        try:
            await anext(steps)
            assert (await ask(emulator, wire.request("stop", emulator.slots[0].address)))[0][1] == "ok"
            with pytest.raises(InstrumentError, match="stopped on the BTS, not by cyclerd"):
                async for _ in steps:
                    pass
        finally:
            await steps.aclose()


async def test_a_garbled_reply_mid_step_is_recovered_by_the_runner(
    emulator: NewareEmulator, tmp_path: Path
) -> None:
    text = SMALL.replace("rest: 10 min", "rest: 5 min")
    clock = AcceleratedClock(SPEED)
    store = Store(tmp_path / "neware.db")
    run_id = store.create_run("small E1", "neware", text, {}, {})
    injected: list[int] = []

    def once(columns: Columns) -> None:
        if int(columns["step"][-1]) == 2 and not injected:
            injected.append(1)
            emulator.faults.garble_next = 1

    async with open_cycler_channel(f"tcp://127.0.0.1:{emulator.port}", 4, clock, 1.0) as ch:
        runner = Runner(compile_protocol(loads(text)), ch, clock, stored_and_watched(store, run_id, once))
        result = await asyncio.wait_for(runner.run(), 20.0)
    assert result.state is RunState.COMPLETED
    ends = [(s["number"], s["end_reason"]) for s in store.steps(run_id)]
    assert ends == [(1, "duration"), (2, "duration"), (3, "voltage_above")]
    events = store.events(run_id)
    faults = [e["message"] for e in events if e["kind"] == "fault"]
    assert len(faults) == 1
    assert "unreadable reply" in faults[0]
    assert any(e["kind"] == "gap" for e in events)
