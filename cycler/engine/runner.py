"""The runner: executes a compiled program on one channel, handing every result to its sinks.

It walks the program (loops, step commands and their every-blocks) with a cursor
(cyclerd.engine.cursor) that says where the run stands, checks the safety limits on every
logged sample, decides loop conditions from the cycle summaries, and leaves the channel safe
however the run ends. It writes nothing itself: the store, the bus and the terminal are sinks
(cyclerd.engine.sinks). Pause, resume and stop act at once, even while the channel is waiting
for its next sample: the wait is cancelled and the cell made safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cyclerd.analysis.cycles import CycleSummary, ShortCircuit
from cyclerd.drivers.base import SAFETY, Channel, Snapshotting, StepProgress
from cyclerd.drivers.clock import Clock
from cyclerd.engine.control import RunControl
from cyclerd.engine.cursor import (
    PERIODIC_PHASES,
    Cursor,
    LoopPosition,
    Phase,
    after_periodic,
    after_segment,
    first_phase,
    holds,
    next_pause,
    restarts_whole,
)
from cyclerd.engine.executor import Executor, FaultStop, SafetyStop, StopRequested
from cyclerd.engine.ledger import CycleLedger
from cyclerd.engine.resume import History, gap_event
from cyclerd.engine.sinks import Columns, Sink, SpectrumTaken, StepEnded, StepStarted
from cyclerd.engine.states import RunState, check_transition
from cyclerd.protocols.program import ImpedanceCommand, Loop, Node, Periodic, Program, StepCommand

__all__ = ["FaultStop", "RunResult", "Runner", "SafetyStop", "StopRequested"]


@dataclass
class RunResult:
    state: RunState
    cycles: list[CycleSummary]
    short: ShortCircuit | None
    reason: str


@dataclass(frozen=True)
class _Position:
    """The step command the cursor points at (inside an every-block: the step it interrupted)."""

    command: int = 0
    phase: Phase = Phase.STEP
    step_number: int = 0
    pause_at_s: float | None = None


class Runner:
    """Runs `program` on `channel`; what happens goes to `sinks` (the store first)."""

    def __init__(
        self, program: Program, channel: Channel, clock: Clock, sinks: Sink, retries: int = 3
    ) -> None:
        self.program = program
        self.channel = channel
        self.clock = clock
        self.sinks = sinks
        self.retries = retries
        # Cancelled by a stopping daemon: keep the run's state so the next start resumes it.
        self.resumable = False
        self.state = RunState.CREATED
        self.cycle = 0  # the cycle the current step belongs to: 0 outside an innermost loop
        self._cycles_begun = 0  # cycles numbered so far: the next pass of a loop is this + 1
        self.ledger = CycleLedger()
        self._step_number = 0
        self._spectrum = 0
        self._t0 = 0.0
        self.control = RunControl()
        # A simulated cell's state travels with the cursor; a real cell keeps its own.
        self._snapshots = channel if isinstance(channel, Snapshotting) else None
        self.executor = Executor(
            channel, clock, program.safety, sinks, self.control, lambda: self.test_time_s, retries
        )
        self._loops: dict[int, LoopPosition] = {}
        self._position = _Position()
        self._periodic_depth = 0
        self._main_progress = StepProgress()
        self._taking_up: Cursor | None = None
        self._resumed_state = RunState.RUNNING
        self._outage_s = 0.0
        self._open_steps: list[int] = []

    def restore(self, cursor: Cursor, history: History, state: RunState, outage_s: float) -> None:
        """Take up a run a crash interrupted: call before `run()`, which then continues at `cursor`.

        `outage_s` is added to the test time: on a real clock the cell lived through the gap.
        """
        self._taking_up = cursor
        self._resumed_state = state
        self._outage_s = outage_s
        self.cycle = cursor.cycle
        self._cycles_begun = cursor.cycles_begun
        self.ledger = CycleLedger(
            cycles=list(history.cycles),
            voltage_stats=list(history.voltage_stats),
            cutoff_missed=dict.fromkeys(cursor.cutoff_missed, True),
            short=cursor.short,
            parts=[history.current_cycle] if history.current_cycle else [],
        )
        self.executor.next_seq = history.next_seq
        self._step_number = history.last_step
        self._spectrum = history.last_spectrum
        self._open_steps = [n for n in history.open_steps if n != cursor.step_number]

    # -- control -------------------------------------------------------------------------

    def pause(self, by: str | None = None) -> None:
        """`by`: who asked (a dashboard user), named in the run's event."""
        self._transition(RunState.PAUSED, _asked("pause requested", by), by)
        self.control.pause()

    def resume(self, by: str | None = None) -> None:
        self._transition(RunState.RUNNING, _asked("resumed", by), by)
        self.control.resume()

    def stop(self, by: str | None = None) -> None:
        self._transition(RunState.STOPPING, _asked("stop requested", by), by)
        self.control.stop()

    @property
    def cycles(self) -> list[CycleSummary]:
        """The finished cycles' summaries so far."""
        return self.ledger.cycles

    @property
    def test_time_s(self) -> float:
        return self.clock.now() - self._t0

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> RunResult:
        if self._taking_up is None:
            self._t0 = self.clock.now()
            self._transition(RunState.RUNNING, "run started")
        else:
            await self._take_up(self._taking_up)
        reason = "completed"
        try:
            await self._nodes(self.program.body)
            self._transition(RunState.COMPLETED, "run completed")
        except SafetyStop as exc:
            reason = f"safety: {exc}"
            self._event("safety", f"safety limit crossed: {exc}; cell made safe, run ended")
            await self.executor.make_safe()
            self._transition(RunState.STOPPED, reason)
        except StopRequested:
            reason = "stopped on request"
            await self.executor.make_safe()
            self._transition(RunState.STOPPED, reason)
        except FaultStop as exc:
            reason = f"instrument fault: {exc}"
            await self.executor.make_safe()
            self._transition(RunState.STOPPED, reason)
        except asyncio.CancelledError:
            await asyncio.shield(self.executor.make_safe())
            if not self.resumable:
                self._transition(RunState.FAILED, "run failed: interrupted")
                raise
            self._event("interrupted", "the daemon stopped: cell made safe; the run resumes when it restarts")
            raise
        except BaseException as exc:
            await asyncio.shield(self.executor.make_safe())
            self._transition(RunState.FAILED, f"run failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            await self.executor.make_safe()
        return RunResult(self.state, self.ledger.cycles, self.ledger.short, reason)

    async def _take_up(self, cursor: Cursor) -> None:
        """Continue after a restart: the clock, the state, the gap as an audit event."""
        self._t0 = self.clock.now() - cursor.t_s - self._outage_s
        await self.executor.make_safe()  # whatever the instrument did alone, it starts from safe
        for number in self._open_steps:  # steps the crash cut off and that will not go on
            self.sinks.step_ended(StepEnded(number, cursor.t_s, "interrupted", None, None), None)
        self.state = self._resumed_state
        if self.state is RunState.PAUSED:
            self.control.pause()
        self._event("gap", *gap_event(cursor, self._outage_s, self.executor.next_seq))

    def _transition(self, state: RunState, message: str, by: str | None = None) -> None:
        check_transition(self.state, state)
        self.state = state
        self.sinks.state_changed(state, self._cycles_begun)
        self._event("state", message, {"state": state.value} | ({} if by is None else {"by": by}))

    def _event(self, kind: str, message: str, data: Mapping[str, Any] | None = None) -> None:
        self.executor.event(kind, message, data)

    def _cursor(self, progress: StepProgress, t_s: float | None = None) -> Cursor:
        """Where the run stands now, with the step at `progress`."""
        position = self._position
        return Cursor(
            command=position.command,
            phase=position.phase,
            step_number=position.step_number,
            progress=progress,
            pause_at_s=position.pause_at_s,
            loops=dict(self._loops),
            cycle=self.cycle,
            cycles_begun=self._cycles_begun,
            t_s=self.test_time_s if t_s is None else t_s,
            cutoff_missed=frozenset(c for c, missed in self.ledger.cutoff_missed.items() if missed),
            short=self.ledger.short,
            cell=None if self._snapshots is None else self._snapshots.snapshot(),
        )

    def _note(self, command: StepCommand, number: int, phase: Phase, pause_at: float | None) -> bool:
        """Move the cursor to `command`'s `phase`; False inside an every-block, where the
        cursor stays on the step the block interrupted."""
        if self._periodic_depth:
            return False
        self._position = _Position(command.index, phase, number, pause_at)
        return True

    # -- the program ---------------------------------------------------------------------

    async def _nodes(self, nodes: tuple[Node, ...]) -> None:
        for node in nodes:
            if self._taking_up is not None and not holds(node, self._taking_up.command):
                continue  # done before the restart
            if isinstance(node, Loop):
                await self._loop(node)
            else:
                await self._command(node)

    async def _loop(self, loop: Loop) -> None:
        taken_up = self._taking_up.loops.get(loop.index) if self._taking_up is not None else None
        if taken_up is not None:
            iteration, start, first_cycle = taken_up.iteration - 1, taken_up.start_t_s, taken_up.first_cycle
        else:
            iteration, start, first_cycle = 0, self.test_time_s, self._cycles_begun + 1
        while loop.count is None or iteration < loop.count:
            iteration += 1
            self._loops[loop.index] = LoopPosition(iteration, start, first_cycle)
            if loop.innermost and taken_up is None:
                self._cycles_begun += 1
                self.cycle = self._cycles_begun
                self.ledger.start_cycle()
            taken_up = None
            await self._nodes(loop.body)
            reference = loop.retention_reference or first_cycle
            if loop.innermost and (why := self._end_of_cycle(loop, reference)):
                self._event(
                    "loop", f"{loop.label} ended after cycle {self.cycle}: {why}", {"cycle": self.cycle}
                )
                break
            if loop.until.duration_s is not None and self.test_time_s - start >= loop.until.duration_s:
                self._event("loop", f"{loop.label} ended: its duration has passed", {"cycle": self.cycle})
                break
        self._loops.pop(loop.index, None)
        if loop.innermost:  # steps after the loop belong to no cycle (design.md: Conventions)
            self.cycle = 0

    def _end_of_cycle(self, loop: Loop, reference: int) -> str:
        """Summarise the cycle just finished and record it; the reason the loop must end, or ''."""
        short_before = self.ledger.short
        summary, why = self.ledger.close_cycle(loop.until, reference)
        if summary is None:
            return ""
        self.sinks.cycle_closed({**summary.as_row(), "reference_cycle": reference})
        short = self.ledger.short
        if short is not None and short_before is None:
            self._event(
                "short_circuit",
                f"short circuit detected in cycle {short.cycle}: {short.reason}",
                {"cycle": short.cycle},
            )
        return why

    def _take_up_point(self, command: StepCommand) -> Cursor | None:
        """The cursor a restart left on `command`, once; from then on the run goes forward."""
        cursor = self._taking_up
        if cursor is None or cursor.command != command.index:
            return None
        self._taking_up = None
        if restarts_whole(command, cursor.phase):
            self.sinks.step_ended(StepEnded(cursor.step_number, cursor.t_s, "interrupted", None, None), None)
        return cursor

    async def _command(self, command: StepCommand) -> None:
        """One step command through its phases, every phase a checkpoint."""
        if isinstance(command, ImpedanceCommand):
            await self._impedance(command)
            return
        cursor = self._take_up_point(command)
        if cursor is not None and cursor.phase is Phase.DONE:
            return
        periodic = command.periodic
        if cursor is None or restarts_whole(command, cursor.phase):
            self._step_number += 1
            number, progress = self._step_number, StepProgress()
            pause_at = periodic.interval_s if periodic is not None else None
            phase = first_phase(periodic)
            noted = self._note(command, number, phase, pause_at)
            started = StepStarted(
                number, command.index, command.kind, command.label, self.cycle, self.test_time_s
            )
            self.sinks.step_started(started, self._cursor(progress) if noted else None)
            moved = True
        else:
            number, progress, pause_at, phase = (
                cursor.step_number,
                cursor.progress,
                cursor.pause_at_s,
                cursor.phase,
            )
            moved = False
        # What a checkpoint inside this step's every-blocks holds, until a batch of the step
        # itself moves it on: the step's own progress, not the step before's (nor none, after
        # a restart), so that a restart in the block neither shortens nor repeats the step.
        if not self._periodic_depth:
            self._main_progress = progress
        reason = ""
        while phase is not Phase.DONE:
            if not moved and self._note(command, number, phase, pause_at):
                self.sinks.moved(self._cursor(progress))
            moved = False
            if phase in PERIODIC_PHASES:
                assert periodic is not None
                await self._periodic(periodic)
                pause_at = next_pause(phase, periodic, pause_at)
                phase = after_periodic(phase)
                continue
            try:
                end = await self.executor.segment(
                    command, number, self.cycle, progress, pause_at, self._stored
                )
            except SafetyStop as stop:  # seen in a batch: the step ends on the sample that crossed
                if stop.progress is not None and stop.t_s is not None:
                    at = stop.progress
                    self.sinks.step_ended(
                        StepEnded(number, stop.t_s, SAFETY, at.charge_As, at.energy_J), None
                    )
                raise
            progress = end.progress
            if end.reason == SAFETY:
                self.sinks.step_ended(
                    StepEnded(number, self.test_time_s, end.reason, progress.charge_As, progress.energy_J),
                    None,
                )
                raise SafetyStop(end.detail)
            voltage_cutoff = (
                command.end.voltage_above_V is not None or command.end.voltage_below_V is not None
            )
            if voltage_cutoff and end.reason == "duration" and self.cycle > 0:
                self.ledger.missed_cutoff(self.cycle)
            phase = after_segment(end.reason, periodic, pause_at)
            if phase is not Phase.INTERRUPT:
                reason = end.reason
        noted = self._note(command, number, Phase.DONE, None)
        ended = StepEnded(number, self.test_time_s, reason, progress.charge_As, progress.energy_J)
        self.sinks.step_ended(ended, self._cursor(progress) if noted else None)

    def _stored(self, columns: Columns, progress: StepProgress, final: bool) -> None:
        """A batch the executor numbered and checked: to the sinks with the cursor, and to the
        cycle in progress. Inside an every-block the cursor keeps the interrupted step's progress."""
        if not self._periodic_depth:
            self._main_progress = progress
        self.sinks.batch(columns, self._cursor(self._main_progress, float(columns["t"][-1])), final)
        if self.cycle > 0:
            self.ledger.log(columns)

    async def _periodic(self, periodic: Periodic) -> None:
        self._periodic_depth += 1
        try:
            for sub in periodic.body:
                await self._command(sub)
        finally:
            self._periodic_depth -= 1

    async def _impedance(self, command: ImpedanceCommand) -> None:
        cursor = self._take_up_point(command)  # a cut-off spectrum is measured again, whole
        if cursor is not None and cursor.phase is Phase.DONE:
            return
        self._step_number += 1
        number, start = self._step_number, self.test_time_s
        noted = self._note(command, number, Phase.STEP, None)
        started = StepStarted(number, command.index, command.kind, command.label, self.cycle, start)
        self.sinks.step_started(started, self._cursor(StepProgress()) if noted else None)
        spectrum = await self.executor.impedance(command.spec, number, self.cycle, self._stored)
        self._spectrum += 1
        self.sinks.spectrum(
            SpectrumTaken(
                self._spectrum,
                start,
                number,
                # Outside a loop a spectrum is "after cycle N": the last cycle the run began.
                self.cycle or self._cycles_begun,
                spectrum.frequency_Hz,
                spectrum.impedance_ohm,
            )
        )
        noted = self._note(command, number, Phase.DONE, None)
        ended = StepEnded(number, self.test_time_s, "spectrum", 0.0, 0.0)
        self.sinks.step_ended(ended, self._cursor(StepProgress()) if noted else None)


def _asked(what: str, by: str | None) -> str:
    return what if by is None else f"{what} by {by}"
