"""Where a run's results go: one typed interface, implemented by the store, the bus, the terminal.

The runner announces what happened — a step started, a batch of samples, a step ended, a
spectrum, a cycle summarised, an event, a state change — each with the cursor it leaves the run
at. Each sink takes what it needs: the store everything (it is the source of truth and decides
how writes are grouped into commits), the bus and the progress line a live view.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cyclerd.engine.cursor import Cursor
from cyclerd.engine.states import FINAL, RunState
from cyclerd.store.database import Store

Columns = Mapping[str, NDArray[Any]]


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
    """A run's events in the service's log (the journal), one line each, faults as warnings."""

    WARNINGS = frozenset({"fault", "safety", "short_circuit", "gap"})

    def __init__(self, log: logging.Logger, channel: str, run_id: int) -> None:
        self.log = log
        self.channel = channel
        self.run_id = run_id

    def event(self, event: RunEvent) -> None:
        level = logging.WARNING if event.kind in self.WARNINGS else logging.INFO
        self.log.log(level, "%s, run %d: %s", self.channel, self.run_id, event.message)
