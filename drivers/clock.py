"""Clocks, injected everywhere time passes: real, virtual (as fast as the CPU allows), accelerated.

Simulated channels move a virtual clock forward by the time a step took; a 470 h experiment
then runs in seconds, and nothing in the test suite waits on the wall clock.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Protocol

TURNS = 4  # simulated channels computing per turn of the event loop (see VirtualClock.sleep)
_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on this clock (only differences matter)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Let `seconds` of this clock's time pass."""
        ...

    def sleep_blocking(self, seconds: float, halt: threading.Event | None = None) -> None:
        """The same, from an instrument's worker thread (never from the event loop); a wall-clock
        wait ends early when `halt` is set, so that a stop is not held up by a poll interval."""
        ...

    def elapse(self, seconds: float) -> None:
        """An instrument that times itself reports `seconds` passed: a virtual clock follows it;
        a real one has already seen them pass."""
        ...

    def wall_s(self, seconds: float) -> float:
        """How long `seconds` of this clock take on the wall clock: how long to wait for an
        instrument that keeps this time (0 on a virtual clock, whose instruments wait for us)."""
        ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def sleep_blocking(self, seconds: float, halt: threading.Event | None = None) -> None:
        _wait(max(0.0, seconds), halt)

    def elapse(self, seconds: float) -> None:
        pass

    def wall_s(self, seconds: float) -> float:
        return seconds


class VirtualClock:
    """Time moves only when someone sleeps; sleeping yields to the event loop but never waits."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Move on and yield; channels in virtual time take turns, TURNS at a time.

        A simulated channel computes between sleeps without waiting for anything, so without
        turns every channel would compute in every pass of the event loop: with 64 of them a
        pass takes a fifth of a second, and the sockets (the bus, its encoder, commands) are
        served five times a second. Taking turns keeps a pass to a few channels' work.
        """
        self._now += max(0.0, seconds)
        loop = asyncio.get_running_loop()
        turns = _turns.get(loop)
        if turns is None:
            turns = _turns[loop] = asyncio.Semaphore(TURNS)
        async with turns:
            await asyncio.sleep(0)

    def sleep_blocking(self, seconds: float, halt: threading.Event | None = None) -> None:
        # Only one party moves a virtual clock at a time: the worker, while the loop awaits it.
        self._now += max(0.0, seconds)

    def elapse(self, seconds: float) -> None:
        self._now += max(0.0, seconds)

    def wall_s(self, seconds: float) -> float:
        return 0.0


class PacedClock(VirtualClock):
    """Virtual time kept to `speed` simulated seconds per wall-clock second: a simulated lab
    that people can watch (the dashboard's demo). Time still moves only when someone sleeps, by
    exactly what they slept; a sleep only waits for the wall clock to catch up, and a simulation
    that falls behind runs as fast as it can until it has caught up."""

    def __init__(self, speed: float, start: float = 0.0) -> None:
        if speed <= 0:
            raise ValueError("the pace must be positive")
        super().__init__(start)
        self.speed = speed
        self._start = start
        self._wall_origin = time.monotonic()

    async def sleep(self, seconds: float) -> None:
        self._now += max(0.0, seconds)
        due = self._wall_origin + (self._now - self._start) / self.speed
        await asyncio.sleep(max(0.0, due - time.monotonic()))


class AcceleratedClock:
    """Real time sped up by `factor`: for demos against emulators, where sockets need real time."""

    def __init__(self, factor: float) -> None:
        if factor <= 0:
            raise ValueError("the acceleration factor must be positive")
        self.factor = factor
        self._origin = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._origin) * self.factor

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)

    def sleep_blocking(self, seconds: float, halt: threading.Event | None = None) -> None:
        _wait(max(0.0, seconds) / self.factor, halt)

    def elapse(self, seconds: float) -> None:
        pass

    def wall_s(self, seconds: float) -> float:
        return seconds / self.factor


SHORT_WAIT_S = 0.05  # a halt is acted on within this anyway: shorter waits sleep through it


def _wait(seconds: float, halt: threading.Event | None) -> None:
    # Event.wait with a timeout costs twice the CPU of a plain sleep (54 against 24 µs for a 3 ms
    # wait, here): at thousands of polls a second, many channels on an accelerated clock, that is
    # most of what the stepper costs.
    if halt is None or seconds < SHORT_WAIT_S:
        time.sleep(seconds)
    else:
        halt.wait(seconds)
