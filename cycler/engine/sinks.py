"""Where a run's results go: one typed interface, implemented by the store, the bus, the terminal.

The runner announces what happened — a step started, a batch of samples, a step ended, a
spectrum, a cycle summarised, an event, a state change — each with the cursor it leaves the run
at. Each sink takes what it needs: the store everything (it is the source of truth and decides
how writes are grouped into commits), the bus and the progress line a live view.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cyclerd.engine.cursor import Cursor, Phase
from cyclerd.engine.states import FINAL, RunState
from cyclerd.store.database import Store

Columns = Mapping[str, NDArray[Any]]

# The run a task is running, as log fields (run, channel, cell): set by its LogSink, read by the
# daemon's log handler (cyclerd.daemon.logs) for lines that do not name a run themselves.
RUN_FIELDS: ContextVar[Mapping[str, Any] | None] = ContextVar("cyclerd_run_fields", default=None)


@dataclass(frozen=True, slots=True)
class StepStarted:
    number: int
    command: int
    kind: str
    label: str
    cycle: int
    t_s: float


@dataclass(frozen=True, slots=True)
class StepEnded:
    number: int
    t_s: float
    reason: str
    charge_As: float | None  # None: a step a crash cut off (its stored samples tell)
    energy_J: float | None


@dataclass(frozen=True, slots=True)
class SpectrumTaken:
    sequence: int
    t_s: float
    step: int
    cycle: int
    frequency_Hz: NDArray[np.float64]
    impedance_ohm: NDArray[np.complex128]


@dataclass(frozen=True, slots=True)
class RunEvent:
    t_s: float
    kind: str
    message: str
    data: Mapping[str, Any]


class Sink:
    """A receiver of one run's results; every hook does nothing unless a sink overrides it.

    `cursor` is where the run stands once the result is in; a hook must not keep it beyond the
    call unless it needs it (it is immutable, so keeping it is safe).
    """

    def step_started(self, step: StepStarted, cursor: Cursor | None) -> None:
        """`cursor` None: the run notes the step without moving (a sweep or spectrum run again)."""

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        """Samples as stored (SAMPLE_COLUMNS); `final`: the step's end follows at once."""

    def step_ended(self, step: StepEnded, cursor: Cursor | None) -> None: ...

    def spectrum(self, spectrum: SpectrumTaken) -> None: ...

    def cycle_closed(self, summary: Mapping[str, float]) -> None: ...

    def moved(self, cursor: Cursor) -> None:
        """The run moved on without a result (an every-block began or ended)."""

    def event(self, event: RunEvent) -> None: ...

    def state_changed(self, state: RunState, cycle: int) -> None: ...


