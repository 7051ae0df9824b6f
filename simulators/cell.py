"""What a simulated cell offers the simulated channel: vectorised responses, explicit state.

A cell model is plain numpy over its own state (functional core, no clock, no I/O). The
channel asks for the response to a constant current or a constant voltage over a grid of
times *without* changing the state, finds where the step's end conditions first hold, and
then commits exactly that much with `advance_*`. Asking again after committing part of a
segment must continue the same trajectory (state is charge and analytic relaxation terms, so
splitting a segment changes nothing but the noise draws). What changes as a cell runs leaves
as plain data for run checkpoints (`LiveState`) and goes back into a cell built afresh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
ComplexArray = NDArray[np.complex128]


class CellModel(Protocol):
    """A simulated cell. Sign: positive current charges the cell (strips Li in a half-cell)."""

    @property
    def area_m2(self) -> float: ...

    def voltage_at_current(self, current_A: float, t_s: FloatArray) -> FloatArray:
        """Terminal voltage at times `t_s` (seconds from now, increasing) under `current_A`.

        Includes measurement noise from the model's seeded generator. Does not change state.
        """
        ...

    def advance_at_current(self, current_A: float, duration_s: float) -> None:
        """Pass `current_A` for `duration_s` seconds: charge, cycle count and shorts move on."""
        ...

    def current_at_voltage(self, voltage_V: float, t_s: FloatArray) -> FloatArray:
        """Current at times `t_s` while the terminal voltage is held at `voltage_V`."""
        ...

    def advance_at_voltage(self, voltage_V: float, duration_s: float) -> None:
        """Hold `voltage_V` for `duration_s` seconds."""
        ...

    def impedance(self, frequencies_Hz: FloatArray) -> ComplexArray:
        """Z(f) in ohms of the cell in its present state (noise included)."""
        ...


@runtime_checkable
class Resumable(Protocol):
    """A cell whose changing state leaves as plain data and goes back into a freshly built copy."""

    def live_state(self) -> dict[str, Any]: ...

    def restore_live_state(self, state: Mapping[str, Any]) -> None: ...


class LiveStateError(ValueError):
    """A checkpoint's cell state does not fit the cell it is restored into."""


class LiveState:
    """Mixin for cell models: the changing part of a cell as plain data, for run checkpoints.

    A checkpoint holds data, never code: whoever can write the database must not be able to
    run code as the daemon. Most of a cell is set in `__init__` from its preset, seed and area
    and never changes (parameters, plateaus, its short-circuit schedule); a resumed run builds
    that part again, so only the attributes a model names in `LIVE` travel with a checkpoint.

    Each is written by its type and read back into the type that the fresh cell's own value of
    it has, so the stored data names no class. Supported: None, bool, int, float, str; numpy
    numeric scalars and arrays (as numbers and lists); Enum members (as their value); numpy
    Generators (as their bit generator's state, so the stream goes on where it was); dataclass
    instances (as a dict of their fields); tuples, NamedTuples (item by item, fixed length);
    lists of None/bool/int/float/str (a list grows as the cell runs, so a fresh cell has no
    item to read anything richer back into). A value that is None in a fresh cell can only
    come back as a plain number, string or bool. JSON writes a float as the shortest text that
    reads back to the same bits, so a resumed run continues exactly as an uninterrupted one.
    """

    LIVE: ClassVar[tuple[str, ...]] = ()  # the attributes that change as the cell runs
    # Answers remembered for one state object the cell holds (keyed by identity): a restored
    # state is a new object, so a cache never answers for it and need not travel.
    CACHES: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.LIVE:
            raise TypeError(f"{cls.__name__}: name the attributes that change as the cell runs in LIVE")

    def live_state(self) -> dict[str, Any]:
        """The LIVE attributes as JSON types (a fresh dict, sharing nothing with the cell)."""
        return {name: _encoded(getattr(self, name), name) for name in self.LIVE}

    def restore_live_state(self, state: Mapping[str, Any]) -> None:
        """Take back what `live_state` gave, into a cell built with the same preset, seed and area.

        All or nothing: the whole state is read before any attribute changes, so a state that
        does not fit (another model, a corrupted checkpoint) leaves the cell as it was.
        """
        _same_names(state, self.LIVE, type(self).__name__)
        restored = {name: _decoded(state[name], getattr(self, name), name) for name in self.LIVE}
        for name, value in restored.items():
            setattr(self, name, value)


_PLAIN = frozenset({type(None), bool, int, float, str})  # JSON writes and reads these back as they are


def _exact(dtype: np.dtype[Any]) -> bool:
    """Numbers of this dtype come back from JSON exactly: bools, integers, floats up to 64 bits."""
    return dtype.kind in "biu" or (dtype.kind == "f" and dtype.itemsize <= 8)


