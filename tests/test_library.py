"""The protocol library: every shipped file loads, and each says what its experiment needs.

Files are read from the installed package (as a user gets them), not from the source tree.
Besides loading, each experiment is checked against the numbers of the paper it reproduces.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Iterator
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from cyclerd.protocols import Protocol, ProtocolError, loads
from cyclerd.protocols.checks import step_time_bound
from cyclerd.protocols.model import (
    ConstantCurrent,
    ConstantCurrentConstantVoltage,
    Impedance,
    Plate,
    Repeat,
    Rest,
    Strip,
    Sweep,
)
from cyclerd.protocols.scale import CellScale
from cyclerd.protocols.units import Amount, Basis

LIBRARY = importlib.resources.files("cyclerd.protocols") / "library"
FILES = sorted(entry.name for entry in LIBRARY.iterdir() if entry.name.endswith(".yaml"))
EXPERIMENTS = {
    "plating_stripping.yaml": "E1",
    "eis_after_cycling.yaml": "E4",
    "insitu_eis.yaml": "E5",
    "formation.yaml": "E7",
    "cycling.yaml": "E8",
    "rate_capability.yaml": "E9",
    "cv.yaml": "E10",
}
SCHEMA_LINE = "# yaml-language-server: $schema=protocol.schema.json"

PELLET_M2 = 0.785e-4  # 10 mm pellet
MA_PER_CM2 = 10.0  # 1 mA/cm^2 in A/m^2
MAH_PER_CM2 = 36_000.0  # 1 mAh/cm^2 in A*s/m^2


def text(name: str) -> str:
    return (LIBRARY / name).read_text(encoding="utf-8")


@cache
def load(name: str) -> Protocol:
    return loads(text(name), name)


def walk(steps: list[Any]) -> Iterator[Any]:
    """Every step, depth first: loop bodies and every-blocks included."""
    for step in steps:
        yield step
        if isinstance(step, Repeat):
            yield from walk(step.steps)
        elif getattr(step, "every", None) is not None:
            yield from walk(step.every.steps)


def only(items: list[Any]) -> Any:
    assert len(items) == 1, items
    return items[0]


def of_type(protocol: Protocol, kind: type) -> list[Any]:
    return [step for step in walk(protocol.steps) if isinstance(step, kind)]


def amounts(value: Any) -> Iterator[Amount]:
    """Every current or charge anywhere in a model: each must resolve with the file's cell."""
    if isinstance(value, Amount):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from amounts(getattr(value, name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from amounts(item)


def scale(protocol: Protocol) -> CellScale:
    return CellScale(protocol.cell.area, protocol.cell.capacity)


def spectra(step: Any, step_seconds: float) -> int:
    """Spectra an every-block takes in a step lasting `step_seconds` (its own time)."""
    every = step.every
    during = math.ceil(step_seconds / every.interval) - 1
    return during + int(every.at_start) + int(every.at_end)


# --- the whole library -------------------------------------------------------------------------


def test_library_holds_every_experiment() -> None:
    # Guards the parametrised test below against an empty or stale package data set.
    assert set(EXPERIMENTS) <= set(FILES)


def test_installed_library_matches_the_source_tree() -> None:
    # A strict editable install links only the files present when it ran.
    source = Path(__file__).resolve().parents[1] / "protocols" / "library"
    if not source.is_dir():
        pytest.skip("not running from a source checkout")
    in_source = sorted(path.name for path in source.glob("*.yaml"))
    assert in_source == FILES, "reinstall the package (make install) to ship new library files"


@pytest.mark.parametrize("name", FILES)
def test_loads_and_is_complete(name: str) -> None:
    try:
        protocol = load(name)
    except ProtocolError as exc:
        pytest.fail(str(exc))
    assert protocol.steps
    assert text(name).splitlines()[0] == SCHEMA_LINE

    safety = protocol.safety
    limits = (safety.voltage_min, safety.voltage_max, safety.current_max, safety.duration_max)
    assert None not in limits, "every library file sets voltage, current and time limits"
    assert protocol.record.every is not None

    assert protocol.cell.area == pytest.approx(PELLET_M2)
    metadata = protocol.cell.metadata
    assert metadata["experiment"] == EXPERIMENTS.get(name, metadata["experiment"])
    assert "LPSCl" in str(metadata["electrolyte"])
    assert metadata["temperature_degC"] == 25

    cell = scale(protocol)
    unresolved = [a for a in amounts(protocol) if cell.resolve(a) is None]
    assert not unresolved, "the file's cell must resolve every current and charge"


# --- E1 plating/stripping ------------------------------------------------------------------------


def test_plating_stripping_follows_the_paper() -> None:
    protocol = load("plating_stripping.yaml")
    loop = only(of_type(protocol, Repeat))
    assert loop.count == 250
    assert loop.until.short_circuit is True

    plate, strip = loop.steps
    assert isinstance(plate, Plate)
    assert plate.current == Amount(10.0, Basis.AREAL)  # 1 mA/cm^2
    assert plate.until.charge == Amount(pytest.approx(MAH_PER_CM2), Basis.AREAL)
    assert scale(protocol).resolve(plate.current) == pytest.approx(0.785e-3)  # 0.785 mA

    assert isinstance(strip, Strip)
    assert strip.current == Amount(10.0, Basis.AREAL)
    assert strip.until.voltage_above == pytest.approx(1.0)
    assert strip.until.duration is not None
    assert strip.until.duration >= 3600.0  # never cuts a healthy 1 h strip short

    # Fine enough for the first-cycle seed plateaus (E3).
    assert protocol.record.every <= 10.0
    assert protocol.record.voltage_change is not None
    assert protocol.record.voltage_change <= 1e-3


# --- E4 EIS after cycling ------------------------------------------------------------------------


def test_eis_after_cycling_measures_after_5_and_10_cycles() -> None:
    protocol = load("eis_after_cycling.yaml")
    cycles, measured_after = 0, []
    for step in protocol.steps:
        if isinstance(step, Repeat):
            cycles += step.count
            plate, strip = step.steps
            assert plate.current == strip.current == Amount(10.0, Basis.AREAL)
            assert plate.until.charge == Amount(pytest.approx(MAH_PER_CM2), Basis.AREAL)
            assert strip.until.voltage_above == pytest.approx(1.0)
        elif isinstance(step, Impedance):
            measured_after.append(cycles)
            assert step.frequency_start == pytest.approx(7e6)
            assert step.frequency_stop == pytest.approx(0.1)
            assert step.points_per_decade == 10
            assert not step.galvanostatic
            assert step.amplitude == pytest.approx(0.010)
            assert step.dc_level == "ocv"
    assert measured_after == [5, 10]
    # Each spectrum follows a rest, so it is taken at a settled OCV.
    kinds = [type(step) for step in protocol.steps]
    assert all(kinds[i - 1] is Rest for i, k in enumerate(kinds) if k is Impedance)


# --- E5 in-situ EIS ------------------------------------------------------------------------------


def test_insitu_eis_gives_6_plating_and_5_stripping_spectra() -> None:
    protocol = load("insitu_eis.yaml")
    # Conditioning cycles come first; the in-situ cycle's steps are the ones with every-blocks.
    plate = only([p for p in of_type(protocol, Plate) if p.every is not None])
    strip = only([s for s in of_type(protocol, Strip) if s.every is not None])

    assert plate.every.interval == pytest.approx(600.0)
    assert plate.every.at_end is True
    assert strip.every.interval == pytest.approx(600.0)
    assert strip.every.at_end is False
    assert plate.every.at_start is strip.every.at_start is False

    plating_time = step_time_bound(plate, scale(protocol))
    assert plating_time == pytest.approx(3600.0)  # 1 mAh/cm^2 at 1 mA/cm^2
    assert spectra(plate, plating_time) == 6  # plating sequences 1-6
    # After conditioning, stripping lasts CE x 1 h with CE ~98 % (~59 min): spectra at 10-50 min.
    assert spectra(strip, 0.98 * 3600.0) == 5  # stripping sequences 1-5

    for step in (plate, strip):
        eis = only([s for s in step.every.steps if isinstance(s, Impedance)])
        assert (eis.frequency_start, eis.frequency_stop) == pytest.approx((7e6, 0.1))
        assert eis.amplitude == pytest.approx(0.010)
        assert not eis.galvanostatic


# --- E7-E9 full cell -----------------------------------------------------------------------------


def test_formation_is_0_1c_with_1c_of_2_ma_per_cm2() -> None:
    protocol = load("formation.yaml")
    cell = scale(protocol)
    assert protocol.cell.capacity == Amount(pytest.approx(2 * MAH_PER_CM2), Basis.AREAL)
    assert cell.resolve(Amount(1.0, Basis.C_RATE)) == pytest.approx(2 * MA_PER_CM2 * PELLET_M2)

    loop = only(of_type(protocol, Repeat))
    assert loop.count in (1, 2)
    charge, discharge = (s for s in loop.steps if isinstance(s, ConstantCurrent))
    assert charge.current == Amount(0.1, Basis.C_RATE)
    assert cell.resolve(charge.current) == pytest.approx(0.2 * MA_PER_CM2 * PELLET_M2)
    assert charge.until.voltage_above == pytest.approx(4.25)
    assert charge.until.charge is not None  # soft-short backstop
    assert discharge.current == Amount(-0.1, Basis.C_RATE)
    assert discharge.until.voltage_below == pytest.approx(2.5)


@pytest.mark.parametrize("name", ["cycling.yaml", "rate_capability.yaml"])
def test_full_cell_tests_start_with_the_same_formation(name: str) -> None:
    formation = only(of_type(load("formation.yaml"), Repeat))
    assert load(name).steps[1] == formation
    assert load(name).cell == load("formation.yaml").cell.model_copy(
        update={"metadata": load(name).cell.metadata}
    )


def test_cycling_runs_100_cycles_at_0_5c() -> None:
    protocol = load("cycling.yaml")
    loop = protocol.steps[2]
    assert isinstance(loop, Repeat)
    assert loop.count == 100
    assert loop.until.short_circuit is True
    assert loop.until.capacity_retention_below == pytest.approx(0.5)

    charge = only([s for s in loop.steps if isinstance(s, ConstantCurrentConstantVoltage)])
    assert charge.current == Amount(0.5, Basis.C_RATE)
    assert charge.voltage == pytest.approx(4.25)
    assert charge.until.current_below == Amount(0.05, Basis.C_RATE)  # C/20
    discharge = only([s for s in loop.steps if isinstance(s, ConstantCurrent)])
    assert discharge.current == Amount(-0.5, Basis.C_RATE)
    assert discharge.until.voltage_below == pytest.approx(2.5)
    assert scale(protocol).resolve(discharge.current) == pytest.approx(-MA_PER_CM2 * PELLET_M2)


def test_cycling_uses_a_pybamm_step_string() -> None:
    def strings(data: Any) -> Iterator[str]:
        if isinstance(data, dict):
            for key, value in data.items():
                if key == "steps":
                    yield from (item for item in value if isinstance(item, str))
                yield from strings(value)
        elif isinstance(data, list):
            for item in data:
                yield from strings(item)

    found = list(strings(yaml.safe_load(text("cycling.yaml"))))
    assert any(s.startswith("Discharge at 0.5C") for s in found), found


def test_rate_capability_steps_the_discharge_rate_only() -> None:
    protocol = load("rate_capability.yaml")
    loops = [s for s in protocol.steps[2:] if isinstance(s, Repeat)]
    rates, charges = [], []
    for loop in loops:
        assert loop.count == 5
        charges.append(only([s for s in loop.steps if isinstance(s, ConstantCurrentConstantVoltage)]))
        discharge = only([s for s in loop.steps if isinstance(s, ConstantCurrent)])
        assert discharge.current.basis is Basis.C_RATE
        assert discharge.until.voltage_below == pytest.approx(2.5)
        rates.append(-discharge.current.value)
    assert rates == pytest.approx([0.1, 0.2, 0.5, 1.0, 0.1])
    assert all(charge == charges[0] for charge in charges)
    assert charges[0].current == Amount(0.2, Basis.C_RATE)
    # The top rate is the paper's 1C = 2 mA/cm^2.
    assert scale(protocol).resolve(Amount(max(rates), Basis.C_RATE)) == pytest.approx(
        2 * MA_PER_CM2 * PELLET_M2
    )


# --- E10 cyclic voltammetry ----------------------------------------------------------------------


def test_cv_sweeps_to_0_v_and_back_within_the_time_limit() -> None:
    protocol = load("cv.yaml")
    sweep = only(of_type(protocol, Sweep))
    assert min(sweep.vertices) == pytest.approx(0.0)
    assert sweep.vertices[-1] == pytest.approx(sweep.start)  # closed loop: scans chain up
    assert sweep.start > 0.8  # starts above the first (Li-Sn) alloying plateau
    assert 2 <= sweep.scans <= 3
    assert sweep.scan_rate == pytest.approx(1e-4)  # 0.1 mV/s

    points = [sweep.start, *sweep.vertices]
    path = sum(abs(b - a) for a, b in pairwise(points))
    rests = sum(s.until.duration for s in of_type(protocol, Rest))
    assert sweep.scans * path / sweep.scan_rate + rests <= protocol.safety.duration_max
