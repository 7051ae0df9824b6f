"""The bus as a sink of one run: what the runner records is shown live on MQTT as well."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cyclerd.bus.publisher import Bus
from cyclerd.engine.cursor import Cursor
from cyclerd.engine.sinks import Columns, RunEvent, Sink, SpectrumTaken, StepStarted
from cyclerd.engine.states import RunState


class BusSink(Sink):
    """Publishes run `run_id` on `channel`'s topics: data, events, spectra and the retained state.

    The bus takes the run on as the sink is made, before the run records anything, so that
    whatever of it the broker misses (an outage, a restart) is sent from the store later.
    The retained state says where the run stands (step, its label and kind, cycle, times, the
    last voltage and current) and is published whenever that changes in kind: at a state
    change, at every step's start and at every cycle's end, so a viewer that connects at any
    moment sees the run's position without replaying its data.
    """

    def __init__(self, bus: Bus, channel: str, run_id: int) -> None:
        self.bus = bus
        self.channel = channel
        self.run_id = run_id
        self._state = RunState.CREATED
        self._cycle = 0
        self._step: StepStarted | None = None
        self._last: dict[str, float] = {}
        bus.track(channel, run_id)

    def step_started(self, step: StepStarted, cursor: Cursor | None) -> None:
        self._step, self._cycle = step, max(self._cycle, step.cycle)
        self._publish_state(step.t_s)

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        self.bus.publish_batch(self.channel, self.run_id, columns)
        self._last = {name: float(columns[name][-1]) for name in ("t", "voltage", "current")}

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
        self.bus.publish_state(self.channel, state)
