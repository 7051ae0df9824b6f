"""The short-circuit check on what a cell shows: the plateau's own noise, the rates that flowed.

Synthetic cycles whose answers are known by construction: a plating step that first runs down
through the seed's alloying plateaus (falls of tens of mV) and then sits on the Li plateau, and
a strip. A soft short adds millivolt telegraph noise on the plateau; a rate test changes the
discharge rate between loops.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from cyclerd.analysis.cycles import detect_short, forward_voltage_stats, summarise
from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import StoreSink
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Store

I_A = 7.85e-4


def _cycles(
    strip_fractions: list[float],
    telegraph_V: list[float] | None = None,
    strip_currents_A: list[float] | None = None,
) -> dict[str, np.ndarray]:
    """Plate 1 h (10 s logging): three alloy plateaus 30 mV apart in its first 10 min, then the
    Li plateau at -20 mV with 0.2 mV noise (+ telegraph noise of the given size); then strip."""
    rng = np.random.default_rng(7)
    columns: dict[str, list[np.ndarray]] = {
        k: [] for k in ("t", "step", "cycle", "voltage", "current", "charge", "energy")
    }
    t0, step = 0.0, 0
    telegraph = telegraph_V or [0.0] * len(strip_fractions)
    strips = strip_currents_A or [I_A] * len(strip_fractions)
    for n, (fraction, flicker, strip_A) in enumerate(zip(strip_fractions, telegraph, strips, strict=True), 1):
        plate_t = np.arange(0.0, 3601.0, 10.0)
        alloy = np.select([plate_t < 200, plate_t < 400, plate_t < 600], [0.07, 0.04, 0.01], -0.02)
        levels = rng.choice([0.0, flicker], size=plate_t.size) if flicker else 0.0
        plate_v = alloy + 2e-4 * rng.standard_normal(plate_t.size) - levels
        strip_duration = 3600.0 * fraction * I_A / strip_A
        strip_t = np.linspace(0.0, strip_duration, int(strip_duration // 10) + 1)
        for sign, t, volts, current in (
            (-1, plate_t, plate_v, I_A),
            (+1, strip_t, np.full(strip_t.size, 0.05), strip_A),
        ):
            step += 1
            columns["t"].append(t0 + t)
            columns["step"].append(np.full(t.size, step))
            columns["cycle"].append(np.full(t.size, n))
            columns["voltage"].append(volts)
            columns["current"].append(np.full(t.size, sign * current))
            columns["charge"].append(sign * current * t)
            columns["energy"].append(volts * sign * current * t)
            t0 += t[-1]
    return {k: np.concatenate(v) for k, v in columns.items()}


def _short(samples: dict[str, np.ndarray]) -> object:
    cycles = summarise(samples)
    return detect_short(cycles, [forward_voltage_stats(samples, c) for c in cycles])


def test_the_noise_baseline_is_the_plating_plateau_not_the_fall_through_the_alloy_plateaus() -> None:
    healthy = _cycles([0.85] + [0.996] * 7)
    assert _short(healthy) is None
    stats = forward_voltage_stats(healthy, summarise(healthy)[3])
    assert stats.noise_V < 1e-3  # the plateau's own noise, not the 30 mV alloy falls
    assert stats.level_V == pytest.approx(0.02, abs=1e-3)


def test_a_soft_shorts_millivolt_flicker_on_the_plateau_is_caught_in_its_first_cycle() -> None:
    soft = _cycles([0.85] + [0.996] * 7, telegraph_V=[0.0] * 6 + [3e-3, 3e-3])
    short = _short(soft)
    assert short is not None
    assert short.cycle == 7  # type: ignore[attr-defined]
    assert "noisy" in short.reason  # type: ignore[attr-defined]


def test_more_than_100_percent_after_a_rate_drop_is_the_cell_catching_up_not_a_short() -> None:
    """E9's recovery: the discharge rate drops from 1C to 0.1C and the stranded lithium comes
    back (CE 133 %). At unchanged rates the same CE is a short."""
    rates = _cycles([0.85, 0.996, 0.95, 1.33], strip_currents_A=[I_A, I_A, 5 * I_A, I_A])
    assert _short(rates) is None
    same = _cycles([0.85, 0.996, 0.996, 1.33])
    short = _short(same)
    assert short is not None
    assert short.cycle == 4  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_library_rate_test_runs_to_its_end_on_the_full_cell(tmp_path: Path, seed: int) -> None:
    text = (files("cyclerd.protocols") / "library" / "rate_capability.yaml").read_text()
    program = compile_protocol(loads(text))
    store = Store(tmp_path / "e9.db")
    run_id = store.create_run(program.name, "sim", text, {}, {})
    clock = VirtualClock()
    cell = make_cell("ncm811-anodeless", seed=seed, area_m2=program.area_m2)
    result = asyncio.run(
        Runner(program, SimulatedChannel(cell, clock), clock, StoreSink(store, run_id)).run()
    )
    assert result.short is None
    loops = sum(node.count or 0 for node in program.body if hasattr(node, "innermost"))
    assert len(result.cycles) == loops
