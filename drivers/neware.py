"""Neware cyclers through the BTS 8.0 API (TCP, port 502), one cycler channel per cyclerd channel.

The BTS executes steps itself: each cyclerd step becomes a one-step file (plus the end step,
`neware_steps`), started on the channel; its records are downloaded as they come and handed on as
batches, and when the BTS reports the test finished the step ends with the limit its last record
met. The engine keeps loops and cycles. The BTS reads a step file from its own disk: the file is
written to `step_dir` (a temporary folder by default) and its path sent, so cyclerd runs on the BTS
PC, or `step_dir` is a folder both see under the same path. All I/O is asyncio streams: one request
at a time on one connection per cyclerd channel (`neware_link`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import numpy as np

from cyclerd.drivers import neware_wire as wire
from cyclerd.drivers.base import (
    SAFETY,
    Batch,
    Capabilities,
    InstrumentError,
    InstrumentFault,
    InstrumentGarbled,
    InstrumentTimeout,
    Spectrum,
    StepEnd,
    StepProgress,
)
from cyclerd.drivers.clock import Clock
from cyclerd.drivers.conditions import EndWatch
from cyclerd.drivers.cycler import CyclerSurvey, host_and_port
from cyclerd.drivers.neware_link import ChannelLink, Record
from cyclerd.drivers.neware_stepfile import NewareStep, StepFile, to_xml
from cyclerd.drivers.neware_steps import StepPlan, plan_step, why_ended
from cyclerd.drivers.stepper import FLUSH_AFTER_S, FLUSH_AFTER_SAMPLES
from cyclerd.protocols.program import (
    EndConditions,
    ImpedanceCommand,
    ImpedanceSpec,
    SafetyLimits,
    StepCommand,
    SweepCommand,
    VoltageCommand,
)

__all__ = ["CAPABILITIES", "DEFAULT_PORT", "NewareChannel", "open_cycler_channel", "survey"]
log = logging.getLogger(__name__)

DEFAULT_PORT = 502
# A CT-4008T-class channel (±5 V, 10 mA): coin and pellet cells. No EIS, no voltage sweeps.
CAPABILITIES = Capabilities(
    kinds=frozenset({"rest", "cc", "plate", "strip", "cv", "cccv"}),
    current_max_A=0.01,
    voltage_range_V=(-5.0, 5.0),
)
BARCODE = "cyclerd"  # the sample name of the tests cyclerd starts: how it knows its own
TIMEOUT_S = 2.0
POLL_WALL_MIN_S = 0.01  # however fast the run clock, the BTS is not asked more often than this


class NewareChannel:
    """Cycler channel `cycler_channel` (from 1, in getdevinfo's order) of the BTS at host:port."""

    def __init__(
        self,
        host: str,
        port: int,
        cycler_channel: int,
        clock: Clock,
        poll_s: float = 1.0,
        *,
        timeout_s: float = TIMEOUT_S,
        step_dir: Path | None = None,
    ) -> None:
        self.clock, self.poll_s = clock, poll_s
        self.step_dir = step_dir or Path(tempfile.gettempdir()) / "cyclerd-neware"
        self.link = ChannelLink(host, port, cycler_channel, timeout_s)

    @property
    def name(self) -> str:
        return self.link.name

    @property
    def address(self) -> wire.Address | None:
        return self.link.address

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    # -- lifecycle ----------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, find the channel, and take it over: a test cyclerd left running is stopped,
        anyone else's is refused."""
        await self.link.open()
        live = await self.link.inquire()
        if live.get("workstatus") in (wire.WORKING, wire.PAUSE):
            if not live.get("barcode", "").startswith(BARCODE):
                self.link.close()  # without stopping anyone else's test
                raise InstrumentFault(
                    self.name,
                    f"a test runs there (sample {live.get('barcode')!r}) that cyclerd did not start; "
                    "stop it in BTS or choose another cycler_channel",
                )
            log.info("%s: stopping a test cyclerd left running", self.name)
            await self.safe_state()

    async def reconnect(self) -> None:
        """After a dropped link or a confused conversation: a new connection, then the channel stopped."""
        self.link.close()
        await self.link.open()
        await self.safe_state()
        log.info("%s: reconnected; channel stopped", self.name, extra={"kind": "reconnect"})

    async def close(self) -> None:
        """Stop the channel if the BTS still answers, then close the connection."""
        if not self.link.connected:
            return
        try:
            await self.safe_state()
        except InstrumentFault as exc:
            log.warning("%s: could not stop the channel while closing: %s", self.name, exc)
        self.link.close()

    async def safe_state(self) -> None:
        """Stop whatever runs on the channel; a channel with nothing running is fine."""
        answer = await self.link.stop()
        if answer != "ok" and (await self.link.inquire()).get("workstatus") in (wire.WORKING, wire.PAUSE):
            raise InstrumentError(self.name, 0, f"the BTS would not stop the channel ({answer!r})")

    async def impedance(self, spec: ImpedanceSpec) -> Spectrum:
        raise NotImplementedError(f"{self.name} cannot measure impedance spectra")

    # -- steps -----------------------------------------------------------------------------------------

    async def run(
        self,
        command: StepCommand,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None = None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Run `command` (from `start`) as a one-step file; see Channel.run."""
        if isinstance(command, SweepCommand | ImpedanceCommand):
            raise NotImplementedError(f"{self.name} cannot run {command.kind} steps")
        charging = True
        if isinstance(command, VoltageCommand):  # Neware holds a voltage one way: toward it
            charging = command.voltage_V >= self.link.number(await self.link.inquire(), "voltage")
        ceiling = limits.current_max_A or CAPABILITIES.current_max_A
        plan = plan_step(command, start, limits, pause_at_s, charging=charging, current_limit_A=ceiling)
        if plan.over is not None:
            yield StepEnd(plan.over, start)
            return
        ended = False
        try:
            test_id = await self._start(plan.file, command)
            async for item in self._follow(command, plan, start, test_id):
                ended = isinstance(item, StepEnd)
                yield item
        except BaseException as exc:
            if not (isinstance(exc, GeneratorExit) and ended):  # closed mid-step, failed, cancelled
                await self._leave_off(exc)
            raise

    async def _start(self, file: StepFile, command: StepCommand) -> int:
        """Start `file` on the channel; the BTS's id of the new test (once it names a new one: the
        records and status read before would be the last test's)."""
        before = await self.link.latest_test()
        path = self.step_dir / f"cyclerd-{self.link.where.key}-{uuid.uuid4().hex[:12]}.xml"
        await asyncio.to_thread(_write, path, to_xml(file))
        try:
            answer = await self.link.start(str(path), f"{BARCODE}-step{command.index}", str(self.step_dir))
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        if answer != "ok":
            raise InstrumentError(
                self.name,
                0,
                f"the BTS would not start the step file of {command.source} ({answer!r}); see its log",
            )
        give_up = asyncio.get_running_loop().time() + self.link.timeout_s
        while (test := await self.link.latest_test()) == before:
            if asyncio.get_running_loop().time() > give_up:
                raise InstrumentFault(
                    self.name, f"the BTS said it started {command.source} but began no test"
                )
            await asyncio.sleep(POLL_WALL_MIN_S)
        return test

    async def _follow(
        self, command: StepCommand, plan: StepPlan, start: StepProgress, test_id: int
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Batches of the test's records as they come, then the step's end.

        Records are handed on at least once a second (wall clock), as the stepper does, not at
        every poll: each batch is a commit, and an accelerated run polls many times a second.
        The ends the host watches are checked on every poll's records all the same.
        """
        step, watch = plan.file.steps[0], _host_watch(command, plan.host_end)
        seen, last = 0, None  # records read; the latest batch
        pending: list[Record] = []  # read, not yet handed on
        handed = time.monotonic()
        while True:
            await asyncio.sleep(max(self.clock.wall_s(self.poll_s), POLL_WALL_MIN_S))
            live = await self.link.inquire()
            status = live.get("workstatus", "")
            records = await self.link.download(test_id, seen)
            seen += len(records)
            over = status in (wire.FINISH, wire.PROTECT)
            if (batch := self._batch(records, start, step)) is not None:
                if (cut := _host_end(watch, batch)) is not None:
                    await self.safe_state()
                    if (earlier := self._batch(pending, start, step)) is not None:
                        yield earlier
                    yield cut[0]
                    yield cut[1]
                    return
                # The BTS times the step; a virtual run clock follows it.
                self.clock.elapse(batch.t_s[-1] - (start.t_s if last is None else last.t_s[-1]))
                last = batch
                pending += records
            due = time.monotonic() - handed >= FLUSH_AFTER_S or len(pending) >= FLUSH_AFTER_SAMPLES
            if (over or due) and (joined := self._batch(pending, start, step)) is not None:
                yield dataclasses.replace(joined, final=over)
                pending, handed = [], time.monotonic()
            if status == wire.STOP:
                raise InstrumentError(
                    self.name, wire.TEST_STOPPED, "the test was stopped on the BTS, not by cyclerd"
                )
            if over:
                yield self._end(status, live, plan, start, last, test_id)
                return

    def _end(
        self,
        status: str,
        live: dict[str, str],
        plan: StepPlan,
        start: StepProgress,
        last: Batch | None,
        test: int,
    ) -> StepEnd:
        """How the step ended, once the BTS says the test is over: a protection, or the limit its
        last record meets."""
        if last is None:
            raise InstrumentFault(self.name, f"the BTS ended test {test} without a single record")
        progress = _progress(last)
        if status == wire.PROTECT:
            code = int(self.link.number(live, "log_code"))
            words = wire.LOG_WORDS.get(code, f"log code {code}")
            return StepEnd(SAFETY, progress, f"the cycler stopped the step: {status}, {words}")
        reason = why_ended(
            plan.file.steps[0],
            progress.t_s - start.t_s,
            float(last.voltage_V[-1]),
            float(last.current_A[-1]),
            abs(progress.charge_As - start.charge_As),
            plan.time_reason,
        )
        if reason is None:
            raise InstrumentFault(self.name, f"test {test} finished without meeting any of its limits")
        return StepEnd(reason, progress)

    def _batch(self, records: list[Record], start: StepProgress, step: NewareStep) -> Batch | None:
        mine = [r for r in records if r.get("stepid") == "1"]
        if not mine:
            return None
        names = ("testtime", "volt", "curr", "cap", "eng")
        columns = {name: np.array([self.link.number(r, name) for r in mine]) for name in names}
        return Batch(
            start.t_s + columns["testtime"] / 1000.0,
            columns["volt"],
            columns["curr"],
            start.charge_As + step.sign * columns["cap"] * 3600.0,
            start.energy_J + step.sign * columns["eng"] * 3600.0,
        )

    async def _leave_off(self, cause: BaseException) -> None:
        """After a failure or cancellation: the channel stopped, without hiding the cause."""
        try:
            await asyncio.shield(self.safe_state())
        except (InstrumentFault, asyncio.CancelledError) as exc:
            log.error("%s: could not stop the channel after %r: %s", self.name, cause, exc)


def _host_watch(command: StepCommand, host_end: EndConditions) -> EndWatch | None:
    """The ends only the host can see (|dV/dt|, a cut-off against the current), if any."""
    if host_end == EndConditions():
        return None
    return EndWatch(dataclasses.replace(command, end=host_end), SafetyLimits())


def _host_end(watch: EndWatch | None, batch: Batch) -> tuple[Batch, StepEnd] | None:
    """The batch up to the sample where an end the host watches holds, and that end; or None."""
    if watch is None:
        return None
    index, reason, detail = watch.check(batch.t_s, batch.voltage_V, batch.current_A, batch.charge_As)
    if index < 0:
        return None
    n = index + 1
    cut = Batch(
        batch.t_s[:n],
        batch.voltage_V[:n],
        batch.current_A[:n],
        batch.charge_As[:n],
        batch.energy_J[:n],
        None,
        True,
    )
    return cut, StepEnd(reason, _progress(cut), detail)


def _progress(batch: Batch) -> StepProgress:
    return StepProgress(float(batch.t_s[-1]), float(batch.charge_As[-1]), float(batch.energy_J[-1]))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@contextlib.asynccontextmanager
async def open_cycler_channel(
    resource: str, cycler_channel: int, clock: Clock, poll_s: float
) -> AsyncIterator[NewareChannel]:
    """Cycler channel `cycler_channel` of the BTS at `resource` (tcp://host:port), stopped on the way out."""
    host, port = host_and_port(resource, DEFAULT_PORT)
    channel = NewareChannel(host, port, cycler_channel, clock, poll_s)
    await channel.open()
    try:
        yield channel
    finally:
        await channel.close()


def survey(resource: str, timeout_s: float) -> CyclerSurvey:
    """Blocking, read-only: who the BTS is, how many channels it lists, which run others' tests."""
    host, port = host_and_port(resource, DEFAULT_PORT)
    name = f"Neware at {host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            wire.exchange(sock, wire.request("connect"))
            info = wire.exchange(sock, wire.request("getdevinfo"))
            channels = [wire.address_of(a, host) for a, _ in wire.rows(info, "middle")]
            live = wire.rows(wire.exchange(sock, wire.listed("inquire", channels))) if channels else []
    except TimeoutError:
        raise InstrumentTimeout(name, f"no reply within {timeout_s:g} s") from None
    except wire.WireError as exc:
        raise InstrumentGarbled(name, f"unreadable reply: {exc}") from None
    busy = {
        n
        for n, (attributes, _) in enumerate(live, start=1)
        if attributes.get("workstatus") in (wire.WORKING, wire.PAUSE)
        and not attributes.get("barcode", "").startswith(BARCODE)
    }
    server, client = info.find("serverip/server"), info.find("client")
    said = [f"server {server.get('version')}" if server is not None and server.get("version") else ""]
    said.append(client.get("version", "") if client is not None else "")
    identity = "Neware BTS" + "".join(f", {part}" for part in said if part)
    return CyclerSurvey(identity, len(channels), frozenset(busy))
