"""The EmStat4 analog front end a MethodSCRIPT interpreter commands: cell switch, pgstat mode,
levels and ranges over a cell model, which it alone advances in time; and `ShortedCell`, the
cell behind a shorting fault.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cyclerd.drivers.clock import Clock
from cyclerd.simulators import methodscript_packages as pk
from cyclerd.simulators.cell import CellModel, ComplexArray, FloatArray

COMPLIANCE_V = 6.0  # [U] P7: the EmStat4 HR potential limit, applied and measured
POTENTIOSTATIC_MODES = {2, 3}  # low-speed, high-speed potentiostat
GALVANOSTAT_MODE = 6
PGSTAT_MODES = {0, *POTENTIOSTATIC_MODES, GALVANOSTAT_MODE}  # 4 (max range) is the Pico's
GALVANOSTATIC = ("cp", "geis", "lsp")  # techniques that need pgstat mode 6
PGSTAT_CHANNELS = {0, 1}  # [U] channel 1 accepts pgstat mode 0 only (PSTrace's preamble)
CHUNK_MAX = 256  # samples evaluated at once while the drive stays the same


class ShortedCell:
    """`cell` with a resistance across its terminals: a Li filament through the separator.

    The cell is seen as its rest voltage behind |Z(1 Hz)|, all a near-zero shunt needs: the
    terminal voltage collapses and the cell discharges into the shunt.
    """

    def __init__(self, cell: CellModel, resistance_ohm: float) -> None:
        self.inner, self.r_short = cell, resistance_ohm
        self.r_cell = float(abs(cell.impedance(np.array([1.0]))[0]))

    @property
    def area_m2(self) -> float:
        return self.inner.area_m2

    def _split(self, current_A: float, t_s: FloatArray) -> tuple[FloatArray, FloatArray]:
        v_oc = self.inner.voltage_at_current(0.0, t_s)
        v = (v_oc / self.r_cell + current_A) / (1.0 / self.r_cell + 1.0 / self.r_short)
        return v, (v - v_oc) / self.r_cell  # terminal voltage, current into the cell

    def voltage_at_current(self, current_A: float, t_s: FloatArray) -> FloatArray:
        return self._split(current_A, t_s)[0]

    def advance_at_current(self, current_A: float, duration_s: float) -> None:
        self.inner.advance_at_current(float(self._split(current_A, np.zeros(1))[1][0]), duration_s)

    def current_at_voltage(self, voltage_V: float, t_s: FloatArray) -> FloatArray:
        return voltage_V / self.r_short + self.inner.current_at_voltage(voltage_V, t_s)

    def advance_at_voltage(self, voltage_V: float, duration_s: float) -> None:
        self.inner.advance_at_voltage(voltage_V, duration_s)

    def impedance(self, frequencies_Hz: FloatArray) -> ComplexArray:
        z = self.inner.impedance(frequencies_Hz)
        return (z * self.r_short / (z + self.r_short)).astype(np.complex128)


Drive = tuple[str, float]  # ("off" | "E" | "I", level)


@dataclass
class _Chunk:
    drive: Drive
    dt: float
    generation: int
    voltage: FloatArray
    current: FloatArray
    used: int = 0


class AnalogFrontend:
    """Cell switch, pgstat mode, applied levels and ranges of one EmStat4 channel, over a cell.

    The cell moves only here. In a measurement loop each sample advances it by its interval,
    evaluated in chunks that double while the drive stays the same and committed as consumed;
    outside loops `sync` catches it up with the clock at the applied drive.
    """

    def __init__(self, cell: CellModel, clock: Clock, variant: str = "es4_hr") -> None:
        self.healthy = self.cell = cell
        self.clock = clock
        self.current_ranges = pk.CURRENT_RANGES_ES4_LR if variant == "es4_lr" else pk.CURRENT_RANGES_ES4_HR
        self.mode, self.on = 0, False  # [U] power-up state: pgstat off, cell off
        self.channel = 0  # set_pgstat_chan: 0 is the cell's; 1 can only be switched off [U]
        self.levels = {"E": 0.0, "I": 0.0}
        self.windows: dict[str, tuple[float, float] | None] = {"ba": None, "ab": None}  # None: all
        self.settings: dict[str, object] = {}  # accepted, not modelled (bandwidth, applied ranges)
        # (device time, cell on) at every switch: what a test reads the host's reaction from
        self.switches: list[tuple[float, bool]] = []
        self._t = clock.now()  # the clock time the cell has been advanced to
        self._chunk: _Chunk | None = None
        self._generation = 0  # bumped by a fault so that precomputed samples are dropped

    def drive(self) -> Drive:
        if not self.on:
            return ("off", 0.0)
        kind = "I" if self.mode == GALVANOSTAT_MODE else "E"
        return (kind, self.levels[kind])

    def configure(self, command: str, values: Sequence[float | str]) -> None:
        """set_pgstat_chan/mode, set_range*, set_autoranging, set_max_bandwidth, ..."""
        self.sync()
        first = values[0]
        if command == "set_pgstat_chan":
            if first not in PGSTAT_CHANNELS:
                raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)  # one cell channel on an EmStat4
            self.channel = int(first)
        elif self.channel:  # PSTrace's scripts switch channel 1 off first; nothing else goes there
            if command == "set_pgstat_mode" and first != 0:
                raise pk.DeviceError(pk.ERR_NOT_SUPPORTED)
            self.settings[f"channel {self.channel} {command}"] = list(values)
        elif command == "set_pgstat_mode":
            if first not in PGSTAT_MODES:
                raise pk.DeviceError(pk.ERR_UNKNOWN_MODE)
            self.mode = int(first)
            self._switch(self.on and self.mode != 0)
        elif isinstance(first, str):  # set_range / set_range_minmax / set_autoranging <vartype> ...
            magnitudes = [abs(float(v)) for v in values[1:]]
            if first not in ("ba", "ab", "da", "db"):
                raise pk.DeviceError(pk.ERR_BAD_VARTYPE)
            if first not in self.windows:
                self.settings[f"{command} {first}"] = magnitudes
                return
            table = self.current_ranges if first == "ba" else pk.POTENTIAL_RANGES_ES4
            top = pk.full_scale(table, max(magnitudes))
            low = pk.full_scale(table, min(magnitudes)) if command == "set_autoranging" else top
            self.windows[first] = (low, top)  # [U] the last range command wins
        elif first <= 0:
            raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
        else:
            self.settings[command] = first

    def cell_switch(self, on: bool) -> None:
        self.sync()
        if on and self.mode == 0:
            raise pk.DeviceError(pk.ERR_WRONG_MODE)
        self._switch(on)

    def power_off(self) -> None:
        """Power lost: the cell relay opens and the pgstat is off, as at power-up."""
        self.sync()
        self.mode, self.channel = 0, 0
        self._switch(False)

    def _switch(self, on: bool) -> None:
        if on != self.on or not self.switches:
            self.switches.append((self.clock.now(), on))
        self.on = on

    def level(self, kind: str, value: float) -> None:
        """set_e / set_i: the level applied at cell_on (at once if the cell is on)."""
        self.sync()
        self.apply(kind, value)

    def apply(self, kind: str, value: float) -> None:
        """A loop's own level; no sync, since the loop's samples account for its time."""
        if kind == "E" and abs(value) > COMPLIANCE_V:
            raise pk.DeviceError(pk.ERR_INVALID_POTENTIAL)
        if kind == "I" and abs(value) > max(self.current_ranges.values()):
            raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)  # [U] beyond the top current range
        self.levels[kind] = value  # [U] stays applied after the loop, as a DAC would

    def begin(self, technique: str) -> None:
        """Catch up with the clock; refuse a technique the present state does not allow."""
        self.sync()
        if technique == "ocp" and self.on:
            raise pk.DeviceError(pk.ERR_OCP_CELL_ON)
        if technique not in ("ocp", "meas"):
            if self.mode == 0 or (self.mode == GALVANOSTAT_MODE) != (technique in GALVANOSTATIC):
                raise pk.DeviceError(pk.ERR_WRONG_MODE)
            if not self.on:
                raise pk.DeviceError(pk.ERR_CELL_MUST_BE_ON)  # [U] rather than switching it on

    def sample(self, dt_s: float) -> tuple[float, float]:
        """(voltage, current) after `dt_s` more seconds at the present drive."""
        key, c = (self.drive(), dt_s, self._generation), self._chunk
        if c is None or (c.drive, c.dt, c.generation) != key or c.used == len(c.voltage):
            size = 1 if c is None or (c.drive, c.dt, c.generation) != key else min(2 * c.used, CHUNK_MAX)
            self.finish()
            c = self._chunk = _Chunk(
                *key, *self._respond(key[0], dt_s * np.arange(1.0, size + 1.0, dtype=np.float64))
            )
        c.used += 1
        return float(c.voltage[c.used - 1]), float(c.current[c.used - 1])

    def finish(self) -> None:
        """Commit the samples taken from the present chunk; drop the rest."""
        c, self._chunk = self._chunk, None
        if c is not None and c.used:
            self._advance(c.drive, c.used * c.dt)
            self._t += c.used * c.dt

    def end_loop(self) -> None:
        """A measurement loop is over: its samples account for the device's time.

        An emulator that fell behind the wall clock (a loaded machine at 3600x) has its next
        command arrive late; the real device would have run it at the loop's last sample, so the
        lag is not lived through by the cell at the loop's level (a strip past its cut-off).
        """
        self.finish()
        self._t = max(self._t, self.clock.now())

    def sync(self) -> None:
        self.finish()
        now = self.clock.now()
        if now > self._t:
            self._advance(self.drive(), now - self._t)
            self._t = now

    def spectrum(self, frequencies_Hz: FloatArray) -> ComplexArray:
        return self.cell.impedance(frequencies_Hz)

    def reading(self, vartype: str, value: float) -> tuple[float, pk.Meta]:
        """A measured value as reported: clipped at overload, with status and range index."""
        if vartype in ("ba", "cc"):
            meta = pk.choose_range(self.current_ranges, value, self.windows["ba"])
            if meta.status == pk.STATUS_OVERLOAD and math.isfinite(value):
                value = math.copysign(self.current_ranges[meta.range_index], value)
            return value, meta
        # [U] potentials above 1 V are reported on the 1 V range; overload only past compliance
        meta = pk.choose_range(pk.POTENTIAL_RANGES_ES4, min(abs(value), 1.0), self.windows["ab"])
        if not abs(value) <= COMPLIANCE_V:
            return math.copysign(COMPLIANCE_V, value), pk.Meta(pk.STATUS_OVERLOAD, meta.range_index)
        return value, meta

    def short(self, resistance_ohm: float | None) -> None:
        self.sync()
        self.cell = self.healthy if resistance_ohm is None else ShortedCell(self.healthy, resistance_ohm)
        self._generation += 1

    def _respond(self, drive: Drive, t: FloatArray) -> tuple[FloatArray, FloatArray]:
        kind, level = drive
        if kind == "E":
            return np.full(t.shape, level), self.cell.current_at_voltage(level, t)
        return self.cell.voltage_at_current(level, t), np.full(t.shape, level)

    def _advance(self, drive: Drive, duration_s: float) -> None:
        kind, level = drive
        if kind == "E":
            self.cell.advance_at_voltage(level, duration_s)
        else:
            self.cell.advance_at_current(level, duration_s)
