"""The techniques of the EmStat4 emulator's measurement loops, as readings of one point each.

Every technique is a staircase of short holds on the simulated cell (methodscript_frontend), so
the cell's own response gives the currents. CA, CP and OCP read at the end of each interval (the
first point one interval in); CV and LSV hold each step of their grid; EIS and GEIS give the
cell's impedance at log-spaced frequencies (two periods, at least 50 ms each [U]), with
`eis_tdd(...)` time-domain arrays if asked. Pulse sampling is the simple, documented one [U]: a
current is read at the end of each pulse or half period; DPV and SWV report forward minus
reverse (the difference the device reports), NPV the pulse current, ACV the DC current with the
AC response computed from the cell's impedance at the frequency.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

import numpy as np

from cyclerd.simulators import methodscript_packages as pk
from cyclerd.simulators.cell import FloatArray
from cyclerd.simulators.methodscript_frontend import AnalogFrontend
from cyclerd.simulators.methodscript_values import Value

PULSED = ("lsp", "dpv", "swv", "npv", "acv", "pad")
EIS_MAX_HZ = 200e3  # [U] the top frequency meas_loop_eis accepts
TDD_SAMPLES = 64  # [U] time-domain samples per frequency with eis_tdd (fewer if the arrays are shorter)
# One value per output variable, in order (a list: one per multiplexer channel), or a scan's
# `C` / `-` marker line.
Readings = AsyncGenerator[Sequence[Value | list[Value]] | str, None]
Options = dict[str, tuple[pk.Lit | pk.Ref, ...]]  # a loop's `name(value ...)` options


class Device(Protocol):
    """The interpreter as a technique sees it: the front end, the device's time and variables."""

    fe: AnalogFrontend

    def now(self) -> float: ...
    async def pause_until(self, t: float) -> None: ...
    def measured(self, vartype: str, raw: float) -> Value: ...
    def num(self, arg: pk.Arg) -> float: ...
    def array(self, arg: pk.Arg) -> list[Value]: ...
    def set(self, ref: pk.Ref, value: Value) -> None: ...


def points(d: Device, name: str, n: Sequence[float], options: Options) -> Readings:
    """Check a technique's arguments and the device state (before `M`); return its readings."""
    if name in ("ca", "cp", "ocp"):
        level, t_int, t_run = (0.0, *n) if name == "ocp" else n
        if t_int <= 0 or t_run < 0:
            raise pk.DeviceError(pk.ERR_INVALID_TIME)
        start_hold(d, name, level)
        return _chrono(d, name, level, t_int, int(t_run / t_int + 1e-9))
    if name in ("cv", "lsv"):
        vertices, step, rate = ([*n[:3], n[0]] if name == "cv" else list(n[:2])), n[-2], n[-1]
        scans = int(d.num(options["nscans"][0])) if "nscans" in options else 1
        if step < 0:
            raise pk.DeviceError(pk.ERR_NEGATIVE_STEP)
        if step == 0 or rate <= 0 or scans < 1:
            raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
        _start(d, "cv", "E", vertices[0])
        return _sweep(d, vertices, step, step / rate, scans, reaches_end=name == "cv")
    if name in ("eis", "geis"):
        return _spectrum(d, name, n, options.get("eis_tdd", ()))  # eis_opt(...): accepted [U]
    return _pulsed(d, name, n)


def start_hold(d: Device, technique: str, level: float) -> None:
    """Start a CA, CP or OCP: the state it needs, and the level it holds (none for OCP)."""
    d.fe.begin(technique)
    if technique != "ocp":
        d.fe.apply("E" if technique == "ca" else "I", level)


async def _chrono(d: Device, name: str, level: float, t_int: float, count: int) -> Readings:
    t0 = d.now()
    for k in range(1, count + 1):  # [U] the first point comes after one interval
        await d.pause_until(t0 + k * t_int)
        voltage, current = d.fe.sample(t_int)
        yield reading(d, name, level, voltage, current)


def reading(d: Device, name: str, level: float, voltage: float, current: float) -> list[Value]:
    """P4: CA reports da + ba, CP ab + db, OCP ab."""
    if name == "ca":
        return [Value(level, "da"), d.measured("ba", current)]
    if name == "cp":
        return [d.measured("ab", voltage), Value(level, "db")]
    return [d.measured("ab", voltage)]


async def _sweep(
    d: Device, vertices: list[float], step: float, dt: float, scans: int, reaches_end: bool = True
) -> Readings:
    """CV / LSV as short potential holds on the step grid, one point per step.

    [U] An LSV of N steps gives N points, from E_begin up to one step short of E_end
    (`reaches_end` False): PalmSens' MSExample031 ("applies to EmStat4") sizes its arrays to
    (E_end - E_begin) / E_step and fills one element per point, and the vendor's LSV exchange
    starts at E_begin. A CV's closed path ends where it began, at its start, measured.
    """
    grid = [vertices[0]]
    for a, b in itertools.pairwise(vertices):
        n = max(1, round(abs(b - a) / step))
        grid += [a + (b - a) * k / n for k in range(1, n + 1)]
    if not reaches_end:
        grid = grid[:-1]
    k, t0 = 0, d.now()
    for scan in range(scans):
        if scans > 1:
            yield f"C{scan:04X}"  # [U] the scan index
        for potential in grid[1:] if scan else grid:
            k += 1
            await d.pause_until(t0 + k * dt)
            d.fe.apply("E", potential)
            _, current = d.fe.sample(dt)
            yield [Value(potential, "da"), d.measured("ba", current)]
        if scans > 1:
            yield "-"