def _encoded(value: Any, where: str) -> Any:
    """`value` as JSON types; TypeError for a type a fresh cell could not read back."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, Enum):
        if type(value.value) not in _PLAIN:
            raise TypeError(f"cell state {where}: the value of {value!r} is not a number, string or bool")
        return value.value
    if isinstance(value, np.generic) and _exact(value.dtype):
        return value.item()
    if isinstance(value, np.ndarray) and _exact(value.dtype):
        return value.tolist()
    if isinstance(value, np.random.Generator):
        return _plain(value.bit_generator.state, where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        if not all(field.init for field in fields):
            raise TypeError(f"cell state {where}: {type(value).__name__} has fields outside __init__")
        return {f.name: _encoded(getattr(value, f.name), f"{where}.{f.name}") for f in fields}
    if type(value) is tuple or (isinstance(value, tuple) and hasattr(value, "_fields")):
        return [_encoded(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if type(value) is list:
        if not all(type(item) in _PLAIN for item in value):
            raise TypeError(
                f"cell state {where}: a list may hold only None, bool, int, float and str; "
                "use a tuple (fixed length) or a numpy array"
            )
        return list(value)
    raise TypeError(
        f"cell state {where}: cannot checkpoint a {type(value).__qualname__}; supported are None, "
        "bool, int, float, str, Enum, numpy numbers, arrays and Generators, dataclasses, tuples "
        "and lists of plain values"
    )


def _plain(value: Any, where: str) -> Any:
    """A bit generator's state (dicts of ints and strings, arrays for some) as JSON types."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return value.tolist()
    if type(value) is dict and all(type(key) is str for key in value):
        return {key: _plain(item, where) for key, item in value.items()}
    raise TypeError(f"cell state {where}: a generator state holds a {type(value).__qualname__}")


def _decoded(stored: Any, template: Any, where: str) -> Any:
    """`stored` (from `_encoded`) read back as the type of `template`, the fresh cell's value."""
    if isinstance(template, np.random.Generator):
        bits = type(template.bit_generator)()
        try:
            bits.state = dict(_mapping(stored, where))  # numpy checks the generator's name and fields
        except (KeyError, TypeError, ValueError) as exc:
            raise LiveStateError(f"cell state {where}: not a {type(bits).__name__} state ({exc})") from None
        return np.random.Generator(bits)
    if isinstance(template, np.ndarray):
        return _array(stored, template, where)
    if isinstance(template, Enum):
        try:
            return type(template)(stored)
        except ValueError:
            raise LiveStateError(f"cell state {where}: {stored!r} is no {type(template).__name__}") from None
    if dataclasses.is_dataclass(template) and not isinstance(template, type):
        given = _mapping(stored, where)
        names = tuple(field.name for field in dataclasses.fields(template))
        _same_names(given, names, f"{where} ({type(template).__name__})")
        values = {name: _decoded(given[name], getattr(template, name), f"{where}.{name}") for name in names}
        return dataclasses.replace(template, **values)
    if isinstance(template, tuple):
        items = _sequence(stored, where)
        if len(items) != len(template):
            raise LiveStateError(f"cell state {where}: {len(items)} items where {len(template)} belong")
        pairs = enumerate(zip(items, template, strict=True))
        decoded = [_decoded(item, example, f"{where}[{i}]") for i, (item, example) in pairs]
        return tuple(decoded) if type(template) is tuple else type(template)(*decoded)  # a NamedTuple
    if isinstance(template, list):
        items = _sequence(stored, where)
        if not all(type(item) in _PLAIN for item in items):
            raise LiveStateError(f"cell state {where}: a list of plain values expected")
        return list(items)
    if isinstance(template, np.generic):
        if type(stored) not in (bool, int, float):
            raise LiveStateError(f"cell state {where}: a number expected, not {type(stored).__name__}")
        return type(template)(stored)
    if type(template) in _PLAIN:
        if type(stored) not in _PLAIN:
            raise LiveStateError(f"cell state {where}: a plain value expected, not {type(stored).__name__}")
        return stored
    raise TypeError(f"cell state {where}: cannot restore a {type(template).__qualname__}")


def _array(stored: Any, template: NDArray[Any], where: str) -> NDArray[Any]:
    """Numbers (nested lists) as an array of the template's dtype, refusing a lossy cast."""
    try:
        raw = np.asarray(stored)
    except ValueError:
        raise LiveStateError(f"cell state {where}: not an array of numbers") from None
    if raw.size == 0:
        return np.zeros((0, *template.shape[1:]), dtype=template.dtype)
    if raw.ndim != template.ndim or not np.can_cast(raw.dtype, template.dtype, "same_kind"):
        raise LiveStateError(
            f"cell state {where}: a {raw.ndim}-d {raw.dtype} array where {template.ndim}-d "
            f"{template.dtype} belongs"
        )
    return raw.astype(template.dtype)


def _mapping(stored: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(stored, Mapping):
        raise LiveStateError(f"cell state {where}: a mapping expected, not {type(stored).__name__}")
    return stored


def _sequence(stored: Any, where: str) -> list[Any]:
    if not isinstance(stored, list | tuple):
        raise LiveStateError(f"cell state {where}: a list expected, not {type(stored).__name__}")
    return list(stored)


def _same_names(given: Mapping[str, Any], names: tuple[str, ...], where: str) -> None:
    """The stored names are exactly the expected ones: else the state is of another cell."""
    missing = [name for name in names if name not in given]
    unexpected = sorted(str(name) for name in given if name not in names)
    if missing or unexpected:
        raise LiveStateError(
            f"cell state of {where}: missing {missing}, unexpected {unexpected}; the checkpoint "
            "was taken from another cell model or version: rebuild the cell it came from"
        )
