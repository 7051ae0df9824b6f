"""Fit an equivalent circuit to one impedance spectrum: values, standard errors, goodness of fit.

Weighted least squares over the real and imaginary parts, solved in log-parameter space so that
values from 1e-9 F to 1e6 Ω are equally well conditioned and stay positive, with the circuit's
analytic Jacobian. A fit whose parameters the spectrum does not determine raises `FitFailed`
rather than returning numbers nobody can stand behind.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import least_squares
from scipy.signal import find_peaks

from cyclerd.analysis.circuits import (
    Circuit,
    ComplexArray,
    Element,
    FloatArray,
    OmegaGrid,
    Parallel,
    Series,
    compile_circuit,
    elements,
)

Weighting = Literal["modulus", "unit", "proportional"]
WEIGHTINGS: tuple[Weighting, ...] = ("modulus", "unit", "proportional")

# Default search ranges by parameter kind (an element code or a parameter suffix), SI units.
DEFAULT_BOUNDS: Mapping[str, tuple[float, float]] = MappingProxyType({
    "R": (1e-9, 1e12), "C": (1e-15, 1e3), "L": (1e-15, 1e2), "Q": (1e-15, 1e3),
    "alpha": (0.1, 1.0), "sigma": (1e-9, 1e12), "tau": (1e-12, 1e9),
})  # fmt: skip
# A parameter known to no better than ±100 % is not determined by the spectrum.
MAX_RELATIVE_STDERR = 1.0
# Singular values of the (log-space, weighted) Jacobian below this fraction of the largest mean
# that some combination of parameters leaves the residuals unchanged: the covariance is singular.
SINGULAR_RCOND = 1e-10
ALPHA_GUESS = 0.85  # CPE exponent of rough solid-solid interfaces
_WS_PEAK = 2.53  # ωτ at the apex of a finite-length Warburg's −Z''


class FitFailed(RuntimeError):
    """The fit did not converge, or the spectrum does not determine the circuit's parameters."""


class FitInputError(ValueError):
    """Arrays, weighting, initial values or bounds that a fit cannot start from."""


@dataclass(frozen=True, eq=False)
class FitResult:
    """Fitted parameters (SI units, `names` order) with 1σ standard errors from the Jacobian.

    `chi2_reduced` is the weighted sum of squared residuals per degree of freedom (2N − P);
    `residual_rms_rel` is the RMS over frequencies of |Z_fit − Z| / |Z|.
    """

    circuit: Circuit
    names: tuple[str, ...]
    values: FloatArray
    stderr: FloatArray
    covariance: FloatArray
    chi2_reduced: float
    residual_rms_rel: float
    dof: int
    weighting: Weighting

    def predict(self, frequency_Hz: ArrayLike) -> ComplexArray:
        return self.circuit(2.0 * np.pi * np.asarray(frequency_Hz, dtype=np.float64), self.values)

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            known = ", ".join(self.names)
            raise KeyError(f"{self.circuit.text} has no parameter {name!r}; it has {known}") from None

    def __getitem__(self, name: str) -> float:
        return float(self.values[self._index(name)])

    def uncertainty(self, name: str) -> float:
        return float(self.stderr[self._index(name)])

    def as_dict(self) -> dict[str, float]:
        return {name: float(value) for name, value in zip(self.names, self.values, strict=True)}


def _spectrum(frequency_Hz: ArrayLike, impedance_ohm: ArrayLike) -> tuple[FloatArray, ComplexArray]:
    f = np.asarray(frequency_Hz, dtype=np.float64)
    z = np.asarray(impedance_ohm, dtype=np.complex128)
    if f.ndim != 1 or f.shape != z.shape or f.size < 2:
        raise FitInputError(
            f"a spectrum is two 1-D arrays of the same length (≥ 2): got frequencies of shape {f.shape} "
            f"and impedances of shape {z.shape}"
        )
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(z))):
        raise FitInputError("the spectrum has NaN or infinite values; drop those points before fitting")
    if np.any(f <= 0):
        raise FitInputError(f"frequencies must be positive; the spectrum has {f.min()} Hz")
    if np.any(z == 0):
        raise FitInputError(f"|Z| = 0 at {f[z == 0][0]} Hz: an open or shorted lead? drop that point")
    return f, z


