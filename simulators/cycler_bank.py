"""The channels of an emulated battery cycler: one simulated cell and one output stage each, all on
one clock, with the faults a cycler's channel can have.

A cycler channel is an SMU's output stage in this respect (`smu_output.Terminals`): it forces a
current with a voltage clamp, or a voltage with a current clamp, or it rests (open circuit). What
a cycler adds is its own safety limits, checked on every advance, which end the channel's test
(output off, a reason in the cycler's words), and counters of charge and energy since the step
began. The wire-level emulators (Maccor, Neware, Arbin) speak their protocols on top of this.

Time is real time x `speed` (an `AcceleratedClock`), one clock for all channels, as in a real
cycler whose channels run side by side.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

from cyclerd.drivers.clock import AcceleratedClock
from cyclerd.simulators.cell import CellModel
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import Faults
from cyclerd.simulators.smu_output import Drive, Load, OpenLoad, ShortedLoad, Terminals

REST = Drive(True, 0.0, math.inf)  # open circuit: no current, the voltage is the cell's own


@dataclass
class ChannelFaults:
    """Faults of one channel, injected at runtime from any thread."""

    short_cell: bool = False  # a near-zero resistance across the cell: the voltage collapses
    short_ohm: float = 0.01
    open_circuit: bool = False  # the cell is disconnected from the channel's leads
    trip: str | None = None  # the channel trips its own safety with this reason at its next advance


@dataclass(frozen=True)
class ChannelLimits:
    """The safety limits a host sets on a cycler channel before its output goes on; None: unset."""

    voltage_max_V: float | None = None
    voltage_min_V: float | None = None
    current_max_A: float | None = None  # |I|


@dataclass
class BankChannel:
    """One channel: its cell, output stage, limits, counters and faults."""

    number: int  # from 1
    cell: CellModel
    clock: AcceleratedClock
    drive: Drive = REST
    on: bool = False  # the output is on (a step runs); off: the cell rests, open circuit
    limits: ChannelLimits = field(default_factory=ChannelLimits)
    faults: ChannelFaults = field(default_factory=ChannelFaults)
    tripped: str | None = None  # why the channel's own safety ended its test; cleared by the next start
    step_start_s: float = 0.0
    charge_As: float = 0.0  # since the step began, signed (positive charges the cell)
    energy_J: float = 0.0
    terminals: Terminals = field(default_factory=Terminals)
    _last: tuple[float, float] = (0.0, 0.0)  # voltage and current at the last advance
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def __post_init__(self) -> None:
        self.terminals.t_s = self.clock.now()
        self.step_start_s = self.terminals.t_s

    def load(self) -> Load:
        if self.faults.open_circuit:
            return OpenLoad(self.cell)
        return ShortedLoad(self.cell, self.faults.short_ohm) if self.faults.short_cell else self.cell

    def sync(self) -> None:
        """Bring the cell to the clock's present time, counting charge and energy, and apply the
        channel's safety: a limit crossed (or an injected trip) turns the output off."""
        with self._lock:
            now = self.clock.now()
            drive = self.drive if self.on else REST
            before_v, before_i = self._last
            elapsed = now - self.terminals.t_s
            if elapsed > 0:
                self.terminals.advance_to(now, drive, self.load())
            v, i, _ = self.terminals.measure(drive, self.load())
            if elapsed > 0 and self.on:
                self.charge_As += 0.5 * (before_i + i) * elapsed
                self.energy_J += 0.5 * (before_v * before_i + v * i) * elapsed
            self._last = (v, i)
            if self.on and (reason := self._safety(v, i)) is not None:
                self.tripped, self.on, self.drive = reason, False, REST
                self._last = self.terminals.measure(REST, self.load())[:2]

    def _safety(self, v: float, i: float) -> str | None:
        if (reason := self.faults.trip) is not None:
            self.faults.trip = None
            return reason
        limits = self.limits
        if limits.voltage_max_V is not None and v > limits.voltage_max_V:
            return f"voltage {v:.4f} V above the safety limit {limits.voltage_max_V:g} V"
        if limits.voltage_min_V is not None and v < limits.voltage_min_V:
            return f"voltage {v:.4f} V below the safety limit {limits.voltage_min_V:g} V"
        if limits.current_max_A is not None and abs(i) > limits.current_max_A * 1.001:
            return f"current {i:.6g} A beyond the safety limit {limits.current_max_A:g} A"
        return None

    def reading(self) -> tuple[float, float]:
        """Voltage and current now (after `sync`)."""
        with self._lock:
            self.sync()
            return self._last

    def start(self, drive: Drive) -> None:
        """A new step: the output on with `drive`, counters and step time from zero."""
        with self._lock:
            self.sync()
            self.drive, self.on, self.tripped = drive, True, None
            self.step_start_s, self.charge_As, self.energy_J = self.clock.now(), 0.0, 0.0
            self._last = self.terminals.measure(drive, self.load())[:2]

    def rest(self) -> None:
        """Output off: the cell rests at open circuit (a channel stopped, or a rest step)."""
        with self._lock:
            self.sync()
            self.drive, self.on = REST, False
            self._last = self.terminals.measure(REST, self.load())[:2]

    @property
    def step_time_s(self) -> float:
        return self.clock.now() - self.step_start_s


class CyclerBank:
    """`channels` channels, each a `preset` cell (seed, seed + 1, ...), on one clock; transport
    faults (`faults`: delay, garbled replies, dropped connections) are the cycler's, channel faults
    each channel's own."""

    def __init__(self, preset: str, channels: int, seed: int = 0, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("an emulated cycler runs on accelerated real time: speed must be more than 0")
        if channels < 1:
            raise ValueError("a cycler has at least one channel")
        self.clock = AcceleratedClock(speed)
        self.preset = preset
        self.faults = Faults(now=self.clock.now)
        self.channels = [
            BankChannel(n + 1, make_cell(preset, seed=seed + n), self.clock) for n in range(channels)
        ]

    def channel(self, number: int) -> BankChannel:
        """Channel `number` (from 1); IndexError when the cycler has no such channel."""
        if not 1 <= number <= len(self.channels):
            raise IndexError(f"no channel {number}: this cycler has channels 1 to {len(self.channels)}")
        return self.channels[number - 1]
