"""One run session, the same for `cyclerd run` in a terminal and for the daemon's channels.

prepare (read the protocol, compile it, resolve the cell once) -> open the device (a simulated
cell in virtual time, or an instrument, reached with backoff) -> execute (a Runner with its
sinks, registered where pause/resume/stop requests find it). A new run and a run taken up
after a crash differ only in where the cursor starts.

Reading and compiling a protocol is pure Python that takes seconds for a large file, so the
daemon does it in a worker thread (`off_the_loop`) while its other channels acquire. A store
that cannot be written stops the run with its cell safe and leaves it resumable
(cyclerd.engine.record).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from cyclerd.analysis.cycles import CycleSummary, ForwardStats
from cyclerd.drivers.base import Channel, InstrumentFault, Snapshotting, unmet_needs
from cyclerd.drivers.clock import AcceleratedClock, Clock, PacedClock, RealClock, VirtualClock
from cyclerd.engine.cursor import Cursor
from cyclerd.engine.instruments import open_channel
from cyclerd.engine.record import RecordGuard
from cyclerd.engine.resume import History, VoltageStatsSink
from cyclerd.engine.runner import Runner, RunResult
from cyclerd.engine.sinks import Sink, Sinks, StoreSink
from cyclerd.engine.states import RunState, TransitionError
from cyclerd.protocols import Protocol, ProtocolError, loads
from cyclerd.protocols.compiler import compile_for_stored_cell, compile_protocol
from cyclerd.protocols.errors import Problem
from cyclerd.protocols.program import Program
from cyclerd.protocols.units import AREA, Amount, parse_charge, parse_mass, parse_positive
from cyclerd.simulators.cell import LiveStateError
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Store, StoreInUse

ACTIONS = ("pause", "resume", "stop")

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

# One thread for every channel's protocols: pint's registry is shared, and not made to be used
# by several threads at once.
_PROTOCOL_WORKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protocols")


async def off_the_loop(work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`work` (reading, compiling a protocol) in the protocol worker thread: a file of thousands
    of steps takes seconds, and the event loop runs every other channel meanwhile."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_PROTOCOL_WORKER, functools.partial(work, *args, **kwargs))


class CannotTakeUp(Exception):
    """A run's checkpoint cannot be continued (the message says why); it is stopped safely."""


@dataclass(frozen=True)
class CellSpec:
    """The cell's area, capacity and active mass as a person gave them (CLI option, job, MQTT
    command); the mass is absolute (kg) or a loading per area (kg/m²)."""

    area_m2: float | None = None
    capacity: Amount | None = None
    mass: Amount | None = None

    @classmethod
    def parse(cls, area: str | None, capacity: str | None, mass: str | None = None) -> CellSpec:
        """Raises ValueError naming the value and the unit it wants."""
        return cls(
            None if area is None else parse_positive(area, AREA),
            None if capacity is None else parse_charge(capacity),
            None if mass is None else parse_mass(mass),
        )

    @classmethod
    def of_job(cls, cell: Mapping[str, Any]) -> CellSpec:
        return cls.parse(cell.get("area"), cell.get("capacity"), cell.get("mass"))


@lru_cache(maxsize=64)
def _parsed(text: str, source: str) -> Protocol:
    """A protocol text parsed once however many channels run it (protocols are frozen)."""
    return loads(text, source)


@dataclass(frozen=True)
class Prepared:
    """A protocol read and compiled for one cell: everything a run needs before a device."""

    program: Program
    text: str
    source: str

    def cell_info(self, *extra: Mapping[str, Any]) -> dict[str, Any]:
        """What the run's record says of its cell: the resolved values, then what was given."""
        info: dict[str, Any] = {"area_m2": self.program.area_m2, "capacity_As": self.program.capacity_As}
        if self.program.active_mass_kg is not None:
            info["active_mass_kg"] = self.program.active_mass_kg
        info.update(self.program.metadata)
        for more in extra:
            info.update(more)
        return info


def prepare(text: str, source: str, cell: CellSpec) -> Prepared:
    """Raises ProtocolError (file:line:column) or CellDataMissing (what to give)."""
    program = compile_protocol(_parsed(text, source), cell.area_m2, cell.capacity, cell.mass)
    return Prepared(program, text, source)


def prepare_file(path: Path, cell: CellSpec) -> Prepared:
    """The protocol file `path`, read and prepared; an unreadable file is a ProtocolError too."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError([Problem(str(path), 1, 1, f"cannot read the file: {exc}")]) from None
    return prepare(text, str(path), cell)


def prepare_stored(text: str, cell: Mapping[str, Any], source: str) -> Prepared:
    """A stored run's protocol, compiled again with the cell values it was resolved with."""
    return Prepared(compile_for_stored_cell(_parsed(text, source or "<stored protocol>"), cell), text, source)