def high_frequency_intercept(frequency_Hz: ArrayLike, impedance_ohm: ArrayLike) -> float:
    """R_b: where the spectrum meets the real axis at high frequency (−Z'' crossing zero).

    Lead inductance puts the highest frequencies below the axis; the crossing is interpolated
    linearly between the two points around it. Without a crossing, the real part at the
    highest frequency is the best estimate.
    """
    f, z = _spectrum(frequency_Hz, impedance_ohm)
    order = np.argsort(-f)
    re, minus_im = z.real[order], -z.imag[order]
    if minus_im[0] <= 0:
        above = np.flatnonzero(minus_im > 0)
        if above.size:
            k = int(above[0])
            a, b = minus_im[k - 1], minus_im[k]
            return float(re[k - 1] + (re[k] - re[k - 1]) * (0.0 - a) / (b - a))
    return float(re[0])


@dataclass(frozen=True)
class _Arc:
    r_ohm: float
    omega: float  # apex angular frequency


def _detect_arcs(omega: FloatArray, z: ComplexArray, r_b: float) -> list[_Arc]:
    """Interior maxima of −Z'' (high frequency first); each arc spans to the next minimum."""
    minus_im = -z.imag
    prominence = 0.05 * max(float(minus_im.max()), 1e-300)  # noise bumps are not arcs
    peaks, _ = find_peaks(minus_im, prominence=prominence)
    arcs, left = [], r_b
    for k, i in enumerate(peaks.tolist()):
        stop = int(peaks[k + 1]) if k + 1 < len(peaks) else len(z) - 1
        right = i + int(np.argmin(minus_im[i : stop + 1]))
        width = float(z.real[right]) - left
        from_height = 2.0 * float(minus_im[i]) / math.tan(ALPHA_GUESS * math.pi / 4)
        arcs.append(_Arc(width if width > 0 else from_height, float(omega[i])))
        left = float(z.real[right])
    return arcs


def initial_guess(
    frequency_Hz: ArrayLike, impedance_ohm: ArrayLike, circuit: str | Circuit
) -> dict[str, float]:
    """Starting values read off the spectrum, so that fits converge without user input.

    R0 (the first series resistor) is the high-frequency intercept; each top-level p(...)
    block takes one arc of −Z'' in circuit order from high to low frequency: its resistors
    the arc's width, its capacitances the apex frequency (R Q ω^α = 1, α = 0.85); Warburg
    elements take the low-frequency tail, inductors the positive Z'' at the highest frequency.
    """
    f, z = _spectrum(frequency_Hz, impedance_ohm)
    model = compile_circuit(circuit)
    order = np.argsort(-f)
    omega, z = 2.0 * np.pi * f[order], z[order]
    r_b = max(high_frequency_intercept(f[order], z), 1e-3 * float(np.abs(z).min()))
    top = model.tree.parts if isinstance(model.tree, Series) else (model.tree,)
    blocks = [node for node in top if isinstance(node, Parallel)]
    arcs = _detect_arcs(omega, z, r_b)
    if not arcs:
        apex = int(np.argmax(-z.imag))
        arcs = [_Arc(max(float(z.real[-1]) - r_b, 0.1 * float(np.abs(z[-1]))), float(omega[apex]))]
    while len(arcs) < len(blocks):  # split the widest arc: overlapping arcs look like one
        k = max(range(len(arcs)), key=lambda i: arcs[i].r_ohm)
        arc = arcs[k]
        arcs[k : k + 1] = [_Arc(arc.r_ohm / 2, arc.omega * 3), _Arc(arc.r_ohm / 2, arc.omega / 3)]
    leftover = arcs[len(blocks) :]
    tail = _Tail(omega, z, r_b, sum(a.r_ohm for a in arcs[: len(blocks)]), leftover)
    guess: dict[str, float] = {}
    for block, arc in zip(blocks, arcs, strict=False):
        for element in elements(block):
            guess.update(_in_arc(element, arc, tail))
    resistors = 0
    for node in top:
        if isinstance(node, Element):
            guess.update(_in_series(node, tail, first_resistor=resistors == 0))
            resistors += node.code == "R"
    return {name: max(guess[name], 1e-300) for name in model.names}


class _Tail:
    """What the low- and high-frequency ends of the spectrum say about series elements."""

    def __init__(self, omega: FloatArray, z: ComplexArray, r_b: float, r_arcs: float, leftover: list[_Arc]):
        self.omega_min, self.omega_max = float(omega[-1]), float(omega[0])
        floor = 1e-3 * float(np.abs(z[-1]))
        self.minus_im_low = max(float(-z.imag[-1]), floor)
        self.excess = float(z.real[-1]) - r_b - r_arcs  # real part the arcs do not explain
        self.im_high = float(z.imag[0])
        self.r_b, self.leftover = r_b, leftover
        self.sigma = self.minus_im_low * math.sqrt(self.omega_min)


