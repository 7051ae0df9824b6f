"""The lab-PC service: one task per channel in one TaskGroup, each running its queued jobs.

A channel's task first takes up what a crash left behind (runs resume from their checkpoint or
are stopped safely, as lab.toml's resume policy says), then claims the oldest job queued for
it, runs it on its instrument or on a simulated cell in virtual time, follows pause/resume/stop
requests, publishes to the bus when one is configured, and goes back to the queue. An
instrument that cannot be reached is retried with backoff; a job that fails is recorded and
leaves the other channels running.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import pickle
import signal
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any

import cyclerd.engine.instruments as instruments
from cyclerd.bus import commands
from cyclerd.bus.publisher import Bus
from cyclerd.daemon.config import Channel as ChannelConfig
from cyclerd.daemon.config import Lab
from cyclerd.drivers.base import Channel, InstrumentFault, unmet_needs
from cyclerd.drivers.clock import AcceleratedClock, Clock, RealClock, VirtualClock
from cyclerd.engine.control import follow_requests
from cyclerd.engine.resume import ResumePoint, load_history, load_point
from cyclerd.engine.runner import Runner
from cyclerd.engine.states import RunState
from cyclerd.protocols import Protocol, loads
from cyclerd.protocols.compiler import Program, compile_protocol
from cyclerd.protocols.units import AREA, parse_charge, parse_positive, registry
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Run, Store

log = logging.getLogger(__name__)


@lru_cache(maxsize=64)
def _parsed(text: str, source: str) -> Protocol:
    """A protocol text parsed once however many channels run it (protocols are frozen)."""
    return loads(text, source)


IDLE_POLL_S = 1.0  # how often an idle channel looks at the queue: jobs start within a second


class Daemon:
    def __init__(self, lab: Lab, bus: Bus | None = None) -> None:
        self.lab = lab
        self.bus = bus
        registry()  # pint's unit definitions are parsed as the daemon starts, not with its first job
        self._commands = Store(lab.database) if bus is not None else None
        if bus is not None:
            bus.handle_commands(self.command)

    async def run(self, until_idle: bool = False) -> None:
        """Serve every channel; with `until_idle`, return once no channel has a job left.

        The channels share one connection. SQLite drops a connection's page cache whenever
        another connection has committed, so with one connection per channel every transaction
        read its tables' pages again: 7 % of the daemon's CPU on 32 channels of E1. Sharing is
        safe because no transaction spans an await (`Store.transaction` refuses a second task).
        """
        store = Store(self.lab.database, wal_thread=True)
        try:
            async with asyncio.TaskGroup() as group:
                for channel in self.lab.channels:
                    group.create_task(self._serve(store, channel, until_idle), name=f"channel {channel.name}")
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
            return {"ok": True, **await commands.execute(self._commands, channel, command)}
        except commands.CommandError as exc:
            return {"ok": False, "error": str(exc)}

    # -- one channel ---------------------------------------------------------------------

    async def _serve(self, store: Store, channel: ChannelConfig, until_idle: bool) -> None:
        await self._take_up(store, channel)
        self._publish_state(channel.name, {"run": None, "state": "idle"})
        while True:
            job = store.claim_job(channel.name)
            if job is None:
                if until_idle:
                    return
                await asyncio.sleep(IDLE_POLL_S)
                continue
            try:
                state, run_id = await self._run_job(store, channel, job)
                store.finish_job(job["id"], state, run_id)
            except Exception as exc:
                log.exception("job %s on %s failed", job["id"], channel.name)
                store.record_event(None, "job", f"job {job['id']} on {channel.name} failed: {exc}")
                store.finish_job(job["id"], "failed")
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
                state = "failed"
            if isinstance(job, int):
                store.finish_job(job, state, run.id)
        runs_of_jobs = {r.source.get("job"): r.id for r in store.runs() if r.channel == channel.name}
        for job in store.orphan_jobs(channel.name):
            if job["id"] in taken:
                continue
            if job["id"] in runs_of_jobs:  # its run ended just before the crash
                store.finish_job(job["id"], "done", runs_of_jobs[job["id"]])
            else:  # claimed, never started: nothing touched the cell
                store.requeue_job(job["id"])
                store.record_event(
                    None, "job", f"job {job['id']} on {channel.name} queued again after a restart"
                )

    async def _take_up_run(self, store: Store, channel: ChannelConfig, run: Run) -> str:
        point = load_point(store, run.id)
        outage_s = time.time() - (store.checkpoint_unix(run.id) or run.started_unix)
        why = ""
        if self.lab.resume == "stop":
            why = "the resume policy is 'stop'"
        elif point is None:
            why = "it had no checkpoint yet"
        elif run.state == RunState.STOPPING.value:
            why = "a stop had been asked for"
        elif self.lab.resume_max_gap_s is not None and outage_s > self.lab.resume_max_gap_s:
            why = f"the daemon was away {outage_s:.0f} s, more than resume_max_gap_s"
        program = self._program(store.protocol_text(run.id), run.cell, run.source.get("path", ""))
        async with self._device(store, channel, program, point, run.id) as (device, clock):
            if why or point is None:
                await device.safe_state()
                store.record_event(
                    run.id, "gap", f"stopped safely after a restart: {why}", data={"outage_s": outage_s}
                )
                store.set_state(run.id, RunState.STOPPED.value, ended_unix=time.time())
                self._publish_state(channel.name, {"run": run.id, "state": RunState.STOPPED.value})
                return "stopped"
            runner = self._runner(store, channel, program, device, clock, run.id)
            history = load_history(store, run.id, point.cycle)
            # A simulated cell's test time does not run while the daemon is away; a real cell's does.
            gap = 0.0 if channel.sim is not None else outage_s
            runner.restore(point, history, RunState(run.state), gap)
            await self._follow(store, runner, run.id)
        return "done"

    async def _run_job(
        self, store: Store, channel: ChannelConfig, job: dict[str, Any]
    ) -> tuple[str, int | None]:
        cell = job["cell"]
        area = parse_positive(cell["area"], AREA) if "area" in cell else None
        capacity = parse_charge(cell["capacity"]) if "capacity" in cell else None
        text = store.job_protocol(job["id"])
        program = compile_protocol(_parsed(text, job["source"]), area, capacity)
        async with self._device(store, channel, program, None, None) as (device, clock):
            problems = unmet_needs(program.needs(), device.capabilities, channel.name)
            if problems:
                store.record_event(None, "job", f"job {job['id']} refused: " + "; ".join(problems))
                return "refused", None
            cell_info: dict[str, Any] = {"area_m2": program.area_m2, "capacity_As": program.capacity_As}
            cell_info |= {**program.metadata, **channel.cell, **cell}
            source = {
                "job": job["id"],
                "path": job["source"],
                "channel": channel.name,
                "sim": channel.sim,
                "seed": channel.seed,
                "instrument": channel.instrument,
            }
            run_id = store.create_run(program.name, channel.name, text, cell_info, source)
            runner = self._runner(store, channel, program, device, clock, run_id)
            await self._follow(store, runner, run_id)
        return "done", run_id

    def _program(self, text: str, cell: Mapping[str, Any], source: str) -> Program:
        area, capacity = cell.get("area_m2"), cell.get("capacity_As")
        return compile_protocol(_parsed(text, source or "<stored protocol>"), area, capacity)

    @asynccontextmanager
    async def _device(
        self,
        store: Store,
        channel: ChannelConfig,
        program: Program,
        point: ResumePoint | None,
        run_id: int | None,
    ) -> AsyncIterator[tuple[Channel, Clock]]:
        """The channel's instrument, connected (retried with backoff), or its simulated cell."""
        if channel.sim is not None:
            clock = VirtualClock()
            if point is not None and point.cell is not None:
                cell = pickle.loads(base64.b64decode(point.cell))  # the cell as the crash left it
            else:
                cell = make_cell(channel.sim, seed=channel.seed, area_m2=program.area_m2)
            yield SimulatedChannel(cell, clock, name=channel.name), clock
            return
        instrument = next(i for i in self.lab.instruments if i.name == channel.instrument)
        real: Clock = RealClock() if self.lab.speed == 1.0 else AcceleratedClock(self.lab.speed)
        delay, waited, attempt = instrument.reconnect_s, 0.0, 0
        while True:
            attempt += 1
            try:
                opened = instruments.open_channel(
                    instrument.driver, instrument.resource, real, instrument.poll_s
                )
                device = await opened.__aenter__()
                break
            except (InstrumentFault, OSError) as exc:
                if instrument.give_up_s is not None and waited >= instrument.give_up_s:
                    raise
                if attempt == 1:
                    store.record_event(
                        run_id,
                        "instrument",
                        f"{channel.name}: cannot reach {instrument.name} ({exc}); retrying with backoff"
                        " while the channel waits",
                    )
                log.warning(
                    "%s: %s unreachable (%s); retry %d in %.0f s",
                    channel.name,
                    instrument.name,
                    exc,
                    attempt,
                    delay,
                )
                await asyncio.sleep(delay)
                waited += delay
                delay = min(2 * delay, instrument.reconnect_max_s)
        if attempt > 1:
            store.record_event(
                run_id, "instrument", f"{channel.name}: {instrument.name} reached after {attempt} attempts"
            )
        try:
            yield device, real
        finally:
            await opened.__aexit__(None, None, None)

    def _runner(
        self,
        store: Store,
        channel: ChannelConfig,
        program: Program,
        device: Channel,
        clock: Clock,
        run_id: int,
    ) -> Runner:
        bus, name = self.bus, channel.name
        if bus is None:
            runner = Runner(program, device, store, run_id, clock)
            runner.resumable = True
            return runner

        def on_event(event: dict[str, Any]) -> None:
            bus.publish_event(name, event)
            if event["kind"] in ("state", "gap"):
                bus.publish_state(name, {"run": run_id, "state": runner.state.value, "cycle": runner.cycle})

        runner = Runner(
            program,
            device,
            store,
            run_id,
            clock,
            on_batch=lambda columns: bus.publish_batch(name, run_id, columns),
            on_event=on_event,
            on_spectrum=lambda spectrum: bus.publish_spectrum(name, spectrum),
        )
        runner.resumable = True
        return runner

    async def _follow(self, store: Store, runner: Runner, run_id: int) -> None:
        follower = asyncio.create_task(follow_requests(store, run_id, runner))
        try:
            await runner.run()
        finally:
            follower.cancel()

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
