"""Every byte cyclerd sends to a MethodSCRIPT device: online commands, SI literals, script templates.

The templates compose documented commands only (instrument-protocols.md §3.2–§3.9); the
driver fills in numbers and never formats a command itself, so this page reads like the
instrument's manual and a reviewer sees the whole vocabulary at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# -- online commands (§3.2): one line each ------------------------------------------------

FIRMWARE_QUERY = "t\n"  # two lines back: `t<firmware>` ... `*`
METHODSCRIPT_VERSION_QUERY = "v\n"  # `v<version>`
SERIAL_NUMBER_QUERY = "i\n"  # `i<serial>`
ABORT = "Z\n"  # `Z` (a script was running: its end follows) or `Z!0006` (nothing ran)
FLUSH = "\n"  # ends a half-typed command before a resync

# -- the numbers in scripts (§3.3) --------------------------------------------------------

_PREFIXES = (
    ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0),
    ("m", 1e-3), ("u", 1e-6), ("n", 1e-9), ("p", 1e-12), ("f", 1e-15), ("a", 1e-18),
)  # fmt: skip
LITERAL_MAX = 0x7FFFFFF  # keep literals within what a package can carry back (±2^27)
LITERAL_TOLERANCE = 1e-6  # relative: finer than any setpoint of a battery test


def literal(value: float) -> str:
    """A number as a script literal: an integer with the coarsest SI prefix that holds it.

    `4.2` → `4200m`, `-0.0005` → `-500u`, `36000` → `36k`. Decimal points are not MethodSCRIPT.
    """
    if not math.isfinite(value):
        raise ValueError(f"{value} cannot be written in a MethodSCRIPT script")
    if value == 0:
        return "0"
    best: tuple[int, str] | None = None
    for prefix, factor in _PREFIXES:
        n = round(value / factor)
        if abs(n) > LITERAL_MAX:
            break
        best = (n, prefix)
        if n != 0 and abs(n * factor - value) <= LITERAL_TOLERANCE * abs(value):
            break
    if best is None:
        raise ValueError(f"{value:g} is too large for a MethodSCRIPT literal")
    return f"{best[0]}{best[1]}"


def integer(value: int) -> str:
    """An integer literal (`31i`): counts such as the number of EIS frequencies."""
    return f"{value}i"


# -- pgstat modes and bandwidth (§3.8) ----------------------------------------------------

MODE_POTENTIOSTAT = 3  # high-speed potentiostat: CV holds, sweeps, potentiostatic EIS, OCP
MODE_GALVANOSTAT = 6  # CP and galvanostatic EIS (EmStat4, Nexus)
BANDWIDTH_PER_RATE = 5.85  # Hz per sample per second: the vendor's battery script
BANDWIDTH_MAX_HZ = 200e3


def bandwidth_Hz(interval_s: float) -> float:
    """Measurement bandwidth for one point every `interval_s` (re-sent after each mode change)."""
    return min(BANDWIDTH_PER_RATE / interval_s, BANDWIDTH_MAX_HZ)


# -- script templates ---------------------------------------------------------------------
# `{name}` fields are filled with literals by `_fill`; `{breaks}` with `if … breakloop endif`
# blocks; no template may contain an empty line (it would end the transmission, §3.3).
# Packages carry (time, potential, current) in that order; the driver decodes by position.

_SAMPLE_BODY = """\
timer_get t
pck_start
pck_add t
pck_add p
pck_add c
pck_end"""

_CELL_OFF_AT_END = """\
endloop
on_finished:
cell_off"""

GALVANOSTATIC = f"""\
e
var t
var p
var c
set_pgstat_chan 0
set_pgstat_mode {MODE_GALVANOSTAT}
set_max_bandwidth {{bandwidth}}
set_range_minmax ab {{voltage_min}} {{voltage_max}}
set_autoranging ab {{voltage_min}} {{voltage_max}}
set_range db {{current_range}}
cell_on
timer_start
meas_loop_cp p c {{current}} {{interval}} {{duration}}
{_SAMPLE_BODY}
{{breaks}}{_CELL_OFF_AT_END}
"""

POTENTIOSTATIC = f"""\
e
var t
var p
var c
set_pgstat_chan 0
set_pgstat_mode {MODE_POTENTIOSTAT}
set_max_bandwidth {{bandwidth}}
set_range da {{voltage}}
set_range ba {{current_range}}
set_autoranging ba {{current_min}} {{current_range}}
set_e {{voltage}}
cell_on
timer_start
meas_loop_ca p c {{voltage}} {{interval}} {{duration}}
{_SAMPLE_BODY}
{{breaks}}{_CELL_OFF_AT_END}
"""

OPEN_CIRCUIT = f"""\
e
var t
var p
set_pgstat_chan 0
set_pgstat_mode {MODE_POTENTIOSTAT}
set_max_bandwidth {{bandwidth}}
set_range ab {{voltage_span}}
cell_off
timer_start
meas_loop_ocp p {{interval}} {{duration}}
timer_get t
pck_start
pck_add t
pck_add p
pck_end
{{breaks}}{_CELL_OFF_AT_END}
"""

CYCLIC_VOLTAMMETRY = f"""\
e
var t
var p
var c
set_pgstat_chan 0
set_pgstat_mode {MODE_POTENTIOSTAT}
set_max_bandwidth {{bandwidth}}
set_range_minmax da {{voltage_min}} {{voltage_max}}
set_range ba {{current_range}}
set_autoranging ba {{current_min}} {{current_range}}
set_e {{start}}
cell_on
timer_start
meas_loop_cv p c {{start}} {{vertex1}} {{vertex2}} {{step}} {{rate}}{{scans}}
{_SAMPLE_BODY}
{_CELL_OFF_AT_END}
"""
SCANS_OPTION = " nscans({count})"  # optional argument of meas_loop_cv for more than one scan

_SPECTRUM_BODY = """\
pck_start
pck_add f
pck_add r
pck_add j
pck_end"""

IMPEDANCE = f"""\
e
var f
var r
var j
set_pgstat_chan 0
set_pgstat_mode {MODE_POTENTIOSTAT}
set_max_bandwidth {{bandwidth}}
set_range_minmax da {{dc}} {{dc}}
set_range ba {{current_range}}
set_autoranging ba {{current_min}} {{current_range}}
set_e {{dc}}
cell_on
meas_loop_eis f r j {{amplitude}} {{frequency_start}} {{frequency_stop}} {{points}} {{dc}}
{_SPECTRUM_BODY}
{_CELL_OFF_AT_END}
"""

GALVANOSTATIC_IMPEDANCE = f"""\
e
var f
var r
var j
set_pgstat_chan 0
set_pgstat_mode {MODE_GALVANOSTAT}
set_max_bandwidth {{bandwidth}}
set_range db {{current_range}}
set_autoranging ab {{voltage_min}} {{voltage_max}}
set_i {{dc}}
cell_on
meas_loop_geis f r j {{amplitude}} {{frequency_start}} {{frequency_stop}} {{points}} {{dc}}
{_SPECTRUM_BODY}
{_CELL_OFF_AT_END}
"""

CELL_OFF = """\
e
cell_off
"""

BREAK_WHEN = """\
if {variable} {op} {limit}
breakloop
endif
"""


@dataclass(frozen=True, slots=True)
class Break:
    """`if p >= 4200m` / `breakloop` / `endif`: an end condition the device checks itself."""

    variable: str  # "p" potential, "c" current
    op: str  # one of == != < <= > >=
    limit: float


def _fill(template: str, breaks: tuple[Break, ...] = (), **values: float | str) -> str:
    """A template with its numbers as literals, then the empty line that ends the script."""
    text = {k: v if isinstance(v, str) else literal(v) for k, v in values.items()}
    lines = "".join(BREAK_WHEN.format(variable=b.variable, op=b.op, limit=literal(b.limit)) for b in breaks)
    if "{breaks}" in template:
        text["breaks"] = lines
    script = template.format(**text)
    assert "\n\n" not in script, "an empty line inside a script would end it early"
    return script + "\n"


# -- the scripts the driver runs ----------------------------------------------------------


def galvanostatic(
    current_A: float,
    interval_s: float,
    duration_s: float,
    voltage_span_V: tuple[float, float],
    current_range_A: float,
    breaks: tuple[Break, ...],
) -> str:
    """Constant current (cc, plate, strip; the CC phase of cccv): meas_loop_cp, §3.9."""
    return _fill(
        GALVANOSTATIC,
        breaks,
        bandwidth=bandwidth_Hz(interval_s),
        voltage_min=voltage_span_V[0],
        voltage_max=voltage_span_V[1],
        current_range=current_range_A,
        current=current_A,
        interval=interval_s,
        duration=duration_s,
    )


def potentiostatic(
    voltage_V: float,
    interval_s: float,
    duration_s: float,
    current_span_A: tuple[float, float],
    breaks: tuple[Break, ...] = (),
) -> str:
    """Constant voltage hold (cv; the CV phase of cccv): meas_loop_ca, §3.9."""
    return _fill(
        POTENTIOSTATIC,
        breaks,
        bandwidth=bandwidth_Hz(interval_s),
        voltage=voltage_V,
        current_min=current_span_A[0],
        current_range=current_span_A[1],
        interval=interval_s,
        duration=duration_s,
    )


def open_circuit(
    interval_s: float, duration_s: float, voltage_span_V: float, breaks: tuple[Break, ...]
) -> str:
    """Rest with the cell off, measuring its voltage: meas_loop_ocp, §3.9."""
    return _fill(
        OPEN_CIRCUIT,
        breaks,
        bandwidth=bandwidth_Hz(interval_s),
        voltage_span=voltage_span_V,
        interval=interval_s,
        duration=duration_s,
    )


def cyclic_voltammetry(
    start_V: float,
    vertices_V: tuple[float, float],
    step_V: float,
    rate_V_per_s: float,
    scans: int,
    current_span_A: tuple[float, float],
) -> str:
    """A CV sweep: meas_loop_cv from `start_V` to each vertex in turn, `scans` times (§3.7)."""
    low, high = min(start_V, *vertices_V), max(start_V, *vertices_V)
    return _fill(
        CYCLIC_VOLTAMMETRY,
        bandwidth=bandwidth_Hz(step_V / rate_V_per_s),
        voltage_min=low,
        voltage_max=high,
        current_min=current_span_A[0],
        current_range=current_span_A[1],
        start=start_V,
        vertex1=vertices_V[0],
        vertex2=vertices_V[1],
        step=step_V,
        rate=rate_V_per_s,
        scans=SCANS_OPTION.format(count=scans) if scans > 1 else "",
    )


def impedance(
    amplitude_V: float,
    frequency_start_Hz: float,
    frequency_stop_Hz: float,
    points: int,
    dc_V: float,
    current_span_A: tuple[float, float],
    bandwidth: float,
) -> str:
    """Potentiostatic EIS around `dc_V`: meas_loop_eis, log-spaced from start to stop (§3.7)."""
    return _fill(
        IMPEDANCE,
        bandwidth=bandwidth,
        dc=dc_V,
        current_min=current_span_A[0],
        current_range=current_span_A[1],
        amplitude=amplitude_V,
        frequency_start=frequency_start_Hz,
        frequency_stop=frequency_stop_Hz,
        points=integer(points),
    )


def galvanostatic_impedance(
    amplitude_A: float,
    frequency_start_Hz: float,
    frequency_stop_Hz: float,
    points: int,
    dc_A: float,
    current_range_A: float,
    voltage_span_V: tuple[float, float],
    bandwidth: float,
) -> str:
    """Galvanostatic EIS around `dc_A` (EmStat4, Nexus): meas_loop_geis, §3.7."""
    return _fill(
        GALVANOSTATIC_IMPEDANCE,
        bandwidth=bandwidth,
        current_range=current_range_A,
        voltage_min=voltage_span_V[0],
        voltage_max=voltage_span_V[1],
        dc=dc_A,
        amplitude=amplitude_A,
        frequency_start=frequency_start_Hz,
        frequency_stop=frequency_stop_Hz,
        points=integer(points),
    )


def cell_off() -> str:
    """A script that only switches the cell off (safe state)."""
    return _fill(CELL_OFF)
