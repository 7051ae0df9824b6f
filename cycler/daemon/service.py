"""The lab-PC service: one task per channel in one TaskGroup, each running its queued jobs.

A channel's task first takes up what a crash left behind (runs resume from their checkpoint or
are stopped safely, as lab.toml's resume policy says), then claims the oldest job queued for
it, runs it on its instrument or on a simulated cell in virtual time, publishes to the bus when
one is configured, and goes back to the queue. Runs are started and taken up through the same
session as `cyclerd run` (cyclerd.engine.session). Pause, resume and stop from this process (an
MQTT command) reach the run at once; from another process (the CLI) they arrive as request rows
that one poller forwards. An instrument that cannot be reached is retried with backoff; a job
that fails is recorded and leaves the other channels running.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cyclerd.alerts.notifier import Alerts
from cyclerd.alerts.sink import AlertSink
from cyclerd.bus import commands
from cyclerd.bus.publisher import Bus
from cyclerd.bus.sink import BusSink
from cyclerd.daemon.config import Channel as ChannelConfig
from cyclerd.daemon.config import Lab
from cyclerd.engine.resume import load_cursor, load_history
from cyclerd.engine.session import (
    CannotTakeUp,
    CellSpec,
    Controls,
    Device,
    Instrument,
    Session,
    SimulatedCell,
    forward_requests,
    prepare,
    prepare_stored,
)
from cyclerd.engine.sinks import LogSink, Sink
from cyclerd.engine.states import RunState
from cyclerd.protocols.units import registry
from cyclerd.store import heartbeat
from cyclerd.store.database import Run, Store
from cyclerd.store.heartbeat import keep_beating

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle channel looks at the queue: jobs start within a second


class Daemon:
    def __init__(self, lab: Lab, bus: Bus | None = None) -> None:
        self.lab = lab
        self.bus = bus
        self.controls = Controls()
        self.alerts = Alerts.from_config(lab.alerts, lab=lab.lab, database=lab.database)
        registry()  # pint's unit definitions are parsed as the daemon starts, not with its first job
        self._commands = Store(lab.database) if bus is not None else None
        if bus is not None:
            bus.handle_commands(self.command)

    async def run(self, until_idle: bool = False) -> None:
        """Serve every channel; with `until_idle`, return once no channel has a job left.

        The channels share one connection: SQLite drops a connection's page cache whenever
        another connection commits, so one connection per channel would read every table's pages
        again in each transaction. Sharing is safe because no transaction spans an await
        (`Store.transaction` refuses a second task).
        """
        store = Store(self.lab.database, wal_thread=True)
        self.alerts.after_restart(heartbeat.last(store))  # read before this daemon's first beat
        try:
            async with self.alerts, asyncio.TaskGroup() as group:
                poller = group.create_task(forward_requests(store, self.controls), name="requests")
                beating = group.create_task(keep_beating(store), name="heartbeat")  # for `cyclerd status`
                channels = [
                    group.create_task(self._serve(store, channel, until_idle), name=f"channel {channel.name}")
                    for channel in self.lab.channels
                ]
                try:
                    await asyncio.wait(channels)
                finally:
                    poller.cancel()
                    beating.cancel()
        finally:
            store.close()
            if self._commands is not None:
                self._commands.close()

    async def command(self, channel: str, payload: bytes) -> dict[str, Any]:
        """Answer one MQTT command: {"ok": true, ...} or {"ok": false, "error": ...}; never raises."""
        if channel not in {c.name for c in self.lab.channels}:
            names = ", ".join(c.name for c in self.lab.channels)
            return {"ok": False, "error": f"no channel {channel!r} in lab {self.lab.lab}; channels: {names}"}
        assert self._commands is not None
        try:
            command = commands.parse_command(payload)
            return {"ok": True, **await commands.execute(self._commands, channel, command, self.controls)}
        except commands.CommandError as exc:
            return {"ok": False, "error": str(exc)}

    # -- one channel ---------------------------------------------------------------------

    def _session(self, store: Store, channel: ChannelConfig) -> Session:
        device: Device
        if channel.sim is not None:
            device = SimulatedCell(channel.sim, channel.seed)
        else:
            found = next(i for i in self.lab.instruments if i.name == channel.instrument)
            device = Instrument(
                found.driver,
                found.resource,
                poll_s=found.poll_s,
                speed=self.lab.speed_of(found),
                reconnect_s=found.reconnect_s,
                reconnect_max_s=found.reconnect_max_s,
                give_up_s=found.give_up_s,
                label=found.name,
            )
        bus, name = self.bus, channel.name

        def views(run_id: int) -> Sequence[Sink]:
            logged = LogSink(log, name, run_id)
            alerting = AlertSink(self.alerts, store, name, run_id)
            return (logged, alerting) if bus is None else (BusSink(bus, name, run_id), logged, alerting)

        return Session(store, name, device, self.controls, views, resumable=True)

    async def _serve(self, store: Store, channel: ChannelConfig, until_idle: bool) -> None:
        await self._take_up(store, channel)
        self._publish_state(channel.name, {"run": None, "state": "idle"})
        while True:
            job = store.jobs.claim(channel.name)
            if job is None:
                if until_idle:
                    return
                await asyncio.sleep(IDLE_POLL_S)
                continue
            try:
                state, run_id = await self._run_job(store, channel, job)
                store.jobs.finish(job["id"], state, run_id)
            except Exception as exc:
                log.exception("job %s on %s failed", job["id"], channel.name)
                store.record_event(None, "job", f"job {job['id']} on {channel.name} failed: {exc}")
                store.jobs.finish(job["id"], "failed")
            self._publish_state(channel.name, {"run": None, "state": "idle"})

    async def _take_up(self, store: Store, channel: ChannelConfig) -> None:
        """After a crash: each unfinished run resumes or is stopped safely; lost claims queue again."""
        taken: set[int] = set()
        for run in store.unfinished_runs(channel.name):
            job = run.source.get("job")
            if isinstance(job, int):
                taken.add(job)
            try:
                state = await self._take_up_run(store, channel, run)
            except Exception as exc:
                log.exception("taking up run %s on %s failed", run.id, channel.name)
                store.record_event(run.id, "gap", f"could not take up the run after a restart: {exc}")
                store.set_state(run.id, RunState.FAILED.value, ended_unix=time.time())
                reason = f"could not take up the run after a restart: {exc}"
                self.alerts.run_ended(
                    run.id, channel.name, RunState.FAILED, reason, name=run.name, cell=run.cell
                )
                state = "failed"
            if isinstance(job, int):
                store.jobs.finish(job, state, run.id)
        runs_of_jobs = {r.source.get("job"): r.id for r in store.runs() if r.channel == channel.name}
        for job in store.jobs.orphans(channel.name):
            if job["id"] in taken:
                continue
            if job["id"] in runs_of_jobs:  # its run ended just before the crash
                store.jobs.finish(job["id"], "done", runs_of_jobs[job["id"]])
            else:  # claimed, never started: nothing touched the cell
                store.jobs.requeue(job["id"])
                store.record_event(
                    None, "job", f"job {job['id']} on {channel.name} queued again after a restart"
                )

    async def _take_up_run(self, store: Store, channel: ChannelConfig, run: Run) -> str:
        cursor = load_cursor(store, run.id)
        outage_s = time.time() - (store.checkpoint_unix(run.id) or run.started_unix)
        why = ""
        if self.lab.resume == "stop":
            why = "the resume policy is 'stop'"
        elif cursor is None:
            why = "it had no checkpoint yet"
        elif run.state == RunState.STOPPING.value:
            why = "a stop had been asked for"
        elif self.lab.resume_max_gap_s is not None and outage_s > self.lab.resume_max_gap_s:
            why = f"the daemon was away {outage_s:.0f} s, more than resume_max_gap_s"
        prepared = prepare_stored(store.protocol_text(run.id), run.cell, run.source.get("path", ""))
        session = self._session(store, channel)
        if not why and cursor is not None:
            try:
                history = load_history(store, run.id, cursor.cycle)
                await session.take_up(run.id, prepared, cursor, history, RunState(run.state), outage_s)
                return "done"
            except CannotTakeUp as exc:
                why = str(exc)
        await session.stop_safely(run.id, prepared, why, outage_s)
        store.set_state(run.id, RunState.STOPPED.value, ended_unix=time.time())
        reason = f"stopped safely after a restart: {why}"
        self.alerts.run_ended(run.id, channel.name, RunState.STOPPED, reason, name=run.name, cell=run.cell)
        self._publish_state(channel.name, {"run": run.id, "state": RunState.STOPPED.value})
        return "stopped"

    async def _run_job(
        self, store: Store, channel: ChannelConfig, job: dict[str, Any]
    ) -> tuple[str, int | None]:
        cell = job["cell"]
        prepared = prepare(store.jobs.protocol(job["id"]), job["source"], CellSpec.of_job(cell))
        source = {
            "job": job["id"],
            "path": job["source"],
            "channel": channel.name,
            "sim": channel.sim,
            "seed": channel.seed,
            "instrument": channel.instrument,
        }
        session = self._session(store, channel)
        outcome = await session.start(prepared, prepared.cell_info(channel.cell, cell), source)
        if isinstance(outcome, list):
            store.record_event(None, "job", f"job {job['id']} refused: " + "; ".join(outcome))
            return "refused", None
        return "done", outcome[0]

    def _publish_state(self, channel: str, state: Mapping[str, Any]) -> None:
        if self.bus is not None:
            self.bus.publish_state(channel, state)


async def serve_lab(lab: Lab, until_idle: bool = False) -> None:
    """The daemon with its bus (when lab.toml has [mqtt]) until SIGTERM/SIGINT or, if asked, idle.

    SIGTERM (systemctl stop) cancels the channel tasks: each makes its cell safe and keeps its
    run resumable, so the next start takes it up from the checkpoint.
    """
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    if main is not None:
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
    bus: Bus | None = None
    if lab.mqtt is not None:
        mqtt = lab.mqtt
        tls = ssl.create_default_context(cafile=mqtt.ca_file) if mqtt.tls else None
        bus = Bus(
            lab.lab,
            mqtt.host,
            mqtt.port,
            username=mqtt.username,
            password=mqtt.password(),
            tls_context=tls,
            store=Store(lab.database),
        )
        bus.start()
    try:
        await Daemon(lab, bus).run(until_idle=until_idle)
        if bus is not None and not await bus.flush():
            log.warning("the broker did not take every sample before exiting; the store has them")
    finally:
        if bus is not None:
            await bus.close()
