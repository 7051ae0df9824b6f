"""Virtual time: channels take turns, so the event loop keeps serving sockets between them."""

from __future__ import annotations

import asyncio
from itertools import pairwise

from cyclerd.drivers.clock import TURNS, VirtualClock


async def test_simulated_channels_take_turns_with_everything_else_on_the_loop() -> None:
    """32 channels computing flat out in virtual time; another task (think: the bus reading its
    acknowledgements) runs after at most TURNS channel slices, not after all 32."""
    slices: list[int] = []
    seen: list[int] = []
    done = asyncio.Event()

    async def channel() -> None:
        clock = VirtualClock()
        for _ in range(20):
            slices.append(1)  # one slice of work, then the clock moves on
            await clock.sleep(1.0)

    async def bystander() -> None:
        while not done.is_set():
            seen.append(len(slices))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(bystander())
    await asyncio.gather(*(channel() for _ in range(32)))
    done.set()
    await watcher
    assert len(slices) == 32 * 20
    after_start = [n for n in seen if n >= 32]  # each channel's first slice runs as it starts
    gaps = [b - a for a, b in pairwise(after_start)]
    assert max(gaps) <= TURNS  # without turns, every channel runs between two visits: 32
    assert seen[-1] == len(slices)  # and the bystander saw them all finish


async def test_a_lone_channel_in_virtual_time_still_runs_to_the_end_at_once() -> None:
    clock = VirtualClock()
    for _ in range(1000):
        await clock.sleep(3600.0)
    assert clock.now() == 3600.0 * 1000
