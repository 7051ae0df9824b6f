"""Equivalent circuits for impedance spectra, written as in impedance.py: `R0-p(R1,CPE1)-W1`.

`-` joins elements in series, `p(a,b,...)` in parallel (nestable); an element is a code and a
number. `compile_circuit` turns the text into one vectorised function Z(ω, parameters) with its
analytic Jacobian, so that fitting a spectrum needs no finite differences.

Elements and their parameter names (element `X1`; the numbers are the user's):

    R1    resistor                  R1                  Ω
    C1    capacitor                 C1                  F
    L1    inductor                  L1                  H
    CPE1  constant-phase element    CPE1_Q, CPE1_alpha  F·s^(α−1), 1      1/(Q (jω)^α)
    W1    semi-infinite Warburg     W1_sigma            Ω·s^-½            σ(1 − j)/√ω
    Wo1   finite-space (open) W.    Wo1_R, Wo1_tau      Ω, s              R coth(√(jωτ))/√(jωτ)
    Ws1   finite-length (short) W.  Ws1_R, Ws1_tau      Ω, s              R tanh(√(jωτ))/√(jωτ)

The formulas are impedance.py's (fitted values are comparable) and those of
`cyclerd.simulators.impedance` (the circuit the simulators draw; the tests check both agree).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
ComplexArray = NDArray[np.complex128]


# Element codes and the suffixes of their parameters' names ("" names it after the element: R1).
ELEMENTS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "R": ("",), "C": ("",), "L": ("",), "CPE": ("Q", "alpha"),
    "W": ("sigma",), "Wo": ("R", "tau"), "Ws": ("R", "tau"),
})  # fmt: skip

# Codes other programs use for our elements: the error message says what to write instead.
_ALIASES = {"Q": "CPE", "P": "CPE", "ZARC": "p(R,CPE)", "WB": "W", "WF": "Ws", "WT": "Ws", "WR": "Wo"}


class CircuitSyntaxError(ValueError):
    """A circuit string that cannot be read; says at which column and what to write instead."""

    def __init__(self, text: str, column: int, problem: str) -> None:
        self.text, self.column, self.problem = text, column, problem
        super().__init__(f"circuit {text!r}, column {column}: {problem}")


class CircuitParameterError(KeyError):
    """Parameter values that do not fit a circuit: a missing or unknown name, a wrong count."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Element:
    code: str
    number: str

    @property
    def name(self) -> str:
        return f"{self.code}{self.number}"

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(self.name + (f"_{s}" if s else "") for s in ELEMENTS[self.code])


@dataclass(frozen=True)
class Series:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Parallel:
    branches: tuple[Node, ...]


Node = Element | Series | Parallel


def render(node: Node) -> str:
    """The circuit string of a tree; `parse(render(tree)) == tree` for trees `parse` can return."""
    if isinstance(node, Element):
        return node.name
    if isinstance(node, Series):
        return "-".join(render(part) for part in node.parts)
    return "p(" + ",".join(render(branch) for branch in node.branches) + ")"


def elements(node: Node) -> list[Element]:
    """The elements of a circuit from left to right: the order of its parameters."""
    if isinstance(node, Element):
        return [node]
    children = node.parts if isinstance(node, Series) else node.branches
    return [element for child in children for element in elements(child)]


_LETTERS, _DIGITS = frozenset(string.ascii_letters), frozenset(string.digits)