@dataclass(frozen=True)
class SimulatedCell:
    """A simulated cell (a preset of cyclerd.simulators) run in virtual time."""

    preset: str
    seed: int = 0
    overrides: Mapping[str, Any] = field(default_factory=dict)
    speed: float | None = None  # None: as fast as the CPU allows; else paced, to be watched live


@dataclass(frozen=True)
class Instrument:
    """A real or emulated instrument; unreachable, it is tried again with a doubling wait."""

    driver: str
    resource: str
    poll_s: float = 1.0
    speed: float = 1.0  # >1 only against an emulator running accelerated
    reconnect_s: float = 1.0
    reconnect_max_s: float = 60.0
    give_up_s: float | None = 0.0  # 0: fail at once; None: wait for it however long
    label: str = ""  # what the lab calls it (lab.toml's instrument name); else its resource
    cycler_channel: int | None = None  # which channel of a cycler (from 1)

    @property
    def called(self) -> str:
        return self.label or self.resource


Device = SimulatedCell | Instrument


@asynccontextmanager
async def _released(
    opening: AbstractAsyncContextManager[Channel], name: str, device: Instrument, note: Callable[[str], None]
) -> AsyncIterator[Channel]:
    """The opened channel; a failure to release it afterwards (the instrument gone when its test is
    to be stopped) is noted, and never takes the place of how the run ended, nor of the error that
    ended it."""
    channel = await opening.__aenter__()
    try:
        yield channel
    finally:
        ending = sys.exc_info()
        try:
            await opening.__aexit__(*ending)
        except (InstrumentFault, OSError) as exc:
            if exc is ending[1]:
                raise
            check = "check in its own software that the channel is stopped"
            note(f"{name}: could not release {device.called} ({exc}); {check}")


@asynccontextmanager
async def open_device(
    device: Device, program: Program | None, name: str, cursor: Cursor | None, note: Callable[[str], None]
) -> AsyncIterator[tuple[Channel, Clock]]:
    """The channel and the clock its run keeps time by; `cursor`: restore a simulated cell's
    state from it. `note` records what a person should know (an instrument that kept us waiting).
    An instrument needs no `program` to be opened; a simulated cell is built for its area."""
    if isinstance(device, SimulatedCell):
        assert program is not None, "a simulated cell is built for its program's area"
        clock = VirtualClock() if device.speed is None else PacedClock(device.speed)
        cell = make_cell(device.preset, seed=device.seed, area_m2=program.area_m2, overrides=device.overrides)
        channel = SimulatedChannel(cell, clock, name=name)
        if cursor is not None:
            if cursor.cell_unreadable:
                raise CannotTakeUp("its checkpoint holds the simulated cell as a pickle, which is never read")
            if cursor.cell is not None:
                try:
                    channel.restore(cursor.cell)
                except LiveStateError as exc:
                    raise CannotTakeUp(f"its simulated cell cannot be rebuilt: {exc}") from None
        yield channel, clock
        return
    real: Clock = RealClock() if device.speed == 1.0 else AcceleratedClock(device.speed)
    async with AsyncExitStack() as stack:
        instrument: Channel
        delay, waited, attempt = device.reconnect_s, 0.0, 0
        while True:
            attempt += 1
            try:
                opening = open_channel(
                    device.driver, device.resource, real, device.poll_s, device.cycler_channel
                )
                instrument = await stack.enter_async_context(_released(opening, name, device, note))
                break
            except (InstrumentFault, OSError) as exc:
                if device.give_up_s is not None and waited >= device.give_up_s:
                    raise
                if attempt == 1:
                    waits = "retrying with backoff while the channel waits"
                    note(f"{name}: cannot reach {device.called} ({exc}); {waits}")
                await asyncio.sleep(delay)
                waited += delay
                delay = min(2 * delay, device.reconnect_max_s)
        if attempt > 1:
            note(f"{name}: {device.called} reached after {attempt} attempts")
        yield instrument, real


class Controls:
    """The runs this process is running, by run id: where pause, resume and stop go at once."""

    def __init__(self) -> None:
        self._runners: dict[int, Runner] = {}

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runners

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._runners))

    def act(self, run_id: int, action: str, by: str | None = None) -> str:
        """Carry out `action` on run `run_id`, asked by user `by` (named in the run's event):
        'done', or 'refused: why'. KeyError: not here."""
        runner = self._runners[run_id]
        try:
            if action == "pause":
                runner.pause(by)
            elif action == "resume":
                runner.resume(by)
            elif action == "stop":
                runner.stop(by)
            else:
                raise TransitionError(f"unknown action {action!r}; actions: {', '.join(ACTIONS)}")
        except TransitionError as exc:
            return f"refused: {exc}"
        return "done"

    def state(self, run_id: int) -> RunState:
        return self._runners[run_id].state

    @asynccontextmanager
    async def registered(self, run_id: int, runner: Runner) -> AsyncIterator[None]:
        self._runners[run_id] = runner
        try:
            yield
        finally:
            del self._runners[run_id]