def _in_arc(element: Element, arc: _Arc, tail: _Tail) -> dict[str, float]:
    r, w, name = arc.r_ohm, arc.omega, element.name
    match element.code:
        case "R":
            return {name: r}
        case "C":
            return {name: 1.0 / (r * w)}
        case "CPE":
            return {f"{name}_Q": 1.0 / (r * w**ALPHA_GUESS), f"{name}_alpha": ALPHA_GUESS}
        case "L":
            return {name: r / w}
        case "W":
            return {f"{name}_sigma": tail.sigma}
        case _:  # Wo, Ws
            return {f"{name}_R": r, f"{name}_tau": 1.0 / w}


def _in_series(element: Element, tail: _Tail, first_resistor: bool) -> dict[str, float]:
    name, w_lo = element.name, tail.omega_min
    match element.code:
        case "R":
            return {name: tail.r_b if first_resistor else 0.1 * tail.r_b}
        case "C":
            return {name: 1.0 / (w_lo * tail.minus_im_low)}
        case "CPE":
            q = math.sin(ALPHA_GUESS * math.pi / 2) / (w_lo**ALPHA_GUESS * tail.minus_im_low)
            return {f"{name}_Q": q, f"{name}_alpha": ALPHA_GUESS}
        case "L":
            positive = tail.im_high if tail.im_high > 0 else 1e-3 * tail.r_b
            return {name: positive / tail.omega_max}
        case "W":
            return {f"{name}_sigma": tail.sigma}
        case "Wo":  # low-frequency limit R/(jωτ) + R/3
            r = 3 * tail.excess if tail.excess > 0 else tail.r_b
            return {f"{name}_R": r, f"{name}_tau": r / (w_lo * tail.minus_im_low)}
        case _:  # Ws: bounded, → R at low frequency, −Z'' apex at ωτ ≈ 2.53
            if tail.leftover:
                arc = tail.leftover[0]
                return {f"{name}_R": arc.r_ohm, f"{name}_tau": _WS_PEAK / arc.omega}
            r = tail.excess if tail.excess > 0 else 0.1 * tail.r_b
            return {f"{name}_R": r, f"{name}_tau": 1.0 / w_lo}


def _weights(z: ComplexArray, weighting: str) -> tuple[FloatArray, FloatArray]:
    """1/|Z| (modulus), 1 (unit), or 1/|Z'| and 1/|Z''| (proportional, floored at 1e-6 |Z|)."""
    modulus = np.abs(z)
    if weighting == "modulus":
        return 1.0 / modulus, 1.0 / modulus
    if weighting == "unit":
        return np.ones_like(modulus), np.ones_like(modulus)
    if weighting == "proportional":
        floor = 1e-6 * modulus
        return 1.0 / np.maximum(np.abs(z.real), floor), 1.0 / np.maximum(np.abs(z.imag), floor)
    raise FitInputError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def _bounds(
    model: Circuit, bounds: Mapping[str, tuple[float, float]] | None
) -> tuple[FloatArray, FloatArray]:
    lower = np.array([DEFAULT_BOUNDS[kind][0] for _, kind in model.kinds])
    upper = np.array([DEFAULT_BOUNDS[kind][1] for _, kind in model.kinds])
    for name, (low, high) in (bounds or {}).items():
        if name not in model.names:
            raise FitInputError(f"bounds for {name!r}: {model.text} has parameters {', '.join(model.names)}")
        if not 0 <= low < high:
            raise FitInputError(
                f"bounds for {name}: need 0 ≤ low < high (parameters are fitted as logarithms), "
                f"got ({low}, {high})"
            )
        k = model.names.index(name)
        lower[k], upper[k] = max(low, 1e-300), high
    return lower, upper


