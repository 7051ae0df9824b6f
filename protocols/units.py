"""Quantities written as text in protocol files ("1 mA/cm^2", "10 min", "C/20"), read into SI.

Every quantity field names the kind of quantity it expects; the text must carry a unit of
that kind. C-rates are read before pint sees the text because to pint `C` is the coulomb;
`C` alone is always a C-rate here, written against its number ('0.1C'), and '0.1 C' is
refused. Unit symbols whose case is off ('1 ma' is a milliyear to pint) are refused with the
spelling meant. Currents and charges may be absolute, per electrode area or per gram of active
material: the unit decides, and the value keeps its basis until a cell (area, capacity, active
mass) resolves it. The active mass itself is absolute or per area (a loading, 'mg/cm^2').
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Annotated, Any

import pint
from pydantic import PlainSerializer, PlainValidator
from pydantic_core import PydanticCustomError

SECONDS_PER_HOUR = 3600.0


class Basis(StrEnum):
    """What a current, charge or mass is relative to."""

    ABSOLUTE = "absolute"  # A, or A·s for a charge, or kg for a mass
    AREAL = "areal"  # A/m², or A·s/m², or kg/m² (a mass loading)
    C_RATE = "c_rate"  # multiples of the nominal capacity per hour
    SPECIFIC = "specific"  # per mass of active material: A/kg, or A·s/kg


@dataclass(frozen=True)
class Amount:
    """A current, charge or mass whose basis (absolute, per area, per mass, C-rate) is known but
    not yet resolved.

    `value` is SI for its basis: A, A/m², A/kg, A·s, A·s/m², A·s/kg, kg, kg/m², or the C-rate
    multiplier itself.
    """

    value: float
    basis: Basis

    def __neg__(self) -> Amount:
        return Amount(-self.value, self.basis)

    def __abs__(self) -> Amount:
        return Amount(abs(self.value), self.basis)

    def text(self, unit: str) -> str:
        """Readable form for plans, e.g. '1 mA/cm²', '100 mA/g' or '0.1C'; `unit` is 'A', 'Ah' or 'g'."""
        if self.basis is Basis.C_RATE:
            return f"{self.value:g}C"
        if unit == "g":  # a mass, kept in kg
            if self.basis is Basis.AREAL:
                return f"{self.value * 100:g} mg/cm²"  # kg/m² -> mg/cm² is ×100
            return engineering(self.value * 1e3, "g")
        scale = SECONDS_PER_HOUR if unit == "Ah" else 1.0
        if self.basis is Basis.AREAL:
            return f"{self.value / scale / 10:g} m{unit}/cm²"  # A/m² -> mA/cm² is ÷10
        if self.basis is Basis.SPECIFIC:
            return f"{self.value / scale:g} m{unit}/g"  # A/kg -> mA/g is ×1
        return engineering(self.value / scale, unit)


@cache
def registry() -> Any:
    """One shared pint registry; building it is slow, so only once and only when needed."""
    ureg: Any = pint.UnitRegistry(autoconvert_offset_to_baseunit=True)
    ureg.define("Ohm = ohm")
    ureg.define("Ohms = ohm")
    return ureg


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# '0.1C' (no space: '0.1 C' is refused, see _c_slip), 'C/20', '-C/2'.
_C_RATE = re.compile(rf"^\s*(?:(?P<mult>{_NUMBER})C|(?P<sign>[-+]?)C\s*/\s*(?P<div>{_NUMBER}))\s*$")
# The same with a lowercase 'c' (pint: the speed of light) or a space before the 'C'.
_C_RATE_SLIP = re.compile(
    rf"^\s*(?:(?P<mult>{_NUMBER})\s*[cC]|(?P<sign>[-+]?)[cC]\s*/\s*(?P<div>{_NUMBER}))\s*$"
)

# One number, then a unit in which digits appear only as small powers ('cm^2'). pint would
# otherwise evaluate arithmetic ('9 ** 9 ** 9 s' runs for hours) and read a bare 'min' as 1 min.
_QUANTITY_TEXT = re.compile(
    rf"^\s*(?P<number>{_NUMBER}|[-+]?(?:nan|inf))"
    r"[^\d()]*(?:(?:\^|\*\*)\s*[-+]?\d{1,2}(?!\s*(?:\d|\^|\*\*))[^\d()]*)*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Dimension:
    """A kind of quantity a field accepts: its pint dimensionality, SI unit and an example."""

    name: str
    si_unit: str
    example: str
    dimensionality: str


DURATION = Dimension("duration", "s", "10 min", "[time]")
VOLTAGE = Dimension("voltage", "V", "4.25 V", "[electric_potential]")
CURRENT = Dimension("current", "A", "1 mA", "[current]")
CURRENT_DENSITY = Dimension("current density", "A/m^2", "1 mA/cm^2", "[current]/[area]")
CHARGE = Dimension("charge", "A*s", "1 mAh", "[current]*[time]")
AREAL_CHARGE = Dimension("areal charge", "A*s/m^2", "1 mAh/cm^2", "[current]*[time]/[area]")
SPECIFIC_CURRENT = Dimension("specific current", "A/kg", "100 mA/g", "[current]/[mass]")
SPECIFIC_CHARGE = Dimension("specific charge", "A*s/kg", "195 mAh/g", "[current]*[time]/[mass]")
AREA = Dimension("area", "m^2", "0.785 cm^2", "[area]")
MASS = Dimension("mass", "kg", "10.3 mg", "[mass]")
AREAL_MASS = Dimension("mass loading", "kg/m^2", "10.3 mg/cm^2", "[mass]/[area]")
FREQUENCY = Dimension("frequency", "Hz", "10 kHz", "[frequency]")
SCAN_RATE = Dimension("scan rate", "V/s", "0.1 mV/s", "[electric_potential]/[time]")
TEMPERATURE = Dimension("temperature", "K", "60 degC", "[temperature]")
RESISTANCE = Dimension("resistance", "ohm", "10 ohm", "[resistance]")
FRACTION = Dimension("percentage", "", "99.5 %", "[]")


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("quantity", message)


def _quantity(text: object, dims: tuple[Dimension, ...]) -> tuple[float, Dimension]:
    """Parse `text` and return its SI magnitude and which of `dims` it matched."""
    wanted = " or ".join(f"{_article(d.name)} {d.name} such as '{d.example}'" for d in dims)
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise _fail(f"expected {wanted}, got {type(text).__name__} {text!r}")
    if not isinstance(text, str):
        raise _fail(f"the number {text!r} has no unit; write {wanted}")
    m = _QUANTITY_TEXT.match(text)
    slip = _c_slip(text, dims, wanted) or (m and _case_slip(text, text[m.end("number") :]))
    if slip:
        raise _fail(slip)
    if m is None:
        raise _fail(f"cannot read {text!r} as a quantity (one number, then its unit); write {wanted}")
    if not math.isfinite(float(m["number"])):  # also '1000…000 V', too long for a float
        raise _fail(f"{text!r} is not a finite number; write {wanted}")
    ureg = registry()
    try:
        q = ureg.Quantity(text.strip().replace("°C", "degC"))
    except Exception as exc:  # noqa: BLE001 - pint raises many types on bad text; all mean "not a unit"
        raise _fail(f"cannot read {text!r} as a quantity ({_pint_reason(exc)}); write {wanted}") from None
    if not isinstance(q, ureg.Quantity):
        raise _fail(f"{text!r} has no unit; write {wanted}")
    for dim in dims:
        if q.check(dim.dimensionality):
            # Not `q.unitless`: pint counts '%' as unitless too, and a percentage is a valid fraction.
            if dim is FRACTION and q.units == ureg.dimensionless:
                raise _fail(f"{text!r} has no unit; write {wanted}")
            value = float(q.to(dim.si_unit).magnitude) if dim.si_unit else float(q.to("").magnitude)
            if not math.isfinite(value):
                raise _fail(f"{text!r} is not a finite number; write {wanted}")
            return value, dim
    got = _describe(q)
    hint = " ('m' is metres: write 'min' for minutes)" if _ends_with_metre(text) else ""
    raise _fail(f"{text!r} is {got}, not the expected kind{hint}; write {wanted}")


# Unit symbols as protocols write them. A unit word that is none of these but one of them in
# another case is a slip that pint would read as something absurd or nothing: '1 ma' a
# milliyear, '1 MA' a megaampere, '10 Ms' a megasecond, '7 mhz' nothing. ('m' is left out of
# the look-up: '10 M' is not '10 m', and a bare 'm' has its own hint.)
_SYMBOLS = frozenset(
    [
        *("s", "ms", "us", "µs", "μs", "sec", "min", "h", "hr", "d", "day", "days"),
        *("second", "seconds", "minute", "minutes", "hour", "hours"),
        *("A", "mA", "uA", "µA", "μA", "nA", "pA", "V", "mV", "uV", "µV", "μV"),
        *("Ah", "mAh", "uAh", "µAh", "μAh", "m", "cm", "mm", "um", "µm", "μm"),
        *("Hz", "mHz", "kHz", "MHz", "K", "degC", "g", "mg", "kg"),
        *("ohm", "ohms", "Ohm", "Ohms", "Ω", "mΩ", "kΩ", "MΩ"),
        *("mohm", "mOhm", "kohm", "kOhm", "Mohm", "MOhm"),
    ]
)
_BY_FOLDED: dict[str, list[str]] = {}
for _symbol in sorted(_SYMBOLS - {"m"}):
    _BY_FOLDED.setdefault(_symbol.casefold(), []).append(_symbol)
_UNIT_WORD = re.compile(r"[^\W\d_]+")  # runs of letters, µ and Ω included


def _word(word: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![^\W\d_]){re.escape(word)}(?![^\W\d_])")


def _unit_name(symbol: str) -> str | None:
    try:
        return str(registry().get_name(symbol)).replace("_", " ")
    except Exception:  # noqa: BLE001 - pint raises several types for a word it does not know
        return None


def _case_slip(text: str, unit_text: str) -> str | None:
    """What to write instead when a unit symbol's case is off ('1 ma' -> '1 mA')."""
    for word in _UNIT_WORD.findall(unit_text.replace("°C", "degC")):
        if word in _SYMBOLS or word.casefold() not in _BY_FOLDED:
            continue
        options: dict[str | None, str] = {}  # one suggestion per unit: 'ohm' and 'Ohm' are one
        for symbol in _BY_FOLDED[word.casefold()]:
            name = _unit_name(symbol)
            fixed = _word(word).sub(symbol, text.strip())
            options.setdefault(name, f"'{fixed}'" + (f" ({name})" if name else ""))
        reading = _unit_name(word)
        what = f"the {reading}" if reading else "not a unit"
        return (
            f"{text!r}: unit symbols are case-sensitive and '{word}' is {what}; "
            f"write {' or '.join(options.values())}"
        )
    return None


