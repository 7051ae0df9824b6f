"""A simulated cell's pickle (the checkpoint's copy of it) restores the cell exactly, and is cheap
because only the attributes a model lists as LIVE change while it runs."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cyclerd.simulators.cell import GeneratorsPickleAsState
from cyclerd.simulators.presets import make_cell, names

AREA_M2 = 0.785e-4


def _exercise(cell: object) -> None:
    """Plate, strip, rest, hold a voltage and measure a spectrum: everything a protocol does."""
    model = cell  # a CellModel
    current = 1e-3 * AREA_M2 * 1e4  # 1 mA/cm^2
    for _ in range(3):
        for signed in (-current, current):
            model.voltage_at_current(signed, np.arange(1.0, 600.0))  # type: ignore[attr-defined]
            model.advance_at_current(signed, 3000.0)  # type: ignore[attr-defined]
    model.advance_at_current(0.0, 600.0)  # type: ignore[attr-defined]
    model.current_at_voltage(0.5, np.arange(1.0, 60.0))  # type: ignore[attr-defined]
    model.advance_at_voltage(0.5, 60.0)  # type: ignore[attr-defined]
    model.impedance(np.logspace(-1, 5, 20))  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", names())
def test_only_the_live_attributes_change_as_a_cell_runs(name: str) -> None:
    """An attribute missing from LIVE would be restored from the pickle taken first: a resumed
    run would go on from a cell partly as it was at the start."""
    cell = make_cell(name, seed=4, area_m2=AREA_M2)
    assert isinstance(cell, GeneratorsPickleAsState)
    assert cell.LIVE, "a model lists what changes as it runs"

    def fixed() -> bytes:
        return pickle.dumps(
            {k: v for k, v in vars(cell).items() if k not in cell.LIVE and k != "_frozen_pickle"}
        )

    before = fixed()
    _exercise(cell)
    assert fixed() == before


@pytest.mark.parametrize("name", names())
def test_a_cell_restored_from_its_pickle_goes_on_as_the_original(name: str) -> None:
    cell = make_cell(name, seed=5, area_m2=AREA_M2)
    _exercise(cell)
    pickle.dumps(cell)  # the unchanging part is cached by now: it must still restore exactly
    _exercise(cell)
    copy = pickle.loads(pickle.dumps(cell))
    t = np.arange(1.0, 900.0)
    for model in (cell, copy):
        model.advance_at_current(-7.85e-4, 1800.0)
    np.testing.assert_array_equal(cell.voltage_at_current(7.85e-4, t), copy.voltage_at_current(7.85e-4, t))
    np.testing.assert_array_equal(cell.impedance(np.logspace(0, 4, 9)), copy.impedance(np.logspace(0, 4, 9)))