class _Parser:
    """Recursive descent over the text; whitespace is ignored, columns count from 1."""

    def __init__(self, text: str) -> None:
        self.text, self.i = text, 0
        self.columns: dict[str, int] = {}  # element name -> column of its first use

    def fail(self, problem: str, at: int | None = None) -> CircuitSyntaxError:
        return CircuitSyntaxError(self.text, (self.i if at is None else at) + 1, problem)

    def peek(self) -> str:
        while self.i < len(self.text) and self.text[self.i].isspace():
            self.i += 1
        return self.text[self.i] if self.i < len(self.text) else ""

    def series(self) -> Node:
        parts = [self.term()]
        while self.peek() == "-":
            self.i += 1
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else Series(tuple(parts))

    def term(self) -> Node:
        char, start = self.peek(), self.i
        if not char:
            raise self.fail("the circuit ends where an element is expected; write e.g. R1, CPE1 or p(R1,C1)")
        if char not in _LETTERS:
            raise self.fail(f"found {char!r} where an element (R1, CPE1, W1, ...) or p(...) should be")
        while self.i < len(self.text) and self.text[self.i] in _LETTERS:
            self.i += 1
        code = self.text[start : self.i]
        if code == "p" and self.peek() == "(":
            return self.parallel(start)
        digits_start = self.i
        while self.i < len(self.text) and self.text[self.i] in _DIGITS:
            self.i += 1
        return self.element(code, self.text[digits_start : self.i], start)

    def element(self, code: str, number: str, start: int) -> Element:
        if code not in ELEMENTS:
            upper = {known.upper(): known for known in ELEMENTS}
            instead = upper.get(code.upper()) or _ALIASES.get(code.upper())
            known = ", ".join(ELEMENTS)
            if instead is None:
                raise self.fail(f"unknown element {code + number!r}; the elements are {known}", start)
            if instead.startswith("p("):
                n = number or "1"
                hint = f"p(R{n},CPE{n})"
            else:
                hint = instead + (number or "1")
            raise self.fail(f"unknown element {code + number!r}; write {hint}", start)
        if not number:
            raise self.fail(f"element {code!r} needs a number to name it; write {code}1", start)
        name = code + number
        if name in self.columns:
            raise self.fail(
                f"element {name} is already used at column {self.columns[name] + 1}; "
                "give each element its own number",
                start,
            )
        self.columns[name] = start
        return Element(code, number)

    def parallel(self, start: int) -> Parallel:
        self.i += 1  # the "(" after "p"
        branches = [self.series()]
        while self.peek() == ",":
            self.i += 1
            branches.append(self.series())
        if self.peek() != ")":
            found = f"found {self.peek()!r}" if self.peek() else "the circuit ends"
            raise self.fail(f"{found}; close the p( opened at column {start + 1} with ')'")
        self.i += 1
        if len(branches) < 2:
            only = render(branches[0])
            raise self.fail(
                f"p(...) needs two or more branches separated by ','; write {only} without p( ) "
                f"or add a branch, e.g. p({only},C9)",
                start,
            )
        return Parallel(tuple(branches))


def parse(text: str) -> Node:
    """Read a circuit string into a tree; raise `CircuitSyntaxError` naming the column."""
    if not isinstance(text, str):
        raise CircuitSyntaxError(repr(text), 1, "a circuit is a string such as 'R0-p(R1,CPE1)-W1'")
    parser = _Parser(text)
    tree = parser.series()
    rest = parser.peek()
    if rest:
        hint = "join elements with '-' (series) or ',' inside p(...)"
        if rest == ")":
            hint = "this ')' closes no p("
        raise parser.fail(f"unexpected {rest!r}; {hint}")
    return tree


# --- evaluation ---------------------------------------------------------------------------------


class OmegaGrid:
    """Angular frequencies with the powers the elements need, computed once per spectrum."""

    def __init__(self, omega: ArrayLike) -> None:
        self.omega: FloatArray = np.asarray(omega, dtype=np.float64)
        self.jw: ComplexArray = (1j * self.omega).astype(np.complex128)
        self.ln_jw: ComplexArray = np.log(self.omega) + 0.5j * np.pi  # (jω)^α = exp(α ln jω)
        self.sqrt_jw: ComplexArray = np.sqrt(self.jw)
        self.warburg: ComplexArray = (1.0 - 1.0j) / np.sqrt(self.omega)


Arr = Any  # float columns broadcast against ω: shape (1,) or (K, 1)
Kernel = Callable[[OmegaGrid, Sequence[Arr], bool], tuple[Any, list[Any]]]
Evaluator = Callable[[OmegaGrid, Any, bool], tuple[Any, list[Any]]]


