"""The executor: drives the channel through a step, one stretch at a time, and keeps the cell safe.

The runner (cyclerd.engine.runner) decides which step comes next; the executor runs it on the
channel until it ends or an every-block interrupts it, numbers and safety-checks every batch,
and handles what happens on the way: a pause or stop (acted on at once, the cell made safe), an
instrument fault (recorded, the cell made safe, retried with backoff when it may pass).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from cyclerd.drivers.base import (
    Batch,
    Channel,
    InstrumentDisconnected,
    InstrumentFault,
    InstrumentGarbled,
    InstrumentTimeout,
    Named,
    Reconnectable,
    Spectrum,
    StepEnd,
    StepProgress,
)
from cyclerd.drivers.clock import Clock
from cyclerd.engine.control import Interrupted, RunControl
from cyclerd.engine.safety import clipped_at_violation, stored_columns
from cyclerd.engine.sinks import Columns, RunEvent, Sink
from cyclerd.protocols.program import ImpedanceSpec, SafetyLimits, StepCommand

RETRY_BACKOFF_S = 2.0  # run-clock seconds before the first retry after a transient fault
RETRY_BACKOFF_MAX_S = 60.0  # the backoff doubles per attempt up to this

# What the runner does with a stored batch: (columns, progress of its last sample, final).
BatchStored = Callable[[Columns, StepProgress, bool], None]


class SafetyStop(Exception):
    """A safety limit was crossed; the run ends with the cell made safe.

    `progress` and `t_s` (test time) are those of the sample that crossed it, where the step
    ended, when the crossing was seen in a batch.
    """

    def __init__(self, reason: str, progress: StepProgress | None = None, t_s: float | None = None) -> None:
        super().__init__(reason)
        self.progress = progress
        self.t_s = t_s


class StopRequested(Exception):
    """Someone asked the run to stop."""


class FaultStop(Exception):
    """An instrument fault that retrying did not cure; the run ends with the cell made safe."""


class _Reading:
    """The last batch a stretch stored: where the step resumes after a fault, and when (test
    time) its last sample was taken; `stored` counts the stretch's batches. `hole_from`: the
    stretch resumes after a fault, and its first sample closes the hole that began then."""

    __slots__ = ("hole_from", "progress", "stored", "t_s")

    def __init__(self, progress: StepProgress, t_s: float, hole_from: float | None) -> None:
        self.progress = progress
        self.t_s = t_s
        self.stored = 0
        self.hole_from = hole_from


class Executor:
    """One channel's hands: `segment` and `impedance` run a step, `make_safe` ends anything."""

    def __init__(
        self,
        channel: Channel,
        clock: Clock,
        safety: SafetyLimits,
        sinks: Sink,
        control: RunControl,
        test_time: Callable[[], float],
        retries: int = 3,
    ) -> None:
        self.channel = channel
        self.clock = clock
        self.safety = safety
        self.sinks = sinks
        self.control = control
        self.test_time = test_time
        self.retries = retries
        self.next_seq = 0  # the sequence number of the run's next stored sample

    @property
    def name(self) -> str:
        return self.channel.name if isinstance(self.channel, Named) else "the channel"

    def event(self, kind: str, message: str, data: Mapping[str, Any] | None = None) -> None:
        self.sinks.event(RunEvent(self.test_time(), kind, message, data or {}))

    async def make_safe(self) -> None:
        """Tell the channel to go safe, through a new link if the old one is gone; if it cannot
        even answer that, say so in the record."""
        unsafe, _ = await self._go_safe()
        if unsafe is not None:
            self.event("fault", f"could not confirm the cell is safe: {unsafe}")

    async def hold(self, number: int, progress: StepProgress) -> None:
        """Paused: the cell is held safe until someone resumes or stops the run."""
        await self.make_safe()
        self.event("pause", f"paused in step {number} at {progress.t_s:.1f} s of step time")
        await self.control.wait_until_resumed()
        if self.control.stop_requested:
            raise StopRequested

    async def segment(
        self,
        command: StepCommand,
        number: int,
        cycle: int,
        progress: StepProgress,
        pause_at: float | None,
        stored: BatchStored,
    ) -> StepEnd:
        """Run the step from `progress` until it ends or reaches step time `pause_at`; a pause or
        a fault that may pass resumes it from the last stored sample.

        Faults are counted in a row: a stretch that stored samples before its fault has
        recovered from the one before, so separate faults in a long step never add up to a stop.
        """
        faults = 0
        last_t: float | None = None  # test time of the last stored sample, once a fault cut in
        while True:
            if self.control.paused:  # paused before the step began, or taken up paused
                await self.hold(number, progress)
            start = self.test_time() - progress.t_s  # test time at this stretch's step time 0
            reading = _Reading(progress, start + progress.t_s if last_t is None else last_t, last_t)
            stream = self.channel.run(command, progress, self.safety, pause_at)
            try:
                return await self.control.interruptible(
                    self._consume(stream, number, cycle, start, reading, stored)
                )
            except Interrupted:
                progress, last_t = reading.progress, reading.hole_from  # a hole not yet closed stays open
                if self.control.stop_requested:
                    raise StopRequested from None
                await self.hold(number, progress)
            except InstrumentFault as exc:
                progress, last_t = reading.progress, reading.t_s
                faults = 1 if reading.stored else faults + 1
                await self._recover(exc, faults, number, progress)
            finally:
                await stream.aclose()

    async def _consume(
        self,
        stream: AsyncGenerator[Batch | StepEnd, None],
        number: int,
        cycle: int,
        start: float,
        reading: _Reading,
        stored: BatchStored,
    ) -> StepEnd:
        async for item in stream:
            if isinstance(item, StepEnd):
                if reading.hole_from is not None:  # the step ended without a sample after the fault
                    self._gap(number, reading, self.test_time())
                return item
            columns, crossed = clipped_at_violation(
                self.safety, stored_columns(item, self.next_seq, number, cycle, start)
            )
            if reading.hole_from is not None:
                self._gap(number, reading, float(columns["t"][0]))
            t_end = float(columns["t"][-1])  # the batch's last sample, or the one that crossed a limit
            progress = StepProgress(t_end - start, float(columns["charge"][-1]), float(columns["energy"][-1]))
            reading.progress, reading.t_s = progress, t_end
            reading.stored += 1
            stored(columns, progress, item.final)
            self.next_seq += len(columns["seq"])
            if crossed is not None:
                raise SafetyStop(crossed, progress, t_end)
            if self.control.stop_requested:
                raise StopRequested
            if self.control.paused:
                raise Interrupted
        # Asking again would get the same: a fault, not a loop without end.
        raise InstrumentFault(self.name, f"its data for step {number} ended before the step did")

    def _store_held(self, batch: Batch, number: int, cycle: int, start: float, stored: BatchStored) -> None:
        columns, crossed = clipped_at_violation(
            self.safety, stored_columns(batch, self.next_seq, number, cycle, start)
        )
        t_end = float(columns["t"][-1])
        progress = StepProgress(t_end - start, float(columns["charge"][-1]), float(columns["energy"][-1]))
        stored(columns, progress, batch.final)
        self.next_seq += len(columns["seq"])
        if crossed is not None:
            raise SafetyStop(crossed, progress, t_end)

    async def _recover(
        self, fault: InstrumentFault, attempt: int, number: int, progress: StepProgress, what: str = "step"
    ) -> None:
        """Make the cell safe, record the fault in the instrument's words, retry or give up.

        A cell that cannot be confirmed safe (the link is gone) is not left to the backoff: the
        instrument is reconnected at once. Otherwise it is reconnected after the backoff, so that
        the step goes on over a fresh link (no late reply left in it).
        """
        transient = isinstance(fault, InstrumentTimeout | InstrumentDisconnected | InstrumentGarbled)
        unsafe, reconnected = await self._go_safe()
        if unsafe is None:
            outcome = "cell made safe" + (" after reconnecting" if reconnected else "")
        else:
            outcome = f"could not confirm the cell is safe: {unsafe}"
        self.event(
            "fault",
            f"{what} {number}: {fault}; {outcome}",
            {
                "step": number,
                "step_time": progress.t_s,
                "attempt": attempt,
                "transient": transient,
                "safe": unsafe is None,
            },
        )
        if not transient or attempt > self.retries:
            raise FaultStop(str(fault)) from fault
        backoff = min(RETRY_BACKOFF_S * 2 ** (attempt - 1), RETRY_BACKOFF_MAX_S)
        try:
            await self.control.interruptible(self.clock.sleep(backoff))
        except Interrupted:
            if self.control.stop_requested:
                raise StopRequested from None
        if not reconnected and isinstance(self.channel, Reconnectable):
            await self._reconnect(self.channel)

    async def _go_safe(self) -> tuple[InstrumentFault | None, bool]:
        """Make the cell safe, through a new link if the old one is gone (a device on its own
        goes on driving the cell): the fault that still prevents it or None, and whether the
        channel was reconnected."""
        unsafe = await self._try_safe()
        if unsafe is None or not isinstance(self.channel, Reconnectable):
            return unsafe, False
        if not await self._reconnect(self.channel):
            return unsafe, False
        return await self._try_safe(), True

    async def _try_safe(self) -> InstrumentFault | None:
        try:
            await self.channel.safe_state()
        except InstrumentFault as exc:
            return exc
        return None

    async def _reconnect(self, channel: Reconnectable) -> bool:
        try:
            await channel.reconnect()
        except InstrumentFault as exc:
            self.event("fault", f"reconnecting failed: {exc}")
            return False
        return True

    def _gap(self, number: int, reading: _Reading, until: float) -> None:
        """The audit event of a step taken up again after a fault: the hole in its samples,
        from the last one stored before the fault to the first one after it."""
        start, reading.hole_from = reading.hole_from, None
        assert start is not None
        carried = reading.progress
        self.event(
            "gap",
            f"step {number} resumed after a fault at {carried.t_s:.1f} s of step time,"
            f" {carried.charge_As / 3.6:.4g} mAh carried over: no samples from {start:.1f} s"
            f" to {until:.1f} s of test time ({until - start:.1f} s); the cell was switched off at"
            " the fault, and what it went through after the last stored sample is not counted",
            {
                "step": number,
                "step_time": carried.t_s,
                "charge_As": carried.charge_As,
                "from_t": start,
                "to_t": until,
                "hole_s": until - start,
            },
        )

    async def impedance(self, spec: ImpedanceSpec, number: int, cycle: int, stored: BatchStored) -> Spectrum:
        """One spectrum; a pause or a fault that may pass measures it again whole afterwards (a
        spectrum has no middle). The cell's potential meanwhile, where the channel knows it, is
        stored as the step's samples, checked against the safety limits like any others."""
        faults = 0
        while True:
            if self.control.paused:
                await self.hold(number, StepProgress())
            start = self.test_time()
            try:
                spectrum = await self.control.interruptible(self.channel.impedance(spec))
                if spectrum.potential is not None and len(spectrum.potential):
                    self._store_held(spectrum.potential, number, cycle, start, stored)
                return spectrum
            except Interrupted:
                if self.control.stop_requested:
                    raise StopRequested from None
            except InstrumentFault as exc:
                faults += 1
                await self._recover(exc, faults, number, StepProgress(), "spectrum in step")
