"""Trends of fitted impedance over a run: R_b, R_SEI and R_CT of every stored spectrum.

Each spectrum is fitted with a circuit without and one with an SEI arc (the simulators' and the
paper's R_b + (R_SEI‖CPE) + (R_CT‖CPE) + W); the SEI arc is kept only when it is statistically
justified: an extra-sum-of-squares F-test on the two nested fits at `SIGNIFICANCE`, and every
parameter of the larger fit determined (`eisfit` refuses it otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from cyclerd.analysis.circuits import (
    Circuit,
    Element,
    FloatArray,
    Parallel,
    Series,
    compile_circuit,
    elements,
    render,
)
from cyclerd.analysis.eisfit import (
    FitFailed,
    FitInputError,
    FitResult,
    fit_spectrum,
    high_frequency_intercept,
)
from cyclerd.store.database import Store

NO_SEI = "R0-p(R1,CPE1)-W1"
WITH_SEI = "R0-p(R1,CPE1)-p(R2,CPE2)-W1"
SIGNIFICANCE = 1e-3  # the SEI arc must explain the spectrum better than chance at p < 0.001
_NOT_DRIVEN = ("rest", "eis")  # steps during which a spectrum is "at rest", not plate/strip

IntArray = NDArray[np.int64]
StrArray = NDArray[np.str_]


class TrendCircuitError(ValueError):
    """Circuits that do not read as R_b plus arcs (R‖CPE), one arc more with the SEI."""


@dataclass(frozen=True)
class _Layout:
    """Where R_b and the arcs sit in a circuit: the names of their parameters."""

    r_b: str
    arcs: tuple[tuple[str, str, str | None], ...]  # (R, Q or C, alpha or None) per p(R,CPE) block

    @classmethod
    def of(cls, circuit: Circuit) -> _Layout:
        top = circuit.tree.parts if isinstance(circuit.tree, Series) else (circuit.tree,)
        resistors = [n for n in top if isinstance(n, Element) and n.code == "R"]
        arcs: list[tuple[str, str, str | None]] = []
        for block in (n for n in top if isinstance(n, Parallel)):
            parts = sorted(elements(block), key=lambda e: e.code)
            if [e.code for e in parts] not in (["CPE", "R"], ["C", "R"]):
                raise TrendCircuitError(
                    f"{circuit.text}: the arc {render(block)} is not p(R,CPE) or p(R,C); "
                    "write arcs as p(R1,CPE1)"
                )
            cap, r = parts
            if cap.code == "CPE":
                arcs.append((r.name, f"{cap.name}_Q", f"{cap.name}_alpha"))
            else:
                arcs.append((r.name, cap.name, None))
        if not resistors or not arcs:
            raise TrendCircuitError(
                f"{circuit.text}: a trend circuit needs a series resistor (R_b) and at least one arc, "
                "e.g. R0-p(R1,CPE1)-W1"
            )
        return cls(resistors[0].name, tuple(arcs))

    def resistances(self, fit: FitResult) -> tuple[tuple[float, float], list[tuple[float, float]]]:
        """(R_b, σ) and the arcs' (R, σ) from high to low characteristic frequency."""

        def apex_Hz(arc: tuple[str, str, str | None]) -> float:
            alpha = fit[arc[2]] if arc[2] else 1.0
            return 1.0 / (2 * math.pi * float((fit[arc[0]] * fit[arc[1]]) ** (1.0 / alpha)))

        ordered = sorted(self.arcs, key=apex_Hz, reverse=True)
        r_b = (fit[self.r_b], fit.uncertainty(self.r_b))
        return r_b, [(fit[r], fit.uncertainty(r)) for r, _, _ in ordered]


@dataclass(frozen=True)
class ModelChoice:
    """The circuit kept for one spectrum and why; `fit` is None when neither circuit fitted."""

    fit: FitResult | None
    with_sei: bool
    p_value: float  # F-test of the SEI arc; NaN when either fit failed
    note: str
    r_b: tuple[float, float] = (math.nan, math.nan)  # (value, standard error), Ω
    r_sei: tuple[float, float] = (math.nan, math.nan)
    r_ct: tuple[float, float] = (math.nan, math.nan)


