"""The exit codes of `cyclerd`, one per way a command can end, so a script (or a lab's scheduler)
can tell a run that completed from one a safety limit stopped. docs/cli.md lists them.
"""

from __future__ import annotations

from enum import IntEnum

from cyclerd.engine.runner import RunResult
from cyclerd.engine.states import RunState


class ExitCode(IntEnum):
    OK = 0  # the run completed; any other command did what it was asked
    PROBLEMS = 1  # validate found errors in a protocol, doctor a FAIL
    BAD_INPUT = 2  # an option, argument, file or store is wrong: nothing was started
    INSTRUMENT_FAULT = 3  # the instrument failed or could not be reached; the cell was made safe
    REFUSED = 4  # the instrument cannot do what the protocol needs, or the lab is served: nothing started
    SAFETY_STOP = 5  # a safety limit stopped the run; the cell was made safe
    STOPPED = 6  # stopped on request (cyclerd stop, an MQTT command); the cell was made safe
    INTERNAL_ERROR = 70  # a bug in cyclerd (sysexits' EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it); the cell was made safe


def of_run(result: RunResult) -> ExitCode:
    """How a run ended, as an exit code: by its final state, and for a stopped run by why."""
    if result.state is RunState.COMPLETED:
        return ExitCode.OK
    if result.reason.startswith("safety"):
        return ExitCode.SAFETY_STOP
    if result.reason.startswith("instrument fault"):
        return ExitCode.INSTRUMENT_FAULT
    return ExitCode.STOPPED
