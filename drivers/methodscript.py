"""PalmSens EmStat4 / Nexus: MethodScriptChannel runs each step on the device as a MethodSCRIPT,
its end conditions and safety limits checked on the host as on any other channel; EIS likewise.
The channel decides which scripts a step runs; it talks to the device through its Link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, assert_never

import numpy as np

from cyclerd.drivers import methodscript_scripts as ms
from cyclerd.drivers.base import (
    Batch,
    Capabilities,
    InstrumentDisconnected,
    InstrumentFault,
    Spectrum,
    StepEnd,
    StepProgress,
    dc_sample_times,
    hold_after_switch,
)
from cyclerd.drivers.clock import Clock, RealClock
from cyclerd.drivers.conditions import End, FloatArray, first, scheduled_end
from cyclerd.drivers.methodscript_link import Link, NotSupported
from cyclerd.drivers.methodscript_packages import DeviceInfo
from cyclerd.drivers.methodscript_scripts import Break
from cyclerd.drivers.methodscript_stream import CONTINUE, Plan, Tally, stream, timing, voltage_breaks
from cyclerd.protocols.program import (
    CurrentCommand,
    CurrentVoltageCommand,
    ImpedanceCommand,
    ImpedanceSpec,
    RestCommand,
    SafetyLimits,
    StepCommand,
    SweepCommand,
    VoltageCommand,
)

__all__ = ["BAUDRATE", "SWEEP_DONE", "MethodScriptChannel", "NotSupported", "open_methodscript"]

log = logging.getLogger(__name__)

BAUDRATE = 921600  # EmStat4 and Nexus (§3.1); a pty or socket ignores it
CURRENT_MIN_A = 1e-9  # bottom of the current autoranging window
OCV_INTERVAL_S, OCV_DURATION_S = 0.1, 0.35  # the open-circuit probe before an EIS or a sweep at the OCV
SWEEP_DONE = "sweep_done"  # why a sweep step ends: all its scans are done


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
        self._link: Link | None = None  # the open device; None before open() and after close()
        self._info: DeviceInfo | None = None
        self._capabilities: Capabilities | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> DeviceInfo:
        """Open the port, end anything left running, and identify the device (refusing others)."""
        link = Link(self.url, self.baudrate, self.name, self.timeout_s)
        info = await link.open()  # closes the port again if it fails
        self._link, self._info = link, info
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

    async def reconnect(self) -> None:
        """After a dropped link or a confused conversation: a new link, the device resynchronised
        (whatever still runs is aborted) and identified again, then the cell switched off.

        A real device goes on running its script when the host is gone; this is how the host
        gets the cell back. Raises when the device cannot be reached or is another one; the
        channel then has no link, and safe_state says the cell's state is unknown.
        """
        old, self._link = self._link, None
        try:
            link = Link(self.url, self.baudrate, self.name, self.timeout_s)
            info = await link.open()  # closes the port again if it fails
            if self._info is not None and info.serial_number != self._info.serial_number:
                with contextlib.suppress(InstrumentFault):
                    await link.close()
                raise InstrumentFault(
                    self.name,
                    f"device {info.serial_number} answers where {self._info.serial_number} was: "
                    "another instrument on this port; check the cabling",
                )
            self._link, self._info = link, info
            await link.cell_off()
            log.info("%s: reconnected to %s; cell off", self.name, self.url, extra={"kind": "reconnect"})
        finally:
            # Released after the cell is off: closing a socket:// port takes pyserial 0.3 s.
            if old is not None:
                with contextlib.suppress(InstrumentFault):
                    await old.close()

    async def close(self) -> None:
        """Cell off if the device still answers, then release the port and the worker thread."""
        if self._link is None:
            self._info = None  # a link lost and never regained: nothing left to release
            return
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
        if self._link is not None:
            await self._link.cell_off()
        elif self._info is not None:  # it was open: the link was lost and not regained
            raise InstrumentDisconnected(self.name, f"no link to {self.url}: the cell's state is unknown")

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
        steps: AsyncGenerator[Batch | StepEnd, None]
        match command:
            case RestCommand():
                steps = self._constant_current(command, 0.0, start, limits, pause_at_s)
            case CurrentCommand():
                steps = self._constant_current(command, command.current_A, start, limits, pause_at_s)
            case VoltageCommand():
                hold = (command.voltage_V, command.current_limit_A)
                steps = self._constant_voltage(command, *hold, start, limits, pause_at_s)
            case CurrentVoltageCommand():
                steps = self._cccv(command, start, limits, pause_at_s)
            case SweepCommand():
                steps = self._sweep(command, start, limits)
            case ImpedanceCommand():
                raise NotSupported(self.name, f"{command.kind} is not a streamed step; use impedance()")
            case _:
                assert_never(command)
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
        breaks = voltage_breaks(command, limits)
        extra = None
        if switch_V is not None:
            rising = current_A > 0
            breaks += ((Break("p", ">=" if rising else "<=", switch_V), "switch"),)

            def extra(v: FloatArray) -> End:
                return first(v >= switch_V if rising else v <= switch_V), "switch", ""

        span = self._voltage_span(limits)
        plain = tuple(b for b, _ in breaks)

        def plan(interval_s: float, loop_s: float, on_end: str) -> Plan:
            if current_A == 0:
                script = ms.open_circuit(interval_s, loop_s, max(map(abs, span)), plain)
                return Plan(script, interval_s, on_end, breaks, current=False)
            script = ms.galvanostatic(current_A, interval_s, loop_s, span, abs(current_A), plain)
            return Plan(script, interval_s, on_end, breaks)

        t_stop, scheduled = scheduled_end(command, current_A, start, pause_at_s)
        tally = Tally(command, start, limits, extra)
        async for item in self._scripts(command, tally, t_stop, scheduled, plan):
            yield item

    async def _constant_voltage(
        self,
        command: StepCommand,
        voltage_V: float,
        ceiling_A: float | None,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Potentiostatic hold (cv, CV phase of cccv); current_below is the host's to see."""
        currents = (CURRENT_MIN_A, ceiling_A or self.capabilities.current_max_A)

        def plan(interval_s: float, loop_s: float, on_end: str) -> Plan:
            return Plan(ms.potentiostatic(voltage_V, interval_s, loop_s, currents), interval_s, on_end)

        t_stop, scheduled = scheduled_end(command, 0.0, start, pause_at_s)
        async for item in self._scripts(command, Tally(command, start, limits), t_stop, scheduled, plan):
            yield item

    def _cccv(
        self,
        command: CurrentVoltageCommand,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Two scripts: constant current until the hold voltage, then the hold (as the simulator)."""
        voltage_V = command.voltage_V
        return hold_after_switch(
            self._constant_current(command, command.current_A, start, limits, pause_at_s, voltage_V),
            lambda progress: self._constant_voltage(command, voltage_V, None, progress, limits, pause_at_s),
        )

    async def _sweep(
        self, command: SweepCommand, start: StepProgress, limits: SafetyLimits
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Cyclic voltammetry: meas_loop_cv, a closed path per scan; safety is the host's to check.

        A sweep from the OCV measures it first (as EIS around `ocv` does) and starts there.
        """
        spec = command.spec
        corners = spec.corners_V(await self._open_circuit_voltage() if spec.start_V is None else None)
        start_V, turns = corners[0], corners[1:-1]
        if not math.isclose(corners[-1], start_V, abs_tol=1e-9) or not 1 <= len(turns) <= 2:
            raise NotSupported(
                self.name,
                "meas_loop_cv scans start -> vertex 1 -> vertex 2 -> start: write the sweep as a "
                "closed path (last vertex = start) with one or two turning points",
            )
        vertices = (turns[0], turns[1] if len(turns) == 2 else start_V)
        currents = (CURRENT_MIN_A, self.capabilities.current_max_A)
        step, rate = self.sweep_step_V, spec.scan_rate_V_per_s
        script = ms.cyclic_voltammetry(start_V, vertices, step, rate, spec.scans, currents)
        items = stream(
            self._open_link(),
            Plan(script, step / rate, SWEEP_DONE),
            Tally(command, start, limits),
            self.clock,
        )
        async with contextlib.aclosing(items):
            async for item in items:
                yield item

    async def _scripts(
        self,
        command: StepCommand,
        tally: Tally,
        t_stop: float,
        scheduled: str,
        plan: Callable[[float, float, str], Plan],
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """The scripts of a timed step until it ends: one, unless the step outlasts MAX_SCRIPT_S."""
        while True:
            interval_s, loop_s, on_end = timing(command, self.interval_s, tally.progress, t_stop, scheduled)
            if loop_s <= 0:
                yield StepEnd(scheduled, tally.progress)
                return
            items = stream(self._open_link(), plan(interval_s, loop_s, on_end), tally, self.clock)
            async with contextlib.aclosing(items):
                async for item in items:
                    if isinstance(item, StepEnd) and item.reason == CONTINUE:
                        break
                    yield item
                    if isinstance(item, StepEnd):
                        return

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
            packages = await self._open_link().collect(script, point_s)
        except BaseException as exc:
            await self._leave_off(exc)
            raise
        self.clock.elapse(spec.duration_s())  # the device's own sweep time is not reported
        values = np.array([[v.value for v in p[:3]] for p in packages if len(p) >= 3], dtype=np.float64)
        if len(values) == 0:
            raise InstrumentFault(self.name, "the EIS script ended without a single frequency")
        impedance = (values[:, 1] + 1j * values[:, 2]).astype(np.complex128)
        if spec.galvanostatic:  # the DC potential under a DC current is not reported
            return Spectrum(values[:, 0], impedance)
        held = None
        if spec.dc_level is None:  # held at the OCV just measured: no DC current flows
            times = dc_sample_times(spec.duration_s())
            nothing = np.zeros(len(times))
            held = Batch(times, np.full(len(times), dc_V), nothing, nothing, nothing, final=True)
        return Spectrum(values[:, 0], impedance, dc_V, held)

    async def _open_circuit_voltage(self) -> float:
        span = max(map(abs, self._voltage_span(SafetyLimits())))
        packages = await self._open_link().collect(
            ms.open_circuit(OCV_INTERVAL_S, OCV_DURATION_S, span, ()), OCV_INTERVAL_S
        )
        if not packages:
            raise InstrumentFault(self.name, "the open-circuit probe returned no voltage")
        return packages[-1][1].value

    def _open_link(self) -> Link:
        if self._link is None:
            raise InstrumentDisconnected(self.name, "not open")
        return self._link

    async def _leave_off(self, cause: BaseException) -> None:
        """After a failure or cancellation: abort and cell off, without hiding the cause."""
        try:
            await asyncio.shield(self.safe_state())
        except (InstrumentFault, asyncio.CancelledError) as exc:
            log.error("%s: could not leave the cell off after %r: %s", self.name, cause, exc)


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
