"""A Keithley 2450 SourceMeter (native SCPI) on a raw TCP socket, with a simulated cell on its terminals.

Drivers are tested against it byte for byte (instrument-protocols.md §1). The output stage's
compliance (CC→CV at VLIM, current clamp at ILIM) comes from the cell model, in time the
emulator owns: real time × `speed`, or `virtual_step_s` per reading (deterministic). Faults are
injected at runtime through `emulator.faults` (see `scpi_server.Faults`).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cyclerd.drivers.clock import AcceleratedClock
from cyclerd.simulators.cell import CellModel
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi import (
    Boolean,
    Choice,
    Command,
    Dispatcher,
    ErrorQueue,
    Kind,
    Number,
    QuotedChoice,
    Ranges,
    ScpiError,
    Token,
    nr3,
    one,
    optional,
)
from cyclerd.simulators.scpi_server import Faults, ScpiServer, running
from cyclerd.simulators.smu_output import Drive, Load, OpenLoad, ShortedLoad, Terminals

__all__ = ["Faults", "Keithley2450Emulator", "running", "serve"]
log = logging.getLogger(__name__)

IDN = "KEITHLEY INSTRUMENTS,MODEL 2450,{serial},1.7.12b"
OFF_STATE_LIMIT_A = 1e-6  # NORM/ZERO: 0 V with a "small" current limit [U]
CURRENT_RANGES_A = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
VOLTAGE_RANGES_V = (0.02, 0.2, 2.0, 20.0, 200.0)
RESISTANCE_RANGES_OHM = (20.0, 200.0, 2e3, 2e4, 2e5, 2e6, 2e7, 2e8)
OVP_V = MappingProxyType(
    {f"PROT{v}": float(v) for v in (2, 5, 10, 20, 40, 60, 80, 100, 120, 140, 160, 180)} | {"NONE": math.inf}
)
UNITS = MappingProxyType({"VOLT": "Volt DC", "CURR": "Amp DC", "RES": "Ohm"})
BUFFERS = ("defbuffer1", "defbuffer2")
OVERFLOW_READING = 9.9e37  # a Keithley's reading beyond its range


# -- the instrument ------------------------------------------------------------------------


@dataclass
class Settings:
    """Everything `*RST` restores; dict keys are the functions CURR, VOLT (and RES)."""

    source_function: str = "VOLT"
    level: dict[str, float] = field(default_factory=lambda: {"CURR": 0.0, "VOLT": 0.0})
    vlim_V: float = 21.0
    ilim_A: float = 105e-6
    source_range: dict[str, float] = field(default_factory=lambda: {"CURR": 1.0, "VOLT": 200.0})
    source_auto: dict[str, bool] = field(default_factory=lambda: {"CURR": True, "VOLT": True})
    readback: dict[str, bool] = field(default_factory=lambda: {"CURR": True, "VOLT": True})
    delay_s: dict[str, float] = field(default_factory=lambda: {"CURR": 0.0, "VOLT": 0.0})
    delay_auto: dict[str, bool] = field(default_factory=lambda: {"CURR": True, "VOLT": True})
    ovp: str = "NONE"
    sense_function: str = "CURR:DC"
    sense_range: dict[str, float] = field(default_factory=lambda: {"VOLT": 20.0, "CURR": 1e-4, "RES": 2e5})
    sense_auto: dict[str, bool] = field(default_factory=lambda: {"VOLT": True, "CURR": True, "RES": True})
    nplc: dict[str, float] = field(default_factory=lambda: {"VOLT": 1.0, "CURR": 1.0, "RES": 1.0})
    rsen: dict[str, bool] = field(default_factory=lambda: {"VOLT": False, "CURR": False, "RES": False})
    count: int = 1
    output: bool = False
    smod: dict[str, str] = field(default_factory=lambda: {"CURR": "NORM", "VOLT": "NORM"})
    terminals: str = "FRON"
    precision: int = 0


@dataclass(frozen=True)
class Reading:
    t_s: float  # emulator time
    value: float
    source: float
    function: str  # VOLT, CURR or RES
    source_function: str


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
        self.cell = cell
        self.clock = StepClock(virtual_step_s) if virtual_step_s is not None else AcceleratedClock(speed)
        self.faults = Faults()
        self.errors = ErrorQueue()
        self.terminals = Terminals()
        self.idn = IDN.format(serial=serial)
        self.line_frequency_Hz = line_frequency_Hz
        self.wall_origin = dt.datetime.now()
        self.esr = self.ese = 0
        self.s = Settings()
        self.buffers: dict[str, deque[Reading]] = {}
        self.t_origin = 0.0
        self._server = ScpiServer(self, self.faults)
        self._port = port
        self._latency_s = 0.0
        self.reset([])

    async def start(self) -> int:
        """Listen on 127.0.0.1 (port 0: a free one); returns the port."""
        return await self._server.start(self._port)

    async def stop(self) -> None:
        await self._server.stop()

    async def handle(self, line: str) -> str | None:
        """One received line -> the reply line (replies to several queries joined by `;`) or None."""
        if self.faults.error_next is not None:
            code, text = self.faults.error_next
            self.faults.error_next = None
            self.error(ScpiError(code), text)
        self.sync()
        self._latency_s = 0.0
        replies = DISPATCH.run(self, line, self.error)
        if self._latency_s > 0:
            await asyncio.sleep(self._latency_s)
        return ";".join(replies) if replies else None

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
        ranges = CURRENT_RANGES_A if fn == "CURR" else VOLTAGE_RANGES_V
        return next((r for r in ranges if r * 1.05 >= abs(self.s.level[fn])), ranges[-1])

    # -- commands that are more than a setting -------------------------------------------

    def reset(self, args: list[Token]) -> None:
        self.s = Settings()
        self.buffers = {name: deque(maxlen=100_000) for name in BUFFERS}
        self.t_origin = self.clock.now()

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
        return ",".join(ELEMENTS[e](self, r) for r in readings for e in elements)

    def wall(self, reading: Reading) -> dt.datetime:
        return self.wall_origin + dt.timedelta(seconds=reading.t_s)


# -- the vocabulary ------------------------------------------------------------------------

K = Keithley2450Emulator
BUFFER_POINTS = Number(1, 1_000_000, 100_000, integer=True)
ELEMENTS: dict[str, Callable[[K, Reading], str]] = {  # buffer elements (§1.4); STAT/FORM not emulated
    "READ": lambda k, r: nr3(r.value, k.s.precision),
    "SOUR": lambda k, r: nr3(r.source, k.s.precision),
    "REL": lambda k, r: nr3(r.t_s - k.t_origin, k.s.precision),
    "UNIT": lambda k, r: UNITS[r.function],
    "SOURUNIT": lambda k, r: UNITS[r.source_function],
    "DATE": lambda k, r: k.wall(r).strftime("%m/%d/%Y"),
    "TIME": lambda k, r: k.wall(r).strftime("%H:%M:%S.%f"),
    "TST": lambda k, r: k.wall(r).strftime("%m/%d/%Y %H:%M:%S.%f"),
    "SEC": lambda k, r: str(int(k.wall(r).timestamp())),
    "FRAC": lambda k, r: nr3(k.wall(r).timestamp() % 1.0, k.s.precision),
}
ELEMENT = Choice(*ELEMENTS)


def setting(
    pattern: str,
    kind: Kind,
    attr: str,
    fn: str | None = None,
    after: Callable[[K], None] | None = None,
    check: Callable[[K, Any], None] | None = None,
) -> Command[K]:
    """A stored setting `Settings.attr` (`[fn]`): set parses one parameter with `kind`, query renders it."""

    def put(k: K, args: list[Token]) -> None:
        value = kind.parse(one(args))
        if check is not None:
            check(k, value)
        if fn is None:
            setattr(k.s, attr, value)
        else:
            getattr(k.s, attr)[fn] = value
        if after is not None:
            after(k)

    def get(k: K, args: list[Token]) -> str:
        token = optional(args)
        if token is not None:  # `:SOUR:CURR:VLIM? MAX`
            bound = kind.bound(token) if isinstance(kind, Number) else None
            if bound is None:
                raise ScpiError(-108, "only MIN, MAX or DEF may follow this query")
            return kind.render(bound, k.s.precision)
        if attr == "source_range" and fn is not None:
            return kind.render(k.source_range(fn), k.s.precision)
        value = getattr(k.s, attr) if fn is None else getattr(k.s, attr)[fn]
        return kind.render(value, k.s.precision)

    return Command(pattern, put, get)


def reply(text: Callable[[K], str]) -> Callable[[K, list[Token]], str]:
    """A query without parameters."""

    def query(k: K, args: list[Token]) -> str:
        if args:
            raise ScpiError(-108)
        return text(k)

    return query


def accept(k: K, args: list[Token]) -> None:
    """Accepted and ignored: no state of ours depends on it (*WAI, *TRG, :ABOR, :STAT:PRES)."""


def fits_range(fn: str) -> Callable[[K, Any], None]:
    def check(k: K, level: float) -> None:
        if not k.s.source_auto[fn] and abs(level) > 1.05 * k.s.source_range[fn]:
            raise ScpiError(-222, f"{level:g} beyond the fixed {k.s.source_range[fn]:g} range")

    return check


def auto_off(attr: str, fn: str) -> Callable[[K], None]:
    return lambda k: getattr(k.s, attr).__setitem__(fn, False)


def output_off(k: K) -> None:
    k.s.output = False  # K7


def measure_as(function: str | None) -> Callable[[K, list[Token]], str]:
    """`:MEAS:<fn>?`: `:SENS:FUNC` (which stays changed) plus `:READ?`."""

    def query(k: K, args: list[Token]) -> str:
        return k.read(args, function)

    return query


def on_buffer(action: Callable[[deque[Reading]], Any]) -> Callable[[K, list[Token]], Any]:
    """A buffer command taking an optional buffer name (`:TRAC:ACT? "defbuffer1"`)."""
    return lambda k, args: action(k.buffers[k.buffer(optional(args))])


def tripped(which: str) -> Callable[[K], str]:
    """`...:TRIP?`: whether the limit `which` (VLIM, ILIM, OVP) holds the output now."""

    def query(k: K) -> str:
        s, ovp = k.s, OVP_V[k.s.ovp]
        if which == "VLIM":
            held = s.source_function == "CURR" and s.vlim_V <= ovp and k.limited()
        elif which == "ILIM":
            held = s.source_function == "VOLT" and k.limited()
        elif s.source_function == "CURR":
            held = ovp < s.vlim_V and k.limited()
        else:
            held = s.output and abs(s.level["VOLT"]) > ovp
        return "1" if held else "0"

    return query


SRC, SENS = "[:SOURce[1]]", "[:SENSe[1]]"
SOURCED = {"CURR": ("CURRent", CURRENT_RANGES_A, 1.05), "VOLT": ("VOLTage", VOLTAGE_RANGES_V, 210.0)}
SENSED = {"VOLT": ("VOLTage[:DC]", VOLTAGE_RANGES_V), "CURR": ("CURRent[:DC]", CURRENT_RANGES_A)}
SENSED["RES"] = ("RESistance", RESISTANCE_RANGES_OHM)
SMOD = Choice("HIMPedance", "NORMal", "ZERO", "GUARd")
FLAG = Boolean()
BYTE = Number(0, 255, 0, integer=True)

COMMANDS: tuple[Command[K], ...] = (
    Command("*IDN", query=reply(lambda k: k.idn)),
    Command("*RST", set=K.reset),
    Command("*CLS", set=K.clear_status),
    Command("*OPC", set=lambda k, args: setattr(k, "esr", k.esr | 1), query=reply(lambda k: "1")),
    Command("*ESR", query=K.event_status),
    Command(
        "*ESE",
        set=lambda k, args: setattr(k, "ese", int(BYTE.parse(one(args)))),
        query=reply(lambda k: str(k.ese)),
    ),
    Command("*STB", query=reply(lambda k: str((4 if k.errors else 0) | (32 if k.esr & k.ese else 0)))),
    Command("*LANG", set=accept, query=reply(lambda k: "SCPI")),  # a change needs a power cycle
    Command("*WAI", set=accept),
    Command("*TRG", set=accept),
    Command(":SYSTem:ERRor[:NEXT]", query=reply(lambda k: k.errors.pop())),
    Command(":SYSTem:ERRor:COUNt", query=reply(lambda k: str(len(k.errors)))),
    Command(":SYSTem:CLEar", set=K.clear_status),
    Command(":SYSTem:LFRequency", query=reply(lambda k: f"{k.line_frequency_Hz:g}")),
    Command(":STATus:PRESet", set=accept),
    Command(":ABORt", set=accept),
    Command(":INITiate[:IMMediate]", set=K.trigger),
    setting(":OUTPut[1][:STATe]", FLAG, "output"),
    setting(":OUTPut[1]:CURRent:SMODe", SMOD, "smod", "CURR"),
    setting(":OUTPut[1]:VOLTage:SMODe", SMOD, "smod", "VOLT"),
    setting(":ROUTe:TERMinals", Choice("FRONt", "REAR"), "terminals"),
    setting(":FORMat:ASCii:PRECision", Number(0, 16, 0, integer=True), "precision"),
    setting(
        f"{SENS}:FUNCtion[:ON]",
        QuotedChoice({"VOLTage[:DC]": "VOLT:DC", "CURRent[:DC]": "CURR:DC", "RESistance": "RES"}),
        "sense_function",
    ),
    setting(f"{SENS}:COUNt", Number(1, 300_000, 1, integer=True), "count"),
    *(
        command
        for fn, (name, ranges) in SENSED.items()
        for command in (
            setting(
                f"{SENS}:{name}:RANGe[:UPPer]",
                Ranges(ranges, ranges[-2]),
                "sense_range",
                fn,
                after=auto_off("sense_auto", fn),
            ),
            setting(f"{SENS}:{name}:RANGe:AUTO", FLAG, "sense_auto", fn),
            setting(f"{SENS}:{name}:NPLCycles", Number(0.01, 10.0, 1.0), "nplc", fn),
            setting(f"{SENS}:{name}:RSENse", FLAG, "rsen", fn, after=output_off),
        )
    ),
    setting(f"{SRC}:FUNCtion[:MODE]", Choice("CURRent", "VOLTage"), "source_function"),
    *(
        command
        for fn, (name, ranges, most) in SOURCED.items()
        for command in (
            setting(
                f"{SRC}:{name}[:LEVel][:IMMediate][:AMPLitude]",
                Number(-most, most, 0.0),
                "level",
                fn,
                check=fits_range(fn),
            ),
            setting(
                f"{SRC}:{name}:RANGe",
                Ranges(ranges, ranges[-1]),
                "source_range",
                fn,
                after=auto_off("source_auto", fn),
            ),
            setting(f"{SRC}:{name}:RANGe:AUTO", FLAG, "source_auto", fn),
            setting(f"{SRC}:{name}:READ:BACK", FLAG, "readback", fn),
            setting(
                f"{SRC}:{name}:DELay", Number(0.0, 1e4, 0.0), "delay_s", fn, after=auto_off("delay_auto", fn)
            ),
            setting(f"{SRC}:{name}:DELay:AUTO", FLAG, "delay_auto", fn),
        )
    ),
    setting(f"{SRC}:CURRent:VLIMit[:LEVel]", Number(0.02, 210.0, 21.0, magnitude=True), "vlim_V"),
    Command(f"{SRC}:CURRent:VLIMit:TRIPped", query=reply(tripped("VLIM"))),
    setting(f"{SRC}:VOLTage:ILIMit[:LEVel]", Number(1e-9, 1.05, 105e-6, magnitude=True), "ilim_A"),
    Command(f"{SRC}:VOLTage:ILIMit:TRIPped", query=reply(tripped("ILIM"))),
    setting(f"{SRC}:VOLTage:PROTection[:LEVel]", Choice(*OVP_V), "ovp"),
    Command(f"{SRC}:VOLTage:PROTection:TRIPped", query=reply(tripped("OVP"))),
    Command(":READ", query=K.read),
    Command(":FETCh", query=K.fetch),
    Command(":MEASure", query=measure_as(None)),
    Command(":MEASure:VOLTage[:DC]", query=measure_as("VOLT:DC")),
    Command(":MEASure:CURRent[:DC]", query=measure_as("CURR:DC")),
    Command(":MEASure:RESistance", query=measure_as("RES")),
    Command(":TRACe:ACTual", query=on_buffer(lambda b: str(len(b)))),
    Command(":TRACe:CLEar", set=on_buffer(lambda b: b.clear())),
    Command(":TRACe:POINts", set=K.set_points, query=on_buffer(lambda b: str(b.maxlen))),
    Command(":TRACe:DATA", query=K.trace_data),
    Command(":TRACe:TRIGger", set=K.trigger),
)
DISPATCH = Dispatcher(COMMANDS)


async def serve(
    preset: str = "mgagsn",
    port: int = 5025,
    speed: float = 1.0,
    virtual_step_s: float | None = None,
    seed: int = 0,
) -> None:
    """Serve a 2450 with the simulated cell `preset` until cancelled (`cyclerd emulate keithley2450`)."""
    cell = make_cell(preset, seed=seed)
    emulator = Keithley2450Emulator(cell, speed=speed, virtual_step_s=virtual_step_s, port=port)
    bound = await emulator.start()
    log.info("Keithley 2450 emulator with a %s cell on 127.0.0.1:%d", preset, bound)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