def _resistor(g: OmegaGrid, v: Sequence[Arr], jac: bool) -> tuple[Any, list[Any]]:
    return v[0] + 0j, [np.ones_like(v[0]) + 0j] if jac else []


def _capacitor(g: OmegaGrid, v: Sequence[Arr], jac: bool) -> tuple[Any, list[Any]]:
    z = 1.0 / (v[0] * g.jw)
    return z, [-z / v[0]] if jac else []


def _inductor(g: OmegaGrid, v: Sequence[Arr], jac: bool) -> tuple[Any, list[Any]]:
    return v[0] * g.jw, [g.jw + 0 * v[0]] if jac else []


def _cpe(g: OmegaGrid, v: Sequence[Arr], jac: bool) -> tuple[Any, list[Any]]:
    q, alpha = v
    z = np.exp(-alpha * g.ln_jw) / q
    return z, [-z / q, -z * g.ln_jw] if jac else []


def _warburg(g: OmegaGrid, v: Sequence[Arr], jac: bool) -> tuple[Any, list[Any]]:
    return v[0] * g.warburg, [g.warburg + 0 * v[0]] if jac else []


def _warburg_short(g: OmegaGrid, v: Sequence[Arr], jac: bool) -> tuple[Any, list[Any]]:
    r, tau = v
    s = np.sqrt(tau) * g.sqrt_jw
    t = np.tanh(s)
    shape = t / s
    return r * shape, [shape, r / (2 * tau) * ((1.0 - t * t) - shape)] if jac else []


def _warburg_open(g: OmegaGrid, v: Sequence[Arr], jac: bool) -> tuple[Any, list[Any]]:
    r, tau = v
    s = np.sqrt(tau) * g.sqrt_jw
    t = np.tanh(s)
    shape = 1.0 / (s * t)
    # d/dτ of coth(s)/s = −(csch² s + coth(s)/s)/(2τ), with csch² = coth² − 1.
    return r * shape, [shape, -r / (2 * tau) * (1.0 / (t * t) - 1.0 + shape)] if jac else []


_KERNELS: Mapping[str, Kernel] = MappingProxyType({
    "R": _resistor, "C": _capacitor, "L": _inductor, "CPE": _cpe,
    "W": _warburg, "Wo": _warburg_open, "Ws": _warburg_short,
})  # fmt: skip


def _compile(node: Node, start: int) -> tuple[Evaluator, int]:
    """A closure evaluating `node` from parameter columns `start`...; returns it and the next index."""
    if isinstance(node, Element):
        kernel, count = _KERNELS[node.code], len(ELEMENTS[node.code])

        def element(g: OmegaGrid, cols: Any, jac: bool) -> tuple[Any, list[Any]]:
            return kernel(g, [cols[..., start + k, :] for k in range(count)], jac)

        return element, start + count
    children: list[Evaluator] = []
    for child in node.parts if isinstance(node, Series) else node.branches:
        evaluator, start = _compile(child, start)
        children.append(evaluator)
    return (_series if isinstance(node, Series) else _parallel)(children), start


def _series(children: list[Evaluator]) -> Evaluator:
    def series(g: OmegaGrid, cols: Any, jac: bool) -> tuple[Any, list[Any]]:
        z, derivatives = children[0](g, cols, jac)
        for child in children[1:]:
            zc, dc = child(g, cols, jac)
            z = z + zc
            derivatives += dc
        return z, derivatives

    return series


def _parallel(children: list[Evaluator]) -> Evaluator:
    """1/Z = Σ 1/Zᵢ and ∂Z/∂p = (Z/Zᵢ)² ∂Zᵢ/∂p."""

    def parallel(g: OmegaGrid, cols: Any, jac: bool) -> tuple[Any, list[Any]]:
        results = [child(g, cols, jac) for child in children]
        if any(np.any(zi == 0) for zi, _ in results):
            return _shorted(results)
        z = 1.0 / sum(1.0 / zi for zi, _ in results)
        return z, [(z / zi) ** 2 * d for zi, di in results for d in di]

    return parallel


