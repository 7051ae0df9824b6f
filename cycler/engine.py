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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cyclerd.clock import Clock
from cyclerd.cycles import (
    CycleSummary,
    ShortCircuit,
    capacity_retention,
    forward_voltage_stats,
    short_in_cycle,
    summarise,
)
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
from cyclerd.protocols.compiler import Loop, Node, Periodic, Program, StepCommand
from cyclerd.states import FINAL, RunState, check_transition
from cyclerd.store import Store

RETRY_BACKOFF_S = 2.0  # run-clock seconds before retrying a step after a transient fault


class SafetyStop(Exception):
    """A safety limit was crossed; the run ends with the cell made safe."""


class StopRequested(Exception):
    """Someone asked the run to stop."""


class FaultStop(Exception):
    """An instrument fault that retrying did not cure; the run ends with the cell made safe."""


@dataclass
class _CycleBuffer:
    """The logged samples of the cycle in progress (one cycle, never the whole run)."""

    parts: list[dict[str, np.ndarray]] = field(default_factory=list)
    cutoff_missed: bool = False

    def columns(self) -> dict[str, np.ndarray]:
        if not self.parts:
            return {}
        return {key: np.concatenate([p[key] for p in self.parts]) for key in self.parts[0]}


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
    ) -> None:
        self.program = program
        self.channel = channel
        self.store = store
        self.run_id = run_id
        self.clock = clock
        self.on_batch = on_batch
        self.retries = retries
        self.state = RunState.CREATED
        self.cycle = 0
        self.cycles: list[CycleSummary] = []
        self.voltage_stats: list[tuple[float, float]] = []
        self.cutoff_missed: dict[int, bool] = {}
        self.short: ShortCircuit | None = None
        self._seq = 0
        self._step_number = 0
        self._spectrum = 0
        self._batches = 0
        self._t0 = 0.0
        self._buffer = _CycleBuffer()
        self._resume = asyncio.Event()
        self._resume.set()
        self._stop_requested = False
        self._iterations: dict[int, int] = {}

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
    def test_time_s(self) -> float:
        return self.clock.now() - self._t0

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> RunResult:
        self._t0 = self.clock.now()
        self._transition(RunState.RUNNING, "run started")
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
        except BaseException as exc:
            await asyncio.shield(self._make_safe())
            self._transition(RunState.FAILED, f"run failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            await self._make_safe()
        return RunResult(self.state, self.cycles, self.short, reason)

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
        self.store.record_event(self.run_id, kind, message, t=self.test_time_s, data=data)

    async def _nodes(self, nodes: tuple[Node, ...]) -> None:
        for node in nodes:
            if isinstance(node, Loop):
                await self._loop(node)
            else:
                await self._command(node)

    async def _loop(self, loop: Loop) -> None:
        start = self.test_time_s
        first_cycle = self.cycle + 1
        iteration = 0
        while loop.count is None or iteration < loop.count:
            iteration += 1
            self._iterations[loop.index] = iteration
            if loop.innermost:
                self.cycle += 1
                self._buffer = _CycleBuffer()
            await self._nodes(loop.body)
            if loop.innermost and (why := self._end_of_cycle(loop, first_cycle)):
                self._event(
                    "loop", f"{loop.label} ended after cycle {self.cycle}: {why}", {"cycle": self.cycle}
                )
                return
            if loop.until.duration_s is not None and self.test_time_s - start >= loop.until.duration_s:
                self._event("loop", f"{loop.label} ended: its duration has passed", {"cycle": self.cycle})
                return

    def _end_of_cycle(self, loop: Loop, first_cycle: int) -> str:
        """Summarise the cycle just finished; the reason the loop must end, or ''."""
        columns = self._buffer.columns()
        if not columns:
            return ""
        summaries = summarise(columns)
        if not summaries:
            return ""
        (summary,) = summaries
        self.cycles.append(summary)
        self.store.save_cycle(self.run_id, summary.as_row())
        self.voltage_stats.append(forward_voltage_stats(columns, summary))
        self.cutoff_missed[summary.cycle] = self._buffer.cutoff_missed
        until = loop.until
        if until.short_circuit and self.short is None:
            self.short = short_in_cycle(
                len(self.cycles) - 1, self.cycles, self.voltage_stats, self.cutoff_missed
            )
            if self.short is not None:
                self._event(
                    "short_circuit",
                    f"short circuit detected in cycle {self.short.cycle}: {self.short.reason}",
                    {"cycle": self.short.cycle},
                )
                return "short circuit"
        ce = summary.coulombic_efficiency
        if until.coulombic_efficiency_below is not None and ce < until.coulombic_efficiency_below:
            return f"CE {100 * ce:.2f} % below {100 * until.coulombic_efficiency_below:g} %"
        if until.capacity_retention_below is not None:
            in_loop = [c for c in self.cycles if c.cycle >= first_cycle]
            retention = float(capacity_retention(in_loop)[-1])
            limit = until.capacity_retention_below
            if retention < limit:
                return f"capacity retention {100 * retention:.1f} % below {100 * limit:g} %"
        return ""

    async def _command(self, command: StepCommand) -> None:
        if command.impedance is not None:
            await self._impedance(command)
            return
        self._step_number += 1
        number = self._step_number
        self.store.begin_step(
            self.run_id, number, command.index, command.kind, command.label, self.cycle, self.test_time_s
        )
        progress = StepProgress()
        periodic = command.periodic
        pause_at = periodic.interval_s if periodic is not None else None
        if periodic is not None and periodic.at_start:
            await self._periodic(periodic)
        while True:
            end = await self._segment(command, number, progress, pause_at)
            progress = end.progress
            if end.reason == INTERRUPT and periodic is not None and pause_at is not None:
                await self._periodic(periodic)
                pause_at += periodic.interval_s
                continue
            break
        if end.reason == SAFETY:
            self.store.end_step(
                self.run_id, number, self.test_time_s, end.reason, progress.charge_As, progress.energy_J
            )
            raise SafetyStop(end.detail)
        voltage_cutoff = command.end.voltage_above_V is not None or command.end.voltage_below_V is not None
        if voltage_cutoff and end.reason == "duration":
            self._buffer.cutoff_missed = True
        if periodic is not None and periodic.at_end:
            await self._periodic(periodic)
        self.store.end_step(
            self.run_id, number, self.test_time_s, end.reason, progress.charge_As, progress.energy_J
        )
        self._checkpoint(command, progress)

    async def _segment(
        self, command: StepCommand, number: int, progress: StepProgress, pause_at: float | None
    ) -> StepEnd:
        """Run the step from `progress` until it ends or is interrupted; pause, stop and instrument
        faults are handled here, each resuming the step from the last stored sample."""
        faults = 0
        while True:
            segment_start = self.test_time_s - progress.t_s  # test time at step time 0 of this stretch
            stream = self.channel.run(command, progress, self.program.safety, pause_at)
            paused = False
            try:
                async for item in stream:
                    if isinstance(item, StepEnd):
                        return item
                    self._ingest(item, number, segment_start)
                    progress = StepProgress(
                        float(item.t_s[-1]), float(item.charge_As[-1]), float(item.energy_J[-1])
                    )
                    if self._stop_requested:
                        raise StopRequested
                    if not self._resume.is_set():
                        paused = True
                        break
            except InstrumentFault as exc:
                faults += 1
                await self._recover(exc, faults, number, progress)
                continue
            finally:
                await stream.aclose()
            if paused:
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
        await self.clock.sleep(RETRY_BACKOFF_S * attempt)
        reconnect = getattr(self.channel, "reconnect", None)
        if reconnect is not None:
            try:
                await reconnect()
            except InstrumentFault as exc:
                self._event("fault", f"reconnecting failed: {exc}")

    def _ingest(self, batch: Batch, number: int, segment_start: float) -> None:
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
        violation = self._violation(columns)
        if violation is not None:
            columns = {key: value[: violation[0] + 1] for key, value in columns.items()}
        self.store.append_samples(self.run_id, columns)
        self._seq += len(columns["seq"])
        if self.cycle > 0:
            self._buffer.parts.append(columns)
        if self.on_batch is not None:
            self.on_batch(columns)
        self._batches += 1
        if violation is not None:
            raise SafetyStop(violation[1])

    def _violation(self, columns: dict[str, np.ndarray]) -> tuple[int, str] | None:
        """The first sample crossing a safety limit, if any: every logged sample is checked."""
        s = self.program.safety
        v, i, t = columns["voltage"], columns["current"], columns["t"]
        found: list[tuple[int, str]] = []
        if s.voltage_max_V is not None and (v > s.voltage_max_V).any():
            k = int(np.argmax(v > s.voltage_max_V))
            found.append((k, f"voltage {v[k]:.4g} V above {s.voltage_max_V:g} V"))
        if s.voltage_min_V is not None and (v < s.voltage_min_V).any():
            k = int(np.argmax(v < s.voltage_min_V))
            found.append((k, f"voltage {v[k]:.4g} V below {s.voltage_min_V:g} V"))
        if s.current_max_A is not None and (np.abs(i) > s.current_max_A * (1 + 1e-9)).any():
            k = int(np.argmax(np.abs(i) > s.current_max_A * (1 + 1e-9)))
            found.append((k, f"|current| {abs(i[k]):.4g} A above {s.current_max_A:.4g} A"))
        temperature = columns.get("temperature")
        if (
            s.temperature_max_K is not None
            and temperature is not None
            and (temperature > s.temperature_max_K).any()
        ):
            k = int(np.argmax(temperature > s.temperature_max_K))
            found.append((k, f"temperature {temperature[k] - 273.15:.1f} °C above the limit"))
        if s.duration_max_s is not None and (t > s.duration_max_s).any():
            k = int(np.argmax(t > s.duration_max_s))
            found.append((k, f"run time {t[k] / 3600:.2f} h beyond duration_max"))
        return min(found) if found else None

    async def _periodic(self, periodic: Periodic) -> None:
        for sub in periodic.body:
            await self._command(sub)

    async def _impedance(self, command: StepCommand) -> None:
        assert command.impedance is not None
        self._step_number += 1
        number = self._step_number
        start = self.test_time_s
        self.store.begin_step(self.run_id, number, command.index, "eis", command.label, self.cycle, start)
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
        self.store.end_step(self.run_id, number, self.test_time_s, "spectrum", 0.0, 0.0)

    def _checkpoint(self, command: StepCommand, progress: StepProgress) -> None:
        self.store.save_checkpoint(
            self.run_id,
            self.test_time_s,
            {
                "after_command": command.index,
                "iterations": {str(k): v for k, v in self._iterations.items()},
                "cycle": self.cycle,
                "seq": self._seq,
                "step_number": self._step_number,
                "spectrum": self._spectrum,
                "progress": [progress.t_s, progress.charge_As, progress.energy_J],
            },
        )