async def forward_requests(store: Store, controls: Controls, interval_s: float = 0.5) -> None:
    """Act on requests another process (the CLI) left in the store for this process's runs.

    One poller per process; a request for a run this process does not run stays for whoever does.
    A store it cannot read or write now (a full disk) is tried again at the next pass: the
    poller must not end, and take the runs' controls with it.
    """
    while True:
        try:
            for run_id in controls:
                for request_id, action in store.requests.pending(run_id):
                    store.requests.handle(request_id, controls.act(run_id, action))
        except (sqlite3.Error, StoreInUse) as exc:
            log.warning("requests not read (%s); trying again in %g s", exc, interval_s)
        await asyncio.sleep(interval_s)


Views = Callable[[int, Program], Sequence[Sink]]  # the live views of a run, besides the store


def no_views(run_id: int, program: Program) -> Sequence[Sink]:
    return ()


@dataclass
class Session:
    """Runs on one channel, recorded in `store`, shown by `views`, controlled through `controls`."""

    store: Store
    channel: str
    device: Device
    controls: Controls
    views: Views = no_views
    resumable: bool = False  # a cancelled run keeps its state for the next start to take up

    def note(self, run_id: int | None) -> Callable[[str], None]:
        """What the device's opening says (cannot reach the instrument yet, reached it after N
        tries): an event in the store and a line in the log."""

        def noted(message: str) -> None:
            self.store.record_event(run_id, "instrument", message)
            fields = {"channel": self.channel, "run": run_id, "kind": "instrument"}
            log.warning("%s", message, extra=fields)  # it names the channel already

        return noted

    async def start(
        self, prepared: Prepared, cell: Mapping[str, Any], source: Mapping[str, Any]
    ) -> tuple[int, RunResult] | list[str]:
        """A new run: its result, or what the device cannot do (then no run is created)."""
        async with open_device(self.device, prepared.program, self.channel, None, self.note(None)) as (
            channel,
            clock,
        ):
            problems = unmet_needs(prepared.program.needs(), channel.capabilities, self.channel)
            if problems:
                return problems
            name = prepared.program.name
            run_id = self.store.create_run(name, self.channel, prepared.text, cell, source)
            return run_id, await self._execute(run_id, prepared.program, channel, clock, None)

    async def take_up(
        self,
        run_id: int,
        preparing: Awaitable[Prepared],
        cursor: Cursor,
        history: Callable[[], Awaitable[History]],
        state: RunState,
        outage_s: float,
    ) -> RunResult:
        """Continue run `run_id` from its checkpoint. A simulated cell's test time did not run
        while the daemon was away; a real cell's did (`outage_s` is then added to test time).

        The cell is made safe first (an instrument left alone goes on doing its last step), and
        only then is the run's program awaited from `preparing` (compiled meanwhile: a file of
        thousands of steps takes seconds, and one that no longer compiles must not leave the
        output on) and its `history` read back.
        """
        early = await preparing if isinstance(self.device, SimulatedCell) else None
        program = None if early is None else early.program
        async with open_device(self.device, program, self.channel, cursor, self.note(run_id)) as (
            channel,
            clock,
        ):
            await channel.safe_state()
            prepared = early or await preparing
            # The outage in the run's own time: an emulator at 60x lived 60 s of it each second.
            speed = self.device.speed if isinstance(self.device, Instrument) else 1.0
            gap = 0.0 if isinstance(channel, Snapshotting) else outage_s * speed
            restore = (cursor, await history(), state, gap)
            return await self._execute(run_id, prepared.program, channel, clock, restore)

    async def stop_safely(self, run_id: int, why: str, outage_s: float) -> None:
        """End a run that will not be taken up, its cell made safe first. A simulated cell has
        nothing to make safe: its state lives in the checkpoint."""
        if not isinstance(self.device, SimulatedCell):
            async with open_device(self.device, None, self.channel, None, self.note(run_id)) as (channel, _):
                await channel.safe_state()
        self.store.record_event(
            run_id, "gap", f"stopped safely after a restart: {why}", data={"outage_s": outage_s}
        )

    async def _execute(
        self,
        run_id: int,
        program: Program,
        channel: Channel,
        clock: Clock,
        restore: tuple[Cursor, History, RunState, float] | None,
    ) -> RunResult:
        def closed_last() -> tuple[CycleSummary, ForwardStats] | None:
            ledger = runner.ledger
            return (ledger.cycles[-1], ledger.voltage_stats[-1]) if ledger.cycles else None

        stats = VoltageStatsSink(self.store, run_id, closed_last)
        sinks = Sinks([StoreSink(self.store, run_id), stats, *self.views(run_id, program)])
        runner = Runner(program, channel, clock, RecordGuard(sinks, self.store.path))
        runner.resumable = self.resumable
        if restore is not None:
            runner.restore(*restore)
        async with self.controls.registered(run_id, runner):
            return await runner.run()
