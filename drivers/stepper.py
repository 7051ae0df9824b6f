"""The software stepper: runs steps on instruments that only source and measure (SMUs).

The instrument is told what to source; the stepper polls it, timestamps readings with the
instrument's own clock, checks end conditions and safety limits on every reading (the same
`EndWatch` every channel uses), logs by the record rule and hands the runner batches.
A constant-current charge to a voltage (cccv) uses the SMU's own compliance: sourcing the
current with the voltage limit at the CV level makes the SMU clamp there and taper — CC-CV.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncGenerator, Callable
from typing import assert_never

import numpy as np

from cyclerd.drivers.base import (
    INTERRUPT,
    SAFETY,
    Batch,
    Capabilities,
    InstrumentFault,
    KeepsSafety,
    LinkWatched,
    Reopenable,
    SourceMeasure,
    Spectrum,
    StepEnd,
    StepProgress,
)
from cyclerd.drivers.clock import Clock
from cyclerd.drivers.conditions import Counter, EndWatch
from cyclerd.drivers.record import RecordState, select_one
from cyclerd.protocols.program import (
    CurrentCommand,
    CurrentVoltageCommand,
    ImpedanceCommand,
    ImpedanceSpec,
    RestCommand,
    SafetyLimits,
    StepCommand,
    SweepCommand,
    VoltageCommand,
)

COMPLIANCE_MARGIN_V = 0.5  # the voltage limit sits this far beyond anything the step may reach
CUTOFF_CLAMP_MARGIN_V = 0.01  # a clamp at a step's own cut-off sits this far past it
DEFAULT_VOLTAGE_LIMIT_V = 5.0
DEFAULT_CURRENT_LIMIT_A = 0.1
FLUSH_AFTER_S = 1.0  # hand logged samples to the runner at least this often (wall clock)
FLUSH_AFTER_SAMPLES = 256
WATCH_SLICES = 10  # a poll interval's wait is cut in this many, to notice a closed link in it
WATCH_SLICE_MIN_S = 0.1  # ... but none shorter than this on the wall clock: a check costs a syscall


class SteppedChannel:
    """A Channel made of a SourceMeasure instrument and the software stepper."""

    def __init__(
        self,
        instrument: SourceMeasure,
        clock: Clock,
        poll_interval_s: float = 1.0,
        rest_between_steps: bool = False,
    ) -> None:
        """`rest_between_steps`: the output goes to rest (off) as soon as a step's end is read, in
        the worker, so the cell is not driven, uncounted, at the old level while the runner
        stores the step and starts the next. A cycler channel rests for free; an SMU would open
        its output relay at every step, so there it is left off."""
        self.instrument = instrument
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.rest_between_steps = rest_between_steps
        # Asked once: isinstance() against a runtime-checkable Protocol walks its members, and
        # per reading that cost as much as the reading's own query.
        self._watched = instrument if isinstance(instrument, LinkWatched) else None
        self._keeps = instrument if isinstance(instrument, KeepsSafety) else None

    @property
    def name(self) -> str:
        return self.instrument.name

    @property
    def capabilities(self) -> Capabilities:
        return self.instrument.capabilities

    async def safe_state(self) -> None:
        await self.instrument.output_off()

    async def reconnect(self) -> None:
        """After a dropped link: reopen the instrument if its driver can."""
        if isinstance(self.instrument, Reopenable):
            await self.instrument.reopen()

    async def impedance(self, spec: ImpedanceSpec) -> Spectrum:
        raise NotImplementedError(f"{self.instrument.name} cannot measure impedance spectra")

    async def run(
        self,
        command: StepCommand,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None = None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        if isinstance(command, SweepCommand | ImpedanceCommand):
            raise NotImplementedError(f"{self.instrument.name} cannot run {command.kind} steps")
        if self._keeps is not None:
            self._keeps.keep_safety(limits)
        try:
            await self._source(command, limits)
            async for item in self._poll(command, start, limits, pause_at_s, self.clock.now()):
                yield item
        except BaseException:
            # Never leave a cell driven by a failed step. If the link itself failed this cannot
            # succeed; the original fault says why and the runner records it.
            with contextlib.suppress(InstrumentFault):
                await self.instrument.output_off()
            raise

    async def _source(self, command: StepCommand, limits: SafetyLimits) -> None:
        match command:
            case RestCommand():
                await self.instrument.source_current(0.0, _voltage_limit(command, limits))
            case CurrentCommand():
                await self.instrument.source_current(command.current_A, _clamp_for(command, limits))
            case VoltageCommand():
                ceiling = command.current_limit_A or limits.current_max_A or DEFAULT_CURRENT_LIMIT_A
                await self.instrument.source_voltage(command.voltage_V, ceiling)
            case CurrentVoltageCommand():
                await self.instrument.source_current(command.current_A, abs(command.voltage_V))
            case SweepCommand() | ImpedanceCommand():
                raise NotImplementedError(f"{self.instrument.name} cannot run {command.kind} steps")
            case _:
                assert_never(command)

    async def _poll(
        self,
        command: StepCommand,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None,
        sourced_at: float,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Poll in the instrument's worker thread; batches come back at most every second.

        One thread hop per reading would cost more CPU than the query itself, so the loop runs
        where the I/O runs and checks every reading there; a safety stop turns the output off
        from that thread at once, before the runner even hears of it.
        """
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Batch | StepEnd | BaseException] = asyncio.Queue()
        halt = threading.Event()

        def post(item: Batch | StepEnd | BaseException) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        def work() -> None:
            try:
                self._poll_in_worker(command, start, limits, pause_at_s, sourced_at, post, halt)
            except BaseException as exc:  # noqa: BLE001 - not swallowed: re-raised in the event loop
                post(exc)

        worker = asyncio.ensure_future(self.instrument.in_worker(work))
        try:
            while True:
                item = await items.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, StepEnd):
                    return
        finally:
            halt.set()  # paused, stopped or failed: the worker stops at its next reading
            await asyncio.shield(worker)

    def _poll_in_worker(
        self,
        command: StepCommand,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None,
        sourced_at: float,
        post: Callable[[Batch | StepEnd | BaseException], None],
        halt: threading.Event,
    ) -> None:
        """`sourced_at`: when (on `self.clock`) the output took the step's level. The cell is
        driven from then, not from the first reading: the stretch between counts, with the first
        reading's values, and the step's time starts there. It is milliseconds of host latency,
        which an accelerated clock makes seconds of cell time."""
        watch = EndWatch(command, limits)
        counter = Counter(start)
        record = RecordState()
        logged: list[tuple[float, float, float, float, float]] = []
        origin: float | None = None
        fresh = start.t_s == 0.0  # a step's first sample is always logged
        flushed = time.monotonic()
        while not halt.is_set():
            asked_at = self.clock.now() if origin is None else 0.0
            reading = self.instrument.read()
            if origin is None:  # instrument time at step time 0
                origin = reading.t_s - start.t_s - max(0.0, asked_at - sourced_at)
            # One reading at a time, so scalar arithmetic: numpy would cost more than the query.
            t, v, i = reading.t_s - origin, reading.voltage_V, reading.current_A
            q, e = counter.add_one(t, v, i)
            _, reason, detail = watch.check_one(t, v, i, q)
            if not reason and pause_at_s is not None and t >= pause_at_s - 1e-9:
                reason = INTERRUPT
            if select_one(command.record, t, v, i, record) or reason or fresh:
                fresh = False
                logged.append((t, v, i, q, e))
            due = time.monotonic() - flushed >= FLUSH_AFTER_S or len(logged) >= FLUSH_AFTER_SAMPLES
            if logged and (due or reason):
                post(_batch(logged))
                logged = []
                flushed = time.monotonic()
            if reason:
                if reason == SAFETY:
                    with contextlib.suppress(InstrumentFault):
                        self.instrument.output_off_now()
                elif self.rest_between_steps:
                    self.instrument.output_off_now()
                post(StepEnd(reason, StepProgress(t, counter.charge_As, counter.energy_J), detail))
                return
            self._idle(halt)
        # Halted (pause or stop): readings since the last batch are dropped. The runner resumes
        # from the last *stored* sample, so stored data and the step's charge stay consistent.

    def _idle(self, halt: threading.Event) -> None:
        """Wait a poll interval. An instrument that knows its link was closed (it rebooted, its
        end of the cable went) ends the wait early: the next reading fails at once, and the
        runner reconnects, while the instrument may still be driving the cell."""
        if self._watched is None:
            self.clock.sleep_blocking(self.poll_interval_s, halt)
            return
        wall_s = self.clock.wall_s(self.poll_interval_s)
        slices = max(1, min(WATCH_SLICES, int(wall_s / WATCH_SLICE_MIN_S)))
        for _ in range(slices):
            if halt.is_set() or self._watched.link_lost():
                return
            self.clock.sleep_blocking(self.poll_interval_s / slices, halt)