def fit_spectrum(
    frequency_Hz: ArrayLike,
    impedance_ohm: ArrayLike,
    circuit: str | Circuit,
    initial: Mapping[str, float] | None = None,
    bounds: Mapping[str, tuple[float, float]] | None = None,
    weighting: Weighting = "modulus",
) -> FitResult:
    """Fit `circuit` to one spectrum. `initial` and `bounds` may name only some parameters
    (the rest come from `initial_guess` and `DEFAULT_BOUNDS`); values are SI (Ω, F, H, s)."""
    f, z = _spectrum(frequency_Hz, impedance_ohm)
    model = compile_circuit(circuit)
    n_obs, n_par = 2 * f.size, len(model.names)
    if n_obs <= n_par:
        raise FitFailed(
            f"{model.text} has {n_par} parameters but the spectrum only {f.size} points "
            f"({n_obs} numbers): measure more frequencies or fit a smaller circuit"
        )
    w_re, w_im = _weights(z, weighting)
    lower, upper = _bounds(model, bounds)
    guess = initial_guess(f, z, model)
    for name, value in (initial or {}).items():
        if name not in model.names or not value > 0:
            raise FitInputError(
                f"initial value {name}={value}: need a positive value for one of {', '.join(model.names)}"
            )
        guess[name] = float(value)
    p0 = np.clip(model.vector(guess), lower, upper)
    grid = OmegaGrid(2.0 * np.pi * f)
    target = np.concatenate([w_re * z.real, w_im * z.imag])
    cache: dict[str, Any] = {}

    def residuals(x: FloatArray) -> FloatArray:
        p = np.exp(x)
        zm, dz = model.jacobian(grid, p)
        dz *= p[:, None]  # ∂Z/∂ln p
        cache["x"], cache["jac"] = x.copy(), np.hstack([w_re * dz.real, w_im * dz.imag]).T
        out: FloatArray = np.concatenate([w_re * zm.real, w_im * zm.imag]) - target
        return out

    def jacobian(x: FloatArray) -> FloatArray:
        if "x" not in cache or not np.array_equal(cache["x"], x):
            residuals(x)
        jac: FloatArray = cache["jac"]
        return jac

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        solution = least_squares(
            residuals, np.log(p0), jac=jacobian, bounds=(np.log(lower), np.log(upper)),
            method="trf", max_nfev=30 * (n_par + 1), ftol=1e-10, xtol=1e-10, gtol=1e-10,
        )  # fmt: skip
    if not solution.success or not np.all(np.isfinite(solution.fun)):
        raise FitFailed(
            f"{model.text}: the fit did not converge ({solution.message}); give initial values "
            "closer to the spectrum or a circuit with fewer elements"
        )
    return _result(model, solution, z, grid, weighting, n_obs - n_par, upper)


def _result(
    model: Circuit,
    solution: Any,
    z: ComplexArray,
    grid: OmegaGrid,
    weighting: Weighting,
    dof: int,
    upper: FloatArray,
) -> FitResult:
    """Covariance s²(JᵀJ)⁻¹ in log space, mapped to values by σ_p = p σ_ln p (exact at first order)."""
    values = np.exp(solution.x)
    names = model.names
    at_bound = solution.active_mask != 0
    # α = 1 is a legitimate answer (an ideal capacitor), not a sign of an undetermined parameter.
    ideal = np.array([kind == "alpha" for _, kind in model.kinds]) & (values >= upper * (1 - 1e-9))
    pinned = [names[k] for k in np.flatnonzero(at_bound & ~ideal)]
    if pinned:
        raise FitFailed(
            f"{model.text}: {', '.join(pinned)} ran into the search bounds, so the spectrum does not "
            "determine it: drop that element, or widen its bounds"
        )
    chi2 = float(solution.fun @ solution.fun) / dof
    _, singular, vt = np.linalg.svd(solution.jac, full_matrices=False)
    if not singular[-1] > SINGULAR_RCOND * singular[0]:
        null = np.abs(vt[-1])
        involved = [names[k] for k in np.argsort(-null)[:2] if null[k] > 0.1]
        raise FitFailed(
            f"{model.text}: the covariance is singular, the spectrum cannot tell apart "
            f"{' and '.join(involved)}; drop an element or measure a wider frequency range"
        )
    cov_log = (vt.T / singular**2) @ vt * chi2
    rel = np.sqrt(np.diag(cov_log))
    vague = [names[k] for k in range(len(names)) if not rel[k] <= MAX_RELATIVE_STDERR]
    if vague:
        raise FitFailed(
            f"{model.text}: {', '.join(vague)} not determined (standard error over "
            f"{MAX_RELATIVE_STDERR:.0%} of the value); drop that element or measure a wider frequency range"
        )
    z_fit = model(grid, values)
    residual_rms_rel = float(np.sqrt(np.mean(np.abs(z_fit - z) ** 2 / np.abs(z) ** 2)))
    return FitResult(
        circuit=model,
        names=names,
        values=values,
        stderr=values * rel,
        covariance=cov_log * np.outer(values, values),
        chi2_reduced=chi2,
        residual_rms_rel=residual_rms_rel,
        dof=dof,
        weighting=weighting,
    )
