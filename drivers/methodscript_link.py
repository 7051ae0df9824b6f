"""The conversation with a MethodSCRIPT device: the serial port and its one worker thread,
online commands and replies, scripts executed and their packages streamed as a step's batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import select
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import serial

from cyclerd.drivers import methodscript_scripts as ms
from cyclerd.drivers.base import (
    SAFETY,
    Batch,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentFault,
    InstrumentTimeout,
    StepEnd,
    StepProgress,
)
from cyclerd.drivers.conditions import NO_END, Counter, End, EndWatch, FloatArray
from cyclerd.drivers.methodscript_packages import (
    DeviceInfo,
    LineKind,
    Value,
    decode_package,
    device_error,
    family_of,
    firmware_version,
    kind_of,
    what_is,
)
from cyclerd.drivers.methodscript_scripts import Break
from cyclerd.drivers.record import RecordState
from cyclerd.drivers.record import select as logged
from cyclerd.protocols.compiler import SafetyLimits, StepCommand

log = logging.getLogger("cyclerd.drivers.methodscript")  # the channel's log, as before the split
T = TypeVar("T")

SLICE_S = 0.05  # the worker waits in slices this short, so an abort or safe_state never waits long
READ_MAX = 1 << 16  # bytes taken from the port at once
WRITE_TIMEOUT_S = 2.0
ERROR_PAUSE_S = 0.06  # wait > 50 ms after any `!` reply before the next command (§3.2)
CONTINUE = "continue"  # a capped script ended with nothing else due: the next one follows


class NotSupported(InstrumentFault):
    """The device (or cyclerd's use of it) cannot do what was asked; nothing was started."""


class Port(Protocol):
    """What the driver uses of a pyserial port, a device path or a `socket://` URL alike.

    `fileno` (POSIX: serial devices and sockets) lets the worker wait with select and then take
    all that has arrived at once: a fast stream is read in blocks, not byte by byte.
    """

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class Link:
    """The serial port and the one worker thread that ever touches it."""

    def __init__(self, url: str, baudrate: int, name: str) -> None:
        self.url, self.baudrate, self.name = url, baudrate, name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"methodscript {name}")
        self._port: Port | None = None
        self._buffer = bytearray()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the worker; pyserial's failures become the channel's own faults."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except serial.SerialTimeoutException as exc:
            raise InstrumentTimeout(self.name, f"writing to {self.url} timed out") from exc
        except (serial.SerialException, OSError) as exc:
            raise InstrumentDisconnected(self.name, f"the link to {self.url} is gone: {exc}") from exc

    async def close(self) -> None:
        try:
            await self.call(self._close)
        finally:
            self._executor.shutdown(wait=False)

    # -- worker thread only ----------------------------------------------------------------

    def open(self) -> None:
        port = serial.serial_for_url(
            self.url, baudrate=self.baudrate, timeout=0, write_timeout=WRITE_TIMEOUT_S
        )
        self._port = cast(Port, port)
        self._buffer.clear()

    def _close(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            port.close()

    def _open_port(self) -> Port:
        if self._port is None:
            raise serial.SerialException("the port is not open")
        return self._port

    def write(self, text: str) -> None:
        self._open_port().write(text.encode("ascii"))

    def read_lines(self, wait_s: float) -> list[str]:
        """Every complete line that arrives within `wait_s` (at least one, or none at all)."""
        port = self._open_port()
        give_up = time.monotonic() + wait_s
        while True:
            while len(self._buffer) < READ_MAX and (chunk := port.read(READ_MAX)):  # never blocks
                self._buffer += chunk
            if b"\n" in self._buffer:
                break
            left = give_up - time.monotonic()
            if left <= 0:
                return []
            select.select([port.fileno()], [], [], min(left, SLICE_S))
        complete, _, rest = self._buffer.rpartition(b"\n")
        self._buffer = bytearray(rest)
        return [line.rstrip("\r") for line in complete.decode("ascii", "replace").split("\n")]


@dataclass
class Plan:
    """One script of a step and what its end means."""

    script: str
    interval_s: float
    on_end: str  # the reason when the device ends the script and no condition holds
    breaks: tuple[tuple[Break, str], ...] = ()  # device-side conditions and the reason of each
    current: bool = True  # packages carry a current (not at open circuit)


@dataclass
class Tally:
    """A step's samples as they stream in: end conditions, charge, logging (the shared rules)."""

    command: StepCommand
    start: StepProgress
    limits: SafetyLimits
    extra: Callable[[FloatArray], End] | None = None
    counter: Counter = field(init=False)
    watch: EndWatch = field(init=False)
    record: RecordState = field(default_factory=RecordState)
    progress: StepProgress = field(init=False)
    first: bool = True
    pending: Batch | None = None  # the latest sample, when the record rule did not log it
    last_voltage_V: float | None = None

    def __post_init__(self) -> None:
        self.counter = Counter(self.start)
        self.watch = EndWatch(self.command, self.limits)
        self.progress = self.start

    def end_in(self, t: FloatArray, v: FloatArray, i: FloatArray) -> End:
        q, _ = copy.copy(self.counter).add(t, v, i)  # a trial count: the step may end mid-chunk
        return self.watch.check(t, v, i, q, self.extra(v) if self.extra else NO_END)

    def take(self, t: FloatArray, v: FloatArray, i: FloatArray, final: bool) -> Batch | None:
        """Count these samples and return the ones to log (first and last of a step always)."""
        q, e = self.counter.add(t, v, i)
        keep = logged(self.command.record, t, v, i, self.record)
        keep[0] |= self.first
        keep[-1] |= final
        self.first = False
        self.progress = StepProgress(float(t[-1]), float(q[-1]), float(e[-1]))
        self.last_voltage_V = float(v[-1])
        self.pending = None if keep[-1] else Batch(t[-1:], v[-1:], i[-1:], q[-1:], e[-1:])
        return Batch(t[keep], v[keep], i[keep], q[keep], e[keep]) if keep.any() else None

    def tail(self) -> Batch | None:
        last, self.pending = self.pending, None
        return last


class Conversation:
    """The half of MethodScriptChannel that talks to the device: lines and scripts over its Link,
    one conversation at a time (`_session`). The channel's __init__ sets the attributes below."""

    name: str
    timeout_s: float
    _link: Link | None
    _unread: deque[str]  # lines read but not yet consumed
    _session: asyncio.Lock
    _script: int  # token of the latest script; bumped when safe_state() ends it
    _running: bool  # a script runs: its end (the empty line) is still to come

    # -- streaming ------------------------------------------------------------------------

    async def _stream(self, plan: Plan, tally: Tally) -> AsyncGenerator[Batch | StepEnd, None]:
        """Run one script; turn its packages into batches until it or an end condition ends it."""
        token = await self._execute(plan.script)
        origin = tally.progress.t_s  # device time 0 (timer_start) is this step time
        while True:
            packages, over = await self._read_packages(token, plan.interval_s + self.timeout_s)
            rows = [p for p in packages if len(p) >= (3 if plan.current else 2)]
            if rows:
                t = origin + np.array([p[0].value for p in rows])
                v = np.array([p[1].value for p in rows])
                i = np.array([p[2].value for p in rows]) if plan.current else np.zeros(len(rows))
                index, reason, detail = tally.end_in(t, v, i)
                if index >= 0:
                    if not over:
                        await self._abort(token)  # a host-side end: stop the device first
                    if (
                        batch := tally.take(t[: index + 1], v[: index + 1], i[: index + 1], True)
                    ) is not None:
                        yield batch
                    yield StepEnd(reason, tally.progress, detail)
                    return
                if (batch := tally.take(t, v, i, final=False)) is not None:
                    yield batch
            if over:
                reason, detail = self._device_reason(plan, tally)
                if reason != CONTINUE and (last := tally.tail()) is not None:
                    yield last
                yield StepEnd(reason, tally.progress, detail)
                return

    def _device_reason(self, plan: Plan, tally: Tally) -> tuple[str, str]:
        """Why the device ended a script when no host-side condition held: a breakloop whose
        value the wire rounded across the limit, else the loop's scheduled end."""
        last = tally.last_voltage_V
        for brk, reason in sorted(plan.breaks, key=lambda b: b[1] != SAFETY):
            if last is not None and _holds(brk, last):
                return reason, f"device breakloop: {brk.variable} {brk.op} {brk.limit:g}"
        return plan.on_end, ""

    # -- conversations with the device ----------------------------------------------------

    async def _identify(self) -> DeviceInfo:
        await self._write(ms.FIRMWARE_QUERY)
        reply = [await self._until("the firmware query (t)", _starts_with("t"))]
        while not reply[-1].endswith("*"):
            reply.append(await self._until("the rest of the firmware reply", lambda line: True))
        firmware = firmware_version(reply)
        family = family_of(firmware)
        if family is None:
            raise NotSupported(
                self.name,
                f"the device is {what_is(firmware)} (firmware {firmware!r}); cyclerd drives "
                "EmStat4 LR/HR, MultiEmStat4 and Nexus (and an EmStat Pico for potentiostatic "
                "steps): check the port and the instrument",
            )
        answers = []
        for query, letter in ((ms.METHODSCRIPT_VERSION_QUERY, "v"), (ms.SERIAL_NUMBER_QUERY, "i")):
            await self._write(query)
            line = await self._until(f"the {letter} query", _starts_with(letter))
            answers.append("unknown" if device_error(line) else line[1:].strip())
        return DeviceInfo(firmware, answers[0], answers[1], family)

    async def _execute(self, script: str) -> int:
        """Send a script; its token once the device has acknowledged it with `e`."""
        async with self._session:
            await self._write(script)
            self._running = True
            self._script += 1
            await self._until("the script (its e acknowledgement)", lambda line: line == "e", errors=True)
            return self._script

    async def _execute_to_end(self, script: str, what: str) -> None:
        """Run a script that measures nothing to its end (with the session held)."""
        await self._write(script)
        self._running = True
        await self._until(what, lambda line: line == "e", errors=True)
        await self._until(what, lambda line: line == "", errors=True)
        self._running = False

    async def _read_packages(self, token: int, timeout_s: float) -> tuple[list[tuple[Value, ...]], bool]:
        """The packages that arrived next, and whether the script is over (its empty line)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while True:
            async with self._session:  # held per slice: safe_state() can always get in
                if token != self._script or not self._running:
                    raise InstrumentFault(self.name, "the step's script was ended by safe_state()")
                if not self._unread:
                    self._unread.extend(await self._read(SLICE_S))
                if self._unread:
                    return await self._packages()
            if loop.time() > give_up:
                raise InstrumentTimeout(self.name, f"no data from the running script for {timeout_s:.3g} s")

    async def _packages(self) -> tuple[list[tuple[Value, ...]], bool]:
        packages: list[tuple[Value, ...]] = []
        while self._unread:
            line = self._unread.popleft()
            kind = kind_of(line)
            if kind is LineKind.PACKAGE:
                try:
                    packages.append(decode_package(line))
                except ValueError as exc:  # line noise: a lost sample, counted across by Counter
                    log.warning("%s: skipped an unreadable package: %s", self.name, exc)
            elif kind is LineKind.ERROR:
                await self._fail(line)
            elif kind is LineKind.SCRIPT_END:
                self._running = False
                return packages, True
            elif kind is LineKind.TEXT:
                log.info("%s says: %s", self.name, line[1:])
        return packages, False

    async def _collect(self, script: str, per_line_s: float) -> list[tuple[Value, ...]]:
        """Run a script to its end and return all its packages (EIS, the OCV probe)."""
        token = await self._execute(script)
        packages: list[tuple[Value, ...]] = []
        over = False
        while not over:
            more, over = await self._read_packages(token, per_line_s + self.timeout_s)
            packages += more
        return packages

    async def _abort(self, token: int) -> None:
        async with self._session:
            if token == self._script and self._running:  # else safe_state() has ended it
                await self._write(ms.ABORT)
                await self._after_abort()

    async def _resync(self) -> None:
        """End anything running, whatever state the device and the line are in (§3.2)."""
        self._unread.clear()
        await self._write(ms.FLUSH + ms.ABORT)
        await self._after_abort()

    async def _after_abort(self) -> None:
        """Read to the `Z` reply; a plain `Z` means a script was running: read to its end."""
        reply = await self._until(
            "the abort (Z): is this a MethodSCRIPT device?", lambda x: x.startswith("Z")
        )
        if reply == "Z":
            await self._until("the end of the aborted script", lambda line: line == "")
        self._running = False

    async def _fail(self, line: str) -> None:
        """A `!XXXX` line: read to the script's end (on_finished runs), pause, raise it."""
        error = device_error(line)
        assert error is not None
        if self._running:
            with contextlib.suppress(InstrumentTimeout):
                await self._until("the end of a failed script", lambda line: line == "")
            self._running = False
        await asyncio.sleep(ERROR_PAUSE_S)
        raise InstrumentError(self.name, error.code, error.text)

    async def _until(self, what: str, stop: Callable[[str], bool], errors: bool = False) -> str:
        """Consume lines up to the first for which `stop` holds and return it; with `errors`, a
        device error on the way is raised. Stale lines before it are dropped."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.timeout_s
        while True:
            while self._unread:
                line = self._unread.popleft()
                if errors and kind_of(line) is LineKind.ERROR:
                    await self._fail(line)
                if stop(line):
                    return line
            if loop.time() > give_up:
                raise InstrumentTimeout(self.name, f"no reply in {self.timeout_s:.3g} s to {what}")
            self._unread.extend(await self._read(SLICE_S))

    async def _write(self, text: str) -> None:
        link = self._require_link()
        await link.call(link.write, text)

    async def _read(self, wait_s: float) -> list[str]:
        link = self._require_link()
        return await link.call(link.read_lines, wait_s)

    def _require_link(self) -> Link:
        if self._link is None:
            raise InstrumentDisconnected(self.name, "not open")
        return self._link


def _starts_with(letter: str) -> Callable[[str], bool]:
    """A reply line to the online command `letter` (its answer or `letter!XXXX`)."""
    return lambda line: line.startswith(letter)


def _holds(brk: Break, value: float) -> bool:
    """A device-side condition on a value as received (the wire rounds to about 1 ppm)."""
    slack = 1e-6 * max(abs(brk.limit), 1e-3)
    if brk.op in (">=", ">"):
        return value >= brk.limit - slack
    if brk.op in ("<=", "<"):
        return value <= brk.limit + slack
    return abs(value - brk.limit) <= slack
