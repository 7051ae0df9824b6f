"""Circuit strings (impedance.py syntax) and the compiled Z(ω, p) with its analytic Jacobian."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclerd.analysis.circuits import (
    ELEMENTS,
    Circuit,
    CircuitParameterError,
    CircuitSyntaxError,
    Element,
    Node,
    Parallel,
    Series,
    elements,
    parse,
    render,
)
from cyclerd.simulators.impedance import (
    CircuitParams,
    circuit_impedance,
    r_parallel_cpe,
    warburg_finite,
)

OMEGA = 2 * np.pi * np.logspace(7, -2, 91)


def test_series_and_nested_parallel_blocks_read_as_a_tree() -> None:
    tree = parse("R0-p(R1,CPE1)-p(R2-W2,p(C3,L3))")
    randles = Series((Element("R", "2"), Element("W", "2")))
    assert tree == Series((
        Element("R", "0"),
        Parallel((Element("R", "1"), Element("CPE", "1"))),
        Parallel((randles, Parallel((Element("C", "3"), Element("L", "3"))))),
    ))  # fmt: skip


def test_parameter_names_follow_the_elements_left_to_right() -> None:
    circuit = Circuit("R0-p(R1,CPE1)-W1-Wo2-Ws3-L4-C5")
    assert circuit.names == (
        "R0", "R1", "CPE1_Q", "CPE1_alpha", "W1_sigma", "Wo2_R", "Wo2_tau", "Ws3_R", "Ws3_tau", "L4", "C5",
    )  # fmt: skip


def test_whitespace_is_ignored_and_the_canonical_text_has_none() -> None:
    assert Circuit(" R0 - p( R1 , CPE1 ) ").text == "R0-p(R1,CPE1)"
    assert Circuit("R0-p(R1,CPE1)") == Circuit("R0 - p(R1, CPE1)")


@pytest.mark.parametrize(
    ("text", "column", "advice"),
    [
        ("R0-Q1", 4, "write CPE1"),
        ("R0-p(R1,Q2)", 9, "write CPE2"),
        ("R0-Zarc1", 4, "write p(R1,CPE1)"),
        ("r0-cpe1", 1, "write R0"),
        ("R0-X1", 4, "the elements are R, C, L, CPE, W, Wo, Ws"),
        ("R0-CPE", 4, "write CPE1"),
        ("R0-p(R1)", 4, "two or more branches"),
        ("R0-p(R1,C1", 11, "close the p( opened at column 4"),
        ("R0-p(R1,C1))", 12, "closes no p("),
        ("R0--R1", 4, "found '-'"),
        ("R0-", 4, "ends where an element is expected"),
        ("", 1, "ends where an element is expected"),
        ("R0 R1", 4, "join elements with '-'"),
        ("R10-R1-R1", 8, "already used at column 5"),
        ("R0-p(R1,,C1)", 9, "found ','"),
    ],
)
def test_malformed_circuits_name_the_column_and_what_to_write(text: str, column: int, advice: str) -> None:
    with pytest.raises(CircuitSyntaxError) as caught:
        Circuit(text)
    assert caught.value.column == column
    assert advice in str(caught.value)
    assert f"column {column}" in str(caught.value)


# --- property tests -----------------------------------------------------------------------------


def _series(parts: list[Node]) -> Node:
    flat: list[Node] = []
    for part in parts:
        flat.extend(part.parts if isinstance(part, Series) else [part])
    return Series(tuple(flat))


trees = st.recursive(
    st.builds(Element, st.sampled_from(sorted(ELEMENTS)), st.just("")),
    lambda children: st.one_of(
        st.lists(children, min_size=2, max_size=4).map(_series),
        st.lists(children, min_size=2, max_size=3).map(lambda b: Parallel(tuple(b))),
    ),
    max_leaves=12,
)


def _numbered(node: Node, numbers: list[int]) -> Node:
    """The same tree with element numbers 0, 1, 2, ... (or the drawn ones) in reading order."""
    if isinstance(node, Element):
        return Element(node.code, str(numbers.pop(0)))
    if isinstance(node, Series):
        return Series(tuple(_numbered(part, numbers) for part in node.parts))
    return Parallel(tuple(_numbered(branch, numbers) for branch in node.branches))


@settings(max_examples=300, deadline=None)
@given(trees, st.lists(st.integers(0, 10_000), min_size=12, max_size=12, unique=True))
def test_any_valid_circuit_survives_render_and_parse(tree: Node, numbers: list[int]) -> None:
    numbered = _numbered(tree, numbers)
    text = render(numbered)
    assert parse(text) == numbered
    circuit = Circuit(text)
    assert len(circuit.names) == sum(len(ELEMENTS[e.code]) for e in elements(numbered))


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="RCLPEWQosp()-,0123456789 _x", max_size=30) | st.text(max_size=20))
def test_any_text_parses_or_raises_circuit_syntax_error(text: str) -> None:
    try:
        tree = parse(text)
    except CircuitSyntaxError as exc:
        column = exc.column
    else:
        assert parse(render(tree)) == tree
        return
    assert 1 <= column <= len(text) + 1


# --- evaluation ---------------------------------------------------------------------------------


def test_the_simulators_circuit_is_r0_two_arcs_a_warburg_and_a_lead_inductance() -> None:
    params = CircuitParams(38.0, 20.0, 8e-7, 0.85, 15.0, 1.5e-5, 0.8, 6.4, inductance_H=3e-7)
    expected = circuit_impedance(OMEGA / (2 * np.pi), params)
    circuit = Circuit("R0-p(R1,CPE1)-p(R2,CPE2)-W1-L1")
    z = circuit(OMEGA, [38.0, 20.0, 8e-7, 0.85, 15.0, 1.5e-5, 0.8, 6.4, 3e-7])
    np.testing.assert_allclose(z, expected, rtol=1e-12)


def test_finite_warburgs_are_impedance_py_tanh_and_coth_forms() -> None:
    s = np.sqrt(1j * OMEGA * 2.5)
    np.testing.assert_allclose(
        Circuit("Ws1")(OMEGA, [40.0, 2.5]), warburg_finite(OMEGA, 40.0, 2.5), rtol=1e-12
    )
    np.testing.assert_allclose(Circuit("Wo1")(OMEGA, [40.0, 2.5]), 40.0 / (s * np.tanh(s)), rtol=1e-12)
    np.testing.assert_allclose(Circuit("C1")(OMEGA, [1e-5]), 1 / (1j * OMEGA * 1e-5), rtol=1e-12)
    # Wo tends to a capacitor (plus R/3) at low frequency, Ws to its resistance R.
    low = np.array([2 * np.pi * 1e-6])
    assert Circuit("Ws1")(low, [40.0, 2.5])[0].real == pytest.approx(40.0, rel=1e-4)
    assert Circuit("Wo1")(low, [40.0, 2.5])[0].real == pytest.approx(40.0 / 3, rel=1e-4)


def test_a_zero_resistance_shorts_its_parallel_block_as_in_the_simulator() -> None:
    z = Circuit("p(R1,CPE1)")(OMEGA, [0.0, 1e-6, 0.9])
    np.testing.assert_array_equal(z, r_parallel_cpe(OMEGA, 0.0, 1e-6, 0.9))
    assert np.all(z == 0)


JACOBIAN_CASES = {
    "R": ("R0-p(R1,C1)", [10.0, 20.0, 1e-6]),
    "C": ("R0-C1", [10.0, 1e-4]),
    "L": ("L1-R0-p(R1,C1)", [2e-7, 10.0, 20.0, 1e-6]),
    "CPE": ("R0-p(R1,CPE1)", [10.0, 20.0, 1e-6, 0.8]),
    "W": ("R0-p(R1-W1,CPE1)", [10.0, 20.0, 5.0, 1e-6, 0.85]),
    "Wo": ("R0-p(R1,CPE1)-Wo1", [10.0, 20.0, 1e-6, 0.85, 40.0, 3.0]),
    "Ws": ("R0-p(R1,CPE1)-Ws1", [10.0, 20.0, 1e-6, 0.85, 40.0, 3.0]),
}


@pytest.mark.parametrize("code", sorted(JACOBIAN_CASES))
def test_analytic_jacobian_matches_central_differences(code: str) -> None:
    text, values = JACOBIAN_CASES[code]
    circuit, p = Circuit(text), np.array(values)
    z, jac = circuit.jacobian(OMEGA, p)
    np.testing.assert_allclose(z, circuit(OMEGA, p))
    for k, name in enumerate(circuit.names):
        step = np.zeros_like(p)
        step[k] = 1e-6 * p[k]
        numeric = (circuit(OMEGA, p + step) - circuit(OMEGA, p - step)) / (2 * step[k])
        scale = np.abs(numeric).max()
        assert np.abs(jac[k] - numeric).max() < 1e-6 * scale, name


def test_many_parameter_vectors_give_many_spectra() -> None:
    circuit = Circuit("R0-p(R1,CPE1)-Wo1")
    batch = np.array([[10.0, 20.0, 1e-6, 0.85, 40.0, 3.0], [12.0, 5.0, 1e-5, 0.7, 4.0, 0.3]])
    z = circuit(OMEGA, batch)
    assert z.shape == (2, OMEGA.size)
    np.testing.assert_allclose(z[1], circuit(OMEGA, batch[1]))
    assert Circuit("R0")(OMEGA, [5.0]).shape == OMEGA.shape


def test_parameters_by_name_must_match_the_circuit() -> None:
    circuit = Circuit("R0-p(R1,CPE1)")
    z = circuit(OMEGA, {"R0": 1.0, "R1": 2.0, "CPE1_Q": 1e-6, "CPE1_alpha": 0.9})
    np.testing.assert_allclose(z, circuit(OMEGA, [1.0, 2.0, 1e-6, 0.9]))
    with pytest.raises(CircuitParameterError, match="missing CPE1_alpha; its parameters are R0, R1"):
        circuit(OMEGA, {"R0": 1.0, "R1": 2.0, "CPE1_Q": 1e-6})
    with pytest.raises(CircuitParameterError, match="unknown CPE1_n"):
        circuit(OMEGA, {"R0": 1.0, "R1": 2.0, "CPE1_Q": 1e-6, "CPE1_alpha": 0.9, "CPE1_n": 0.9})
    with pytest.raises(CircuitParameterError, match="has 4 parameters"):
        circuit(OMEGA, [1.0, 2.0])
