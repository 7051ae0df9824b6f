"""The lab-PC service: one task per channel in one TaskGroup, each running its queued jobs.

A channel's task first takes up what a crash left behind (runs resume from their checkpoint or
are stopped safely, as lab.toml's resume policy says), then claims the oldest job queued for
it, runs it on its instrument or on a simulated cell in virtual time, publishes to the bus when
one is configured, and goes back to the queue. Runs are started and taken up through the same
session as `cyclerd run` (cyclerd.engine.session). Pause, resume and stop from this process (an
MQTT command) reach the run at once; from another process (the CLI) they arrive as request rows
that one poller forwards. An instrument that cannot be reached is retried with backoff; a job
that fails is recorded and leaves the other channels running.

A channel's task never ends on an error: a store that cannot be written (a full disk, a
read-only file) leaves the channel's cell safe and its run resumable, and the channel waits,
saying why, until the store can be written again, then takes the run up; anything else is
logged and the channel starts over. The process around it is cyclerd.daemon.process's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

from cyclerd.alerts.notifier import Alerts
from cyclerd.alerts.sink import AlertSink
from cyclerd.bus import commands
from cyclerd.bus.publisher import Bus
from cyclerd.bus.sink import BusSink, Publisher, Publishers
from cyclerd.daemon import reach
from cyclerd.daemon.config import Channel as ChannelConfig
from cyclerd.daemon.config import Lab
from cyclerd.daemon.process import serve_until_stopped
from cyclerd.engine.record import MIN_FREE_BYTES, StoreUnwritable, as_unwritable, free_bytes
from cyclerd.engine.resume import load_cursor, read_history
from cyclerd.engine.session import (
    CannotTakeUp,
    CellSpec,
    Controls,
    Device,
    Instrument,
    Session,
    SimulatedCell,
    forward_requests,
    off_the_loop,
    prepare,
    prepare_stored,
)
from cyclerd.engine.sinks import LogSink, Sink
from cyclerd.engine.states import RunState
from cyclerd.protocols.program import Program
from cyclerd.protocols.units import registry
from cyclerd.store import heartbeat
from cyclerd.store.database import Run, Store
from cyclerd.store.heartbeat import keep_beating
from cyclerd.web.live import LiveHub

__all__ = ["Daemon", "open_store", "serve_lab"]

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle channel looks at the queue: jobs start within a second
STORE_RETRY_S = 1.0  # a store that cannot be written is tried again after this, then twice as long
STORE_RETRY_MAX_S = 60.0  # ... up to this: a line in the log a minute while it lasts
CHANNEL_RETRY_S = 10.0  # a channel that failed unexpectedly starts over after this


class Daemon:
    def __init__(self, lab: Lab, bus: Bus | None = None) -> None:
        self.lab = lab
        self.bus = bus
        self.controls = Controls()
        self.alerts = Alerts.from_config(lab.alerts, lab=lab.lab, database=lab.database)
        registry()  # pint's unit definitions are parsed as the daemon starts, not with its first job
        self._commands: Store | None = None  # MQTT commands' own connection, opened with the first
        if bus is not None:
            bus.handle_commands(self.command)
        self.live = None if lab.web is None else LiveHub(lab.lab)  # the dashboard's feed
        self._publishers: list[Publisher] = [p for p in (bus, self.live) if p is not None]

    async def run(self, until_idle: bool = False) -> None:
        """Serve every channel; with `until_idle`, return once no channel has a job left.

        The channels share one connection: SQLite drops a connection's page cache whenever
        another connection commits, so one connection per channel would read every table's pages
        again in each transaction. Sharing is safe because no transaction spans an await
        (`Store.transaction` refuses a second task).
        """
        store = await open_store(self.lab.database, wal_thread=True)
        self.alerts.after_restart(heartbeat.last(store))  # read before this daemon's first beat
        try:
            async with self.alerts, self._dashboard(), asyncio.TaskGroup() as group:
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
                self._commands = None

    def _dashboard(self) -> AbstractAsyncContextManager[object]:
        """The dashboard while the channels run, when lab.toml has [web]. Its server (aiohttp,
        the analysis behind its pages: a second of imports) is loaded only then."""
        if self.lab.web is None:
            return contextlib.nullcontext()
        from cyclerd.web.serve import serve_dashboard

        return serve_dashboard(self.lab, self)

    async def command(self, channel: str, payload: bytes) -> dict[str, Any]:
        """Answer one MQTT command: {"ok": true, ...} or {"ok": false, "error": ...}; never raises."""
        try:
            reply = await self.execute(channel, commands.parse_command(payload))
            return {"ok": True, **reply}
        except commands.CommandError as exc:
            return {"ok": False, "error": str(exc)}

    async def execute(self, channel: str, command: commands.Command, by: str | None = None) -> dict[str, Any]:
        """Carry out a command (MQTT's, the dashboard's, asked by user `by`) on `channel`; the
        reply's fields. CommandError says why it cannot be carried out."""
        if channel not in {c.name for c in self.lab.channels}:
            names = ", ".join(c.name for c in self.lab.channels)
            raise commands.CommandError(f"no channel {channel!r} in lab {self.lab.lab}; channels: {names}")
        try:
            if self._commands is None:
                self._commands = Store(self.lab.database)
            return await commands.execute(
                self._commands, channel, command, self.controls, self.refusals(channel), by
            )
        except commands.CommandError:
            raise
        except Exception as exc:
            problem = as_unwritable(exc, self.lab.database)
            if problem is None:
                raise
            raise commands.CommandError(f"the daemon cannot use its store now: {problem.why}") from None

    def refusals(self, channel: str) -> commands.Refusals:
        """Why `channel` cannot run a program ([] if it may)."""
        return partial(reach.refusals, self.lab, channel)

    # -- one channel ---------------------------------------------------------------------

    def _session(self, store: Store, channel: ChannelConfig, cell: str | None = None) -> Session:
        device: Device
        if channel.sim is not None:
            device = SimulatedCell(channel.sim, channel.seed, speed=self.lab.sim_speed)
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
                cycler_channel=channel.cycler_channel,
            )
        publishers, name = self._publishers, channel.name

        def views(run_id: int, program: Program) -> Sequence[Sink]:
            logged = LogSink(log, name, run_id, cell)
            alerting = AlertSink(self.alerts, store, name, run_id)
            if not publishers:
                return (logged, alerting)
            live = publishers[0] if len(publishers) == 1 else Publishers(publishers)
            return (BusSink(live, name, run_id, program), logged, alerting)

        return Session(store, name, device, self.controls, views, resumable=True)

    async def _serve(self, store: Store, channel: ChannelConfig, until_idle: bool) -> None:
        """The channel's task: take up, then work through the queue; it ends only when idle
        (`until_idle`) or cancelled. Whatever fails is said, with the cell left safe (the run
        made it safe as it ended), and the channel goes on when it can: the other channels
        are never taken down with it."""
        while True:
            try:
                await self._take_up(store, channel)
                self._publish_state(channel.name, {"run": None, "state": "idle"})
                await self._work(store, channel, until_idle)
                return
            except Exception as exc:
                unwritable = as_unwritable(exc, store.path)
                if unwritable is not None:
                    await self._wait_for_store(store, channel, unwritable)
                    continue
                then = (
                    "the channel ends (--until-idle)"
                    if until_idle
                    else f"starting over in {CHANNEL_RETRY_S:g} s"
                )
                log.exception(
                    "%s: stopped on an error it did not expect; its cell is safe; %s", channel.name, then
                )
                self._publish_state(channel.name, {"run": None, "state": "error", "why": str(exc)})
                if until_idle:
                    return
                await asyncio.sleep(CHANNEL_RETRY_S)

    async def _work(self, store: Store, channel: ChannelConfig, until_idle: bool) -> None:
        while True:
            job = store.jobs.claim(channel.name)
            if job is None:
                if until_idle:
                    return
                await asyncio.sleep(IDLE_POLL_S)
                continue
            fields = {
                "channel": channel.name,
                "cell": job["cell"].get("cell"),
                "job": job["id"],
                "kind": "job",
            }
            log.info(
                "job %d on %s taken: %s (%s)",
                job["id"],
                channel.name,
                job["name"],
                job["source"],
                extra=fields,
            )
            idle: dict[str, Any] = {"run": None, "state": "idle"}
            try:
                state, run_id, why = await self._run_job(store, channel, job)
            except Exception as exc:
                if as_unwritable(exc, store.path) is not None:
                    raise  # the run stays resumable: taken up once the store can be written
                log.exception("job %d on %s failed", job["id"], channel.name, extra=fields)
                store.record_event(None, "job", f"job {job['id']} on {channel.name} failed: {exc}")
                store.jobs.finish(job["id"], "failed", reason=str(exc))
                idle["failed"] = {"job": job["id"], "reason": str(exc)}
            else:
                store.jobs.finish(job["id"], state, run_id, reason=why)
                if why is not None:
                    log.warning("job %d on %s refused: %s", job["id"], channel.name, why, extra=fields)
                    idle["refused"] = {"job": job["id"], "reason": why}
            self._publish_state(channel.name, idle)

    async def _wait_for_store(self, store: Store, channel: ChannelConfig, problem: StoreUnwritable) -> None:
        """Wait, saying why, until the store takes a write again (and, when the disk was full,
        has room for more than that one): the event that says what happened is that write."""
        since = time.time()
        log.error(
            "%s: cannot write the store: %s. Its cell is safe and its run kept; the channel goes on"
            " by itself once the store can be written",
            channel.name,
            problem.why,
        )
        self._publish_state(channel.name, {"run": None, "state": "waiting", "why": problem.why})
        delay = STORE_RETRY_S
        while True:
            await asyncio.sleep(delay)
            delay = min(2 * delay, STORE_RETRY_MAX_S)
            free = free_bytes(store.path)
            if problem.full and free is not None and free < MIN_FREE_BYTES:
                log.warning(
                    "%s: still waiting for room: %.1f MB free on the disk holding %s, %.0f MB needed",
                    channel.name,
                    free / 2**20,
                    store.path,
                    MIN_FREE_BYTES / 2**20,
                )
                continue
            waited = time.time() - since
            message = (
                f"{channel.name}: the store could not be written for {waited:.0f} s ({problem.why});"
                " the cell was kept safe meanwhile, and the channel goes on"
            )
            try:
                store.record_event(None, "store", message, data={"channel": channel.name, "waited_s": waited})
            except Exception as exc:
                again = as_unwritable(exc, store.path)
                if again is None:
                    raise
                problem = again
                log.warning("%s: still cannot write the store: %s", channel.name, again.why)
                continue
            log.warning("%s: the store can be written again after %.0f s; going on", channel.name, waited)
            return

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
                if as_unwritable(exc, store.path) is not None:
                    raise  # not the run's fault: it is taken up once the store can be written
                log.exception("taking up run %s on %s failed", run.id, channel.name)
                store.record_event(run.id, "gap", f"could not take up the run after a restart: {exc}")
                store.set_state(run.id, RunState.FAILED.value, ended_unix=time.time())
                reason = f"could not take up the run after a restart: {exc}"
                self.alerts.run_ended(
                    run.id, channel.name, RunState.FAILED, reason, name=run.name, cell=run.cell
                )
                state = "failed"
            if isinstance(job, int) and state == "requeue":
                store.jobs.requeue(job)
                message = (
                    f"job {job} on {channel.name} queued again after a restart: its run {run.id}"
                    " was stopped before it recorded anything"
                )
                store.record_event(None, "job", message)
                log.warning("%s", message, extra={"channel": channel.name, "job": job, "kind": "job"})
            elif isinstance(job, int):
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
        elif cursor is None:  # a checkpoint comes with the first samples committed: none were
            why = "it had no checkpoint yet"
        elif run.state == RunState.STOPPING.value:
            why = "a stop had been asked for"
        elif self.lab.resume_max_gap_s is not None and outage_s > self.lab.resume_max_gap_s:
            why = f"the daemon was away {outage_s:.0f} s, more than resume_max_gap_s"
        session = self._session(store, channel, run.cell.get("cell"))
        if not why and cursor is not None:
            text, path = store.protocol_text(run.id), run.source.get("path", "")
            # Compiled in the protocol worker while the session makes the cell safe.
            preparing = asyncio.ensure_future(off_the_loop(prepare_stored, text, run.cell, path))
            try:
                history = partial(read_history, store, run.id, cursor.cycle)
                await session.take_up(run.id, preparing, cursor, history, RunState(run.state), outage_s)
                return "done"
            except CannotTakeUp as exc:
                why = str(exc)
            finally:
                preparing.cancel()  # not waited for when the instrument could not be reached
                if preparing.done() and not preparing.cancelled():
                    preparing.exception()  # said by take_up's own failure, not again as unretrieved
        await session.stop_safely(run.id, why, outage_s)
        store.set_state(run.id, RunState.STOPPED.value, ended_unix=time.time())
        reason = f"stopped safely after a restart: {why}"
        fields = {"run": run.id, "channel": channel.name, "cell": run.cell.get("cell"), "kind": "state"}
        log.warning("%s, run %d: %s", channel.name, run.id, reason, extra=fields)
        if cursor is None and why == "it had no checkpoint yet" and isinstance(run.source.get("job"), int):
            # Killed within its first commit: the run recorded nothing, so its job starts afresh
            # rather than being lost (a person would only submit it again).
            return "requeue"
        self.alerts.run_ended(run.id, channel.name, RunState.STOPPED, reason, name=run.name, cell=run.cell)
        self._publish_state(channel.name, {"run": run.id, "state": RunState.STOPPED.value})
        return "stopped"

    async def _run_job(
        self, store: Store, channel: ChannelConfig, job: dict[str, Any]
    ) -> tuple[str, int | None, str | None]:
        """How the job ended, its run, and why it was refused (then no run was made)."""
        cell = job["cell"]
        text = store.jobs.protocol(job["id"])
        prepared = await off_the_loop(prepare, text, job["source"], CellSpec.of_job(cell))
        source = {
            "job": job["id"],
            "path": job["source"],
            "channel": channel.name,
            "sim": channel.sim,
            "seed": channel.seed,
            "instrument": channel.instrument,
        }
        session = self._session(store, channel, cell.get("cell"))
        outcome = await session.start(prepared, prepared.cell_info(channel.cell, cell), source)
        if isinstance(outcome, list):
            why = "; ".join(outcome)
            store.record_event(None, "job", f"job {job['id']} on {channel.name} refused: {why}")
            return "refused", None, why
        return "done", outcome[0], None

    def _publish_state(self, channel: str, state: Mapping[str, Any]) -> None:
        for publisher in self._publishers:
            publisher.publish_state(channel, state)


