"""Spectra fitted per second: R0-p(R1,CPE1)-p(R2,CPE2)-W1 on 71 points, 1 MHz..0.1 Hz.

N noisy synthetic spectra (seeded; values scattered around the simulated MgAgSn-PVDF cell,
noise 0.1 % of |Z| as the simulator's) are fitted with `cyclerd.analysis.eisfit.fit_spectrum`.
If impedance.py is importable, the same spectra are fitted with its `CustomCircuit.fit` from the
same initial guesses and the same 1/|Z| weighting, and the speed ratio and the largest relative
difference of fitted values are printed. Run: .venv/bin/python bench/eis_fit.py [N]
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from cyclerd.analysis.circuits import Circuit
from cyclerd.analysis.eisfit import FitFailed, fit_spectrum, initial_guess

CIRCUIT = "R0-p(R1,CPE1)-p(R2,CPE2)-W1"
TYPICAL = {  # Ω, F·s^(α-1), Ω·s^-½: a 0.785 cm² MgAgSn-PVDF half-cell
    "R0": 38.0, "R1": 20.0, "CPE1_Q": 8e-7, "CPE1_alpha": 0.85,
    "R2": 15.0, "CPE2_Q": 1.5e-5, "CPE2_alpha": 0.85, "W1_sigma": 6.4,
}  # fmt: skip
FREQUENCY_HZ = np.logspace(6, -1, 71)


def spectra(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Truths (n, P) scattered ±30 % (α ±0.05) and their noisy spectra (n, 71)."""
    rng = np.random.default_rng(seed)
    circuit = Circuit(CIRCUIT)
    typical = circuit.vector(TYPICAL)
    truth = typical * rng.uniform(0.7, 1.3, size=(n, typical.size))
    alphas = [circuit.names.index("CPE1_alpha"), circuit.names.index("CPE2_alpha")]
    truth[:, alphas] = rng.uniform(0.8, 0.9, size=(n, 2))
    z = circuit(2 * np.pi * FREQUENCY_HZ, truth)
    noise = rng.normal(size=z.shape) + 1j * rng.normal(size=z.shape)
    return truth, z + 1e-3 * np.abs(z) * noise


def fit_ours(z: np.ndarray, guesses: list[dict[str, float]]) -> tuple[float, np.ndarray, np.ndarray]:
    values = np.full((len(z), len(guesses[0])), np.nan)
    stderr = values.copy()
    start = time.perf_counter()
    for k, (zk, guess) in enumerate(zip(z, guesses, strict=True)):
        try:
            fit = fit_spectrum(FREQUENCY_HZ, zk, CIRCUIT, initial=guess)
        except FitFailed:
            continue
        values[k], stderr[k] = fit.values, fit.stderr
    return time.perf_counter() - start, values, stderr


def weighted_ssr(values: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The objective both programs minimise: Σ |Z_fit − Z|² / |Z|² per spectrum."""
    residual = (Circuit(CIRCUIT)(2 * np.pi * FREQUENCY_HZ, values) - z) / np.abs(z)
    ssr: np.ndarray = np.sum(residual.real**2 + residual.imag**2, axis=-1)
    return ssr


def fit_impedance_py(z: np.ndarray, guesses: list[dict[str, float]]) -> tuple[float, np.ndarray]:
    from impedance.models.circuits import CustomCircuit  # type: ignore[import-not-found,unused-ignore]

    values = np.full((len(z), len(guesses[0])), np.nan)
    start = time.perf_counter()
    for k, (zk, guess) in enumerate(zip(z, guesses, strict=True)):
        model = CustomCircuit(CIRCUIT, initial_guess=list(guess.values()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model.fit(FREQUENCY_HZ, zk, weight_by_modulus=True)
            except (RuntimeError, ValueError):
                continue
        values[k] = model.parameters_
    return time.perf_counter() - start, values


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    truth, z = spectra(n)
    names = Circuit(CIRCUIT).names
    guesses = [initial_guess(FREQUENCY_HZ, zk, CIRCUIT) for zk in z]
    fit_ours(z[:3], guesses[:3])  # warm-up: imports, first calls
    ours_s, ours, stderr = fit_ours(z, guesses)
    ok = np.all(np.isfinite(ours), axis=1)
    print(f"{n} spectra, {FREQUENCY_HZ.size} points, {CIRCUIT}")
    print(
        f"cyclerd      : {n / ours_s:8.1f} spectra/s ({1e3 * ours_s / n:.2f} ms each), {n - ok.sum()} failed"
    )
    error = np.abs(ours[ok] - truth[ok]) / truth[ok]
    pulls = np.abs(ours[ok] - truth[ok]) / stderr[ok]
    print(
        f"               vs truth: median relative error {np.median(error):.1e}, largest {error.max():.1e}; "
        f"{np.mean(pulls < 3):.1%} of values within 3 standard errors"
    )
    try:
        import impedance  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        print("impedance.py: not installed (pip install impedance) - no comparison")
        return
    fit_impedance_py(z[:3], guesses[:3])
    theirs_s, theirs = fit_impedance_py(z, guesses)
    both = ok & np.all(np.isfinite(theirs), axis=1)
    print(f"impedance.py : {n / theirs_s:8.1f} spectra/s ({1e3 * theirs_s / n:.2f} ms each), "
          f"{n - np.all(np.isfinite(theirs), axis=1).sum()} failed")  # fmt: skip
    print(f"speed ratio cyclerd / impedance.py: {theirs_s / ours_s:.1f}x")
    diff = np.abs(ours[both] - theirs[both]) / np.abs(theirs[both])
    worst = np.unravel_index(np.argmax(diff), diff.shape)
    print(
        f"fitted values, {both.sum()} spectra fitted by both: median relative difference "
        f"{np.median(diff):.1e}, largest {diff.max():.1e} ({names[worst[1]]}); largest difference "
        f"in our standard errors {np.max(np.abs(ours[both] - theirs[both]) / stderr[both]):.2f}"
    )
    ssr_ours, ssr_theirs = weighted_ssr(ours[both], z[both]), weighted_ssr(theirs[both], z[both])
    not_worse = np.sum(ssr_ours <= ssr_theirs * (1 + 1e-9))
    print(
        f"weighted SSR: cyclerd lower or equal (within 1e-9) in {not_worse} of {both.sum()} spectra; "
        f"largest SSR ratio cyclerd / impedance.py {np.max(ssr_ours / ssr_theirs):.6f}"
    )


if __name__ == "__main__":
    main()
