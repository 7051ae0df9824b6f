"""The paper's in-situ EIS (E5) on the MethodSCRIPT emulator over a real pty, through the driver
and the runner, against the same experiment on the in-process simulated channel."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from cyclerd.analysis.cycles import summarise
from cyclerd.drivers.base import unmet_needs
from cyclerd.drivers.clock import VirtualClock
from cyclerd.drivers.methodscript import open_methodscript
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import StoreSink
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.methodscript_emulator import MethodScriptEmulator
from cyclerd.simulators.presets import make_cell
from cyclerd.store.database import Store

PRESET, SEED = "mgagsn-pvdf", 3


def _e5_text() -> str:
    # The paper's spectra start at 7 MHz; an EmStat4 reaches 200 kHz (the driver refuses more
    # before the run starts), so both runs here start at 200 kHz.
    text = (files("cyclerd.protocols") / "library" / "insitu_eis.yaml").read_text()
    assert "frequency_start: 7 MHz" in text
    return text.replace("frequency_start: 7 MHz", "frequency_start: 200 kHz")


def _in_situ(store: Store) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    steps = store.steps(1)
    plate = next(s for s in steps if s["label"] == "plate with EIS")
    strip = next(s for s in steps if s["label"] == "strip with EIS")
    spectra = store.spectra(1)
    during = [[s for s in spectra if step["t_start"] <= s["t"] <= step["t_end"]] for step in (plate, strip)]
    return during[0], during[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Store]:
    tmp = tmp_path_factory.mktemp("e5")
    text = _e5_text()
    program = compile_protocol(loads(text))

    async def on_device() -> RunState:
        emulator = MethodScriptEmulator(preset=PRESET, seed=SEED, speed=None, pty=True, tcp=False)
        await emulator.start()
        try:
            clock = VirtualClock()
            async with open_methodscript(emulator.pty_path or "", clock) as channel:
                assert unmet_needs(program.needs(), channel.capabilities, "EmStat4") == []
                paper = compile_protocol(
                    loads((files("cyclerd.protocols") / "library" / "insitu_eis.yaml").read_text())
                )
                assert "200000 Hz" in " ".join(unmet_needs(paper.needs(), channel.capabilities, "EmStat4"))
                store = Store(tmp / "device.db")
                run_id = store.create_run(program.name, "methodscript", text, {}, {})
                result = await Runner(program, channel, clock, StoreSink(store, run_id)).run()
                return result.state
        finally:
            await emulator.stop()

    assert asyncio.run(on_device()) is RunState.COMPLETED
    clock = VirtualClock()
    store = Store(tmp / "sim.db")
    run_id = store.create_run(program.name, "sim", text, {}, {})
    channel = SimulatedChannel(make_cell(PRESET, seed=SEED), clock)
    assert (
        asyncio.run(Runner(program, channel, clock, StoreSink(store, run_id)).run()).state
        is RunState.COMPLETED
    )
    return Store(tmp / "device.db"), store


def test_e5_on_the_device_has_6_and_5_spectra_like_the_simulator(runs: tuple[Store, Store]) -> None:
    device, simulated = runs
    for store in (device, simulated):
        plating, stripping = _in_situ(store)
        assert (len(plating), len(stripping)) == (6, 5)


def test_e5_cycles_agree_within_the_noise(runs: tuple[Store, Store]) -> None:
    device, simulated = (summarise(store.samples(1)) for store in runs)
    assert len(device) == len(simulated) == 4
    for d, s in zip(device, simulated, strict=True):
        assert d.forward_As == pytest.approx(s.forward_As, rel=0.01)
        assert d.coulombic_efficiency == pytest.approx(s.coulombic_efficiency, abs=0.01)


def test_e5_spectra_agree_within_the_noise(runs: tuple[Store, Store]) -> None:
    device, simulated = runs
    for d, s in zip(_in_situ(device)[0], _in_situ(simulated)[0], strict=True):
        # The device measures its own frequency list; compare where both measured.
        z_device = np.interp(
            np.log10(s["frequency_Hz"]), np.log10(d["frequency_Hz"][::-1]), d["impedance_ohm"].real[::-1]
        )
        inside = (s["frequency_Hz"] <= d["frequency_Hz"].max()) & (
            s["frequency_Hz"] >= d["frequency_Hz"].min()
        )
        assert inside.sum() > 20
        np.testing.assert_allclose(z_device[inside], s["impedance_ohm"].real[inside], rtol=0.05)


CV = """
name: E10, a short voltammogram
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.2 V, voltage_max: 2.5 V, current_max: 5 mA}
record: {every: 1 s}
steps:
  - sweep: {start: 0.6 V, vertices: [0.0 V, 0.6 V], scan_rate: 2 mV/s}
"""


def test_e10_voltammogram_on_the_device_matches_the_simulator(tmp_path: Path) -> None:
    program = compile_protocol(loads(CV))

    async def on_device() -> None:
        emulator = MethodScriptEmulator(preset="mgagsn", seed=SEED, speed=None, pty=True, tcp=False)
        await emulator.start()
        try:
            clock = VirtualClock()
            async with open_methodscript(emulator.pty_path or "", clock) as channel:
                store = Store(tmp_path / "device.db")
                run_id = store.create_run(program.name, "methodscript", CV, {}, {})
                assert (
                    await Runner(program, channel, clock, StoreSink(store, run_id)).run()
                ).state is RunState.COMPLETED
        finally:
            await emulator.stop()

    asyncio.run(on_device())
    clock = VirtualClock()
    store = Store(tmp_path / "sim.db")
    run_id = store.create_run(program.name, "sim", CV, {}, {})
    channel = SimulatedChannel(make_cell("mgagsn", seed=SEED), clock)
    assert (
        asyncio.run(Runner(program, channel, clock, StoreSink(store, run_id)).run()).state
        is RunState.COMPLETED
    )
    device, simulated = Store(tmp_path / "device.db").samples(1), store.samples(1)
    # Both sweep 0.6 V -> 0 V -> 0.6 V; compare the current at the same potentials, cathodic branch.
    for samples in (device, simulated):
        assert samples["voltage"].min() == pytest.approx(0.0, abs=2e-3)
    turn_d, turn_s = int(np.argmin(device["voltage"])), int(np.argmin(simulated["voltage"]))
    cathodic_d = np.interp(
        np.linspace(0.5, 0.05, 10), device["voltage"][:turn_d][::-1], device["current"][:turn_d][::-1]
    )
    cathodic_s = np.interp(
        np.linspace(0.5, 0.05, 10), simulated["voltage"][:turn_s][::-1], simulated["current"][:turn_s][::-1]
    )
    assert (cathodic_s < 0).any()  # lithiation current flows on the way down
    np.testing.assert_allclose(cathodic_d, cathodic_s, rtol=0.1, atol=2e-6)