def _c_slip(text: str, dims: tuple[Dimension, ...], wanted: str) -> str | None:
    """What to write instead of a 'C' that is not a C-rate where it stands ('0.1c', '0.1 C', '60 C').

    'C' alone is always a C-rate, written against its number ('0.1C', 'C/20'); cyclerd never
    reads it as the coulomb (write 'A*s' or 'mAh'), nor as degrees Celsius (write 'degC').
    """
    m = _C_RATE_SLIP.match(text)
    if m is None:
        if "C" not in _UNIT_WORD.findall(text.replace("°C", "degC")):
            return None
        return (
            f"{text!r}: 'C' alone stands for a C-rate ('0.5C', 'C/20'), never the coulomb; "
            f"write a charge in Ah or A*s (1 mAh = 3.6 A*s), or {wanted}"
        )
    rate = f"{m['mult']}C" if m["mult"] is not None else f"{m['sign']}C/{m['div']}"
    lower = "c" in text
    if CURRENT in dims:
        why = (
            "a C-rate is written with a capital C (to pint 'c' is the speed of light)"
            if lower
            else "a C-rate is written with no space before the C ('C' after a space is the coulomb, "
            "a charge, not a current)"
        )
        return f"{text!r}: {why}; write '{rate}'"
    if CHARGE in dims:
        if m["mult"] is not None and not lower:
            mah = engineering(float(m["mult"]) / SECONDS_PER_HOUR, "Ah")
            return (
                f"{text!r}: 'C' is read as a C-rate, never as the coulomb, and a C-rate is not a "
                f"charge; write the charge in Ah, '{mah}' (= {m['mult']} coulomb), or as "
                f"'{m['mult']} A*s'"
            )
        return f"{text!r} reads as a C-rate, not a charge; write e.g. '1 mAh' or '1 mAh/cm^2'"
    if TEMPERATURE in dims and m["mult"] is not None:
        return f"{text!r} is not a temperature; for degrees Celsius write '{m['mult']} degC'"
    return f"{text!r} reads as a C-rate, not {_article(dims[0].name)} {dims[0].name}; write {wanted}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


