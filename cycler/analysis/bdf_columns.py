"""What a Battery Data Format (BDF) column holds, in which unit, and how a file's header names it.

Names, units and meanings are the Battery Data Alliance's: the quantity tables of
github.com/battery-data-alliance/battery-data-format (README, "Defining the BDF") with the
definitions of its ontology (battery-data-format-ontology, docs/battery-data-format.rst). We write
Test Time / s, Voltage / V, Current / A (positive charges the cell, as stored), Unix Time / s
(run start + test time), Cycle Count / 1, Step Count / 1, Step Index / 1 (1-based position in the
step), Step ID (the protocol's step command), Step Type (plate, strip, rest, ...), Charging,
Discharging and Net Capacity / Ah (running from the start of the test, never reset), Step
Capacity / Ah (|charge| of the step so far), the same four in Energy / Wh, and Ambient
Temperature / degC when a temperature was logged. Spectra go to their own file: Sequence / 1 (ours:
BDF has none), Test Time / s (spectrum start), Cycle Count / 1, Step Count / 1, Frequency / Hz,
Real Impedance / ohm, Imaginary Impedance / ohm (Im Z as measured, negative on a capacitive arc),
with the columns analysis/exports.py adds (step label, DC level, fitted curve), which import skips.
The `csv` format is ours and SI: seq, t_s, unix_s, cycle, step, step_command, step_kind, voltage_V,
current_A, charge_As (signed, this step so far), energy_J, temperature_K.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
AS_PER_AH = 3600.0  # and J per Wh
ZERO_CELSIUS_K = 273.15


class BdfError(ValueError):
    """A file cyclerd cannot read or write as asked; the message says which, where and what to do."""


class MissingColumn(BdfError):
    """A required quantity is absent: time, voltage, current (frequency and impedance for spectra)."""


class UnknownUnit(BdfError):
    """A known quantity in a unit cyclerd does not convert."""


class DuplicateColumn(BdfError):
    """Two columns hold the same quantity."""


class BadValues(BdfError):
    """Text in a numeric column, an empty required value, a fractional count, or no rows at all."""


Conversion = tuple[float, float, float]  # to the store's SI: x * mul / div + add (3.6 is not exact)
ONE: Conversion = (1.0, 1.0, 0.0)
UNITS: dict[str, dict[str, Conversion]] = {
    "time": {"s": ONE, "ms": (1.0, 1e3, 0.0), "min": (60.0, 1.0, 0.0), "h": (3600.0, 1.0, 0.0)},
    "voltage": {"V": ONE, "mV": (1.0, 1e3, 0.0)},
    "current": {"A": ONE, "mA": (1.0, 1e3, 0.0), "µA": (1.0, 1e6, 0.0)},
    "charge": {
        "Ah": (AS_PER_AH, 1.0, 0.0),
        "mAh": (AS_PER_AH, 1e3, 0.0),
        "µAh": (AS_PER_AH, 1e6, 0.0),
        "As": ONE,
    },
    "energy": {"Wh": (AS_PER_AH, 1.0, 0.0), "mWh": (AS_PER_AH, 1e3, 0.0), "J": ONE},
    "temperature": {"degC": (1.0, 1.0, ZERO_CELSIUS_K), "°C": (1.0, 1.0, ZERO_CELSIUS_K), "K": ONE},
    "count": {"1": ONE},
    "none": {"": ONE},
    "frequency": {"Hz": ONE, "kHz": (1e3, 1.0, 0.0)},
    "impedance": {"ohm": ONE, "Ohm": ONE, "Ω": ONE},
}
# The one table of what cyclerd reads and writes: key -> (BDF header, dimension, BDF machine-readable
# names and alternative labels, all in the header's unit). Names match ignoring case and spacing.
QUANTITIES: dict[str, tuple[str, str, str]] = {
    "t": ("Test Time / s", "time", "test_time_second test_time_s"),
    "voltage": ("Voltage / V", "voltage", "voltage_volt voltage_v"),
    "current": ("Current / A", "current", "current_ampere current_a"),
    "unix": ("Unix Time / s", "time", "unix_time_second unix_time_s"),
    "cycle": ("Cycle Count / 1", "count", "cycle_count cycle_count_1 cycle_dimensionless"),
    "step": ("Step Count / 1", "count", "step_count step_count_1 step_dimensionless"),
    "step_index": ("Step Index / 1", "count", "step_index step_index_1"),
    "step_id": ("Step ID", "none", "step_id"),
    "step_type": ("Step Type", "none", "step_type"),
    "charging_capacity": ("Charging Capacity / Ah", "charge", "charging_capacity_ah"),
    "discharging_capacity": ("Discharging Capacity / Ah", "charge", "discharging_capacity_ah"),
    "net_capacity": ("Net Capacity / Ah", "charge", "net_capacity_ah"),
    "step_capacity": ("Step Capacity / Ah", "charge", "step_capacity_ah"),
    "charging_energy": ("Charging Energy / Wh", "energy", "charging_energy_wh"),
    "discharging_energy": ("Discharging Energy / Wh", "energy", "discharging_energy_wh"),
    "net_energy": ("Net Energy / Wh", "energy", "net_energy_wh"),
    "step_energy": ("Step Energy / Wh", "energy", "step_energy_wh"),
    "temperature": (
        "Ambient Temperature / degC",
        "temperature",
        "ambient_temperature_celsius ambient_temperature_degc",
    ),
    "sequence": ("Sequence / 1", "count", "sequence"),
    "frequency": ("Frequency / Hz", "frequency", "frequency_hertz"),
    "z_real": ("Real Impedance / ohm", "impedance", "real_impedance_ohm"),
    "z_imag": ("Imaginary Impedance / ohm", "impedance", "imaginary_impedance_ohm"),
    "charge": ("", "charge", ""),  # ours only: the store's signed step counters
    "energy": ("", "energy", ""),
    "seq": ("", "count", ""),
}
# Our `csv` format: key -> (column, SI unit).
PLAIN = {
    "seq": ("seq", "1"),
    "t": ("t_s", "s"),
    "unix": ("unix_s", "s"),
    "cycle": ("cycle", "1"),
    "step": ("step", "1"),
    "step_id": ("step_command", ""),
    "step_type": ("step_kind", ""),
    "voltage": ("voltage_V", "V"),
    "current": ("current_A", "A"),
    "charge": ("charge_As", "As"),
    "energy": ("energy_J", "J"),
    "temperature": ("temperature_K", "K"),
}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _unit(text: str) -> str:
    """One spelling per unit: µ, μ and u are one prefix, Ω and the ohm sign one letter."""
    text = unicodedata.normalize("NFKC", text.strip())
    return "μ" + text[1:] if text[:1] == "u" and len(text) > 1 else text


_LABELS = {_norm(h.partition("/")[0]): key for key, (h, _, _) in QUANTITIES.items() if "/" in h}
_NAMES = {_norm(h): (key, "") for key, (h, _, _) in QUANTITIES.items() if h and "/" not in h}
_NAMES |= {
    _norm(n): (k, h.partition("/")[2].strip())
    for k, (h, _, names) in QUANTITIES.items()
    for n in names.split()
}
_NAMES |= {_norm(name): (key, unit) for key, (name, unit) in PLAIN.items()}
_UNITS = {dim: {_unit(u): c for u, c in units.items()} for dim, units in UNITS.items()}


@dataclass(frozen=True)
class Column:
    key: str  # a QUANTITIES key
    header: str  # as the file spells it
    conversion: Conversion

    def to_si(self, x: FloatArray) -> FloatArray:
        mul, div, add = self.conversion
        x = x * mul if mul != 1.0 else x
        x = x / div if div != 1.0 else x
        return x + add if add else x


def parse_header(header: str) -> Column | None:
    """What a header names: "<Name> / <unit>" or a machine-readable name; None if nothing we use."""
    if "/" in header:
        name, _, unit = header.partition("/")
        key = _LABELS.get(_norm(name))
        if key is None:
            return None
        dimension = QUANTITIES[key][1]
        conversion = _UNITS[dimension].get(_unit(unit))
        if conversion is None:
            raise UnknownUnit(
                f"column '{header}': cyclerd does not convert '{unit.strip()}' for {_norm(name)};"
                f" write it in one of: {', '.join(UNITS[dimension])}"
            )
        return Column(key, header, conversion)
    found = _NAMES.get(_norm(header))
    return None if found is None else Column(found[0], header, _UNITS[QUANTITIES[found[0]][1]][found[1]])
