"""What a channel of the lab can do, known from the lab's configuration alone.

A job is checked against it when it is submitted, so a protocol the channel's instrument cannot
run is refused with the reason there and then, instead of waiting in the queue for its turn.
The instrument itself is not asked: it may be busy with another run, or not on yet. So the
check is generous where the configuration cannot tell: a MethodSCRIPT channel may be any of
PalmSens' families, and is refused here only what none of them can do; the rest is checked
against the device itself when the job starts, and a refusal then is kept with its reason.
"""

from __future__ import annotations

from collections.abc import Iterable

from cyclerd.daemon.config import Lab
from cyclerd.drivers.base import Capabilities, unmet_needs
from cyclerd.drivers.cycler import CYCLERS
from cyclerd.drivers.keithley2450 import CAPABILITIES as KEITHLEY_2450
from cyclerd.drivers.methodscript_packages import FAMILIES
from cyclerd.engine.instruments import cycler_driver
from cyclerd.protocols.program import Program
from cyclerd.simulators.channel import CAPABILITIES as SIMULATED


def widest(each: Iterable[Capabilities]) -> Capabilities:
    """What at least one of `each` can do: the bound a family of devices shares."""
    them = list(each)
    frequencies = [c.frequency_range_Hz for c in them if c.frequency_range_Hz is not None]
    return Capabilities(
        kinds=frozenset().union(*(c.kinds for c in them)),
        current_max_A=max(c.current_max_A for c in them),
        voltage_range_V=(min(c.voltage_range_V[0] for c in them), max(c.voltage_range_V[1] for c in them)),
        eis_modes=frozenset().union(*(c.eis_modes for c in them)),
        frequency_range_Hz=(
            (min(f[0] for f in frequencies), max(f[1] for f in frequencies)) if frequencies else None
        ),
        interrupts_steps=any(c.interrupts_steps for c in them),
    )


_BY_DRIVER = {
    "keithley2450": KEITHLEY_2450,
    "methodscript": widest(family.capabilities for family in FAMILIES.values()),
}


def channel_capabilities(lab: Lab, channel: str) -> Capabilities:
    """The most `channel` of `lab` can do, as far as the configuration says (KeyError: no such
    channel)."""
    found = next((c for c in lab.channels if c.name == channel), None)
    if found is None:
        raise KeyError(channel)
    if found.sim is not None:
        return SIMULATED
    instrument = next(i for i in lab.instruments if i.name == found.instrument)
    if instrument.driver in CYCLERS:
        return cycler_driver(instrument.driver).CAPABILITIES
    return _BY_DRIVER[instrument.driver]


def refusals(lab: Lab, channel: str, program: Program) -> list[str]:
    """Why `channel` of `lab` cannot run `program`, in words for the person submitting it; [] if
    it may (the instrument has the last word when the job starts)."""
    return unmet_needs(program.needs(), channel_capabilities(lab, channel), channel)