_ALL: tuple[Dimension, ...] = (DURATION, VOLTAGE, CURRENT, CURRENT_DENSITY, CHARGE, AREAL_CHARGE)
_ALL += (SPECIFIC_CURRENT, SPECIFIC_CHARGE, AREA, MASS, AREAL_MASS)
_ALL += (FREQUENCY, SCAN_RATE, TEMPERATURE, RESISTANCE)
_BASIS = {
    CURRENT: Basis.ABSOLUTE,
    CURRENT_DENSITY: Basis.AREAL,
    SPECIFIC_CURRENT: Basis.SPECIFIC,
    CHARGE: Basis.ABSOLUTE,
    AREAL_CHARGE: Basis.AREAL,
    SPECIFIC_CHARGE: Basis.SPECIFIC,
    MASS: Basis.ABSOLUTE,
    AREAL_MASS: Basis.AREAL,
}


def _describe(q: Any) -> str:
    if q.dimensionless:
        return "a plain number" if q.unitless else "a ratio"
    for dim in _ALL:
        if q.check(dim.dimensionality):
            return f"{_article(dim.name)} {dim.name}"
    return f"of dimension {q.dimensionality}"


def _ends_with_metre(text: str) -> bool:
    return re.search(r"\d\s*m\s*$", text) is not None


