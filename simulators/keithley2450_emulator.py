"""A Keithley 2450 SourceMeter (native SCPI) on a raw TCP socket, with a simulated cell on its terminals.

Drivers are tested against it byte for byte (instrument-protocols.md §1). The output stage's
compliance (CC→CV at VLIM, current clamp at ILIM) comes from the cell model, in time the
emulator owns: real time × `speed`, or `virtual_step_s` per reading (deterministic; speed 0 means
1 s). Faults are injected at runtime through `emulator.faults` (see `scpi_server.Faults`) and
`power_cycle()`; `faults.struck` and `output_log` say, in the emulator's time, when a fault struck
and when the output switched. The SCPI vocabulary is `keithley2450_commands`, the settings and
readings `keithley2450_state`.

Choices where the notes say [U] (§8 numbering):
- K2 error timestamps `YYYY/MM/DD HH:MM:SS.mmm`, host clock. K3 numbers `f"{x:.6E}"`, or
  `:FORM:ASC:PREC` digits. K5 *RST: source VOLT, sense "CURR:DC", error queue kept.
  K6 `:*CLS` is `*CLS`. K7 changing RSEN with the output on turns the output off.
- K4 `:READ?` with the output off measures normally. Off state HIMP/GUAR: the cell is open
  and rests (V reads its OCV, I reads 0); NORM/ZERO: 0 V with a 1 µA limit, so a cell left
  in the *RST default NORM creeps down.
- Error queue of 32 (the newest entry becomes -350); a failed unit of a `;` line does not
  stop the others; -410/-420 are not emulated.
- Source readback defaults ON (SOUR = measured source value); a level beyond a fixed source
  range is -222; the ±21 V @ 1.05 A / ±210 V @ 105 mA envelope is not coupled.
- A header without its optional root that fits SENSe and SOURce (`:FUNC`, `:CURR:RANG`)
  means SENSe.
- Virtual time moves only on readings; in accelerated mode a reading takes NPLC / line
  frequency of real time. `short_cell`/`open_circuit` act from the next command on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections import deque

from cyclerd.drivers.clock import AcceleratedClock
from cyclerd.simulators.cell import CellModel
from cyclerd.simulators.keithley2450_commands import BUFFER_POINTS, DISPATCH, ELEMENT, ELEMENTS
from cyclerd.simulators.keithley2450_state import (
    BUFFERS,
    CURRENT_RANGES_A,
    OFF_STATE_LIMIT_A,
    OVERFLOW_READING,
    OVP_V,
    VOLTAGE_RANGES_V,
    Reading,
    Settings,
)
from cyclerd.simulators.keithley2450_sweep import Sweep
from cyclerd.simulators.keithley2450_sweep import run as run_sweep
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi import ErrorQueue, ScpiError, Token
from cyclerd.simulators.scpi_server import Faults, ScpiServer, running
from cyclerd.simulators.smu_output import Drive, Load, OpenLoad, ShortedLoad, Terminals

__all__ = ["Faults", "Keithley2450Emulator", "running", "serve"]
log = logging.getLogger(__name__)

IDN = "KEITHLEY INSTRUMENTS,MODEL 2450,{serial},1.7.12b"
VIRTUAL_STEP_S = 1.0  # virtual time per reading when asked for speed 0 without a step


class StepClock:
    """Virtual time: it moves by `step_s` per reading and at no other moment."""

    def __init__(self, step_s: float) -> None:
        if step_s <= 0:
            raise ValueError("virtual_step_s must be positive")
        self.step_s, self.t_s = step_s, 0.0

    def now(self) -> float:
        return self.t_s


class Keithley2450Emulator:
    """The instrument: settings, error queue, buffers, the output stage on `cell`, its TCP server."""

    def __init__(
        self,
        cell: CellModel,
        *,
        speed: float = 1.0,
        virtual_step_s: float | None = None,
        port: int = 0,
        serial: str = "04123456",
        line_frequency_Hz: float = 50.0,
    ) -> None:
        # Annotated: the command table reads these, and it imports this module for its types.
        self.cell: CellModel = cell
        if virtual_step_s is None and speed <= 0:  # speed 0 means virtual time, as for MethodSCRIPT
            virtual_step_s = VIRTUAL_STEP_S
        self.clock: StepClock | AcceleratedClock = (
            StepClock(virtual_step_s) if virtual_step_s is not None else AcceleratedClock(speed)
        )
        self.faults: Faults = Faults(now=self.clock.now)
        # (instrument time, output on) at every change: what a test reads the host's reaction from
        self.output_log: list[tuple[float, bool]] = []
        self.errors: ErrorQueue = ErrorQueue()
        self.terminals: Terminals = Terminals()
        self.idn: str = IDN.format(serial=serial)
        self.line_frequency_Hz: float = line_frequency_Hz
        self.wall_origin: dt.datetime = dt.datetime.now()
        self.esr: int = 0
        self.ese: int = 0
        self.s: Settings = Settings()
        self.buffers: dict[str, deque[Reading]] = {}
        self.t_origin: float = 0.0
        self.sweep: Sweep | None = None
        self._server = ScpiServer(self, self.faults)
        self._port = port
        self._latency_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.reset([])

    async def start(self) -> int:
        """Listen on 127.0.0.1 (port 0: a free one); returns the port."""
        self._loop = asyncio.get_running_loop()
        return await self._server.start(self._port)

    async def stop(self) -> None:
        await self._server.stop()

    async def handle(self, line: str) -> str | None:
        """One received line -> the reply line (replies to several queries joined by `;`) or None."""
        if self.faults.error_next is not None:
            code, text = self.faults.error_next
            self.faults.error_next = None
            self.error(ScpiError(code), text)
            self.faults.strike(f"error {code} queued")
        self.sync()
        self._latency_s = 0.0
        replies = DISPATCH.run(self, line, self.error)
        self.note_output()
        if self._latency_s > 0:
            await asyncio.sleep(self._latency_s)
        return ";".join(replies) if replies else None

    def power_cycle(self) -> None:
        """A power failure or a reboot (from any thread): output off, settings reset, the
        connection gone. The error queue starts empty, as after power-on."""

        def reboot() -> None:
            self.sync()
            self.reset([])
            self.clear_status([])
            self.faults.strike("power cycled")
            self.faults.drop_connection()

        if self._loop is None:
            reboot()
        else:
            self._loop.call_soon_threadsafe(reboot)

    def note_output(self) -> None:
        if not self.output_log or self.output_log[-1][1] != self.s.output:
            self.output_log.append((self.clock.now(), self.s.output))

    def error(self, exc: ScpiError, text: str | None = None) -> None:
        log.debug("SCPI error %s", exc)
        self.errors.push(exc.code, text)
        self.esr |= {1: 32, 2: 16, 3: 8, 4: 4}.get(-exc.code // 100, 8)  # CME, EXE, DDE, QYE bits

    # -- physics -------------------------------------------------------------------------

    def drive(self) -> Drive:
        """The programmed source and its limit, or the off state."""
        s = self.s
        if not s.output:
            if s.smod[s.source_function] in ("HIMP", "GUAR"):
                return Drive(True, 0.0, math.inf)
            return Drive(False, 0.0, OFF_STATE_LIMIT_A)
        ovp = OVP_V[s.ovp]
        if s.source_function == "CURR":
            return Drive(True, s.level["CURR"], min(s.vlim_V, ovp))
        return Drive(False, max(-ovp, min(ovp, s.level["VOLT"])), s.ilim_A)

    def load(self) -> Load:
        if self.faults.open_circuit:
            return OpenLoad(self.cell)
        return ShortedLoad(self.cell, self.faults.short_ohm) if self.faults.short_cell else self.cell

    def sync(self) -> None:
        """Bring the cell to the emulator's present time under the present drive."""
        self.terminals.advance_to(self.clock.now(), self.drive(), self.load())

    def limited(self) -> bool:
        """Is the output held by its limit right now (what the `...:TRIP?` queries report)?"""
        self.sync()
        return self.s.output and self.terminals.measure(self.drive(), self.load())[2]

    def take_reading(self, buffer: str) -> Reading:
        """One measurement with the present sense function, stored in `buffer`; moves virtual time."""
        s, fn = self.s, self.s.sense_function.split(":")[0]
        if isinstance(self.clock, StepClock):
            self.clock.t_s += self.clock.step_s
        else:
            self._latency_s += s.nplc[fn] / self.line_frequency_Hz
        self.sync()
        v, i, _ = self.terminals.measure(self.drive(), self.load())
        value = v if fn == "VOLT" else i if fn == "CURR" else (v / i if abs(i) > 1e-15 else OVERFLOW_READING)
        if fn not in (s.source_function, "RES") and not s.sense_auto[fn]:
            value = value if abs(value) <= 1.05 * s.sense_range[fn] else OVERFLOW_READING
        measured = i if s.source_function == "CURR" else v
        source = measured if s.readback[s.source_function] else s.level[s.source_function]
        reading = Reading(self.terminals.t_s, value, source, fn, s.source_function)
        self.buffers[buffer].append(reading)
        return reading

    def source_range(self, fn: str) -> float:
        """The fixed range, or with auto on the lowest range that holds the level."""
        if not self.s.source_auto[fn]:
            return self.s.source_range[fn]
        return self.source_range_for(fn, self.s.level[fn])

    @staticmethod
    def source_range_for(fn: str, level: float) -> float:
        ranges = CURRENT_RANGES_A if fn == "CURR" else VOLTAGE_RANGES_V
        return next((r for r in ranges if r * 1.05 >= abs(level)), ranges[-1])

    def wait(self, seconds: float) -> None:
        """A delay of the instrument's own (a sweep's per-point delay), on its clock."""
        if isinstance(self.clock, StepClock):
            self.sync()
            self.clock.t_s += seconds
        else:
            self._latency_s += seconds / self.clock.factor

    # -- commands that are more than a setting -------------------------------------------

    def reset(self, args: list[Token]) -> None:
        self.s = Settings()
        self.buffers = {name: deque(maxlen=100_000) for name in BUFFERS}
        self.t_origin = self.clock.now()
        self.sweep = None
        self.note_output()

    def clear_status(self, args: list[Token]) -> None:
        self.errors.clear()
        self.esr = 0

    def event_status(self, args: list[Token]) -> str:
        value, self.esr = self.esr, 0
        return str(value)

    def read(self, args: list[Token], function: str | None = None) -> str:
        """`:READ?` (and `:MEAS:<fn>?`, which first sets the sense function: it stays set)."""
        buffer, elements = self._buffer_and_elements(args)
        self.s.sense_function = function or self.s.sense_function
        readings = [self.take_reading(buffer) for _ in range(self.s.count)]
        return self._render(readings[-1:], elements)

    def trigger(self, args: list[Token]) -> None:
        buffer, _ = self._buffer_and_elements(args)
        for _ in range(self.s.count):
            self.take_reading(buffer)

    def initiate(self, args: list[Token]) -> None:
        """`:INIT`: the sweep set up last, or else `:SENS:COUN` readings into defbuffer1."""
        if args:
            raise ScpiError(-108)
        if self.sweep is not None:
            run_sweep(self, self.sweep)
        else:
            self.trigger(args)

    def fetch(self, args: list[Token]) -> str:
        buffer, elements = self._buffer_and_elements(args)
        if not self.buffers[buffer]:
            raise ScpiError(-230, f"{buffer} is empty")
        return self._render([self.buffers[buffer][-1]], elements)

    def trace_data(self, args: list[Token]) -> str:
        if len(args) < 2:
            raise ScpiError(-109, "start and end index")
        first, last = (int(BUFFER_POINTS.parse(a)) for a in args[:2])
        buffer, elements = self._buffer_and_elements(args[2:])
        data = list(self.buffers[buffer])
        if not first <= last <= len(data):
            raise ScpiError(-222, f"{first}..{last} outside 1..{len(data)}")
        return self._render(data[first - 1 : last], elements)

    def set_points(self, args: list[Token]) -> None:
        if not args or len(args) > 2:
            raise ScpiError(-109 if not args else -108, 'expected <size>[, "buffer"]')
        name = self.buffer(args[1] if len(args) > 1 else None)
        self.buffers[name] = deque(maxlen=int(BUFFER_POINTS.parse(args[0])))  # resizing clears

    def buffer(self, token: Token | None) -> str:
        """The buffer a command names (quoted), defbuffer1 when it names none."""
        if token is None:
            return BUFFERS[0]
        if not token.quoted:
            raise ScpiError(-104, "a buffer name is a quoted string")
        if token.text not in self.buffers:
            raise ScpiError(-224, f"no buffer {token.text!r}")
        return token.text

    def _buffer_and_elements(self, args: list[Token]) -> tuple[str, list[str]]:
        return self.buffer(args[0] if args else None), [ELEMENT.parse(a) for a in args[1:]] or ["READ"]

    def _render(self, readings: list[Reading], elements: list[str]) -> str:
        if self.s.data_format != "ASC":
            raise ScpiError(-221, f"the {self.s.data_format} data format is not emulated")
        return ",".join(ELEMENTS[e](self, r) for r in readings for e in elements)

    def wall(self, reading: Reading) -> dt.datetime:
        return self.wall_origin + dt.timedelta(seconds=reading.t_s)


async def serve(
    preset: str = "mgagsn",
    port: int = 5025,
    speed: float = 1.0,
    virtual_step_s: float | None = None,
    seed: int = 0,
) -> None:
    """Serve a 2450 with the simulated cell `preset` until cancelled (`cyclerd emulate keithley2450`).

    `speed` 0 (or `virtual_step_s`) runs in virtual time: `virtual_step_s` (1 s) per reading.
    """
    cell = make_cell(preset, seed=seed)
    emulator = Keithley2450Emulator(cell, speed=speed, virtual_step_s=virtual_step_s, port=port)
    bound = await emulator.start()
    clock = emulator.clock
    pace = f"{clock.step_s:g} s per reading" if isinstance(clock, StepClock) else f"{speed:g}x real time"
    log.info("Keithley 2450 emulator with a %s cell on 127.0.0.1:%d, %s", preset, bound, pace)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