async def open_store(path: Path, wal_thread: bool = False) -> Store:
    """The store at `path`, once it opens and takes a write, waiting meanwhile and saying why.

    On a full disk SQLite cannot even create the files it reads through (-shm, -wal). A file
    the process may not write opens all the same, read-only for good, and only refuses the
    first write: so a write is tried here, and the store opened again until one succeeds.
    Nothing is driven meanwhile (every cell was made safe at the stop, and the files a crash
    leaves behind let the store open).
    """
    delay, said = STORE_RETRY_S, False
    while True:
        try:
            store = Store(path, wal_thread=wal_thread)
            try:
                with store.transaction() as db:  # the same value again: one page written, nothing changed
                    version = int(db.execute("PRAGMA user_version").fetchone()[0])
                    db.execute(f"PRAGMA user_version = {version}")
            except BaseException:
                store.close()
                raise
            return store
        except Exception as exc:
            problem = as_unwritable(exc, path)
            if problem is None:
                raise
            (log.warning if said else log.error)(
                "cannot open the store: %s; trying again in %g s", problem.why, delay
            )
            said = True
        await asyncio.sleep(delay)
        delay = min(2 * delay, STORE_RETRY_MAX_S)


async def serve_lab(lab: Lab, until_idle: bool = False) -> None:
    """The daemon with its bus (when lab.toml has [mqtt]) until SIGTERM/SIGINT or, if asked, idle.

    Raises LabInUse (cyclerd.daemon.lock) when another daemon serves the lab; how it starts and
    stops as a process is cyclerd.daemon.process's.
    """
    await serve_until_stopped(lab, Daemon, open_store, until_idle)
