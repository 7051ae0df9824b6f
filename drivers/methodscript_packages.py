"""What a MethodSCRIPT device says: reply lines, data packages, error codes, which device it is.

Pure decoding of the device → host stream of instrument-protocols.md §3.1, §3.2, §3.4, §3.5
and §3.10, kept apart from the I/O so that it can be tested on the notes' own example lines.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cyclerd.drivers.base import Capabilities

# Package value prefixes as powers of ten (§3.5): ' ' is ×1 and 'i' an integer ×1.
PREFIX_EXPONENTS = MappingProxyType(
    {
        "a": -18, "f": -15, "p": -12, "n": -9, "u": -6, "m": -3, " ": 0, "i": 0,
        "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18,
    }
)  # fmt: skip
PACKAGE_OFFSET = 0x8000000  # 2^27: the 7 hex digits carry value + offset
NAN_FIELD = "     nan"  # in place of hex digits and prefix: not a number

# Status nibble of the `1X` metadata token (§3.5).
STATUS_TIMING_ERROR = 0x1
STATUS_OVERLOAD = 0x2
STATUS_UNDERLOAD = 0x4
STATUS_OVERLOAD_WARNING = 0x8

# Error codes (§3.10) and what they mean, in our words.
ERROR_MEANINGS = MappingProxyType(
    {
        0x0001: "unspecified error",
        0x0002: "invalid variable type",
        0x0003: "unknown command",
        0x0006: "command not valid in this communication mode",
        0x0007: "bad argument",
        0x0008: "command too long",
        0x0009: "command timeout",
        0x000A: "variable has the wrong identifier",
        0x000B: "out of variable memory",
        0x000C: "run without a loaded script",
        0x000D: "invalid time",
        0x000E: "overflow while averaging",
        0x000F: "invalid potential",
        0x0010: "a variable became NaN or infinite",
        0x0011: "invalid frequency",
        0x0012: "invalid amplitude",
        0x0014: "open-circuit measurement while the cell is on",
        0x001B: "not supported on this device",
        0x001C: "negative step",
        0x001D: "negative pulse",
        0x001E: "negative amplitude",
        0x001F: "technique not licensed",
        0x0020: "more than one high-speed or max-range channel",
        0x0021: "unknown pgstat mode",
        0x0023: "invalid for the selected pgstat mode",
        0x0024: "too many measured variables",
        0x0026: "file error",
        0x0027: "file error",
        0x0032: "severe cell overload: measurement aborted",
        0x4000: "script syntax error",
        0x4001: "unknown script command",
        0x4002: "invalid argument",
        0x4003: "argument out of range",
        0x4004: "unexpected character",
        0x4005: "script too large",
        0x4006: "unknown variable type",
        0x4007: "variable not declared",
        0x4008: "invalid optional argument",
        0x4009: "stored script from older firmware",
        0x400B: "nested measurement loops",
        0x4027: "the cell must be on first",
        0x4028: "the cell must be off first",
        0x4205: "argument out of range for the command",
        0x7FFF: "fatal error: reset the device",
    }
)


def error_meaning(code: int) -> str:
    return ERROR_MEANINGS.get(code, "error not in the MethodSCRIPT notes")


class LineKind(enum.Enum):
    """The kinds of line a device sends (§3.4)."""

    ACK = "e"  # a script was accepted for execution
    MEASUREMENT_START = "M"
    SCAN_START = "C"
    SCAN_END = "-"
    LOOP_START = "L"
    LOOP_END = "+"
    PACKAGE = "P"
    TEXT = "T"
    MEASUREMENT_END = "*"
    SCRIPT_END = ""  # the empty line: the script is over (also after an abort)
    ABORTED = "Z"  # `Z` reply: a running script is being aborted
    ERROR = "!"
    OTHER = "?"


_ERROR = re.compile(r"!([0-9A-Fa-f]{4})(?::\s*(.*))?")
_HEX_ID = re.compile(r"[MC][0-9A-Fa-f]{4}")


def kind_of(line: str) -> LineKind:
    """Classify one line (without its `\\n`); an error anywhere in the line wins (§3.4)."""
    if _ERROR.search(line):
        return LineKind.ERROR
    if line == "":
        return LineKind.SCRIPT_END
    if line in ("e", "*", "-", "L", "+", "Z"):
        return LineKind(line)
    if _HEX_ID.fullmatch(line):
        return LineKind(line[0])
    if line[0] in "PT":
        return LineKind(line[0])
    return LineKind.OTHER


@dataclass(frozen=True, slots=True)
class DeviceError:
    """An `!XXXX` reply: the code, our meaning for it, and where in the script it arose."""

    code: int
    where: str  # "Line 3, Col 1" as the device said it, or ""

    @property
    def text(self) -> str:
        meaning = error_meaning(self.code)
        return f"{meaning} (script {self.where})" if self.where else meaning


def device_error(line: str) -> DeviceError | None:
    match = _ERROR.search(line)
    if match is None:
        return None
    return DeviceError(int(match.group(1), 16), (match.group(2) or "").strip())


@dataclass(frozen=True, slots=True)
class Value:
    """One variable of a package: its type (`ab`, `ba`, …), value in SI units, and metadata."""

    vartype: str
    value: float
    status: int = 0
    range_index: int | None = None


def decode_value(field: str) -> Value:
    """`ba48D503Dp,10,288` → Value('ba', -5.785e-05, status 0, range 0x88) (§3.5)."""
    head, *meta = field.split(",")
    if len(head) != 10:
        raise ValueError(f"package variable {field!r} is not type + 7 hex digits + prefix")
    vartype, digits, prefix = head[:2], head[2:9], head[9]
    if digits + prefix == NAN_FIELD:
        value = math.nan
    else:
        if prefix not in PREFIX_EXPONENTS:
            raise ValueError(f"unknown SI prefix {prefix!r} in package variable {field!r}")
        # Dividing by an exact power of ten gives the double nearest the decimal the device
        # meant (3120000u is 3.12, not 3.1199999999999997): cut-offs compare as on the device.
        n, exponent = int(digits, 16) - PACKAGE_OFFSET, PREFIX_EXPONENTS[prefix]
        value = n / 10**-exponent if exponent < 0 else float(n * 10**exponent)
    status, range_index = 0, None
    for token in meta:
        if token.startswith("1") and len(token) >= 2:
            status = int(token[1:], 16)
        elif token.startswith("2") and len(token) >= 2:
            range_index = int(token[1:], 16)
    return Value(vartype, value, status, range_index)


def decode_package(line: str) -> tuple[Value, ...]:
    """A `P` line → its variables, in `pck_add` order."""
    if not line.startswith("P"):
        raise ValueError(f"not a data package: {line!r}")
    return tuple(decode_value(field) for field in line[1:].split(";") if field)


def firmware_version(lines: list[str]) -> str:
    """The `t` reply (first line starts with `t`, the last ends with `*`) → the version text."""
    text = " ".join(lines)
    return text.removeprefix("t").removesuffix("*").strip()


# -- which device is it (§3.1) -------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A MethodSCRIPT device family, known by its firmware prefix, and what cyclerd may ask of it."""

    name: str
    capabilities: Capabilities
    eis_bandwidth_Hz: float  # set_max_bandwidth for EIS (§3.9: 1M, 200k on the Pico)


