"""A cell whose answers are known in closed form (a capacitor behind a resistor), for engine tests.

Not a stand-in for the physical models: it exists so the runner's bookkeeping (charge, end
conditions, logging, interruptions, safety) can be checked against exact numbers.
"""

from __future__ import annotations

import numpy as np

from cyclerd.simulators.cell import ComplexArray, FloatArray


class LinearCell:
    """V = V0 + q/C + I·R (+ noise). Positive current charges it."""

    def __init__(
        self,
        v0: float = 3.0,
        capacitance_F: float = 1000.0,
        resistance_ohm: float = 10.0,
        noise_V: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.v0 = v0
        self.capacitance_F = capacitance_F
        self.resistance_ohm = resistance_ohm
        self.noise_V = noise_V
        self.charge_As = 0.0
        self.rng = np.random.default_rng(seed)

    @property
    def area_m2(self) -> float:
        return 1e-4

    def _noise(self, n: int) -> FloatArray:
        if self.noise_V == 0:
            return np.zeros(n)
        return self.rng.normal(0.0, self.noise_V, n)

    def voltage_at_current(self, current_A: float, t_s: FloatArray) -> FloatArray:
        q = self.charge_As + current_A * t_s
        return self.v0 + q / self.capacitance_F + current_A * self.resistance_ohm + self._noise(len(t_s))

    def advance_at_current(self, current_A: float, duration_s: float) -> None:
        self.charge_As += current_A * duration_s

    def current_at_voltage(self, voltage_V: float, t_s: FloatArray) -> FloatArray:
        tau = self.resistance_ohm * self.capacitance_F
        start = (voltage_V - self.v0 - self.charge_As / self.capacitance_F) / self.resistance_ohm
        return start * np.exp(-t_s / tau)

    def advance_at_voltage(self, voltage_V: float, duration_s: float) -> None:
        tau = self.resistance_ohm * self.capacitance_F
        start = (voltage_V - self.v0 - self.charge_As / self.capacitance_F) / self.resistance_ohm
        self.charge_As += start * tau * (1 - np.exp(-duration_s / tau))

    def impedance(self, frequencies_Hz: FloatArray) -> ComplexArray:
        omega = 2 * np.pi * frequencies_Hz
        return (self.resistance_ohm + 1 / (1j * omega * self.capacitance_F)).astype(np.complex128)