def _spectrum(d: Device, name: str, n: Sequence[float], tdd: tuple[pk.Lit | pk.Ref, ...]) -> Readings:
    amplitude, f_start, f_end, count, dc = n
    if amplitude <= 0:
        raise pk.DeviceError(pk.ERR_INVALID_AMPLITUDE)
    if not (0 < f_start <= EIS_MAX_HZ and 0 < f_end <= EIS_MAX_HZ):
        raise pk.DeviceError(pk.ERR_INVALID_FREQUENCY)
    if count < 1:
        raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
    if tdd and len(tdd) < 4:
        raise pk.DeviceError(pk.ERR_INVALID_OPTION)
    _start(d, name, "E" if name == "eis" else "I", dc)
    freqs = np.logspace(np.log10(f_start), np.log10(f_end), int(count))
    return _eis(d, name == "eis", amplitude, dc, freqs, tdd)


async def _eis(
    d: Device, potentiostatic: bool, amplitude: float, dc: float, freqs: FloatArray,
    tdd: tuple[pk.Lit | pk.Ref, ...],
) -> Readings:  # fmt: skip
    """EIS / GEIS: Z of the cell at the frequencies, held at the DC level meanwhile."""
    for f, z in zip(freqs, d.fe.spectrum(freqs), strict=True):
        duration = max(2.0 / f, 0.05)  # [U] two periods, at least 50 ms per frequency
        await d.pause_until(d.now() + duration)
        d.fe.sample(duration)
        i_ac = amplitude / abs(z) if potentiostatic else amplitude
        i_meta, e_meta = d.fe.reading("ba", i_ac)[1], d.fe.reading("ab", i_ac * abs(z))[1]
        if tdd:
            _fill_time_domain(d, tdd, float(f), complex(z), amplitude, dc, potentiostatic)
        yield [
            Value(float(f), "dc"),
            Value(float(z.real), "cc", meta=i_meta),  # §3.5: cc on the current range,
            Value(float(z.imag), "cd", meta=e_meta),  # cd on the potential range
        ]


def _fill_time_domain(
    d: Device, tdd: tuple[pk.Lit | pk.Ref, ...], f: float, z: complex, amp: float, dc: float, pot: bool
) -> None:
    """eis_tdd(E_array I_array count dt mode): one period of both signals per frequency [U]."""
    e_cells, i_cells = d.array(tdd[0]), d.array(tdd[1])
    samples = min(TDD_SAMPLES, len(e_cells), len(i_cells))
    e, i, dt = time_domain(f, z, amp, dc, pot, samples)
    e_cells[:samples] = [Value(x, "da" if pot else "ab") for x in e]
    i_cells[:samples] = [Value(x, "ba" if pot else "db") for x in i]
    d.set(_as_ref(tdd[2]), Value(float(samples), "ja", is_int=True))
    d.set(_as_ref(tdd[3]), Value(dt, "eb"))


def _as_ref(arg: pk.Arg) -> pk.Ref:
    if not isinstance(arg, pk.Ref):
        raise pk.DeviceError(pk.ERR_INVALID_OPTION)
    return arg


def _pulsed(d: Device, name: str, n: Sequence[float]) -> Readings:
    if name == "pad":
        e_dc, e_pulse, t_pulse, t_int, t_run, mode = n
        if not 0 < t_pulse < t_int or t_run < 0:
            raise pk.DeviceError(pk.ERR_INVALID_TIME)
        if mode not in (1, 2, 3):
            raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
        _start(d, "pad", "E", e_dc)
        return _pad(d, e_dc, e_pulse, t_pulse, t_int, int(t_run / t_int + 1e-9), int(mode))
    begin, end, step = n[:3]
    if step < 0:
        raise pk.DeviceError(pk.ERR_NEGATIVE_STEP)
    if step == 0:
        raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
    grid = _grid(begin, end, step)
    if name == "swv":
        amplitude, frequency = n[3:]
        if amplitude < 0:
            raise pk.DeviceError(pk.ERR_INVALID_AMPLITUDE)
        if frequency <= 0:
            raise pk.DeviceError(pk.ERR_INVALID_FREQUENCY)
        _start(d, name, "E", begin)
        return _swv(d, grid, math.copysign(amplitude, end - begin), 0.5 / frequency)
    rate = n[-1] if name != "acv" else n[3]
    if rate <= 0:
        raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
    t_step = step / rate
    if name == "lsp":
        _start(d, name, "I", begin)
        return _lsp(d, grid, t_step)
    if name == "acv":
        amplitude, frequency = n[4:]
        if amplitude <= 0:
            raise pk.DeviceError(pk.ERR_INVALID_AMPLITUDE)
        if frequency <= 0:
            raise pk.DeviceError(pk.ERR_INVALID_FREQUENCY)
        _start(d, name, "E", begin)
        return _acv(d, grid, t_step, amplitude, frequency)
    pulse, t_pulse = (n[3], n[4]) if name == "dpv" else (0.0, n[3])
    if not 0 < t_pulse < t_step:
        raise pk.DeviceError(pk.ERR_INVALID_TIME)  # [U] the pulse must fit in a step
    _start(d, name, "E", begin)
    return _pulses(d, name, grid, pulse, t_step - t_pulse, t_pulse)


