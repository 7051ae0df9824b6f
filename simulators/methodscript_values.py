"""A running script's variables, and the statements that compute on them on the device.

Scripts reduce their data before they send it (a mean against spikes, a fit for a polarisation
resistance, smoothing and peak search over arrays): `run` executes those statements on the
interpreter's variables.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from cyclerd.simulators import methodscript_packages as pk


@dataclass
class Value:
    value: float = 0.0
    vartype: str = "ja"  # [U] what a declared, never stored variable reports
    is_int: bool = False
    meta: pk.Meta | None = None


class Variables(Protocol):
    """What the statements here need from the interpreter."""

    def get(self, arg: pk.Arg) -> Value: ...
    def set(self, ref: pk.Ref, value: Value) -> None: ...
    def num(self, arg: pk.Arg) -> float: ...
    def array(self, arg: pk.Arg) -> list[Value]: ...


_UNARY: dict[str, Callable[[float], tuple[float, bool]]] = {
    "float_to_int": lambda x: (float(math.trunc(x)), True),  # [U] toward zero
    "float_to_int_round": lambda x: (float(round(x)), True),
    "int_to_float": lambda x: (x, False),
    "log_var": lambda x: (math.log(x) if x > 0 else math.nan, False),  # [U] natural logarithm
    "bit_inv_var": lambda x: (float(~int(x) & 0xFFFFFFFF), True),  # [U] 32-bit
}
_BITS = {
    "bit_and_var": int.__and__, "bit_or_var": int.__or__, "bit_xor_var": int.__xor__,
    "bit_lsl_var": int.__lshift__, "bit_lsr_var": int.__rshift__,
}  # fmt: skip
STATEMENTS = {
    *_UNARY, *_BITS, "pow_var", "mod_var", "array_set", "array_get", "mean", "linear_fit",
    "smooth", "peak_detect",
}  # fmt: skip
SMOOTH_WINDOWS = {0: 1, 1: 5, 2: 9, 3: 15, 4: 25}  # [U] strength -> Savitzky-Golay window


def run(s: pk.Stmt, v: Variables) -> None:
    """Execute one statement of STATEMENTS; raises DeviceError as the device would."""
    name, a = s.name, s.args
    if name in _UNARY:
        old = v.get(a[0])
        value, is_int = _UNARY[name](old.value)
        _store(v, a[0], replace(old, value=value, is_int=is_int, meta=None))
    elif name in _BITS or name in ("pow_var", "mod_var"):
        old, operand = v.get(a[0]), v.num(a[1])
        if name in _BITS:
            value, is_int = float(_BITS[name](int(old.value), int(operand))), True
        elif name == "mod_var":
            value, is_int = math.fmod(old.value, operand) if operand else math.nan, old.is_int
        else:
            value, is_int = _power(old.value, operand), False
        _store(v, a[0], replace(old, value=value, is_int=is_int, meta=None))
    elif name == "array_set":
        cells = v.array(a[0])
        cells[_index(cells, v.num(a[1]))] = replace(v.get(a[2]) if isinstance(a[2], pk.Ref) else _lit(a[2]))
    elif name == "array_get":
        cells = v.array(a[0])
        v.set(_as_ref(a[2]), replace(cells[_index(cells, v.num(a[1]))]))
    elif name == "mean":
        cells = v.array(a[0])
        v.set(_as_ref(a[1]), replace(cells[0], value=float(np.mean([c.value for c in cells])), meta=None))
    elif name == "linear_fit":
        x, y = ([c.value for c in v.array(arg)] for arg in a[:2])
        n = min(len(x), len(y))
        slope, intercept = np.polyfit(x[:n], y[:n], 1) if n >= 2 else (math.nan, math.nan)
        v.set(_as_ref(a[2]), Value(float(slope), "ja"))
        v.set(_as_ref(a[3]), Value(float(intercept), v.array(a[1])[0].vartype))
    elif name == "smooth":
        source, *rest = a
        count = int(v.num(rest[0])) if len(rest) == 3 else len(v.array(source))
        _smooth(v.array(source), v.array(rest[-2]), count, int(v.num(rest[-1])))
    elif name == "peak_detect":
        _peaks(v, s)


def _store(v: Variables, arg: pk.Arg, value: Value) -> None:
    if not (math.isfinite(value.value)):
        raise pk.DeviceError(pk.ERR_NOT_FINITE)
    v.set(_as_ref(arg), value)


def _power(base: float, exponent: float) -> float:
    try:
        result = math.pow(base, exponent)
    except (ValueError, OverflowError, ZeroDivisionError):
        return math.nan
    return result


def _lit(arg: pk.Arg) -> Value:
    assert isinstance(arg, pk.Lit), arg
    return Value(arg.value, is_int=arg.is_int)


def _as_ref(arg: pk.Arg) -> pk.Ref:
    assert isinstance(arg, pk.Ref), arg  # the parser put a variable here
    return arg


def _index(cells: list[Value], index: float) -> int:
    if not 0 <= int(index) < len(cells):
        raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
    return int(index)


def _smooth(source: list[Value], target: list[Value], count: int, strength: int) -> None:
    """Savitzky-Golay (quadratic) over the first `count` points; the ends keep their values."""
    if strength not in SMOOTH_WINDOWS or not 0 < count <= min(len(source), len(target)):
        raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
    y = np.array([c.value for c in source[:count]])
    window = SMOOTH_WINDOWS[strength]
    out = y.copy()
    if window > 1 and count >= window:
        half = window // 2
        x = np.arange(-half, half + 1, dtype=np.float64)
        weights = np.linalg.pinv(np.vander(x, 3, increasing=True))[0]  # the fit's value at 0
        out[half : count - half] = np.convolve(y, weights[::-1], mode="valid")
    for k in range(count):
        target[k] = replace(source[k], value=float(out[k]), meta=None)


def _peaks(v: Variables, s: pk.Stmt) -> None:
    """The highest local extrema of at least `min_h` above the lower of their flanking minima."""
    data, count, indices, heights, direction, min_h = s.args
    y = np.array([c.value for c in v.array(data)[: int(v.num(count))]])
    y = -y if v.num(direction) else y  # [U] 0: positive peaks, 1: negative
    found: list[tuple[float, int]] = []
    for k in range(1, len(y) - 1):
        if y[k] >= y[k - 1] and y[k] > y[k + 1]:
            height = y[k] - max(y[: k + 1].min(), y[k:].min())
            if height >= v.num(min_h):
                found.append((float(height), k))
    found.sort(reverse=True)
    out_i, out_h = v.array(indices), v.array(heights)
    vartype = v.array(data)[0].vartype
    for slot in range(len(out_i)):
        height, k = found[slot] if slot < len(found) else (0.0, -1)
        out_i[slot] = Value(float(k), "ja", is_int=True)
        if slot < len(out_h):
            out_h[slot] = Value(height, vartype)