def _f_test(small: FitResult, large: FitResult) -> tuple[float, float]:
    """Extra-sum-of-squares F and its p-value for the nested pair (small ⊂ large)."""
    ssr_small, ssr_large = small.chi2_reduced * small.dof, large.chi2_reduced * large.dof
    extra = small.dof - large.dof
    if ssr_large <= 0 or ssr_large >= ssr_small:
        return 0.0, 1.0
    f_value = ((ssr_small - ssr_large) / extra) / (ssr_large / large.dof)
    return float(f_value), float(stats.f.sf(f_value, extra, large.dof))


def choose_circuit(
    frequency_Hz: ArrayLike,
    impedance_ohm: ArrayLike,
    without: str | Circuit = NO_SEI,
    with_sei: str | Circuit = WITH_SEI,
    significance: float = SIGNIFICANCE,
) -> ModelChoice:
    """Fit both circuits and keep the SEI arc only if the F-test needs it (p < significance)."""
    small, large = compile_circuit(without), compile_circuit(with_sei)
    layouts = _layouts(small, large)
    fits: list[FitResult | str] = []
    for circuit in (small, large):
        try:
            fits.append(fit_spectrum(frequency_Hz, impedance_ohm, circuit))
        except FitFailed as exc:
            fits.append(str(exc))
    fit_small, fit_large = fits
    if isinstance(fit_small, str) and isinstance(fit_large, str):
        return ModelChoice(None, False, math.nan, f"no fit: {fit_small}; {fit_large}")
    if isinstance(fit_large, str):
        assert not isinstance(fit_small, str)
        return _chosen(fit_small, layouts[0], False, math.nan, f"kept {small.text}; {fit_large}")
    if isinstance(fit_small, str):
        return _chosen(fit_large, layouts[1], True, math.nan, f"kept {large.text}; {fit_small}")
    f_value, p_value = _f_test(fit_small, fit_large)
    keep = p_value < significance
    verdict = "needs" if keep else "does not need"
    note = f"the spectrum {verdict} the SEI arc (F = {f_value:.3g}, p = {p_value:.2g})"
    return _chosen(fit_large if keep else fit_small, layouts[int(keep)], keep, p_value, note)


def _layouts(small: Circuit, large: Circuit) -> tuple[_Layout, _Layout]:
    a, b = _Layout.of(small), _Layout.of(large)
    if len(b.arcs) != len(a.arcs) + 1 or len(b.arcs) > 2:
        raise TrendCircuitError(
            f"{small.text} and {large.text}: the SEI circuit must add exactly one arc to a circuit with "
            "one arc (R_CT), e.g. R0-p(R1,CPE1)-W1 and R0-p(R1,CPE1)-p(R2,CPE2)-W1"
        )
    return a, b


def _chosen(fit: FitResult, layout: _Layout, with_sei: bool, p_value: float, note: str) -> ModelChoice:
    r_b, arcs = layout.resistances(fit)
    r_sei = arcs[0] if len(arcs) == 2 else (math.nan, math.nan)
    return ModelChoice(fit, with_sei, p_value, note, r_b, r_sei, arcs[-1])


@dataclass(frozen=True, eq=False)
class EisTrends:
    """One row per spectrum, as columns. Resistances in Ω with their 1σ standard errors.

    `step_kind` is what the cell was doing when the spectrum interrupted it ("plate", "strip",
    ...) or "rest"; `step_sequence` counts spectra within that step (the paper's "plating
    sequence 1-6"). `circuit` is the circuit kept ("" when no fit), `note` says why.
    """

    sequence: IntArray
    t_s: FloatArray
    cycle: IntArray
    step: IntArray
    step_kind: StrArray
    step_label: StrArray
    step_sequence: IntArray
    R_b_intercept_ohm: FloatArray
    R_b_ohm: FloatArray
    R_b_stderr_ohm: FloatArray
    R_SEI_ohm: FloatArray
    R_SEI_stderr_ohm: FloatArray
    R_CT_ohm: FloatArray
    R_CT_stderr_ohm: FloatArray
    chi2_reduced: FloatArray
    sei_p_value: FloatArray
    circuit: StrArray
    note: StrArray
    fits: tuple[FitResult | None, ...] = field(repr=False)

    def __len__(self) -> int:
        return len(self.sequence)


