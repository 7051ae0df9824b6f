"""Alerts as a run's sink: the run's own events say when it ended badly or showed a short.

Added to a session's views (after the store, so the record is written first), it needs nothing
from the runner beyond what every sink gets: the "state" event that carries a final state and
its reason, and the "short_circuit" event. A hook only queues an alert and never raises: an
alert must not be able to fail a run.
"""

from __future__ import annotations

import logging

from cyclerd.alerts.notifier import Alerts
from cyclerd.engine.sinks import RunEvent, Sink
from cyclerd.engine.states import FINAL, RunState
from cyclerd.store.database import Run, Store

log = logging.getLogger(__name__)


class AlertSink(Sink):
    """Raises run `run_id`'s alerts on `alerts`; the run's name and cell are read from `store`."""

    def __init__(self, alerts: Alerts, store: Store, channel: str, run_id: int) -> None:
        self.alerts = alerts
        self.store = store
        self.channel = channel
        self.run_id = run_id

    def event(self, event: RunEvent) -> None:
        if not self.alerts.receivers:
            return
        try:
            if event.kind == "short_circuit":
                run = self._run()
                self.alerts.short_detected(
                    self.run_id,
                    self.channel,
                    event.message,
                    name=run.name if run else "",
                    cell=run.cell if run else None,
                )
            elif event.kind == "state" and event.data.get("state") in FINAL:
                run = self._run()
                self.alerts.run_ended(
                    self.run_id,
                    self.channel,
                    RunState(event.data["state"]),
                    event.message,
                    name=run.name if run else "",
                    cell=run.cell if run else None,
                )
        except Exception:  # an alert must never fail the run it is about
            log.exception("%s, run %d: no alert raised for %s", self.channel, self.run_id, event.kind)

    def _run(self) -> Run | None:
        try:
            return self.store.run(self.run_id)
        except KeyError:
            return None
