"""The Keithley 2450's SCPI vocabulary: every header the emulator answers, as one table.

Each stored setting is declared once (`setting`: header, parameter kind, `Settings` field);
the few commands that do more call the emulator's methods. `DISPATCH` runs a received line.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cyclerd.simulators.keithley2450_state import (
    CURRENT_RANGES_A,
    OVERFLOW_READING,
    OVP_V,
    RESISTANCE_RANGES_OHM,
    UNITS,
    USER_DELAYS,
    VOLTAGE_RANGES_V,
    Reading,
)
from cyclerd.simulators.keithley2450_sweep import linear
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
    number,
    one,
    optional,
)

if TYPE_CHECKING:
    from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator as K

BUFFER_POINTS = Number(1, 1_000_000, 100_000, integer=True)
SYMBOLS = {"VOLT": "V", "CURR": "A", "RES": "Ohm"}
# Buffer elements in manual spelling (§1.4); the emulator keys them by their short form.
ELEMENT_SPELLINGS: dict[str, Callable[[K, Reading], str]] = {
    "READing": lambda k, r: nr3(r.value, k.s.precision),
    "SOURce": lambda k, r: nr3(r.source, k.s.precision),
    "RELative": lambda k, r: nr3(r.t_s - k.t_origin, k.s.precision),
    "UNIT": lambda k, r: UNITS[r.function],
    "SOURUNIT": lambda k, r: UNITS[r.source_function],
    "FORMatted": lambda k, r: f"{r.value:+.6f} {SYMBOLS[r.function]}",
    "SOURFORMatted": lambda k, r: f"{r.source:+.6f} {SYMBOLS[r.source_function]}",
    "STATus": lambda k, r: "0",  # no status flags are emulated
    "SOURSTATus": lambda k, r: "0",
    "DATE": lambda k, r: k.wall(r).strftime("%m/%d/%Y"),
    "TIME": lambda k, r: k.wall(r).strftime("%H:%M:%S.%f"),
    "TSTamp": lambda k, r: k.wall(r).strftime("%m/%d/%Y %H:%M:%S.%f"),
    "SEConds": lambda k, r: str(int(k.wall(r).timestamp())),
    "FRACtional": lambda k, r: nr3(k.wall(r).timestamp() % 1.0, k.s.precision),
}
ELEMENT = Choice(*ELEMENT_SPELLINGS)
ELEMENTS = dict(zip(ELEMENT.shorts, ELEMENT_SPELLINGS.values(), strict=True))


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


def beep(k: K, args: list[Token]) -> None:
    """`:SYST:BEEP <frequency>, <duration>`: checked, and silent."""
    if len(args) != 2:
        raise ScpiError(-109 if len(args) < 2 else -108, "frequency and duration")
    BEEP_HZ.parse(args[0])
    BEEP_S.parse(args[1])


def data_format(k: K, args: list[Token]) -> None:
    """`:FORM ASCii|REAL|SREal`; `REAL,32` and `REAL,64` (the older SCPI spelling) mean SRE and REAL."""
    if not args or len(args) > 2:
        raise ScpiError(-109 if not args else -108, "a data format")
    kind = FORMAT.parse(args[0])
    if len(args) == 2:
        bits = number(args[1])
        if kind != "REAL" or bits not in (32, 64):
            raise ScpiError(-224, "only REAL takes a length, 32 or 64")
        kind = "SRE" if bits == 32 else "REAL"
    k.s.data_format = kind


def statistic(of: Callable[[list[float]], float]) -> Callable[[K, list[Token]], str]:
    """`:TRAC:STAT:<x>? ["buffer"]` over the buffer's readings; an empty buffer answers 9.9E+37."""

    def query(k: K, args: list[Token]) -> str:
        values = [r.value for r in k.buffers[k.buffer(optional(args))]]
        return nr3(of(values) if values else OVERFLOW_READING, k.s.precision)

    return query


STATISTICS: dict[str, Callable[[list[float]], float]] = {
    "AVERage": statistics.fmean,
    "MAXimum": max,
    "MINimum": min,
    "PK2Pk": lambda values: max(values) - min(values),
    "STDDev": lambda values: statistics.stdev(values) if len(values) > 1 else 0.0,
}
BEEP_HZ, BEEP_S = Number(20.0, 8000.0, 1000.0), Number(0.001, 100.0, 1.0)
FORMAT = Choice("ASCii", "REAL", "SREal")
DELAY_S = Number(0.0, 1e4, 0.0)
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
    Command(":SYSTem:BEEPer[:IMMediate]", set=beep),
    Command(":STATus:PRESet", set=accept),
    Command(":STATus:CLEar", set=accept),  # event registers; the error queue stays
    Command(":ABORt", set=accept),
    Command(":INITiate[:IMMediate]", set=lambda k, args: k.initiate(args)),
    setting(":OUTPut[1][:STATe]", FLAG, "output"),
    setting(":OUTPut[1]:CURRent:SMODe", SMOD, "smod", "CURR"),
    setting(":OUTPut[1]:VOLTage:SMODe", SMOD, "smod", "VOLT"),
    setting(":ROUTe:TERMinals", Choice("FRONt", "REAR"), "terminals"),
    setting(":FORMat:ASCii:PRECision", Number(0, 16, 0, integer=True), "precision"),
    Command(":FORMat[:DATA]", set=data_format, query=reply(lambda k: k.s.data_format)),
    setting(
        f"{SENS}:FUNCtion[:ON]",
        QuotedChoice({"VOLTage[:DC]": "VOLT:DC", "CURRent[:DC]": "CURR:DC", "RESistance": "RES"}),
        "sense_function",
    ),
    setting(f"{SENS}:COUNt", Number(1, 300_000, 1, integer=True), "count"),
    Command(f"{SENS}:AZERo:ONCE", set=accept),  # the model has no offset drift to zero
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
            setting(f"{SENS}:{name}:AZERo[:STATe]", FLAG, "azero", fn),
            setting(f"{SENS}:{name}:AVERage[:STATe]", FLAG, "average", fn),
            setting(f"{SENS}:{name}:AVERage:TCONtrol", Choice("REPeat", "MOVing"), "average_tcontrol", fn),
            setting(f"{SENS}:{name}:AVERage:COUNt", Number(1, 100, 10, integer=True), "average_count", fn),
            *(
                setting(f"{SENS}:{name}:DELay:USER{n}", DELAY_S, "sense_user_delay_s", f"{fn}{n}")
                for n in USER_DELAYS
            ),
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
            *(
                setting(f"{SRC}:{name}:DELay:USER{n}", DELAY_S, "source_user_delay_s", f"{fn}{n}")
                for n in USER_DELAYS
            ),
            linear(fn),
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
    *(Command(f":TRACe:STATistics:{name}", query=statistic(of)) for name, of in STATISTICS.items()),
)
DISPATCH = Dispatcher(COMMANDS)
