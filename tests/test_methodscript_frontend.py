"""The emulated EmStat's analog front end: the cell lives through the device's time, not the
emulator's lag behind the wall clock."""

from __future__ import annotations

import pytest
from linear_cell import LinearCell

from cyclerd.drivers.clock import VirtualClock
from cyclerd.simulators.methodscript_frontend import GALVANOSTAT_MODE, AnalogFrontend


def test_a_finished_loop_does_not_pass_the_emulators_lag_through_the_cell() -> None:
    """A loaded machine at 3600x runs a loop's samples late; the real device would have ended the
    loop (and switched the cell off) at its last sample, so no more charge passes than the
    samples account for."""
    clock = VirtualClock()
    cell = LinearCell()
    front = AnalogFrontend(cell, clock)
    front.configure("set_pgstat_mode", [GALVANOSTAT_MODE])
    front.cell_switch(True)
    front.begin("cp")
    front.apply("I", 1e-3)
    for _ in range(10):
        front.sample(1.0)
    clock.elapse(100.0)  # the emulator is 100 s of cell time behind the wall clock
    front.end_loop()
    front.cell_switch(False)  # the script's on_finished: cell_off
    assert cell.charge_As == pytest.approx(10 * 1e-3)
