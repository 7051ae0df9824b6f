"""Equivalent-circuit impedance of a solid-state half-cell: R_b + (R_SEI‖CPE) + (R_ct‖CPE) + W.

Each circuit element is its own function over an array of angular frequencies so that the
EIS fitting can recombine them; `circuit_impedance` is the circuit the simulators draw
(cell-physics.md §4(e)). Everything here is in cell ohms, not area-specific values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from cyclerd.simulators.cell import ComplexArray, FloatArray


def angular_frequency(frequencies_Hz: ArrayLike) -> FloatArray:
    """ω = 2πf, as a float array (the elements below take ω, analysers report f)."""
    return 2.0 * np.pi * np.asarray(frequencies_Hz, dtype=np.float64)


def resistor(omega: FloatArray, resistance_ohm: float) -> ComplexArray:
    """A frequency-independent resistance, broadcast to the shape of `omega`."""
    return np.full(np.shape(omega), resistance_ohm, dtype=np.complex128)


def inductor(omega: FloatArray, inductance_H: float) -> ComplexArray:
    """jωL: lead inductance, which bends the spectrum below the real axis at MHz."""
    return (1j * omega * inductance_H).astype(np.complex128)


def cpe(omega: FloatArray, q: float, alpha: float) -> ComplexArray:
    """Constant-phase element 1/(Q (jω)^α): a capacitor smeared by rough, uneven interfaces."""
    return (1.0 / (q * (1j * omega) ** alpha)).astype(np.complex128)


def parallel(z1: ComplexArray, z2: ComplexArray) -> ComplexArray:
    """z1‖z2. A zero branch shorts the pair (returns 0) instead of dividing 0 by 0."""
    total = z1 + z2
    safe = np.where(total == 0, 1.0, total)
    return np.where(total == 0, 0.0, z1 * z2 / safe).astype(np.complex128)


def r_parallel_cpe(omega: FloatArray, resistance_ohm: float, q: float, alpha: float) -> ComplexArray:
    """R‖CPE = R/(1 + R Q (jω)^α): one depressed semicircle of diameter R.

    Written in this closed form so that R = 0 (an arc that is not resolved) is exactly 0.
    """
    return (resistance_ohm / (1.0 + resistance_ohm * q * (1j * omega) ** alpha)).astype(np.complex128)


def warburg_semi_infinite(omega: FloatArray, sigma_ohm_per_sqrt_s: float) -> ComplexArray:
    """σ(1 − j)/√ω: the 45° diffusion tail at low frequency."""
    z: ComplexArray = (sigma_ohm_per_sqrt_s * (1.0 - 1j) / np.sqrt(omega)).astype(np.complex128)
    return z


def warburg_reservoir(omega: FloatArray, sigma_ohm_per_sqrt_s: float, capacitance_F: float) -> ComplexArray:
    """Diffusion into a finite Li reservoir of capacitance C (reflective finite-length Warburg).

    σ(1 − j)/√ω at high frequency, turning into the capacitor 1/(jωC) (plus σ²C·2/3) below
    ω ≈ 1/(2σ²C²): written as (1/(jωC))·s·coth(s) with s = √(jωτ), τ = 2σ²C², so σ = 0 is a
    plain capacitor and C = ∞ the semi-infinite Warburg. A Li-free (blocking) electrode is a
    small C; a plated one so large a C that the turn lies far below any measured frequency.
    """
    if math.isinf(capacitance_F):
        return warburg_semi_infinite(omega, sigma_ohm_per_sqrt_s)
    s = np.sqrt(1j * omega * 2.0 * sigma_ohm_per_sqrt_s**2 * capacitance_F**2)
    tiny = np.abs(s) < 1e-8
    s_coth = np.where(tiny, 1.0 + 0j, s / np.tanh(np.where(tiny, 1.0, s)))
    z: ComplexArray = (s_coth / (1j * omega * capacitance_F)).astype(np.complex128)
    return z


def warburg_finite(omega: FloatArray, resistance_ohm: float, tau_s: float) -> ComplexArray:
    """R_W tanh(√(jωτ))/√(jωτ): a Warburg that stays bounded (→ R_W) at low frequency."""
    s = np.sqrt(1j * omega * tau_s)
    z: ComplexArray = (resistance_ohm * np.tanh(s) / s).astype(np.complex128)
    return z


@dataclass(frozen=True)
class CircuitParams:
    """Cell-level values of the half-cell circuit (Ω, F·s^(α−1), Ω·s^-½, H).

    `shunt_ohm` is the short-circuit leakage in parallel with the whole cell (a Li filament
    through the separator): infinite for a healthy cell. `reservoir_F` is the Li reservoir the
    diffusion tail ends in (`warburg_reservoir`): infinite for plated Li, the double layer for a
    Li-free, blocking electrode.
    """

    r_b_ohm: float
    r_sei_ohm: float
    q_sei: float
    alpha_sei: float
    r_ct_ohm: float
    q_dl: float
    alpha_dl: float
    sigma_w_ohm_per_sqrt_s: float
    inductance_H: float = 0.0
    shunt_ohm: float = math.inf
    reservoir_F: float = math.inf

    @classmethod
    def from_areal(
        cls,
        area_m2: float,
        *,
        r_b_ohm_m2: float,
        r_sei_ohm_m2: float,
        q_sei_per_m2: float,
        alpha_sei: float,
        r_ct_ohm_m2: float,
        q_dl_per_m2: float,
        alpha_dl: float,
        sigma_w_ohm_m2_per_sqrt_s: float,
        inductance_H: float = 0.0,
        shunt_ohm_m2: float = math.inf,
    ) -> CircuitParams:
        """Scale area-specific values to one cell: resistances ÷ area, capacitances × area.

        The literature quotes Ω·cm² and F/cm²; 30 Ω·cm² on a 0.785 cm² pellet is 38 Ω.
        Characteristic frequencies do not change, since R·Q is area-independent.
        """
        return cls(
            r_b_ohm=r_b_ohm_m2 / area_m2,
            r_sei_ohm=r_sei_ohm_m2 / area_m2,
            q_sei=q_sei_per_m2 * area_m2,
            alpha_sei=alpha_sei,
            r_ct_ohm=r_ct_ohm_m2 / area_m2,
            q_dl=q_dl_per_m2 * area_m2,
            alpha_dl=alpha_dl,
            sigma_w_ohm_per_sqrt_s=sigma_w_ohm_m2_per_sqrt_s / area_m2,
            inductance_H=inductance_H,
            shunt_ohm=shunt_ohm_m2 / area_m2,
        )


def circuit_impedance(frequencies_Hz: ArrayLike, params: CircuitParams) -> ComplexArray:
    """Z(f) = [R_b + (R_SEI‖CPE_SEI) + (R_ct‖CPE_dl) + W(reservoir)] ‖ R_shunt + jωL (noise-free).

    The lead inductance sits outside the shunt: it belongs to the cables, not the cell.
    """
    omega = angular_frequency(frequencies_Hz)
    z = (
        resistor(omega, params.r_b_ohm)
        + r_parallel_cpe(omega, params.r_sei_ohm, params.q_sei, params.alpha_sei)
        + r_parallel_cpe(omega, params.r_ct_ohm, params.q_dl, params.alpha_dl)
        + warburg_reservoir(omega, params.sigma_w_ohm_per_sqrt_s, params.reservoir_F)
    )
    if math.isfinite(params.shunt_ohm):
        z = parallel(z, resistor(omega, params.shunt_ohm))
    if params.inductance_H:
        z = z + inductor(omega, params.inductance_H)
    return z


def characteristic_frequency_Hz(resistance_ohm: float, q: float, alpha: float) -> float:
    """Apex frequency of an R‖CPE arc, f_c = 1/(2π (R Q)^(1/α)); checks presets against §2.2."""
    return float(1.0 / (2.0 * np.pi * (resistance_ohm * q) ** (1.0 / alpha)))