def _start(d: Device, technique: str, kind: str, level: float) -> None:
    d.fe.begin(technique)
    d.fe.apply(kind, level)


def _grid(begin: float, end: float, step: float) -> list[float]:
    """The staircase from begin to end, both included, in steps of about `step`."""
    count = max(1, round(abs(end - begin) / step))
    return [begin + (end - begin) * k / count for k in range(count + 1)]


async def _hold(d: Device, kind: str, level: float, seconds: float) -> tuple[float, float]:
    """(voltage, current) at the end of `seconds` at `level`."""
    d.fe.apply(kind, level)
    await d.pause_until(d.now() + seconds)
    return d.fe.sample(seconds)


async def _lsp(d: Device, grid: list[float], t_step: float) -> Readings:
    for current in grid:
        voltage, _ = await _hold(d, "I", current, t_step)
        yield [d.measured("ab", voltage), Value(current, "db")]


async def _pulses(
    d: Device, name: str, grid: list[float], pulse: float, t_base: float, t_pulse: float
) -> Readings:
    """DPV: base at E, pulse to E + E_pulse, I = I_pulse - I_base. NPV: base at E_begin, pulse to E."""
    for potential in grid:
        base = potential if name == "dpv" else grid[0]
        _, i_base = await _hold(d, "E", base, t_base)
        _, i_pulse = await _hold(d, "E", potential + pulse, t_pulse)
        current = i_pulse - i_base if name == "dpv" else i_pulse
        yield [Value(potential, "da"), d.measured("ba", current)]


async def _swv(d: Device, grid: list[float], amplitude: float, half_period: float) -> Readings:
    """A forward pulse (in the scan direction) and a reverse one around each stair."""
    for potential in grid:
        _, forward = await _hold(d, "E", potential + amplitude, half_period)
        _, reverse = await _hold(d, "E", potential - amplitude, half_period)
        yield [
            Value(potential, "da"),
            d.measured("ba", forward - reverse),
            d.measured("ba", forward),
            d.measured("ba", reverse),
        ]


async def _acv(d: Device, grid: list[float], t_step: float, amplitude: float, frequency: float) -> Readings:
    """The DC staircase; the AC current is the amplitude over |Z(f)| of the cell."""
    for potential in grid:
        _, i_dc = await _hold(d, "E", potential, t_step)
        z = complex(d.fe.spectrum(np.array([frequency]))[0])
        yield [
            Value(potential, "da"),
            d.measured("ba", i_dc),
            Value(amplitude, "dd"),
            d.measured("ba", amplitude / abs(z)),
            Value(z.real, "cc"),
            Value(z.imag, "cd"),
        ]


async def _pad(
    d: Device, e_dc: float, e_pulse: float, t_pulse: float, t_int: float, count: int, mode: int
) -> Readings:
    """Mode 1 reports the DC current (before the pulse), 2 the pulse current, 3 the difference."""
    for _ in range(count):
        _, i_dc = await _hold(d, "E", e_dc, t_int - t_pulse)
        _, i_pulse = await _hold(d, "E", e_pulse, t_pulse)
        current = (i_dc, i_pulse, i_pulse - i_dc)[mode - 1]
        yield [Value(e_dc if mode == 1 else e_pulse, "da"), d.measured("ba", current)]
    d.fe.apply("E", e_dc)


def time_domain(
    frequency: float, z: complex, amplitude: float, dc: float, potentiostatic: bool, samples: int
) -> tuple[list[float], list[float], float]:
    """eis_tdd: one period of the applied and the responding signal; (potentials, currents, dt).

    The amplitude is taken as RMS, as `meas_loop_eis` documents it; the current lags the
    potential by the impedance's phase.
    """
    dt = 1.0 / (frequency * samples)
    t = np.arange(samples) * dt
    peak = amplitude * math.sqrt(2.0)
    omega, phase = 2 * math.pi * frequency, math.atan2(z.imag, z.real)
    if potentiostatic:
        e = dc + peak * np.sin(omega * t)
        i = peak / abs(z) * np.sin(omega * t - phase)
    else:
        i = dc + peak * np.sin(omega * t)
        e = peak * abs(z) * np.sin(omega * t + phase)
    return [float(x) for x in e], [float(x) for x in i], dt
