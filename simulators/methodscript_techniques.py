"""The pulse, AC and current-sweep techniques of the EmStat4 emulator: LSP, DPV, SWV, NPV, ACV, PAD.

Each technique is a staircase of short holds on the simulated cell (methodscript_frontend), so
the cell's own response gives the currents. Sampling is the simple, documented one [U]: a current
is read at the end of each pulse or half period; DPV and SWV report forward minus reverse (the
difference the device reports), NPV the pulse current, ACV the DC current with the AC response
computed from the cell's impedance at the frequency. `meas_loop_eis ... eis_tdd(...)` time-domain
arrays are computed here too.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

import numpy as np

from cyclerd.simulators import methodscript_packages as pk
from cyclerd.simulators.methodscript_frontend import AnalogFrontend
from cyclerd.simulators.methodscript_values import Value

NAMES = ("lsp", "dpv", "swv", "npv", "acv", "pad")
Readings = AsyncGenerator[list[Value], None]  # one value per output variable, in order
TDD_SAMPLES = 64  # [U] time-domain samples per frequency with eis_tdd (fewer if the arrays are shorter)


class Device(Protocol):
    """The interpreter as a technique sees it: the front end, the device's time and readings."""

    fe: AnalogFrontend

    def now(self) -> float: ...
    async def pause_until(self, t: float) -> None: ...
    def measured(self, vartype: str, raw: float) -> Value: ...


def points(d: Device, name: str, n: Sequence[float]) -> Readings:
    """Check a technique's arguments and the device state (before `M`); return its readings."""
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