def _clamp_for(command: CurrentCommand, limits: SafetyLimits) -> float:
    """The compliance of a constant-current step: just past its own upper cut-off when it drives
    the voltage up to one (a strip, a charge), so the SMU itself stops the voltage there.

    Between two readings an emptied electrode can run from its cut-off to volts (a blocking
    electrode charges like a capacitor); polled readings alone would see it only after it has
    crossed the safety limit. The clamp sits CUTOFF_CLAMP_MARGIN_V past the cut-off so that the
    clamped reading still meets the end condition. The 2450's limit is symmetric (|V|), so it
    is used only where the step's voltages stay positive: a rising voltage towards a positive
    cut-off. Otherwise the limit clears everything the step and the safety window allow.
    """
    above = command.end.voltage_above_V
    if command.current_A > 0 and above is not None and above > 0:
        return above + CUTOFF_CLAMP_MARGIN_V
    return _voltage_limit(command, limits)


def _voltage_limit(command: StepCommand, limits: SafetyLimits) -> float:
    """A compliance voltage beyond every voltage the step or the safety window allows."""
    volts = [
        v
        for v in (
            limits.voltage_max_V,
            limits.voltage_min_V,
            command.end.voltage_above_V,
            command.end.voltage_below_V,
        )
        if v is not None
    ]
    if not volts:
        return DEFAULT_VOLTAGE_LIMIT_V
    return max(abs(v) for v in volts) + COMPLIANCE_MARGIN_V


def _batch(rows: list[tuple[float, float, float, float, float]]) -> Batch:
    table = np.array(rows, dtype=np.float64)
    return Batch(table[:, 0], table[:, 1], table[:, 2], table[:, 3], table[:, 4])
