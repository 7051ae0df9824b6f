"""The Keithley 2450's SCPI vocabulary: every header the emulator answers, as one table.

Each stored setting is declared once (`setting`: header, parameter kind, `Settings` field);
the few commands that do more call the emulator's methods. `DISPATCH` runs a received line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cyclerd.simulators.keithley2450_state import (
    CURRENT_RANGES_A,
    OVP_V,
    RESISTANCE_RANGES_OHM,
    UNITS,
    VOLTAGE_RANGES_V,
    Reading,
)
from cyclerd.simulators.scpi import (
    Boolean,
    Choice,
    Command,
    Dispatcher,
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

if TYPE_CHECKING:
    from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator as K

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
    Command("*RST", set=lambda k, args: k.reset(args)),
    Command("*CLS", set=lambda k, args: k.clear_status(args)),
    Command("*OPC", set=lambda k, args: setattr(k, "esr", k.esr | 1), query=reply(lambda k: "1")),
    Command("*ESR", query=lambda k, args: k.event_status(args)),
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
    Command(":SYSTem:CLEar", set=lambda k, args: k.clear_status(args)),
    Command(":SYSTem:LFRequency", query=reply(lambda k: f"{k.line_frequency_Hz:g}")),
    Command(":STATus:PRESet", set=accept),
    Command(":ABORt", set=accept),
    Command(":INITiate[:IMMediate]", set=lambda k, args: k.trigger(args)),
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
    Command(":READ", query=lambda k, args: k.read(args)),
    Command(":FETCh", query=lambda k, args: k.fetch(args)),
    Command(":MEASure", query=measure_as(None)),
    Command(":MEASure:VOLTage[:DC]", query=measure_as("VOLT:DC")),
    Command(":MEASure:CURRent[:DC]", query=measure_as("CURR:DC")),
    Command(":MEASure:RESistance", query=measure_as("RES")),
    Command(":TRACe:ACTual", query=on_buffer(lambda b: str(len(b)))),
    Command(":TRACe:CLEar", set=on_buffer(lambda b: b.clear())),
    Command(
        ":TRACe:POINts", set=lambda k, args: k.set_points(args), query=on_buffer(lambda b: str(b.maxlen))
    ),
    Command(":TRACe:DATA", query=lambda k, args: k.trace_data(args)),
    Command(":TRACe:TRIGger", set=lambda k, args: k.trigger(args)),
)
DISPATCH = Dispatcher(COMMANDS)
