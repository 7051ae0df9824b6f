"""The bus as a sink of one run: what the runner records is shown live on MQTT as well."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from cyclerd.engine.cursor import Cursor, Phase
from cyclerd.engine.sinks import Columns, RunEvent, Sink, SpectrumTaken, StepEnded, StepStarted
from cyclerd.engine.states import FINAL, RunState
from cyclerd.engine.time_left import InStep, TimeLeft
from cyclerd.protocols.program import Program


class Publisher(Protocol):
    """A live view of the lab's runs: the MQTT bus (cyclerd.bus.publisher.Bus), the dashboard's
    hub (cyclerd.web.live.LiveHub). Each hook must return at once: the runner waits for it."""

    def track(self, channel: str, run_id: int) -> None: ...

    def publish_batch(self, channel: str, run_id: int, columns: Mapping[str, Any]) -> None: ...

    def publish_state(self, channel: str, state: Mapping[str, Any]) -> None: ...

    def publish_event(self, channel: str, run_id: int, event: RunEvent) -> None: ...

    def publish_spectrum(self, channel: str, run_id: int, spectrum: SpectrumTaken) -> None: ...


class Publishers:
    """Several live views fed as one, so that each sees the same states, computed once."""

    def __init__(self, publishers: Sequence[Publisher]) -> None:
        self.publishers = tuple(publishers)

    def track(self, channel: str, run_id: int) -> None:
        for publisher in self.publishers:
            publisher.track(channel, run_id)

    def publish_batch(self, channel: str, run_id: int, columns: Mapping[str, Any]) -> None:
        for publisher in self.publishers:
            publisher.publish_batch(channel, run_id, columns)

    def publish_state(self, channel: str, state: Mapping[str, Any]) -> None:
        for publisher in self.publishers:
            publisher.publish_state(channel, state)

    def publish_event(self, channel: str, run_id: int, event: RunEvent) -> None:
        for publisher in self.publishers:
            publisher.publish_event(channel, run_id, event)

    def publish_spectrum(self, channel: str, run_id: int, spectrum: SpectrumTaken) -> None:
        for publisher in self.publishers:
            publisher.publish_spectrum(channel, run_id, spectrum)


class BusSink(Sink):
    """Publishes run `run_id` on `channel`'s topics: data, events, spectra and the retained state.

    The bus takes the run on as the sink is made, before the run records anything, so that
    whatever of it the broker misses (an outage, a restart) is sent from the store later.
    The retained state says where the run stands (step, its label and kind, cycle, times, the
    last voltage and current, the time left) and is published whenever that changes in kind:
    at a state change, at every step's start and at every cycle's end, so a viewer that
    connects at any moment sees the run's position without replaying its data.

    The time left comes from the run's `program` (without one, the state has no time left).
    """

    def __init__(self, bus: Publisher, channel: str, run_id: int, program: Program | None = None) -> None:
        self.bus = bus
        self.channel = channel
        self.run_id = run_id
        self._state = RunState.CREATED
        self._cycle = 0
        self._step: StepStarted | None = None  # the step the cell is in, an every-block's too
        self._interrupted: StepStarted | None = None  # the program's step, which a block interrupts
        self._cursor: Cursor | None = None
        self._last: dict[str, float] = {}
        self._time_left = None if program is None else TimeLeft(program)
        self._owed = False  # a state went out without the time left, which is known at the next batch
        bus.track(channel, run_id)

    def step_started(self, step: StepStarted, cursor: Cursor | None) -> None:
        self._step, self._cycle = step, max(self._cycle, step.cycle)
        if cursor is not None:  # a step of the program, not of an every-block
            self._cursor, self._interrupted = cursor, step
        self._publish_state(step.t_s)

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        self.bus.publish_batch(self.channel, self.run_id, columns)
        self._last = {name: float(columns[name][-1]) for name in ("t", "voltage", "current")}
        self._cursor = cursor or self._cursor
        if self._owed and self._cursor is not None:  # taken up: the position is known now
            self._publish_state(self._last["t"])

    def step_ended(self, step: StepEnded, cursor: Cursor | None) -> None:
        self._cursor = cursor or self._cursor

    def moved(self, cursor: Cursor) -> None:
        self._cursor = cursor
        if cursor.phase is Phase.STEP and self._interrupted is not None:
            self._step = self._interrupted  # an every-block has ended: its step goes on

    def event(self, event: RunEvent) -> None:
        self.bus.publish_event(self.channel, self.run_id, event)
        if event.kind in ("state", "gap"):
            self._publish_state(event.t_s)

    def state_changed(self, state: RunState, cycle: int) -> None:
        self._state, self._cycle = state, cycle

    def cycle_closed(self, summary: Mapping[str, float]) -> None:
        self._cycle = int(summary["cycle"])
        self._publish_state(self._last.get("t", 0.0))

    def spectrum(self, spectrum: SpectrumTaken) -> None:
        self.bus.publish_spectrum(self.channel, self.run_id, spectrum)

    def _publish_state(self, t_s: float) -> None:
        state: dict[str, Any] = {"run": self.run_id, "state": self._state.value, "cycle": self._cycle}
        state["elapsed_s"] = max(t_s, self._last.get("t", 0.0))
        if self._step is not None:
            step = self._step
            state |= {"step": step.number, "step_kind": step.kind, "step_label": step.label}
            state["step_time_s"] = max(state["elapsed_s"] - step.t_s, 0.0)
        if self._last:
            state |= {"voltage": self._last["voltage"], "current": self._last["current"]}
        if self._time_left is not None:
            state |= self._left(state["elapsed_s"])
            self._owed = "time_left_s" not in state
        self.bus.publish_state(self.channel, state)

    def _left(self, now_s: float) -> dict[str, float | None]:
        """`time_left_s`: the most the run can still take (None: the plan cannot say);
        `time_left_min_s`: the least. An ended run has nothing left; neither is said before
        the sink knows where the run stands."""
        assert self._time_left is not None
        if self._state in FINAL:
            return {"time_left_s": 0.0, "time_left_min_s": 0.0}
        if self._cursor is None and now_s > 0:  # taken up after a restart: no position yet
            return {}
        step = None if self._step is None else InStep(self._step.command, self._step.t_s)
        left = self._time_left.at(self._cursor, step, now_s)
        return {"time_left_s": left.high, "time_left_min_s": left.low}
