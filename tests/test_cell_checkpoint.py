"""A simulated cell's checkpoint is plain JSON: only the attributes a model lists as LIVE change
as it runs, and a cell rebuilt from its preset with that state put back goes on exactly as the
original, random draws included."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import enum
import json
import math
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyclerd.drivers.base import Batch, StepEnd, StepProgress
from cyclerd.drivers.clock import VirtualClock
from cyclerd.protocols.program import CurrentCommand, EndConditions, ImpedanceSpec, RecordRule, SafetyLimits
from cyclerd.simulators.cell import CellModel, LiveState, LiveStateError
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell, names

AREA_M2 = 0.785e-4
CURRENT_A = 1e-3 * AREA_M2 * 1e4  # 1 mA/cm²


def _exercise(cell: CellModel) -> None:
    """Plate, strip, rest, hold a voltage and measure a spectrum: everything a protocol does."""
    for _ in range(3):
        for signed in (-CURRENT_A, CURRENT_A):
            cell.voltage_at_current(signed, np.arange(1.0, 600.0))
            cell.advance_at_current(signed, 3000.0)
    cell.advance_at_current(0.0, 600.0)
    cell.current_at_voltage(0.5, np.arange(1.0, 60.0))
    cell.advance_at_voltage(0.5, 60.0)
    cell.impedance(np.logspace(-1, 5, 20))


def _same(a: Any, b: Any, where: str = "") -> None:
    """Deep equality of two attribute values, types included; floats bit for bit."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.random.Generator):
        assert a.bit_generator.state == b.bit_generator.state, where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        for field in dataclasses.fields(a):
            _same(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
    elif isinstance(a, tuple | list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, float):
        assert repr(a) == repr(b) or (math.isnan(a) and math.isnan(b)), where
    else:
        assert a == b, where


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.mark.parametrize("name", names())
def test_only_the_live_attributes_change_as_a_cell_runs(name: str) -> None:
    """An attribute missing from LIVE would come back as the fresh cell has it: a resumed run
    would go on from a cell partly as it was at the start."""
    cell = make_cell(name, seed=4, area_m2=AREA_M2)
    assert isinstance(cell, LiveState)
    assert cell.LIVE, "a model lists what changes as it runs"
    changing = cell.LIVE + cell.CACHES
    before = {k: copy.deepcopy(v) for k, v in vars(cell).items() if k not in changing}
    _exercise(cell)
    after = {k: v for k, v in vars(cell).items() if k not in changing}
    assert after.keys() == before.keys()
    for key, value in before.items():
        _same(value, after[key], key)


@pytest.mark.parametrize("name", names())
def test_a_cell_rebuilt_from_its_preset_and_live_state_goes_on_as_the_original(name: str) -> None:
    cell = make_cell(name, seed=5, area_m2=AREA_M2)
    assert isinstance(cell, LiveState)
    _exercise(cell)
    cell.live_state()  # taking the state changes nothing
    _exercise(cell)
    rebuilt = make_cell(name, seed=5, area_m2=AREA_M2)
    assert isinstance(rebuilt, LiveState)
    rebuilt.restore_live_state(json.loads(json.dumps(cell.live_state())))
    for attribute in cell.LIVE:
        _same(getattr(cell, attribute), getattr(rebuilt, attribute), attribute)
    t = np.arange(1.0, 900.0)
    for model in (cell, rebuilt):
        model.advance_at_current(-CURRENT_A, 1800.0)
    np.testing.assert_array_equal(
        cell.voltage_at_current(CURRENT_A, t), rebuilt.voltage_at_current(CURRENT_A, t)
    )
    np.testing.assert_array_equal(cell.current_at_voltage(0.2, t), rebuilt.current_at_voltage(0.2, t))
    np.testing.assert_array_equal(
        cell.impedance(np.logspace(0, 4, 9)), rebuilt.impedance(np.logspace(0, 4, 9))
    )
    _exercise(cell)
    _exercise(rebuilt)
    _same(cell.live_state(), rebuilt.live_state())


@pytest.mark.parametrize("name", names())
def test_the_live_state_is_strict_json_and_carries_no_blob(name: str) -> None:
    """Data only: nothing in a checkpoint can make the daemon run code when it is read."""
    cell = make_cell(name, seed=6, area_m2=AREA_M2)
    assert isinstance(cell, LiveState)
    _exercise(cell)
    state = cell.live_state()
    text = json.dumps(state, allow_nan=False)
    assert json.loads(text) == state
    _same(json.loads(text), state)
    assert set(state) == set(cell.LIVE)
    assert all(len(s) <= 32 for s in _strings(state)), "names and enum values, no encoded blobs"
    assert "pickle" not in text


def test_a_state_of_another_model_is_refused_and_leaves_the_cell_as_it_was() -> None:
    half, full = make_cell("mgagsn", seed=1), make_cell("ncm811-anodeless", seed=1)
    assert isinstance(half, LiveState)
    assert isinstance(full, LiveState)
    _exercise(half)
    before = half.live_state()
    with pytest.raises(LiveStateError, match="another cell model"):
        half.restore_live_state(full.live_state())
    broken = json.loads(json.dumps(before))
    broken["_state"]["last_direction"] = "sideways"
    with pytest.raises(LiveStateError, match="last_direction"):
        half.restore_live_state(broken)
    _same(half.live_state(), before)


class _Mode(enum.Enum):
    ON = "on"
    OFF = "off"


class _Pair(NamedTuple):
    t_s: float
    n: int


@dataclasses.dataclass(frozen=True)
class _Inner:
    level: float
    mode: _Mode
    pair: _Pair


class _Toy(LiveState):
    """Every kind of value the checkpoint supports, as a model's LIVE attributes could hold."""

    LIVE = ("inner", "rng", "history", "trace", "counts", "bounds", "scalar", "unset")

    def __init__(self) -> None:
        self.inner = _Inner(0.0, _Mode.OFF, _Pair(0.0, 0))
        self.rng = np.random.default_rng(0)
        self.history: list[float] = []
        self.trace = np.zeros(3)
        self.counts = np.zeros((2, 2), dtype=np.int64)
        self.bounds: tuple[float, float] = (0.0, 1.0)
        self.scalar = np.float32(0.0)
        self.unset: float | None = None


finite = st.floats(allow_nan=False, allow_infinity=False)


@given(
    level=finite,
    draws=st.integers(0, 50),
    history=st.lists(finite, max_size=5),
    trace=st.lists(finite, max_size=6),
    count=st.integers(-(2**62), 2**62),
    scalar=st.floats(width=32, allow_nan=False, allow_infinity=False),
    unset=st.none() | finite,
)
def test_every_supported_kind_of_value_comes_back_exactly(
    level: float,
    draws: int,
    history: list[float],
    trace: list[float],
    count: int,
    scalar: float,
    unset: float | None,
) -> None:
    toy = _Toy()
    toy.inner = _Inner(level, _Mode.ON, _Pair(-level, count))
    toy.rng.normal(size=draws)
    toy.history = history
    toy.trace = np.array(trace, dtype=np.float64)
    toy.counts = np.array([[count, 1], [2, -count]], dtype=np.int64)
    toy.bounds = (level, -0.0)
    toy.scalar = np.float32(scalar)
    toy.unset = unset
    back = _Toy()
    back.restore_live_state(json.loads(json.dumps(toy.live_state(), allow_nan=False)))
    for attribute in _Toy.LIVE:
        _same(getattr(toy, attribute), getattr(back, attribute), attribute)
    np.testing.assert_array_equal(toy.rng.random(5), back.rng.random(5))


def test_a_value_the_checkpoint_cannot_hold_is_an_error_not_a_guess() -> None:
    toy = _Toy()
    toy.history = [np.float64(1.0)]  # would come back as a plain float
    with pytest.raises(TypeError, match="history"):
        toy.live_state()
    toy = _Toy()
    toy.unset = {1.0}  # type: ignore[assignment]
    with pytest.raises(TypeError, match="cannot checkpoint a set"):
        toy.live_state()
    toy = _Toy()
    toy.trace = np.array([1j])
    with pytest.raises(TypeError, match="trace"):
        toy.live_state()
    with pytest.raises(TypeError, match="LIVE"):
        type("Forgetful", (LiveState,), {})


def test_a_lossy_or_malformed_value_is_refused() -> None:
    state = _Toy().live_state()
    for attribute, wrong in (
        ("counts", [[1.5, 0], [0, 0]]),  # floats into an int array
        ("trace", [[0.0], [1.0]]),  # 2-d where 1-d belongs
        ("bounds", [0.0]),  # a pair of one
        ("rng", {"bit_generator": "MT19937"}),
        ("inner", {"level": 0.0}),
        ("history", [{"level": 0.0}]),
        ("scalar", "0.5"),
    ):
        with pytest.raises(LiveStateError, match=attribute):
            _Toy().restore_live_state({**state, attribute: wrong})


def _command(kind: Literal["plate", "strip"], current_A: float, end: EndConditions) -> CurrentCommand:
    return CurrentCommand(
        index=0, kind=kind, label=kind, source="test", end=end, record=RecordRule(every_s=10.0),
        current_A=current_A,
    )  # fmt: skip


async def _step(channel: SimulatedChannel, command: CurrentCommand) -> list[Batch | StepEnd]:
    return [item async for item in channel.run(command, StepProgress(), SafetyLimits())]


@pytest.mark.parametrize("name", ["mgagsn", "ncm811-anodeless"])
def test_a_channel_restored_from_a_snapshot_runs_on_as_the_original(name: str) -> None:
    """The daemon's path at a restart: a fresh cell from the preset, the checkpoint's snapshot."""
    plate = _command("plate", -CURRENT_A, EndConditions(duration_s=1800.0))
    strip = _command("strip", CURRENT_A, EndConditions(duration_s=3600.0, voltage_above_V=1.0))
    spec = ImpedanceSpec(1e4, 1.0, 3, 5e-3, galvanostatic=False, dc_level=None)

    async def main() -> None:
        original = SimulatedChannel(make_cell(name, seed=3, area_m2=AREA_M2), VirtualClock())
        first = original.snapshot()
        assert first is not None
        assert original.snapshot() is first  # the cell has not moved: the same snapshot
        await _step(original, plate)
        snapshot = original.snapshot()
        assert snapshot is not first
        stored = json.loads(json.dumps(snapshot, allow_nan=False))
        resumed = SimulatedChannel(make_cell(name, seed=3, area_m2=AREA_M2), VirtualClock())
        resumed.restore(stored)
        assert resumed.snapshot() == snapshot
        a, b = await _step(original, strip), await _step(resumed, strip)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            if isinstance(x, Batch):
                assert isinstance(y, Batch)
                np.testing.assert_array_equal(x.t_s, y.t_s)
                np.testing.assert_array_equal(x.voltage_V, y.voltage_V)
                np.testing.assert_array_equal(x.charge_As, y.charge_As)
            else:
                assert x == y
        z_a, z_b = await original.impedance(spec), await resumed.impedance(spec)
        np.testing.assert_array_equal(z_a.impedance_ohm, z_b.impedance_ohm)
        assert original.snapshot() == resumed.snapshot()

    asyncio.run(main())
