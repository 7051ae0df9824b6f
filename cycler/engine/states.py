"""The run's states and the transitions allowed between them, written down once."""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"  # cell held safe; resumes the interrupted step where it stood
    STOPPING = "stopping"
    STOPPED = "stopped"  # by a person, a safety limit or a fault; the cell was made safe
    COMPLETED = "completed"
    FAILED = "failed"  # the software itself failed; the cell was made safe


TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.CREATED: frozenset({RunState.RUNNING, RunState.STOPPED, RunState.FAILED}),
    RunState.RUNNING: frozenset(
        {RunState.PAUSED, RunState.STOPPING, RunState.COMPLETED, RunState.STOPPED, RunState.FAILED}
    ),
    RunState.PAUSED: frozenset({RunState.RUNNING, RunState.STOPPING, RunState.STOPPED, RunState.FAILED}),
    RunState.STOPPING: frozenset({RunState.STOPPED, RunState.FAILED}),
    RunState.STOPPED: frozenset(),
    RunState.COMPLETED: frozenset(),
    RunState.FAILED: frozenset(),
}

FINAL = frozenset(state for state, nexts in TRANSITIONS.items() if not nexts)


class TransitionError(RuntimeError):
    """A command asked for a transition the run's state does not allow (e.g. resume a stopped run)."""


def check_transition(current: RunState, wanted: RunState) -> None:
    if wanted not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (the run is over)"
        raise TransitionError(
            f"a {current} run cannot become {wanted}; from {current} it can become {allowed}"
        )