def _shorted(results: list[tuple[Any, list[Any]]]) -> tuple[Any, list[Any]]:
    """A parallel block with a branch of exactly 0 Ω (e.g. R = 0): 0 Ω wherever that branch is."""
    branches = np.broadcast_arrays(*(zi for zi, _ in results))
    short = np.logical_or.reduce([zi == 0 for zi in branches])
    safe = [np.where(short, 1.0, zi) for zi in branches]
    z = np.where(short, 0.0, 1.0 / sum(1.0 / zi for zi in safe))
    derivatives: list[Any] = []
    for zi, safe_zi, (_, di) in zip(branches, safe, results, strict=True):
        derivatives += [np.where(short, zi == 0, (z / safe_zi) ** 2) * d for d in di]
    return z, derivatives


class Circuit:
    """A compiled circuit: `circuit(omega, params)` is Z(ω) for one or many parameter vectors.

    `params` is a mapping of names to values or an array whose last axis follows `names`
    (shape (P,) gives Z of shape (N,); shape (K, P) gives K spectra, shape (K, N)).
    """

    def __init__(self, text: str) -> None:
        self.tree = parse(text)
        self.text = render(self.tree)
        self.elements = tuple(elements(self.tree))
        self.names = tuple(name for e in self.elements for name in e.parameter_names)
        self.kinds = tuple((e, suffix or e.code) for e in self.elements for suffix in ELEMENTS[e.code])
        self._evaluate, _ = _compile(self.tree, 0)

    def __repr__(self) -> str:
        return f"Circuit({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Circuit) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def vector(self, params: Mapping[str, float] | ArrayLike) -> FloatArray:
        """Parameter values in `names` order; a missing or unknown name is an error."""
        if isinstance(params, Mapping):
            unknown = sorted(set(params) - set(self.names))
            missing = [name for name in self.names if name not in params]
            if unknown or missing:
                problem = f"unknown {', '.join(unknown)}" if unknown else f"missing {', '.join(missing)}"
                raise CircuitParameterError(
                    f"parameters for {self.text}: {problem}; its parameters are {', '.join(self.names)}"
                )
            return np.array([float(params[name]) for name in self.names])
        values = np.asarray(params, dtype=np.float64)
        if values.ndim == 0 or values.shape[-1] != len(self.names):
            raise CircuitParameterError(
                f"{self.text} has {len(self.names)} parameters ({', '.join(self.names)}), "
                f"got an array of shape {values.shape}"
            )
        return values

    def __call__(self, omega: ArrayLike | OmegaGrid, params: Mapping[str, float] | ArrayLike) -> ComplexArray:
        grid = omega if isinstance(omega, OmegaGrid) else OmegaGrid(omega)
        p = self.vector(params)
        z, _ = self._evaluate(grid, p[..., None], False)
        out: ComplexArray = np.broadcast_to(z, p.shape[:-1] + grid.omega.shape).astype(np.complex128)
        return out

    def jacobian(self, omega: ArrayLike | OmegaGrid, params: ArrayLike) -> tuple[ComplexArray, ComplexArray]:
        """Z(ω) and ∂Z/∂p (shape (P, N)) for one parameter vector, analytically."""
        grid = omega if isinstance(omega, OmegaGrid) else OmegaGrid(omega)
        p = self.vector(params)
        if p.ndim != 1:
            raise CircuitParameterError(f"the Jacobian takes one parameter vector, not shape {p.shape}")
        z, derivatives = self._evaluate(grid, p[..., None], True)
        shape = grid.omega.shape
        jac = np.empty((len(self.names), *shape), dtype=np.complex128)
        for row, d in zip(jac, derivatives, strict=True):
            row[...] = d
        return np.broadcast_to(z, shape).astype(np.complex128), jac


def compile_circuit(text: str | Circuit) -> Circuit:
    """The circuit for a string in impedance.py's syntax (a `Circuit` is passed through)."""
    return text if isinstance(text, Circuit) else Circuit(text)