def _pint_reason(exc: Exception) -> str:
    if isinstance(exc, pint.UndefinedUnitError):
        return f"unknown unit {exc.unit_names[0]!r}" if exc.unit_names else "unknown unit"
    return "not a number followed by a unit"


def parse(text: object, dim: Dimension) -> float:
    """SI magnitude of `text`, which must be a quantity of kind `dim`."""
    return _quantity(text, (dim,))[0]


def parse_c_rate(text: object) -> float | None:
    """The C-rate multiplier of '0.1C', 'C/20', '-C/2', or None if `text` is not a C-rate.

    '0.1 C' (a space before the C) is not one: see `_c_slip`, which says what to write.
    """
    if not isinstance(text, str):
        return None
    m = _C_RATE.match(text)
    if m is None:
        return None
    if m["mult"] is not None:
        value = float(m["mult"])
    else:
        divisor = float(m["div"])
        if divisor == 0:
            raise _fail(f"{text!r} divides by zero; write a C-rate such as 'C/20'")
        value = (-1.0 if m["sign"] == "-" else 1.0) / divisor
    if not math.isfinite(value):
        raise _fail(f"{text!r} is not a finite C-rate; write e.g. '0.1C' or 'C/20'")
    return value


def parse_current(text: object) -> Amount:
    """A current: '1 mA', '1 mA/cm^2', '100 mA/g' or a C-rate ('0.5C', 'C/20')."""
    rate = parse_c_rate(text)
    if rate is not None:
        return Amount(rate, Basis.C_RATE)
    value, dim = _quantity(text, (CURRENT, CURRENT_DENSITY, SPECIFIC_CURRENT))
    return Amount(value, _BASIS[dim])


