"""The SMU output stage on a load: what it forces (`Drive`), what its terminals see (`Load`,
`OpenLoad`, `ShortedLoad`), and compliance switching over time (`Terminals`). Used by the
Keithley 2450 emulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cyclerd.simulators.cell import FloatArray

RAIL_V = 1e3  # what an open circuit "needs" from a current source: any limit clamps it
GRID = 32  # points per look-ahead when advancing the cell, to find compliance crossings
RESOLUTION_S = 0.5  # a crossing is located to within this much emulator time
MAX_SWITCHES = 8  # compliance changes per advance, against chatter in the noise


@dataclass(frozen=True)
class Drive:
    """What the output stage forces: `level` of current (else voltage), the other within ±`limit`."""

    forces_current: bool
    level: float
    limit: float


class Load(Protocol):
    """What the terminals see: the cell, or the cell behind a fault. CellModel fits."""

    def voltage_at_current(self, current_A: float, t_s: FloatArray) -> FloatArray: ...
    def current_at_voltage(self, voltage_V: float, t_s: FloatArray) -> FloatArray: ...
    def advance_at_current(self, current_A: float, duration_s: float) -> None: ...
    def advance_at_voltage(self, voltage_V: float, duration_s: float) -> None: ...


class OpenLoad:
    """The cell disconnected: it rests, and a current source drives the terminals to its limit."""

    def __init__(self, cell: Load) -> None:
        self.cell = cell

    def voltage_at_current(self, current_A: float, t_s: FloatArray) -> FloatArray:
        return np.full(np.shape(t_s), math.copysign(RAIL_V, current_A) if current_A else 0.0)

    def current_at_voltage(self, voltage_V: float, t_s: FloatArray) -> FloatArray:
        return np.zeros(np.shape(t_s))

    def advance_at_current(self, current_A: float, duration_s: float) -> None:
        self.cell.advance_at_current(0.0, duration_s)

    def advance_at_voltage(self, voltage_V: float, duration_s: float) -> None:
        self.cell.advance_at_current(0.0, duration_s)


class ShortedLoad:
    """A resistance `r_ohm` across the cell: the terminals, and the cell, sit near 0 V."""

    def __init__(self, cell: Load, r_ohm: float) -> None:
        self.cell, self.r_ohm = cell, r_ohm

    def voltage_at_current(self, current_A: float, t_s: FloatArray) -> FloatArray:
        into_cell = self.cell.current_at_voltage(current_A * self.r_ohm, t_s)
        return (current_A - into_cell) * self.r_ohm  # one fixed-point step: the cell's share is small

    def current_at_voltage(self, voltage_V: float, t_s: FloatArray) -> FloatArray:
        return voltage_V / self.r_ohm + self.cell.current_at_voltage(voltage_V, t_s)

    def advance_at_current(self, current_A: float, duration_s: float) -> None:
        self.cell.advance_at_voltage(current_A * self.r_ohm, duration_s)

    def advance_at_voltage(self, voltage_V: float, duration_s: float) -> None:
        self.cell.advance_at_voltage(voltage_V, duration_s)


class Terminals:
    """The output stage on a load: which side of its limit it is on (`side`), and the cell's time.

    side 0: the programmed source rules. side ±1: the limit is reached at ±limit, and the SMU
    forces that instead (CC→CV at VLIM; a current clamp at ILIM) until the load would take
    the programmed level again (with a 2 % / 1 mV margin so noise does not chatter).
    """

    def __init__(self) -> None:
        self.t_s = 0.0
        self.side = 0
        self._drive: Drive | None = None

    def advance_to(self, t_s: float, drive: Drive, load: Load) -> None:
        """Pass time up to `t_s`, changing side exactly (to RESOLUTION_S) where the load makes it."""
        self._adopt(drive)
        remaining = window = t_s - self.t_s
        switches = 0
        while remaining > 1e-9:
            grid = np.linspace(0.0, min(window, remaining), GRID + 1)
            leave, other = self._respond(drive, load, grid)[2:]
            k = int(np.argmax(leave)) if leave.any() and switches < MAX_SWITCHES else -1
            if k == 0:
                self.side, switches = (int(np.sign(other[0])) if self.side == 0 else 0), switches + 1
            elif k < 0 or grid[1] <= RESOLUTION_S:
                passed = float(grid[-1] if k < 0 else grid[k])
                self._hold(drive, load, passed)
                remaining, window = remaining - passed, remaining - passed
                if k > 0:
                    self.side, switches = (int(np.sign(other[k])) if self.side == 0 else 0), switches + 1
            else:  # the crossing lies within the next grid step: look there more closely
                self._hold(drive, load, float(grid[k - 1]))
                remaining, window = remaining - float(grid[k - 1]), float(grid[1])
        self.t_s = t_s

    def measure(self, drive: Drive, load: Load) -> tuple[float, float, bool]:
        """Voltage, current and whether the limit is engaged, now."""
        self._adopt(drive)
        for _ in range(3):
            v, i, leave, other = self._respond(drive, load, np.zeros(1))
            if not leave[0]:
                break
            self.side = int(np.sign(other[0])) if self.side == 0 else 0
        return float(v[0]), float(i[0]), self.side != 0

    def _adopt(self, drive: Drive) -> None:
        if drive != self._drive:
            self._drive, self.side = drive, 0

    def _respond(
        self, drive: Drive, load: Load, t: FloatArray
    ) -> tuple[FloatArray, FloatArray, np.ndarray, FloatArray]:
        """Voltage, current, where the side must change, and the limited quantity, over `t`."""
        force, back = (
            (load.voltage_at_current, load.current_at_voltage)
            if drive.forces_current
            else (load.current_at_voltage, load.voltage_at_current)
        )
        if self.side == 0:
            own, other = np.full_like(t, drive.level), force(drive.level, t)
            leave = np.abs(other) > drive.limit
        else:
            edge = self.side * drive.limit
            own, other = back(edge, t), np.full_like(t, edge)
            margin = 0.02 * abs(drive.level) + 1e-9 if drive.forces_current else 1e-3
            leave = self.side * (own - drive.level) >= margin
        v, i = (other, own) if drive.forces_current else (own, other)
        return v, i, leave, other

    def _hold(self, drive: Drive, load: Load, duration_s: float) -> None:
        if duration_s <= 0:
            return
        value = drive.level if self.side == 0 else self.side * drive.limit
        if drive.forces_current == (self.side == 0):
            load.advance_at_current(value, duration_s)
        else:
            load.advance_at_voltage(value, duration_s)
