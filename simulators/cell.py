"""What a simulated cell offers the simulated channel: vectorised responses, explicit state.

A cell model is plain numpy over its own state (functional core, no clock, no I/O). The
channel asks for the response to a constant current or a constant voltage over a grid of
times *without* changing the state, finds where the step's end conditions first hold, and
then commits exactly that much with `advance_*`. Asking again after committing part of a
segment must continue the same trajectory (state is charge and analytic relaxation terms, so
splitting a segment changes nothing but the noise draws).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

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


@dataclass(frozen=True)
class _SavedGenerator:
    state: Mapping[str, Any]

    def generator(self) -> np.random.Generator:
        bits = getattr(np.random, self.state["bit_generator"])()
        bits.state = self.state
        return np.random.Generator(bits)


class GeneratorsPickleAsState:
    """Mixin for cell models: a cheap pickle for the checkpoint that goes with every batch.

    - numpy's own pickling of a Generator takes about 15 us; its state dict takes 2. The stream
      continues exactly where it was.
    - Most of a cell is set in `__init__` and never changes: parameters, capacities, plateaus,
      its short-circuit schedule. A model names the attributes that do change as it runs in
      `LIVE`; the rest is pickled once, kept as bytes, and copied into every later pickle. A
      HalfCell pickles in about a third of the time.
    """

    LIVE: ClassVar[tuple[str, ...]] = ()  # attributes that change as the cell runs; () = all of them

    def __getstate__(self) -> dict[str, Any]:
        attributes = self.__dict__
        if not self.LIVE:
            return {name: _saved(value) for name, value in attributes.items() if name != _FROZEN}
        frozen = attributes.get(_FROZEN)
        if frozen is None:
            rest = {name: value for name, value in attributes.items() if name not in self.LIVE}
            frozen = attributes[_FROZEN] = pickle.dumps(rest, pickle.HIGHEST_PROTOCOL)
        state = {name: _saved(attributes[name]) for name in self.LIVE}
        state[_FROZEN] = frozen
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        frozen = state.get(_FROZEN)
        if frozen is not None:
            self.__dict__.update(pickle.loads(frozen))
        self.__dict__.update(
            {
                name: value.generator() if isinstance(value, _SavedGenerator) else value
                for name, value in state.items()
            }
        )


_FROZEN = "_frozen_pickle"  # where a cell keeps the pickle of its unchanging attributes


def _saved(value: Any) -> Any:
    return _SavedGenerator(value.bit_generator.state) if isinstance(value, np.random.Generator) else value