class Sinks(Sink):
    """Several sinks in order; the store comes first, so a view never runs ahead of the record."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = tuple(sinks)

    def step_started(self, step: StepStarted, cursor: Cursor | None) -> None:
        for sink in self.sinks:
            sink.step_started(step, cursor)

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        for sink in self.sinks:
            sink.batch(columns, cursor, final)

    def step_ended(self, step: StepEnded, cursor: Cursor | None) -> None:
        for sink in self.sinks:
            sink.step_ended(step, cursor)

    def spectrum(self, spectrum: SpectrumTaken) -> None:
        for sink in self.sinks:
            sink.spectrum(spectrum)

    def cycle_closed(self, summary: Mapping[str, float]) -> None:
        for sink in self.sinks:
            sink.cycle_closed(summary)

    def moved(self, cursor: Cursor) -> None:
        for sink in self.sinks:
            sink.moved(cursor)

    def event(self, event: RunEvent) -> None:
        for sink in self.sinks:
            sink.event(event)

    def state_changed(self, state: RunState, cycle: int) -> None:
        for sink in self.sinks:
            sink.state_changed(state, cycle)


class StoreSink(Sink):
    """Writes a run into the store, grouping writes into as few commits as a crash allows.

    What a crash may lose without harm, because the run would redo it from the commit before —
    a step's start, a cycle's summary, a step's last batch whose end follows at once — waits for
    the run's next write and shares its commit. Everything else commits as it comes. Each commit
    carries the latest cursor once, so the last stored sample and the position a restart
    resumes from always agree, and a cursor that a later one in the same commit replaces is
    never written.
    """

    def __init__(self, store: Store, run_id: int) -> None:
        self.store = store
        self.run_id = run_id
        self._waiting: list[Callable[[], None]] = []
        self._cursor: tuple[float, Cursor] | None = None  # the latest, for the next commit

    def _commit(self, write: Callable[[], None] | None) -> None:
        """One transaction: what waited, `write`, the latest cursor. A failure takes all along."""
        waiting, self._waiting = self._waiting, []
        due, self._cursor = self._cursor, None
        with self.store.transaction():
            for done in waiting:
                done()
            if write is not None:
                write()
            if due is not None:
                self.store.save_checkpoint(self.run_id, due[0], due[1].as_state())

    def _at(self, t: float, cursor: Cursor | None) -> None:
        if cursor is not None:
            self._cursor = (t, cursor)

    def step_started(self, step: StepStarted, cursor: Cursor | None) -> None:
        run = self.run_id
        self._at(step.t_s if cursor is None else cursor.t_s, cursor)
        self._waiting.append(
            lambda: self.store.begin_step(
                run, step.number, step.command, step.kind, step.label, step.cycle, step.t_s
            )
        )
        if step.kind == "eis":  # a spectrum may take minutes: `cyclerd status` shows it meanwhile
            self._commit(None)

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        run = self.run_id
        self._at(float(columns["t"][-1]), cursor)
        if final:
            self._waiting.append(lambda: self.store.append_samples(run, columns))
        else:
            self._commit(lambda: self.store.append_samples(run, columns))

    def step_ended(self, step: StepEnded, cursor: Cursor | None) -> None:
        run = self.run_id
        if cursor is not None:
            self._at(cursor.t_s, cursor)

        def end() -> None:
            self.store.end_step(run, step.number, step.t_s, step.reason, step.charge_As, step.energy_J)

        self._commit(end)

    def spectrum(self, spectrum: SpectrumTaken) -> None:
        run = self.run_id
        self._commit(
            lambda: self.store.append_spectrum(
                run,
                spectrum.sequence,
                spectrum.t_s,
                spectrum.step,
                spectrum.cycle,
                spectrum.frequency_Hz,
                spectrum.impedance_ohm,
            )
        )

    def cycle_closed(self, summary: Mapping[str, float]) -> None:
        run = self.run_id
        reference = summary.get("reference_cycle")
        self._waiting.append(
            lambda: self.store.save_cycle(run, summary, None if reference is None else int(reference))
        )

    def moved(self, cursor: Cursor) -> None:
        self._at(cursor.t_s, cursor)
        self._commit(None)

    def event(self, event: RunEvent) -> None:
        run = self.run_id
        self._commit(
            lambda: self.store.record_event(run, event.kind, event.message, t=event.t_s, data=event.data)
        )

    def state_changed(self, state: RunState, cycle: int) -> None:
        ended = time.time() if state in FINAL else None
        run = self.run_id
        self._commit(lambda: self.store.set_state(run, state.value, ended_unix=ended))


class LogSink(Sink):
    """A run's decisions in the service's log (the journal), one line each, with the run, channel
    and cell as fields (`extra=`; cyclerd.daemon.logs writes them as JSON when asked).

    Lines: every event (state changes and how the run finished, faults in the instrument's words,
    gaps and resumes, pauses, loop ends, safety), each step's start with its label, each
    every-block taken, and cycles closed. A loop's first pass is told step by step at INFO; its
    later passes only by their milestone cycles (`milestone`) and by events, their step starts and
    every-blocks at DEBUG: a 250-cycle protocol on a fast simulated cell would otherwise write
    thousands of lines a minute, and an operator reads the first cycle to see the protocol's shape
    and the events to see what went wrong. Everything else about a cycle is in the store.
    """

    WARNINGS = frozenset({"fault", "safety", "short_circuit", "gap"})

    def __init__(self, log: logging.Logger, channel: str, run_id: int, cell: str | None = None) -> None:
        self.log = log
        self.channel = channel
        self.run_id = run_id
        self.cell = cell
        self.fields: dict[str, Any] = {"run": run_id, "channel": channel}
        if cell is not None:
            self.fields["cell"] = cell
        self.prefix = f"{channel}, run {run_id}" + (f", cell {cell}" if cell is not None else "")
        self._step = (0, "")  # the step the run is on (an every-block's steps aside): number, label
        self._repeat = False  # a loop's second or later pass: steps told at DEBUG

    def _say(self, level: int, kind: str, message: str, **fields: Any) -> None:
        # Whatever this run's task logs from now on without naming a run (a driver reconnecting)
        # is given the run's fields in the journal: see cyclerd.daemon.logs.RunFields.
        RUN_FIELDS.set(self.fields)
        if self.log.isEnabledFor(level):
            self.log.log(level, "%s: %s", self.prefix, message, extra={**self.fields, "kind": kind, **fields})

    def _at(self, cursor: Cursor) -> None:
        self._repeat = any(loop.iteration > 1 for loop in cursor.loops.values())

    def step_started(self, step: StepStarted, cursor: Cursor | None) -> None:
        fields = {"step": step.number, "label": step.label, "cycle": step.cycle}
        if cursor is None:  # a step of an every-block: the block's own line said it was taken
            number, label = self._step
            inside = f"in the every-block of step {number} ({label})"
            self._say(logging.DEBUG, "step", f"step {step.number} ({step.label}) started {inside}", **fields)
            return
        self._at(cursor)
        self._step = (step.number, step.label)
        cycle = f" in cycle {step.cycle}" if step.cycle else ""
        level = logging.DEBUG if self._repeat else logging.INFO
        self._say(level, "step", f"step {step.number} ({step.label}) started{cycle}", **fields)
        if cursor.phase is Phase.AT_START:
            self._every(cursor, "at its start")

    def moved(self, cursor: Cursor) -> None:
        self._at(cursor)
        if cursor.phase is Phase.INTERRUPT:
            self._every(cursor, f"at {cursor.progress.t_s:.0f} s of step time")
        elif cursor.phase is Phase.AT_END:
            self._every(cursor, "as the step ended")
        elif cursor.phase is Phase.AT_START:  # taken up after a restart: the block runs again
            self._every(cursor, "at its start")

    def _every(self, cursor: Cursor, when: str) -> None:
        number, label = self._step
        step = f"step {cursor.step_number}" + (f" ({label})" if number == cursor.step_number else "")
        self._say(
            logging.DEBUG if self._repeat else logging.INFO,
            "every",
            f"every-block of {step} taken {when}",
            step=cursor.step_number,
            step_time=round(cursor.progress.t_s, 3),
            cycle=cursor.cycle,
        )

    def step_ended(self, step: StepEnded, cursor: Cursor | None) -> None:
        self._say(logging.DEBUG, "step_end", f"step {step.number} ended: {step.reason}", step=step.number)

    def cycle_closed(self, summary: Mapping[str, float]) -> None:
        cycle = int(summary["cycle"])
        ce = summary.get("coulombic_efficiency", math.nan)
        efficiency = f"{100 * ce:.2f} %" if math.isfinite(ce) else "n/a"
        forward, reverse = summary["forward_As"] / 3.6, summary["reverse_As"] / 3.6
        self._say(
            logging.INFO if milestone(cycle) else logging.DEBUG,
            "cycle",
            f"cycle {cycle} done: coulombic efficiency {efficiency}"
            f" ({forward:.4g} mAh forward, {reverse:.4g} mAh back)",
            cycle=cycle,
            coulombic_efficiency=ce if math.isfinite(ce) else None,
        )

    def event(self, event: RunEvent) -> None:
        level = logging.WARNING if event.kind in self.WARNINGS else logging.INFO
        fields = {key: event.data[key] for key in ("step", "cycle", "state") if key in event.data}
        message, final = event.message, False
        if event.kind == "state" and "state" in event.data:
            state = RunState(event.data["state"])
            final = state in FINAL
            if state is RunState.FAILED:
                level = logging.ERROR
            if final and not message.startswith("run "):  # "safety: ...": say that the run ended
                message = f"run {state.value}: {message}"
        self._say(level, event.kind, message, **fields)
        if final:  # what the task logs next belongs to no run
            RUN_FIELDS.set(None)


def milestone(cycle: int) -> bool:
    """Cycles 1 to 10, then every 10th to 100, every 100th to 1000, ...: the cycles a log tells
    at INFO, so that its length grows with the logarithm of a run's length."""
    return cycle <= 10 or cycle % 10 ** (len(str(cycle)) - 1) == 0
