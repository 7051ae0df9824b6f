"""Where a run stands in its program: plain data, and pure rules for what comes next.

The cursor is everything a restarted daemon needs to take a run up mid-step: the step command
and its phase, the step's progress, the loops around it, the cycle. It is written as JSON with
every batch (never a pickle), so a database file can hold no code. The executor
(cyclerd.engine.runner) moves it on; the rules here decide how, without touching anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from cyclerd.analysis.cycles import ShortCircuit
from cyclerd.drivers.base import INTERRUPT, StepProgress
from cyclerd.protocols.program import ImpedanceCommand, Loop, Node, Periodic, StepCommand, SweepCommand


class Phase(StrEnum):
    """The phases of one step command, in order.

    An every-block (AT_START, INTERRUPT, AT_END) is run again whole on resuming, so that an
    impedance spectrum cut off by a crash is measured again rather than continued halfway.
    """

    AT_START = "at_start"
    STEP = "step"
    INTERRUPT = "interrupt"
    AT_END = "at_end"
    DONE = "done"


PERIODIC_PHASES = frozenset({Phase.AT_START, Phase.INTERRUPT, Phase.AT_END})


@dataclass(frozen=True)
class LoopPosition:
    """One loop's pass in progress: which iteration, when the loop began, its first cycle."""

    iteration: int
    start_t_s: float
    first_cycle: int


@dataclass(frozen=True)
class Cursor:
    """A run's position: the step command, its phase and progress, and the loops around it."""

    command: int
    phase: Phase
    step_number: int
    progress: StepProgress
    pause_at_s: float | None
    loops: Mapping[int, LoopPosition]
    cycle: int  # of the step the cursor is on: 0 outside an innermost loop
    t_s: float
    cycles_begun: int = 0  # cycles numbered so far, whatever loop they belonged to
    cutoff_missed: frozenset[int] = frozenset()
    short: ShortCircuit | None = None
    cell: Mapping[str, Any] | None = field(default=None, compare=False)  # a simulated cell's state
    # A checkpoint written before cells were stored as data holds a pickle's text: it is never
    # read, and the run cannot go on with the simulated cell it had.
    cell_unreadable: bool = False

    def as_state(self) -> dict[str, Any]:
        """The cursor as JSON-able data (the checkpoint column); `t_s` is stored beside it."""
        return {
            "command": self.command,
            "phase": self.phase.value,
            "step_number": self.step_number,
            "progress": [self.progress.t_s, self.progress.charge_As, self.progress.energy_J],
            "pause_at": self.pause_at_s,
            "loops": {str(k): [v.iteration, v.start_t_s, v.first_cycle] for k, v in self.loops.items()},
            "cycle": self.cycle,
            "cycles_begun": self.cycles_begun,
            "cutoff_missed": sorted(self.cutoff_missed),
            "short": None if self.short is None else [self.short.cycle, self.short.reason],
            "cell": self.cell,
        }

    @classmethod
    def from_state(cls, t_s: float, state: Mapping[str, Any]) -> Cursor:
        short = state.get("short")
        cell = state.get("cell")
        return cls(
            command=int(state["command"]),
            phase=Phase(state["phase"]),
            step_number=int(state["step_number"]),
            progress=StepProgress(*(float(x) for x in state["progress"])),
            pause_at_s=None if state["pause_at"] is None else float(state["pause_at"]),
            loops={
                int(k): LoopPosition(int(v[0]), float(v[1]), int(v[2])) for k, v in state["loops"].items()
            },
            cycle=int(state["cycle"]),
            t_s=t_s,
            cycles_begun=int(state.get("cycles_begun", state["cycle"])),
            cutoff_missed=frozenset(int(c) for c in state.get("cutoff_missed", [])),
            short=None if short is None else ShortCircuit(int(short[0]), str(short[1])),
            cell=cell if isinstance(cell, Mapping) else None,
            cell_unreadable=isinstance(cell, str),
        )

    def at(self, **changes: Any) -> Cursor:
        return replace(self, **changes)


def first_phase(periodic: Periodic | None) -> Phase:
    """Where a step command begins: with its every-block when that runs at the start."""
    return Phase.AT_START if periodic is not None and periodic.at_start else Phase.STEP


def after_periodic(phase: Phase) -> Phase:
    """What follows an every-block: the step goes on, or, after the closing block, it is done."""
    return Phase.DONE if phase is Phase.AT_END else Phase.STEP


def after_segment(reason: str, periodic: Periodic | None, pause_at_s: float | None) -> Phase:
    """What follows a stretch of the step that ended for `reason` (a StepEnd's)."""
    if reason == INTERRUPT and periodic is not None and pause_at_s is not None:
        return Phase.INTERRUPT
    return Phase.AT_END if periodic is not None and periodic.at_end else Phase.DONE


def next_pause(phase: Phase, periodic: Periodic | None, pause_at_s: float | None) -> float | None:
    """The step time of the next every-block interruption once `phase` has run."""
    if phase is Phase.INTERRUPT and periodic is not None and pause_at_s is not None:
        return pause_at_s + periodic.interval_s
    return pause_at_s


def holds(node: Node, command_index: int) -> bool:
    """Whether `node` is, or contains, the step command `command_index` (every-blocks aside)."""
    if isinstance(node, Loop):
        return any(holds(child, command_index) for child in node.body)
    return node.index == command_index


def restarts_whole(command: StepCommand, phase: Phase) -> bool:
    """A sweep and a spectrum have no middle to resume from: cut off, they run again whole."""
    return phase is not Phase.DONE and isinstance(command, SweepCommand | ImpedanceCommand)