def _driving_step(
    spectrum: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    """The plate/strip/... step a spectrum interrupted: the latest one still running at its time."""
    t, own = spectrum["t"], spectrum["step"]
    running = [
        s for s in steps
        if s["kind"] not in _NOT_DRIVEN and s["number"] < own and s["t_start"] <= t
        and (s["t_end"] is None or t <= s["t_end"])
    ]  # fmt: skip
    return max(running, key=lambda s: s["number"]) if running else None


def spectrum_trends(
    store: Store,
    run_id: int,
    without: str | Circuit = NO_SEI,
    with_sei: str | Circuit = WITH_SEI,
    significance: float = SIGNIFICANCE,
) -> EisTrends:
    """Fit every spectrum of a run (`choose_circuit`) and tabulate R_b, R_SEI and R_CT."""
    _layouts(compile_circuit(without), compile_circuit(with_sei))  # refuse bad circuits up front
    steps = store.steps(run_id)
    by_number = {s["number"]: s for s in steps}
    rows: list[dict[str, Any]] = []
    counts: dict[int, int] = {}
    for spectrum in store.spectra(run_id):
        driving = _driving_step(spectrum, steps)
        own = by_number.get(spectrum["step"], {"label": "", "number": spectrum["step"]})
        step = driving or own
        counts[step["number"]] = counts.get(step["number"], 0) + 1
        f, z = spectrum["frequency_Hz"], spectrum["impedance_ohm"]
        try:
            choice = choose_circuit(f, z, without, with_sei, significance)
            intercept = high_frequency_intercept(f, z)
        except FitInputError as exc:  # one glitched spectrum must not cost the run's other rows
            choice, intercept = ModelChoice(None, False, math.nan, f"unusable spectrum: {exc}"), math.nan
        rows.append({
            "sequence": spectrum["sequence"], "t_s": spectrum["t"], "cycle": spectrum["cycle"],
            "step": step["number"], "step_kind": driving["kind"] if driving else "rest",
            "step_label": step["label"], "step_sequence": counts[step["number"]],
            "R_b_intercept_ohm": intercept,
            "R_b_ohm": choice.r_b[0], "R_b_stderr_ohm": choice.r_b[1],
            "R_SEI_ohm": choice.r_sei[0], "R_SEI_stderr_ohm": choice.r_sei[1],
            "R_CT_ohm": choice.r_ct[0], "R_CT_stderr_ohm": choice.r_ct[1],
            "chi2_reduced": choice.fit.chi2_reduced if choice.fit else math.nan,
            "sei_p_value": choice.p_value,
            "circuit": choice.fit.circuit.text if choice.fit else "", "note": choice.note,
            "fit": choice.fit,
        })  # fmt: skip
    return _columns(rows)


def _columns(rows: list[dict[str, Any]]) -> EisTrends:
    def column(name: str, dtype: Any) -> Any:
        return np.array([row[name] for row in rows], dtype=dtype)

    ints = ("sequence", "cycle", "step", "step_sequence")
    texts = ("step_kind", "step_label", "circuit", "note")
    columns: dict[str, Any] = {}
    for name in EisTrends.__dataclass_fields__:
        if name == "fits":
            continue
        dtype = np.int64 if name in ints else np.str_ if name in texts else np.float64
        columns[name] = column(name, dtype)
    return EisTrends(**columns, fits=tuple(row["fit"] for row in rows))
