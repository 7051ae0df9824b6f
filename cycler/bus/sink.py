"""The bus as a sink of one run: what the runner records is shown live on MQTT as well."""

from __future__ import annotations

from collections.abc import Mapping

from cyclerd.bus.publisher import Bus
from cyclerd.engine.cursor import Cursor
from cyclerd.engine.sinks import Columns, RunEvent, Sink, SpectrumTaken
from cyclerd.engine.states import RunState


class BusSink(Sink):
    """Publishes run `run_id` on `channel`'s topics: data, events, spectra and the retained state.

    The bus takes the run on as the sink is made, before the run records anything, so that
    whatever of it the broker misses (an outage, a restart) is sent from the store later.
    """

    def __init__(self, bus: Bus, channel: str, run_id: int) -> None:
        self.bus = bus
        self.channel = channel
        self.run_id = run_id
        self._state = RunState.CREATED
        self._cycle = 0
        bus.track(channel, run_id)

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        self.bus.publish_batch(self.channel, self.run_id, columns)

    def event(self, event: RunEvent) -> None:
        self.bus.publish_event(self.channel, self.run_id, event)
        if event.kind in ("state", "gap"):
            state = {"run": self.run_id, "state": self._state.value, "cycle": self._cycle}
            self.bus.publish_state(self.channel, state)

    def state_changed(self, state: RunState, cycle: int) -> None:
        self._state, self._cycle = state, cycle

    def cycle_closed(self, summary: Mapping[str, float]) -> None:
        self._cycle = int(summary["cycle"])

    def spectrum(self, spectrum: SpectrumTaken) -> None:
        self.bus.publish_spectrum(self.channel, self.run_id, spectrum)