_ALL_KINDS = frozenset({"rest", "cc", "plate", "strip", "cv", "cccv", "eis", "sweep"})
_POTENTIOSTAT_KINDS = frozenset({"rest", "cv", "eis", "sweep"})
_BOTH_EIS = frozenset({"potentiostatic", "galvanostatic"})


def _family(
    name: str, kinds: frozenset[str], current_max_A: float, volts: float, eis: frozenset[str]
) -> Family:
    capabilities = Capabilities(kinds, current_max_A, (-volts, volts), eis, (1e-5, 200e3))
    return Family(name, capabilities, 200e3 if "Pico" in name else 1e6)


# Limits are the notes' ranges, an open question there (§8 P7): a lab with another model
# overrides them when it opens the channel.
FAMILIES: Mapping[str, Family] = MappingProxyType(
    {
        "es4_hr": _family("EmStat4 HR", _ALL_KINDS, 0.1, 6.0, _BOTH_EIS),
        "es4_lr": _family("EmStat4 LR", _ALL_KINDS, 0.01, 3.0, _BOTH_EIS),
        "mes4hr": _family("MultiEmStat4 HR", _ALL_KINDS, 0.1, 6.0, _BOTH_EIS),
        "mes4lr": _family("MultiEmStat4 LR", _ALL_KINDS, 0.01, 3.0, _BOTH_EIS),
        "nexus1": _family("Nexus", _ALL_KINDS, 0.1, 6.0, _BOTH_EIS),
        # No galvanostat on the Pico (§0): rests, potentiostatic holds, sweeps and EIS only.
        "espico": _family("EmStat Pico", _POTENTIOSTAT_KINDS, 5e-3, 1.7, frozenset({"potentiostatic"})),
    }
)
REFUSED: Mapping[str, str] = MappingProxyType(
    {
        "espbl": "an EmStat Pico in its bootloader (no MethodSCRIPT firmware running)",
        "senswb": "a Sensit Wearable (not a battery-test potentiostat)",
    }
)


def family_of(firmware: str) -> Family | None:
    """The family a `t` reply names, or None for a device cyclerd does not drive."""
    return next((family for prefix, family in FAMILIES.items() if firmware.startswith(prefix)), None)


def what_is(firmware: str) -> str:
    """Words for a refused device, for the error that says why."""
    known = next((what for prefix, what in REFUSED.items() if firmware.startswith(prefix)), None)
    return known or "not a MethodSCRIPT instrument cyclerd knows"


@dataclass(frozen=True)
class DeviceInfo:
    firmware: str  # the `t` reply, e.g. "es4_hr1100#Jan 28 2022 11:04:43 R"
    methodscript_version: str
    serial_number: str
    family: Family
