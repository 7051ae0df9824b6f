"""The lab-PC service: one task per channel in one TaskGroup, each running its queued jobs.

A channel's task claims the oldest job queued for it, runs it (on its instrument, or on a
simulated cell in virtual time), follows pause/resume/stop requests, publishes to the bus when
one is configured, and goes back to the queue. A job that fails is recorded and leaves the
other channels running.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import cyclerd.instruments as instruments
from cyclerd.bus import Bus
from cyclerd.clock import Clock, RealClock, VirtualClock
from cyclerd.config import Channel as ChannelConfig
from cyclerd.config import Lab
from cyclerd.control import follow_requests
from cyclerd.drivers.base import Channel, unmet_needs
from cyclerd.engine import Runner
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import Program, compile_protocol
from cyclerd.protocols.units import AREA, parse_charge, parse_positive
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store import Store

log = logging.getLogger(__name__)
IDLE_POLL_S = 1.0  # how often an idle channel looks at the queue: jobs start within a second


class Daemon:
    def __init__(self, lab: Lab, bus: Bus | None = None) -> None:
        self.lab = lab
        self.bus = bus

    async def run(self, until_idle: bool = False) -> None:
        """Serve every channel; with `until_idle`, return once no channel has a job left."""
        async with asyncio.TaskGroup() as group:
            for channel in self.lab.channels:
                group.create_task(self._serve(channel, until_idle), name=f"channel {channel.name}")

    async def _serve(self, channel: ChannelConfig, until_idle: bool) -> None:
        store = Store(self.lab.database)  # one connection per channel task
        try:
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
        finally:
            store.close()

    async def _run_job(
        self, store: Store, channel: ChannelConfig, job: dict[str, Any]
    ) -> tuple[str, int | None]:
        text = store.job_protocol(job["id"])
        cell = job["cell"]
        area = parse_positive(cell["area"], AREA) if "area" in cell else None
        capacity = parse_charge(cell["capacity"]) if "capacity" in cell else None
        program = compile_protocol(loads(text, job["source"]), area, capacity)
        if channel.sim is not None:
            clock: Clock = VirtualClock()
            cell_model = make_cell(channel.sim, seed=channel.seed, area_m2=program.area_m2)
            return await self._execute(
                store, channel, job, program, text, SimulatedChannel(cell_model, clock), clock
            )
        instrument = next(i for i in self.lab.instruments if i.name == channel.instrument)
        clock = RealClock()
        async with instruments.open_channel(
            instrument.driver, instrument.resource, clock, instrument.poll_s
        ) as device:
            return await self._execute(store, channel, job, program, text, device, clock)

    async def _execute(
        self,
        store: Store,
        channel: ChannelConfig,
        job: dict[str, Any],
        program: Program,
        text: str,
        device: Channel,
        clock: Clock,
    ) -> tuple[str, int | None]:
        problems = unmet_needs(program.needs(), device.capabilities, channel.name)
        if problems:
            store.record_event(None, "job", f"job {job['id']} refused: " + "; ".join(problems))
            return "refused", None
        cell_info = {
            "area_m2": program.area_m2,
            "capacity_As": program.capacity_As,
            **program.metadata,
            **channel.cell,
        }
        source = {
            "job": job["id"],
            "channel": channel.name,
            "sim": channel.sim,
            "instrument": channel.instrument,
        }
        run_id = store.create_run(program.name, channel.name, text, cell_info, source)
        bus = self.bus

        def publish(columns: dict[str, Any]) -> None:
            if bus is not None:
                bus.publish_batch(channel.name, run_id, columns)

        runner = Runner(program, device, store, run_id, clock, on_batch=publish)
        follower = asyncio.create_task(follow_requests(store, run_id, runner))
        try:
            result = await runner.run()
        finally:
            follower.cancel()
        if bus is not None:
            bus.publish_state(
                channel.name, {"run": run_id, "state": result.state.value, "reason": result.reason}
            )
        return "done", run_id
