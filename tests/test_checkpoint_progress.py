"""A checkpoint taken inside a step's every-block carries that step's own progress.

A restart during the block runs the block again, then the step goes on with the progress the
checkpoint holds: the previous step's (at the start of a step) would end the step that much too
early, and none (a block run again after a restart, interrupted again) would run it again from
its beginning: a plating step that plates twice its charge.
"""

from __future__ import annotations

import asyncio

from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.cursor import Cursor, Phase
from cyclerd.engine.resume import History
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import Columns, Sink
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell

PROTOCOL = """
name: at-start block
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.5 V, voltage_max: 3 V}
record: {every: 10 s}
steps:
  - rest: 120 s
  - plate:
      current: 1 mA/cm^2
      until: {duration: 600 s}
      every:
        interval: 200 s
        at_start: true
        at_end: false
        steps:
          - rest: 30 s
"""


class Checkpoints(Sink):
    """Every cursor a batch leaves the run at, as the store would checkpoint it."""

    def __init__(self) -> None:
        self.cursors: list[Cursor] = []

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        if cursor is not None:
            self.cursors.append(cursor)


def run(checkpoints: Checkpoints, taking_up: Cursor | None = None) -> None:
    program = compile_protocol(loads(PROTOCOL))
    clock = VirtualClock()
    channel = SimulatedChannel(make_cell("mgagsn", seed=1, area_m2=program.area_m2), clock, name="ch1")
    runner = Runner(program, channel, clock, checkpoints)
    if taking_up is not None:
        runner.restore(taking_up, History(), RunState.RUNNING, 0.0)
    asyncio.run(runner.run())


def plating_checkpoints(cursors: list[Cursor], phase: Phase) -> list[Cursor]:
    return [c for c in cursors if c.step_number == 2 and c.phase is phase]


def test_a_checkpoint_in_the_block_at_a_steps_start_holds_none_of_the_previous_step() -> None:
    checkpoints = Checkpoints()
    run(checkpoints)
    at_start = plating_checkpoints(checkpoints.cursors, Phase.AT_START)
    assert at_start, "no checkpoint inside the block at the plating step's start"
    assert {c.progress.t_s for c in at_start} == {0.0}  # not the rest's 120 s
    assert {c.progress.charge_As for c in at_start} == {0.0}


def test_a_block_run_again_after_a_restart_keeps_the_steps_progress_in_its_checkpoints() -> None:
    first = Checkpoints()
    run(first)
    interrupted = plating_checkpoints(first.cursors, Phase.INTERRUPT)[0]  # the block at 200 s
    assert interrupted.progress.t_s == 200.0
    again = Checkpoints()
    run(again, taking_up=interrupted)
    rerun = plating_checkpoints(again.cursors, Phase.INTERRUPT)
    assert rerun[0].progress.t_s == 200.0  # a second crash here resumes at 200 s, not at 0
    assert rerun[0].progress.charge_As == interrupted.progress.charge_As
