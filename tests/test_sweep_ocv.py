"""A sweep may start at the open-circuit voltage (`start: ocv`): the model, the compiled
SweepCommand, the plan, and channels that read the OCV when the step begins."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from linear_cell import LinearCell
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.drivers.base import Batch, StepEnd, StepProgress
from cyclerd.drivers.clock import VirtualClock
from cyclerd.drivers.methodscript import SWEEP_DONE, MethodScriptChannel
from cyclerd.protocols import ProtocolError, loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.protocols.plan import command_span, plan
from cyclerd.protocols.program import (
    EndConditions,
    RecordRule,
    SafetyLimits,
    SweepCommand,
    SweepSpec,
)
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.methodscript_emulator import MethodScriptEmulator
from cyclerd.simulators.presets import make_cell

AREA_M2 = 0.785e-4
FROM_OCV = textwrap.dedent("""
    name: CV from the OCV
    cell: {area: 0.785 cm^2}
    safety: {voltage_min: -0.2 V, voltage_max: 3.0 V}
    steps:
      - sweep:
          label: CV
          start: ocv
          vertices: [0.5 V]
          scan_rate: 10 mV/s
          scans: 2
          record: {every: 1 s}
    """).lstrip()


def _sweep(text: str = FROM_OCV) -> SweepCommand:
    (command,) = compile_protocol(loads(text)).commands()
    assert isinstance(command, SweepCommand)
    return command


def test_a_sweep_from_ocv_compiles_to_no_start_voltage() -> None:
    command = _sweep()
    spec = command.spec
    assert spec == SweepSpec(None, (0.5,), 0.01, 2)
    assert spec.corners_V(2.3) == (2.3, 0.5, 2.3)  # each scan returns to the OCV
    assert spec.duration_s(2.3) == pytest.approx(2 * 3.6 / 0.01)
    assert spec.duration_s() == 0.0  # the least it can take: the OCV already at the vertex
    assert command.deadline_s is None  # unknown until the OCV is measured
    with pytest.raises(ValueError, match="open-circuit voltage"):
        spec.corners_V()
    # A voltage start is unchanged.
    explicit = SweepSpec(2.0, (0.0, 2.0), 1e-4, 3)
    assert explicit.corners_V(1.0) == (2.0, 0.0, 2.0)
    assert explicit.duration_s() == pytest.approx(3 * 4.0 / 1e-4)


def test_a_sweep_from_ocv_needs_the_safety_window_and_its_vertices() -> None:
    needs = compile_protocol(loads(FROM_OCV)).needs()
    assert needs.voltage_range_V == (-0.2, 3.0)
    assert "sweep" in needs.kinds
    bare = FROM_OCV.replace("  safety: {voltage_min: -0.2 V, voltage_max: 3.0 V}\n", "").replace(
        "safety: {voltage_min: -0.2 V, voltage_max: 3.0 V}\n", ""
    )
    assert compile_protocol(loads(bare)).needs().voltage_range_V == (0.5, 0.5)


def test_the_plan_says_ocv_and_a_lower_bound() -> None:
    program = compile_protocol(loads(FROM_OCV))
    (line,) = plan(program).lines
    assert line.text == "CV OCV → 0.5 V → OCV at 10 mV/s, 2 scan(s)"
    assert command_span(_sweep()).high is None
    two = FROM_OCV.replace("vertices: [0.5 V]", "vertices: [0.5 V, 1.5 V]")
    (line,) = plan(compile_protocol(loads(two))).lines
    assert line.text.startswith("CV OCV → 0.5 V → 1.5 V → OCV")
    assert line.span.low == pytest.approx(2 * 2.0 / 0.01)  # at least 0.5 -> 1.5 -> 0.5 per scan
    assert line.span.text() == "≥ 6.667 min"


@pytest.mark.parametrize(("start", "fragment"), [("OCV", "or write 'ocv'"), ("2", "has no unit")])
def test_a_start_that_is_neither_a_voltage_nor_ocv_is_refused(start: str, fragment: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        loads(FROM_OCV.replace("start: ocv", f"start: {start}"), "cv.yaml")
    message = str(caught.value)
    assert "cv.yaml:7:14:" in message
    assert fragment in message
    assert "'ocv'" in message


def test_validate_prints_the_plan_of_a_sweep_from_ocv(tmp_path: Path) -> None:
    path = tmp_path / "cv.yaml"
    path.write_text(FROM_OCV)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "OCV → 0.5 V → OCV" in result.output


async def _collect(
    channel: SimulatedChannel | MethodScriptChannel, command: SweepCommand
) -> tuple[Batch, StepEnd]:
    batches, end = [], None
    async for item in channel.run(command, StepProgress(), SafetyLimits()):
        if isinstance(item, StepEnd):
            end = item
        else:
            batches.append(item)
    assert end is not None
    names = ("t_s", "voltage_V", "current_A", "charge_As", "energy_J")
    joined = Batch(*(np.concatenate([getattr(b, name) for b in batches]) for name in names), final=True)
    return joined, end


async def test_a_simulated_sweep_from_ocv_starts_at_the_cells_open_circuit_voltage() -> None:
    ocv = float(make_cell("mgagsn", seed=1, area_m2=AREA_M2).voltage_at_current(0.0, np.zeros(1))[0])
    assert ocv > 1.0  # a fresh, lithium-free seed electrode
    channel = SimulatedChannel(make_cell("mgagsn", seed=1, area_m2=AREA_M2), VirtualClock())
    command = _sweep(FROM_OCV.replace("[0.5 V]", "[1.0 V]").replace("scans: 2", "scans: 1"))
    samples, end = await _collect(channel, command)
    assert samples.voltage_V[0] == pytest.approx(ocv, abs=2e-3)
    assert samples.voltage_V.min() == pytest.approx(1.0, abs=0.011)  # logged every 1 s = 10 mV
    assert samples.voltage_V[-1] == pytest.approx(samples.voltage_V[0], abs=1e-6)  # back at the OCV
    assert end.reason == "sweep"
    assert end.progress.t_s == pytest.approx(command.spec.duration_s(float(samples.voltage_V[0])), abs=1.0)


async def test_a_methodscript_sweep_from_ocv_measures_it_first() -> None:
    cell = LinearCell()  # its OCV is 3.0 V
    emulator = MethodScriptEmulator(cell, speed=None)
    await emulator.start()
    command = SweepCommand(
        index=1, label="cv", source="steps[0].sweep", end=EndConditions(), record=RecordRule(every_s=5.0),
        spec=SweepSpec(None, (2.9, 3.1), 1e-3, 1),
    )  # fmt: skip
    try:
        async with MethodScriptChannel(f"socket://127.0.0.1:{emulator.port}", sweep_step_V=5e-3) as channel:
            samples, end = await _collect(channel, command)
    finally:
        await emulator.stop()
    assert end.reason == SWEEP_DONE
    assert samples.voltage_V[0] == pytest.approx(3.0, abs=6e-3)  # one 5 mV step from the OCV
    assert samples.voltage_V.min() == pytest.approx(2.9)
    assert samples.voltage_V.max() == pytest.approx(3.1)
    assert end.progress.t_s == pytest.approx(400.0, abs=10.0)  # 3.0 -> 2.9 -> 3.1 -> 3.0 at 1 mV/s
