"""PalmSens EmStat4 / Nexus over pyserial: each step runs on the instrument as a MethodSCRIPT.

The device executes the step (its loop time is the step's scheduled end, its `breakloop`s the
voltage cut-offs); the host decodes the streamed packages, checks every end condition and
safety limit with the shared EndWatch and aborts the script when one holds, so a step ends
here exactly as on any other channel. All serial I/O of one instrument runs in one thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import select
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

import numpy as np
import serial

from cyclerd.clock import Clock, RealClock
from cyclerd.drivers import methodscript_scripts as ms
from cyclerd.drivers.base import (
    INTERRUPT,
    SAFETY,
    Batch,
    Capabilities,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentFault,
    InstrumentTimeout,
    Spectrum,
    StepEnd,
    StepProgress,
)
from cyclerd.drivers.conditions import NO_END, Counter, End, EndWatch, FloatArray, first
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
from cyclerd.protocols.compiler import ImpedanceSpec, SafetyLimits, StepCommand

log = logging.getLogger(__name__)
T = TypeVar("T")

BAUDRATE = 921600  # EmStat4 and Nexus (§3.1); a pty or socket ignores it
SLICE_S = 0.05  # the worker waits in slices this short, so an abort or safe_state never waits long
READ_MAX = 1 << 16  # bytes taken from the port at once
WRITE_TIMEOUT_S = 2.0
ERROR_PAUSE_S = 0.06  # wait > 50 ms after any `!` reply before the next command (§3.2)
MAX_SCRIPT_S = 7 * 86400.0  # one script's loop time at most; a longer step goes on in a new script
INTERVAL_MIN_S = 1e-3  # finest sampling a script is asked for
CURRENT_MIN_A = 1e-9  # bottom of the current autoranging window
OCV_INTERVAL_S, OCV_DURATION_S = 0.1, 0.35  # the open-circuit probe before an EIS around the OCV
SWEEP_DONE = "sweep_done"  # why a sweep step ends: all its scans are done
_CONTINUE = "continue"  # a capped script ended with nothing else due: the next one follows


class NotSupported(InstrumentFault):
    """The device (or cyclerd's use of it) cannot do what was asked; nothing was started."""


class _Port(Protocol):
    """What the driver uses of a pyserial port, a device path or a `socket://` URL alike.

    `fileno` (POSIX: serial devices and sockets) lets the worker wait with select and then take
    all that has arrived at once: a fast stream is read in blocks, not byte by byte.
    """

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class _Link:
    """The serial port and the one worker thread that ever touches it."""

    def __init__(self, url: str, baudrate: int, name: str) -> None:
        self.url, self.baudrate, self.name = url, baudrate, name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"methodscript {name}")
        self._port: _Port | None = None
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
        self._port = cast(_Port, port)
        self._buffer.clear()

    def _close(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            port.close()

    def _open_port(self) -> _Port:
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
class _Plan:
    """One script of a step and what its end means."""

    script: str
    interval_s: float
    on_end: str  # the reason when the device ends the script and no condition holds
    breaks: tuple[tuple[Break, str], ...] = ()  # device-side conditions and the reason of each
    current: bool = True  # packages carry a current (not at open circuit)


@dataclass
class _Tally:
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


class MethodScriptChannel:
    """One cell on a MethodSCRIPT potentiostat: an EmStat4 or Nexus (EmStat Pico: no CC steps).

    `url` is a device path (`/dev/ttyUSB0`, `/dev/pts/5`) or a pyserial URL (`socket://host:port`).
    `interval_s` is the finest sampling of a step: end conditions are resolved to it.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        timeout_s: float = 2.0,
        interval_s: float = 1.0,
        sweep_step_V: float = 1e-3,
        baudrate: int = BAUDRATE,
        current_max_A: float | None = None,
        voltage_range_V: tuple[float, float] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock: Clock = clock if clock is not None else RealClock()
        self.url = url
        self.name = name or f"MethodSCRIPT at {url}"
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self.sweep_step_V = sweep_step_V
        self.baudrate = baudrate
        self._overrides = (current_max_A, voltage_range_V)
        self._link: _Link | None = None
        self._info: DeviceInfo | None = None
        self._capabilities: Capabilities | None = None
        self._unread: deque[str] = deque()  # lines read but not yet consumed
        self._session = asyncio.Lock()  # one conversation with the device at a time
        self._script = 0  # token of the latest script; bumped when safe_state() ends it
        self._running = False  # a script runs: its end (the empty line) is still to come

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> DeviceInfo:
        """Open the port, end anything left running, and identify the device (refusing others)."""
        link = _Link(self.url, self.baudrate, self.name)
        try:
            await link.call(link.open)
        except InstrumentFault:
            await link.close()
            raise
        self._link = link
        try:
            async with self._session:
                await self._resync()
                info = self._info = await self._identify()
        except BaseException:
            await self.close()
            raise
        caps, (current_max, voltages) = info.family.capabilities, self._overrides
        self._capabilities = Capabilities(
            caps.kinds,
            current_max if current_max is not None else caps.current_max_A,
            voltages if voltages is not None else caps.voltage_range_V,
            caps.eis_modes,
            caps.frequency_range_Hz,
        )
        log.info("%s: %s, firmware %s", self.name, info.family.name, info.firmware)
        return info

    async def close(self) -> None:
        """Cell off if the device still answers, then release the port and the worker thread."""
        if self._link is None:
            return
        if self._info is not None:
            try:
                await self.safe_state()
            except InstrumentFault as exc:
                log.warning("%s: could not switch the cell off while closing: %s", self.name, exc)
        link, self._link, self._info = self._link, None, None
        with contextlib.suppress(InstrumentFault):
            await link.close()

    async def __aenter__(self) -> MethodScriptChannel:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def info(self) -> DeviceInfo:
        if self._info is None:
            raise InstrumentFault(self.name, "not open: call open() first")
        return self._info

    @property
    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            raise InstrumentFault(self.name, "not open: capabilities are known once the device is identified")
        return self._capabilities

    async def safe_state(self) -> None:
        """Abort whatever script runs and switch the cell off; an already-off cell is fine.

        Raises only when the device cannot be reached (then the cell's state is unknown).
        """
        if self._link is None:
            return
        async with self._session:
            self._script += 1  # a step still streaming learns that its script is gone
            await self._resync()
            await self._execute_to_end(ms.cell_off(), "the cell_off script")

    reset = safe_state  # an instrument reset is exactly that: nothing running, cell off

    # -- steps ----------------------------------------------------------------------------

    async def run(
        self,
        command: StepCommand,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None = None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Execute `command` on the device from `start` (see Channel.run). A sweep ignores pauses."""
        if command.kind not in self.capabilities.kinds:
            raise NotSupported(self.name, f"a {self.info.family.name} cannot run {command.kind} steps")
        if command.kind in ("rest", "cc", "plate", "strip"):
            steps = self._constant_current(command, command.current_A or 0.0, start, limits, pause_at_s)
        elif command.kind == "cv":
            steps = self._constant_voltage(command, start, limits, pause_at_s)
        elif command.kind == "cccv":
            steps = self._cccv(command, start, limits, pause_at_s)
        elif command.kind == "sweep":
            steps = self._sweep(command, start, limits)
        else:
            raise NotSupported(self.name, f"{command.kind} is not a streamed step; use impedance()")
        ended = False
        device_t = start.t_s  # the device times the step; a virtual run clock follows it
        try:
            async with contextlib.aclosing(steps):
                async for item in steps:
                    ended = isinstance(item, StepEnd)
                    now = item.progress.t_s if isinstance(item, StepEnd) else float(item.t_s[-1])
                    if now > device_t:
                        self.clock.elapse(now - device_t)
                        device_t = now
                    yield item
        except BaseException as exc:
            if not (isinstance(exc, GeneratorExit) and ended):  # closed mid-step, failed, cancelled
                await self._leave_off(exc)
            raise

    async def _constant_current(
        self,
        command: StepCommand,
        current_A: float,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None,
        switch_V: float | None = None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Galvanostatic (cc, plate, strip, CC phase of cccv) or, at 0 A, a rest at open circuit."""
        breaks = self._voltage_breaks(command, limits)
        extra = None
        if switch_V is not None:
            rising = current_A > 0
            breaks += ((Break("p", ">=" if rising else "<=", switch_V), "switch"),)

            def extra(v: FloatArray) -> End:
                return first(v >= switch_V if rising else v <= switch_V), "switch", ""

        span = self._voltage_span(limits)
        plain = tuple(b for b, _ in breaks)

        def plan(interval_s: float, loop_s: float, on_end: str) -> _Plan:
            if current_A == 0:
                script = ms.open_circuit(interval_s, loop_s, max(map(abs, span)), plain)
                return _Plan(script, interval_s, on_end, breaks, current=False)
            script = ms.galvanostatic(current_A, interval_s, loop_s, span, abs(current_A), plain)
            return _Plan(script, interval_s, on_end, breaks)

        t_stop, scheduled = _scheduled_end(command, current_A, start, pause_at_s)
        tally = _Tally(command, start, limits, extra)
        async for item in self._scripts(command, tally, t_stop, scheduled, plan):
            yield item

    async def _constant_voltage(
        self, command: StepCommand, start: StepProgress, limits: SafetyLimits, pause_at_s: float | None
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Potentiostatic hold (cv, CV phase of cccv); current_below is the host's to see."""
        assert command.voltage_V is not None
        voltage_V = command.voltage_V
        currents = (CURRENT_MIN_A, command.current_limit_A or self.capabilities.current_max_A)

        def plan(interval_s: float, loop_s: float, on_end: str) -> _Plan:
            return _Plan(ms.potentiostatic(voltage_V, interval_s, loop_s, currents), interval_s, on_end)

        t_stop, scheduled = _scheduled_end(command, 0.0, start, pause_at_s)
        async for item in self._scripts(command, _Tally(command, start, limits), t_stop, scheduled, plan):
            yield item

    async def _cccv(
        self, command: StepCommand, start: StepProgress, limits: SafetyLimits, pause_at_s: float | None
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Two scripts: constant current until the hold voltage, then the hold (as the simulator)."""
        assert command.voltage_V is not None
        assert command.current_A is not None
        progress = start
        cc = self._constant_current(command, command.current_A, start, limits, pause_at_s, command.voltage_V)
        async with contextlib.aclosing(cc):
            async for item in cc:
                if isinstance(item, StepEnd) and item.reason == "switch":
                    progress = item.progress
                    break
                yield item
            else:
                return
        async for item in self._constant_voltage(command, progress, limits, pause_at_s):
            yield item

    async def _sweep(
        self, command: StepCommand, start: StepProgress, limits: SafetyLimits
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Cyclic voltammetry: meas_loop_cv, a closed path per scan; safety is the host's to check."""
        spec = command.sweep
        assert spec is not None
        turns = spec.vertices_V[:-1]
        if not math.isclose(spec.vertices_V[-1], spec.start_V, abs_tol=1e-9) or not 1 <= len(turns) <= 2:
            raise NotSupported(
                self.name,
                "meas_loop_cv scans start -> vertex 1 -> vertex 2 -> start: write the sweep as a "
                "closed path (last vertex = start) with one or two turning points",
            )
        vertices = (turns[0], turns[1] if len(turns) == 2 else spec.start_V)
        currents = (CURRENT_MIN_A, self.capabilities.current_max_A)
        step, rate = self.sweep_step_V, spec.scan_rate_V_per_s
        script = ms.cyclic_voltammetry(spec.start_V, vertices, step, rate, spec.scans, currents)
        stream = self._stream(_Plan(script, step / rate, SWEEP_DONE), _Tally(command, start, limits))
        async with contextlib.aclosing(stream):
            async for item in stream:
                yield item

    async def _scripts(
        self,
        command: StepCommand,
        tally: _Tally,
        t_stop: float,
        scheduled: str,
        plan: Callable[[float, float, str], _Plan],
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """The scripts of a timed step until it ends: one, unless the step outlasts MAX_SCRIPT_S."""
        while True:
            interval_s, loop_s, on_end = self._timing(command, tally.progress, t_stop, scheduled)
            if loop_s <= 0:
                yield StepEnd(scheduled, tally.progress)
                return
            stream = self._stream(plan(interval_s, loop_s, on_end), tally)
            async with contextlib.aclosing(stream):
                async for item in stream:
                    if isinstance(item, StepEnd) and item.reason == _CONTINUE:
                        break
                    yield item
                    if isinstance(item, StepEnd):
                        return

    def _timing(
        self, command: StepCommand, progress: StepProgress, t_stop: float, scheduled: str
    ) -> tuple[float, float, str]:
        """Sample interval, loop time of the next script and what its natural end means.

        The loop time is a whole number of intervals plus half a one, so that the device's last
        sample falls on the scheduled end whether it stops at or just before its loop time.
        """
        wanted = max(min(self.interval_s, command.record.every_s or math.inf), INTERVAL_MIN_S)
        remaining = t_stop - progress.t_s
        if remaining > MAX_SCRIPT_S:
            return wanted, MAX_SCRIPT_S, _CONTINUE
        if remaining <= 1e-9:
            return wanted, 0.0, scheduled
        count = max(1, math.ceil(remaining / wanted - 1e-9))
        return remaining / count, (count + 0.5) * remaining / count, scheduled

    def _voltage_breaks(self, command: StepCommand, limits: SafetyLimits) -> tuple[tuple[Break, str], ...]:
        """The voltage conditions the device checks itself (§3.9: `if p >= …` / `breakloop`)."""
        end, found = command.end, []
        if end.voltage_above_V is not None:
            found.append((Break("p", ">=", end.voltage_above_V), "voltage_above"))
        if end.voltage_below_V is not None:
            found.append((Break("p", "<=", end.voltage_below_V), "voltage_below"))
        if limits.voltage_max_V is not None:
            found.append((Break("p", ">", limits.voltage_max_V), SAFETY))
        if limits.voltage_min_V is not None:
            found.append((Break("p", "<", limits.voltage_min_V), SAFETY))
        return tuple(found)

    def _voltage_span(self, limits: SafetyLimits) -> tuple[float, float]:
        low, high = self.capabilities.voltage_range_V
        return (
            limits.voltage_min_V if limits.voltage_min_V is not None else low,
            limits.voltage_max_V if limits.voltage_max_V is not None else high,
        )

    # -- impedance ------------------------------------------------------------------------

    async def impedance(self, spec: ImpedanceSpec) -> Spectrum:
        """One spectrum from the start to the stop frequency; the cell is off afterwards."""
        family, mode = self.info.family, "galvanostatic" if spec.galvanostatic else "potentiostatic"
        if mode not in self.capabilities.eis_modes:
            raise NotSupported(self.name, f"a {family.name} has no {mode} EIS (no galvanostat)")
        if spec.dc_level is not None and spec.galvanostatic != spec.dc_is_current:
            needs = "current" if spec.galvanostatic else "voltage"
            raise NotSupported(self.name, f"{mode} EIS takes its DC level as a {needs}")
        frequencies = spec.frequency_start_Hz, spec.frequency_stop_Hz, len(spec.frequencies_Hz())
        currents = (CURRENT_MIN_A, self.capabilities.current_max_A)
        try:
            if spec.galvanostatic:
                dc_A, span = spec.dc_level or 0.0, self._voltage_span(SafetyLimits())
                top_A = abs(dc_A) + abs(spec.amplitude)
                script = ms.galvanostatic_impedance(
                    spec.amplitude, *frequencies, dc_A, top_A, span, family.eis_bandwidth_Hz
                )
            else:
                dc_V = spec.dc_level if spec.dc_level is not None else await self._open_circuit_voltage()
                script = ms.impedance(spec.amplitude, *frequencies, dc_V, currents, family.eis_bandwidth_Hz)
            point_s = 3.0 * max(3.0 / min(frequencies[:2]), 1.0)  # a generous time per frequency
            packages = await self._collect(script, point_s)
        except BaseException as exc:
            await self._leave_off(exc)
            raise
        self.clock.elapse(spec.duration_s())  # the device's own sweep time is not reported
        values = np.array([[v.value for v in p[:3]] for p in packages if len(p) >= 3], dtype=np.float64)
        if len(values) == 0:
            raise InstrumentFault(self.name, "the EIS script ended without a single frequency")
        return Spectrum(values[:, 0], (values[:, 1] + 1j * values[:, 2]).astype(np.complex128))

    async def _open_circuit_voltage(self) -> float:
        span = max(map(abs, self._voltage_span(SafetyLimits())))
        packages = await self._collect(
            ms.open_circuit(OCV_INTERVAL_S, OCV_DURATION_S, span, ()), OCV_INTERVAL_S
        )
        if not packages:
            raise InstrumentFault(self.name, "the open-circuit probe returned no voltage")
        return packages[-1][1].value

    # -- streaming ------------------------------------------------------------------------

    async def _stream(self, plan: _Plan, tally: _Tally) -> AsyncGenerator[Batch | StepEnd, None]:
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
                if reason != _CONTINUE and (last := tally.tail()) is not None:
                    yield last
                yield StepEnd(reason, tally.progress, detail)
                return

    def _device_reason(self, plan: _Plan, tally: _Tally) -> tuple[str, str]:
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

    async def _leave_off(self, cause: BaseException) -> None:
        """After a failure or cancellation: abort and cell off, without hiding the cause."""
        try:
            await asyncio.shield(self.safe_state())
        except (InstrumentFault, asyncio.CancelledError) as exc:
            log.error("%s: could not leave the cell off after %r: %s", self.name, cause, exc)

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

    def _require_link(self) -> _Link:
        if self._link is None:
            raise InstrumentDisconnected(self.name, "not open")
        return self._link


def _scheduled_end(
    command: StepCommand, current_A: float, start: StepProgress, pause_at_s: float | None
) -> tuple[float, str]:
    """The step time at which the step ends if nothing else happens first, and why; on a tie
    the step's own end wins over a pause, so a block due as the step ends runs once."""
    ends = [(math.inf, "")]
    if command.end.duration_s is not None:
        ends.append((command.end.duration_s, "duration"))
    if command.end.charge_As is not None and current_A != 0:
        ends.append((start.t_s + (command.end.charge_As - abs(start.charge_As)) / abs(current_A), "charge"))
    if pause_at_s is not None:
        ends.append((pause_at_s, INTERRUPT))
    soonest = min(t for t, _ in ends)
    tied = [end for end in ends if end[0] <= soonest + 1e-6]
    return min(tied, key=lambda end: end[1] == INTERRUPT)


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


@contextlib.asynccontextmanager
async def open_methodscript(
    url: str, clock: Clock | None = None, **options: Any
) -> AsyncIterator[MethodScriptChannel]:
    """The device at `url` as an open, identified channel; cell off and port closed on the way out.

    The device times its own steps; a virtual run clock is moved on by the time it reports.
    """
    channel = MethodScriptChannel(url, clock=clock, **options)
    await channel.open()
    try:
        yield channel
    finally:
        await channel.close()