def parse_charge(text: object) -> Amount:
    """A charge: '1 mAh', per electrode area '1 mAh/cm^2', or per gram of active material '195 mAh/g'."""
    if parse_c_rate(text) is not None:
        raise _fail(f"{text!r} reads as a C-rate, not a charge; write e.g. '1 mAh' or '1 mAh/cm^2'")
    value, dim = _quantity(text, (CHARGE, AREAL_CHARGE, SPECIFIC_CHARGE))
    return Amount(value, _BASIS[dim])


def parse_specific_charge(text: object) -> Amount:
    """A charge per gram of active material, '195 mAh/g' (a specific capacity)."""
    if parse_c_rate(text) is not None:
        raise _fail(f"{text!r} reads as a C-rate, not a specific charge; write e.g. '195 mAh/g'")
    value, _ = _quantity(text, (SPECIFIC_CHARGE,))
    if value <= 0:
        raise _fail(f"{text!r}: a specific capacity must be positive; write e.g. '195 mAh/g'")
    return Amount(value, Basis.SPECIFIC)


def parse_mass(text: object) -> Amount:
    """An active-material mass, '10.3 mg', or a mass loading per electrode area, '10.3 mg/cm^2'."""
    value, dim = _quantity(text, (MASS, AREAL_MASS))
    if value <= 0:
        raise _fail(f"{text!r}: a {dim.name} must be positive; write e.g. '{dim.example}'")
    return Amount(value, _BASIS[dim])


def parse_positive(text: object, dim: Dimension) -> float:
    """Like `parse`, for quantities that are meaningless at or below zero (times, rates, areas)."""
    value = parse(text, dim)
    if value <= 0:
        raise _fail(f"{text!r}: a {dim.name} must be positive; write e.g. '{dim.example}'")
    return value


def _field(dim: Dimension, positive: bool = False) -> Any:
    check = parse_positive if positive else parse
    return PlainValidator(lambda v: check(v, dim), json_schema_input_type=str)


Duration = Annotated[float, _field(DURATION, positive=True)]
Voltage = Annotated[float, _field(VOLTAGE)]
Area = Annotated[float, _field(AREA, positive=True)]
Frequency = Annotated[float, _field(FREQUENCY, positive=True)]
ScanRate = Annotated[float, _field(SCAN_RATE, positive=True)]
Temperature = Annotated[float, _field(TEMPERATURE)]
Fraction = Annotated[float, _field(FRACTION)]


def _amount(parse: Callable[[object], Amount], unit: str) -> Any:
    """A field read by `parse` and written back as text in `unit` (its basis decides the rest)."""
    return (
        PlainValidator(parse, json_schema_input_type=str),
        PlainSerializer(lambda a: a.text(unit), return_type=str),
    )


Current = Annotated[Amount, *_amount(parse_current, "A")]
Charge = Annotated[Amount, *_amount(parse_charge, "Ah")]
SpecificCharge = Annotated[Amount, *_amount(parse_specific_charge, "Ah")]
Mass = Annotated[Amount, *_amount(parse_mass, "g")]


_PREFIXES = ((1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"))


def engineering(value: float, unit: str) -> str:
    """'0.00157 Ah' -> '1.57 mAh': engineering prefixes for plans and tables."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}"
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale * 0.999_999:
            return f"{value / scale:.4g} {prefix}{unit}"
    return f"{value / 1e-9:.4g} n{unit}"


def duration_text(seconds: float) -> str:
    """'5400 s' -> '1.5 h': the unit a person would say."""
    if seconds < 120:
        return f"{seconds:g} s"
    if seconds < 2 * SECONDS_PER_HOUR:
        return f"{seconds / 60:.4g} min"
    return f"{seconds / SECONDS_PER_HOUR:.4g} h"
