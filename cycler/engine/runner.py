"""The runner: interprets a compiled program on one channel, storing every sample.

It owns the protocol state — where in the program the run is, loop counters, the cycle index,
the step's progress (time, charge, energy) across every-block interruptions — checks the
safety limits on every logged sample, decides loop conditions from the cycle summaries, and
leaves the channel safe however the run ends. Pause, resume and stop are methods; each state
change is an event in the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from cyclerd.analysis.cycles import CycleSummary, ShortCircuit
from cyclerd.drivers.base import (
    INTERRUPT,
    SAFETY,
    Batch,
    Channel,
    InstrumentDisconnected,
    InstrumentFault,
    InstrumentGarbled,
    InstrumentTimeout,
    StepEnd,
    StepProgress,
)
from cyclerd.drivers.clock import Clock
from cyclerd.engine.ledger import CycleLedger
from cyclerd.engine.resume import History, ResumePoint
from cyclerd.engine.safety import first_violation
from cyclerd.engine.states import FINAL, RunState, check_transition
from cyclerd.protocols.compiler import Loop, Node, Periodic, Program, StepCommand
from cyclerd.store.database import Store

RETRY_BACKOFF_S = 2.0  # run-clock seconds before the first retry after a transient fault
RETRY_BACKOFF_MAX_S = 60.0  # the backoff doubles per attempt up to this


class SafetyStop(Exception):
    """A safety limit was crossed; the run ends with the cell made safe."""


class StopRequested(Exception):
    """Someone asked the run to stop."""


class FaultStop(Exception):
    """An instrument fault that retrying did not cure; the run ends with the cell made safe."""


@dataclass
class RunResult:
    state: RunState
    cycles: list[CycleSummary]
    short: ShortCircuit | None
    reason: str


class Runner:
    """Runs `program` on `channel`, recording into `store` under `run_id`."""

    def __init__(
        self,
        program: Program,
        channel: Channel,
        store: Store,
        run_id: int,
        clock: Clock,
        on_batch: Callable[[dict[str, np.ndarray]], None] | None = None,
        retries: int = 3,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        on_spectrum: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.program = program
        self.channel = channel
        self.store = store
        self.run_id = run_id
        self.clock = clock
        self.on_batch = on_batch
        self.on_event = on_event
        self.on_spectrum = on_spectrum
        self.retries = retries
        # Cancelled by a stopping daemon: keep the run's state so the next start resumes it.
        self.resumable = False
        self.state = RunState.CREATED
        self.cycle = 0
        self.ledger = CycleLedger()
        self._seq = 0
        self._step_number = 0
        self._spectrum = 0
        self._batches = 0
        self._t0 = 0.0
        self._resume = asyncio.Event()
        self._resume.set()
        self._stop_requested = False
        # Where the run stands, committed with every batch (see cycler/resume.py).
        self._loops: dict[int, tuple[int, float, int]] = {}
        self._point: dict[str, Any] = {}
        self._periodic_depth = 0
        self._resume_at: ResumePoint | None = None
        self._resumed_state = RunState.RUNNING
        self._outage_s = 0.0
        self._open_steps: list[int] = []
        self._main_progress = (0.0, 0.0, 0.0)
        self._step_end = ""

    def restore(self, point: ResumePoint, history: History, state: RunState, outage_s: float) -> None:
        """Take up a run a crash interrupted: call before `run()`, which then continues from `point`.

        `outage_s` is added to the test time: on a real clock the cell lived through the gap.
        """
        self._resume_at = point
        self._resumed_state = state
        self._outage_s = outage_s
        self.cycle = point.cycle
        self.ledger = CycleLedger(
            cycles=list(history.cycles),
            voltage_stats=list(history.voltage_stats),
            cutoff_missed=dict.fromkeys(point.cutoff_missed, True),
            short=point.short,
            parts=[history.current_cycle] if history.current_cycle else [],
        )
        self._seq = history.next_seq
        self._step_number = history.last_step
        self._spectrum = history.last_spectrum
        self._open_steps = [n for n in history.open_steps if n != point.step_number]

    # -- commands ------------------------------------------------------------------------

    def pause(self) -> None:
        self._transition(RunState.PAUSED, "pause requested")
        self._resume.clear()

    def resume(self) -> None:
        self._transition(RunState.RUNNING, "resumed")
        self._resume.set()

    def stop(self) -> None:
        self._transition(RunState.STOPPING, "stop requested")
        self._stop_requested = True
        self._resume.set()

    @property
    def cycles(self) -> list[CycleSummary]:
        """The finished cycles' summaries so far."""
        return self.ledger.cycles

    @property
    def test_time_s(self) -> float:
        return self.clock.now() - self._t0

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> RunResult:
        if self._resume_at is None:
            self._t0 = self.clock.now()
            self._transition(RunState.RUNNING, "run started")
        else:
            await self._take_up(self._resume_at)
        reason = "completed"
        try:
            await self._nodes(self.program.body)
            self._transition(RunState.COMPLETED, "run completed")
        except SafetyStop as exc:
            reason = f"safety: {exc}"
            self._event("safety", f"safety limit crossed: {exc}; cell made safe, run ended")
            await self._make_safe()
            self._transition(RunState.STOPPED, reason)
        except StopRequested:
            reason = "stopped on request"
            await self._make_safe()
            self._transition(RunState.STOPPED, reason)
        except FaultStop as exc:
            reason = f"instrument fault: {exc}"
            await self._make_safe()
            self._transition(RunState.STOPPED, reason)
        except asyncio.CancelledError:
            await asyncio.shield(self._make_safe())
            if not self.resumable:
                self._transition(RunState.FAILED, "run failed: interrupted")
                raise
            self._event("interrupted", "the daemon stopped: cell made safe; the run resumes when it restarts")
            raise
        except BaseException as exc:
            await asyncio.shield(self._make_safe())
            self._transition(RunState.FAILED, f"run failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            await self._make_safe()
        return RunResult(self.state, self.ledger.cycles, self.ledger.short, reason)

    async def _take_up(self, point: ResumePoint) -> None:
        """Continue after a restart: the clock, the state, the gap as an audit event."""
        self._t0 = self.clock.now() - point.t_s - self._outage_s
        await self._make_safe()  # whatever the instrument did alone, it starts from safe
        for number in self._open_steps:  # steps the crash cut off and that will not go on
            self.store.end_step(self.run_id, number, point.t_s, "interrupted", None, None)
        self.state = self._resumed_state
        if self.state is RunState.PAUSED:
            self._resume.clear()
        self._event(
            "gap",
            f"resumed after a restart: step {point.step_number} ({point.phase}) at"
            f" {point.progress.t_s:.1f} s of step time, {point.progress.charge_As * 1e3 / 3.6:.4g} mAh"
            f" carried over; {self._outage_s:.1f} s of test time without the daemon, first new sample"
            f" seq {self._seq}"
            + (
                "; the output was switched off at the restart: what the instrument did while the"
                " daemon was away is not recorded"
                if self._outage_s > 0
                else ""
            ),
            {
                "step": point.step_number,
                "phase": point.phase,
                "step_time": point.progress.t_s,
                "charge_As": point.progress.charge_As,
                "outage_s": self._outage_s,
                "next_seq": self._seq,
            },
        )

    async def _make_safe(self) -> None:
        """Tell the channel to go safe; if it cannot even answer that, say so in the store."""
        try:
            await self.channel.safe_state()
        except InstrumentFault as exc:
            self._event("fault", f"could not confirm the cell is safe: {exc}")

    def _transition(self, state: RunState, message: str) -> None:
        check_transition(self.state, state)
        self.state = state
        self.store.set_state(self.run_id, state.value, ended_unix=time.time() if state in FINAL else None)
        self._event("state", message, {"state": state.value})

    def _event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        t = self.test_time_s
        self.store.record_event(self.run_id, kind, message, t=t, data=data)
        if self.on_event is not None:
            self.on_event({"run": self.run_id, "t": t, "kind": kind, "message": message, "data": data or {}})

    async def _nodes(self, nodes: tuple[Node, ...]) -> None:
        for node in nodes:
            if self._resume_at is not None and not _holds(node, self._resume_at.command):
                continue  # done before the restart
            if isinstance(node, Loop):
                await self._loop(node)
            else:
                await self._command(node)

    async def _loop(self, loop: Loop) -> None:
        taken_up = self._resume_at.loops.get(loop.index) if self._resume_at is not None else None
        if taken_up is not None:
            iteration, start, first_cycle = taken_up[0] - 1, taken_up[1], taken_up[2]
        else:
            iteration, start, first_cycle = 0, self.test_time_s, self.cycle + 1
        while loop.count is None or iteration < loop.count:
            iteration += 1
            self._loops[loop.index] = (iteration, start, first_cycle)
            if loop.innermost and taken_up is None:
                self.cycle += 1
                self.ledger.start_cycle()
            taken_up = None
            await self._nodes(loop.body)
            if loop.innermost and (why := self._end_of_cycle(loop, first_cycle)):
                self._event(
                    "loop", f"{loop.label} ended after cycle {self.cycle}: {why}", {"cycle": self.cycle}
                )
                break
            if loop.until.duration_s is not None and self.test_time_s - start >= loop.until.duration_s:
                self._event("loop", f"{loop.label} ended: its duration has passed", {"cycle": self.cycle})
                break
        self._loops.pop(loop.index, None)

    def _end_of_cycle(self, loop: Loop, first_cycle: int) -> str:
        """Summarise the cycle just finished and store it; the reason the loop must end, or ''."""
        short_before = self.ledger.short
        summary, why = self.ledger.close_cycle(loop.until, first_cycle)
        if summary is None:
            return ""
        self.store.later(partial(self.store.save_cycle, self.run_id, summary.as_row()))
        short = self.ledger.short
        if short is not None and short_before is None:
            self._event(
                "short_circuit",
                f"short circuit detected in cycle {short.cycle}: {short.reason}",
                {"cycle": short.cycle},
            )
        return why

    async def _command(self, command: StepCommand) -> None:
        """One step command through its phases (resume.PHASES), every phase a checkpoint."""
        if command.impedance is not None:
            await self._impedance(command)
            return
        point = self._take_resume_point(command)
        periodic = command.periodic
        if point is not None and point.phase == "done":
            return
        if point is None or command.kind == "sweep":  # a sweep starts again: it has no middle
            self._step_number += 1
            number = self._step_number
            progress = StepProgress()
            pause_at = periodic.interval_s if periodic is not None else None
            phase = "at_start" if periodic is not None and periodic.at_start else "step"
            # The step and where the run stands commit with the step's first batch (or whatever
            # the run writes first): a crash before it resumes from the step before, as ever.
            self.store.later(
                partial(
                    self.store.begin_step,
                    self.run_id,
                    number,
                    command.index,
                    command.kind,
                    command.label,
                    self.cycle,
                    self.test_time_s,
                )
            )
            self._at(command, number, phase, progress, pause_at, later=True)
            noted = True
        else:
            number, progress, pause_at, phase = (
                point.step_number,
                point.progress,
                point.pause_at_s,
                point.phase,
            )
            noted = False
        while phase != "done":
            if not noted:
                self._at(command, number, phase, progress, pause_at)
            noted = False
            if phase in ("at_start", "interrupt", "at_end"):
                assert periodic is not None
                await self._periodic(periodic)
                if phase == "interrupt" and pause_at is not None:
                    pause_at += periodic.interval_s
                phase = "done" if phase == "at_end" else "step"
                continue
            end = await self._segment(command, number, progress, pause_at)
            progress = end.progress
            if end.reason == INTERRUPT and periodic is not None and pause_at is not None:
                phase = "interrupt"
                continue
            if end.reason == SAFETY:
                self.store.end_step(
                    self.run_id, number, self.test_time_s, end.reason, progress.charge_As, progress.energy_J
                )
                raise SafetyStop(end.detail)
            voltage_cutoff = (
                command.end.voltage_above_V is not None or command.end.voltage_below_V is not None
            )
            if voltage_cutoff and end.reason == "duration":
                self.ledger.missed_cutoff(self.cycle)
            self._step_end = end.reason
            phase = "at_end" if periodic is not None and periodic.at_end else "done"
        with self.store.transaction():
            self.store.end_step(
                self.run_id, number, self.test_time_s, self._step_end, progress.charge_As, progress.energy_J
            )
            self._at(command, number, "done", progress, None)

    def _take_resume_point(self, command: StepCommand) -> ResumePoint | None:
        point = self._resume_at
        if point is None or point.command != command.index:
            return None
        self._resume_at = None  # from here on the run goes forward as usual
        if command.kind == "sweep" and point.phase != "done":
            self.store.end_step(self.run_id, point.step_number, point.t_s, "interrupted", None, None)
        return point

    def _at(
        self,
        command: StepCommand,
        number: int,
        phase: str,
        progress: StepProgress,
        pause_at: float | None,
        later: bool = False,
    ) -> None:
        """Note where the run stands (a step command and its phase) and commit it, now or
        with the run's next write (`later`)."""
        if self._periodic_depth:
            return  # inside an every-block the position stays the step it interrupted
        self._point = {"command": command.index, "phase": phase, "step_number": number, "pause_at": pause_at}
        save = partial(self.store.save_checkpoint, self.run_id, self.test_time_s, self._state(progress))
        if later:
            self.store.later(save)
        else:
            save()

    def _state(self, progress: StepProgress) -> dict[str, Any]:
        point = ResumePoint(
            command=self._point["command"],
            phase=self._point["phase"],
            step_number=self._point["step_number"],
            progress=progress,
            pause_at_s=self._point["pause_at"],
            loops=dict(self._loops),
            cycle=self.cycle,
            t_s=self.test_time_s,
            cutoff_missed=frozenset(c for c, missed in self.ledger.cutoff_missed.items() if missed),
            short=self.ledger.short,
            cell=self._cell_snapshot(),
        )
        return point.as_state()

    def _cell_snapshot(self) -> str | None:
        """A simulated cell's state travels with the checkpoint: a real cell keeps its own."""
        snapshot = getattr(self.channel, "snapshot", None)
        return snapshot() if snapshot is not None and getattr(self.channel, "snapshots", False) else None

    async def _segment(
        self, command: StepCommand, number: int, progress: StepProgress, pause_at: float | None
    ) -> StepEnd:
        """Run the step from `progress` until it ends or is interrupted; pause, stop and instrument
        faults are handled here, each resuming the step from the last stored sample."""
        faults = 0
        while True:
            if not self._resume.is_set():  # paused before the step began, or taken up paused
                await self._hold(number, progress)
            segment_start = self.test_time_s - progress.t_s  # test time at step time 0 of this stretch
            stream = self.channel.run(command, progress, self.program.safety, pause_at)
            paused = False
            try:
                async for item in stream:
                    if isinstance(item, StepEnd):
                        return item
                    progress = StepProgress(
                        float(item.t_s[-1]), float(item.charge_As[-1]), float(item.energy_J[-1])
                    )
                    self._ingest(item, number, segment_start, progress)
                    if self._stop_requested:
                        raise StopRequested
                    if not self._resume.is_set():
                        paused = True
                        break
                else:  # asking again would get the same: a fault, not a loop without end
                    name = str(getattr(self.channel, "name", "the channel"))
                    raise InstrumentFault(name, f"its data for step {number} ended before the step did")
            except InstrumentFault as exc:
                faults += 1
                await self._recover(exc, faults, number, progress)
                continue
            finally:
                await stream.aclose()
            if paused:
                await self._hold(number, progress)

    async def _hold(self, number: int, progress: StepProgress) -> None:
        """Paused: the cell is held safe until someone resumes or stops the run."""
        await self._make_safe()
        self._event("pause", f"paused in step {number} at {progress.t_s:.1f} s of step time")
        await self._resume.wait()
        if self._stop_requested:
            raise StopRequested

    async def _recover(
        self, fault: InstrumentFault, attempt: int, number: int, progress: StepProgress
    ) -> None:
        """Record the fault in the instrument's words, make the cell safe, retry or give up."""
        transient = isinstance(fault, InstrumentTimeout | InstrumentDisconnected | InstrumentGarbled)
        self._event(
            "fault",
            f"step {number}: {fault}; cell made safe",
            {"step": number, "step_time": progress.t_s, "attempt": attempt, "transient": transient},
        )
        await self._make_safe()
        if not transient or attempt > self.retries:
            raise FaultStop(str(fault)) from fault
        await self.clock.sleep(min(RETRY_BACKOFF_S * 2 ** (attempt - 1), RETRY_BACKOFF_MAX_S))
        reconnect = getattr(self.channel, "reconnect", None)
        if reconnect is not None:
            try:
                await reconnect()
            except InstrumentFault as exc:
                self._event("fault", f"reconnecting failed: {exc}")

    def _ingest(self, batch: Batch, number: int, segment_start: float, progress: StepProgress) -> None:
        n = len(batch)
        t = segment_start + batch.t_s
        columns = {
            "seq": np.arange(self._seq, self._seq + n),
            "t": t,
            "step": np.full(n, number),
            "cycle": np.full(n, self.cycle),
            "voltage": batch.voltage_V,
            "current": batch.current_A,
            "charge": batch.charge_As,
            "energy": batch.energy_J,
        }
        if batch.temperature_K is not None:
            columns["temperature"] = batch.temperature_K
        violation = first_violation(self.program.safety, columns)
        if violation is not None:
            columns = {key: value[: violation[0] + 1] for key, value in columns.items()}
        # Inside an every-block the checkpoint keeps the interrupted step's own progress.
        at = progress if not self._periodic_depth else StepProgress(*self._main_progress)
        if not self._periodic_depth:
            self._main_progress = (progress.t_s, progress.charge_As, progress.energy_J)
        store = partial(
            self.store.append_samples, self.run_id, columns, checkpoint=(float(t[-1]), self._state(at))
        )
        if batch.final:  # the step's end comes next and commits it
            self.store.later(store)
        else:
            store()
        self._seq += len(columns["seq"])
        if self.cycle > 0:
            self.ledger.log(columns)
        if self.on_batch is not None:
            self.on_batch(columns)
        self._batches += 1
        if violation is not None:
            raise SafetyStop(violation[1])

    async def _periodic(self, periodic: Periodic) -> None:
        self._periodic_depth += 1
        try:
            for sub in periodic.body:
                await self._command(sub)
        finally:
            self._periodic_depth -= 1

    async def _impedance(self, command: StepCommand) -> None:
        assert command.impedance is not None
        point = self._take_resume_point(command)  # a cut-off spectrum is measured again, whole
        if point is not None and point.phase == "done":
            return
        if point is not None:
            self.store.end_step(self.run_id, point.step_number, point.t_s, "interrupted", None, None)
        self._step_number += 1
        number = self._step_number
        start = self.test_time_s
        with self.store.transaction():
            self.store.begin_step(self.run_id, number, command.index, "eis", command.label, self.cycle, start)
            self._at(command, number, "step", StepProgress(), None)
        try:
            spectrum = await self.channel.impedance(command.impedance)
        except InstrumentFault as exc:
            self._event("fault", f"spectrum in step {number}: {exc}")
            raise FaultStop(str(exc)) from exc
        self._spectrum += 1
        self.store.append_spectrum(
            self.run_id,
            self._spectrum,
            start,
            number,
            self.cycle,
            spectrum.frequency_Hz,
            spectrum.impedance_ohm,
        )
        if self.on_spectrum is not None:
            self.on_spectrum(
                {
                    "run": self.run_id,
                    "sequence": self._spectrum,
                    "t": start,
                    "step": number,
                    "cycle": self.cycle,
                    "frequency": spectrum.frequency_Hz.tolist(),
                    "z_real": spectrum.impedance_ohm.real.tolist(),
                    "z_imag": spectrum.impedance_ohm.imag.tolist(),
                }
            )
        with self.store.transaction():
            self.store.end_step(self.run_id, number, self.test_time_s, "spectrum", 0.0, 0.0)
            self._at(command, number, "done", StepProgress(), None)


def _holds(node: Node, command_index: int) -> bool:
    """Whether `node` is, or contains, the step command `command_index` (every-blocks aside)."""
    if isinstance(node, Loop):
        return any(_holds(child, command_index) for child in node.body)
    return node.index == command_index
