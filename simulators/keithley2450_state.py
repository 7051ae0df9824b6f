"""The Keithley 2450's state: the settings `*RST` restores, the readings its buffers hold, and
the fixed tables (ranges, OVP levels, units) both the emulator and its command table use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType

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
SENSE_FUNCTIONS = ("VOLT", "CURR", "RES")
USER_DELAYS = range(1, 6)  # :DELay:USER1..5


def user_delays(functions: tuple[str, ...]) -> dict[str, float]:
    return {f"{fn}{n}": 0.0 for fn in functions for n in USER_DELAYS}


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
    data_format: str = "ASC"  # :FORM:DATA; REAL and SRE read back, only ASCII data is served
    # Settings that read back but leave readings alone (the cell model has no offset drift or noise
    # for autozero and the filter to act on): keys CURR, VOLT, RES.
    azero: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(SENSE_FUNCTIONS, True))
    average: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(SENSE_FUNCTIONS, False))
    average_tcontrol: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SENSE_FUNCTIONS, "REP"))
    average_count: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SENSE_FUNCTIONS, 10))
    # :DELay:USER<n> values, keyed function + n (`CURR3`); the trigger model is not emulated
    sense_user_delay_s: dict[str, float] = field(default_factory=lambda: user_delays(SENSE_FUNCTIONS))
    source_user_delay_s: dict[str, float] = field(default_factory=lambda: user_delays(("CURR", "VOLT")))


@dataclass(frozen=True)
class Reading:
    t_s: float  # emulator time
    value: float
    source: float
    function: str  # VOLT, CURR or RES
    source_function: str
