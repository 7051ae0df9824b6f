"""What every channel speaks: columnar batches of samples, step ends, spectra, capabilities.

A channel is one cell on one instrument channel. The runner hands it compiled step commands
and receives batches; how the step is executed (by the instrument itself, by a software
stepper, or vectorised in a simulator) is the channel's business.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from cyclerd.protocols.program import ImpedanceSpec, Needs, SafetyLimits, StepCommand

FloatArray = NDArray[np.float64]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive logged samples of one step.

    `t_s` is step time (the step's own time: periodic interruptions excluded); `charge_As` and
    `energy_J` are the step's running totals at each sample, as the instrument counts them.
    `final`: the step's StepEnd follows at once, so the runner commits the batch together with
    the step's end, one commit instead of two (a channel that does not know leaves it False).
    """

    t_s: FloatArray
    voltage_V: FloatArray
    current_A: FloatArray
    charge_As: FloatArray
    energy_J: FloatArray
    temperature_K: FloatArray | None = None
    final: bool = False

    def __len__(self) -> int:
        return len(self.t_s)


@dataclass(frozen=True, slots=True)
class StepProgress:
    """Where a step stands; a step interrupted by an every-block resumes from here."""

    t_s: float = 0.0
    charge_As: float = 0.0
    energy_J: float = 0.0


# Why a step ended: an end condition's name, or one of these.
INTERRUPT = "interrupt"  # the pause time asked for was reached: the runner resumes the step later
SAFETY = "safety"


@dataclass(frozen=True, slots=True)
class StepEnd:
    """The step is over (or paused for an every-block): why, and where it stands."""

    reason: str  # "duration", "voltage_above", "charge", ..., INTERRUPT, SAFETY
    progress: StepProgress
    detail: str = ""


DC_SAMPLE_S = 10.0  # during a spectrum, the cell's DC state is logged this often (E1's record interval)


def dc_sample_times(duration_s: float) -> FloatArray:
    """Times (from 0) at which a spectrum of `duration_s` logs the cell's DC state, both ends included."""
    return np.linspace(0.0, duration_s, max(2, math.ceil(duration_s / DC_SAMPLE_S) + 1))


@dataclass(frozen=True, slots=True)
class Spectrum:
    """An impedance spectrum, and what the channel knows of the cell's DC state meanwhile.

    `dc_potential_V`: the potential the spectrum was measured around (the OCV measured just
    before a `dc_level: ocv` spectrum, or the DC voltage set), None if the channel does not know
    it. `potential`: samples of the cell's voltage and current over the measurement, in the
    spectrum's own time from 0, where the channel knows them (a potentiostat holding the OCV
    passes no DC current); stored as the EIS step's samples, so a plating step interrupted for
    a spectrum has no hole in its record.
    """

    frequency_Hz: FloatArray
    impedance_ohm: NDArray[np.complex128]
    dc_potential_V: float | None = None
    potential: Batch | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a channel can do; a program's needs are checked against it before a run."""

    kinds: frozenset[str]
    current_max_A: float
    voltage_range_V: tuple[float, float]
    eis_modes: frozenset[str] = field(default_factory=frozenset)
    frequency_range_Hz: tuple[float, float] | None = None
    # An every-block pauses its step and resumes it after its body; an instrument that runs a
    # step to its end by itself (a cycler's step file) cannot.
    interrupts_steps: bool = True


def unmet_needs(needs: Needs, capabilities: Capabilities, channel: str) -> list[str]:
    """What a program asks of a channel that the channel cannot do, in words for the user."""
    problems = []
    for kind in sorted(needs.kinds - capabilities.kinds):
        what = "impedance spectra (EIS)" if kind == "eis" else f"{kind} steps"
        where = f": {needs.first_of_kind[kind]}" if kind in needs.first_of_kind else ""
        problems.append(
            f"{channel} cannot measure {what}{where}"
            if kind == "eis"
            else f"{channel} cannot run {what}{where}"
        )
    if needs.interrupted is not None and not capabilities.interrupts_steps:
        problems.append(
            f"{channel} runs each step to its end and cannot interrupt it for an every-block:"
            f" {needs.interrupted} (split the step into steps as long as the interval, with the"
            " block's steps between them)"
        )
    if needs.current_max_A > capabilities.current_max_A:
        problems.append(
            f"the protocol needs up to {needs.current_max_A:g} A; {channel} sources at most "
            f"{capabilities.current_max_A:g} A"
        )
    low, high = capabilities.voltage_range_V
    if needs.voltage_range_V is not None and (
        needs.voltage_range_V[0] < low or needs.voltage_range_V[1] > high
    ):
        problems.append(f"the protocol reaches voltages outside {channel}'s {low:g} to {high:g} V")
    for mode in sorted(needs.eis_modes - capabilities.eis_modes):
        if "eis" in capabilities.kinds:
            problems.append(f"{channel} cannot measure {mode} impedance")
    wanted, offered = needs.frequency_range_Hz, capabilities.frequency_range_Hz
    if wanted is not None and offered is not None and (wanted[0] < offered[0] or wanted[1] > offered[1]):
        problems.append(
            f"the protocol's spectra span {wanted[0]:g} to {wanted[1]:g} Hz; {channel} measures "
            f"{offered[0]:g} to {offered[1]:g} Hz (change frequency_start/frequency_stop)"
        )
    return problems


class Channel(Protocol):
    """One cell on one instrument channel."""

    @property
    def capabilities(self) -> Capabilities: ...

    def run(
        self,
        command: StepCommand,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None = None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Execute `command` from `start` until an end condition, a safety limit, or step time
        `pause_at_s`; the last item is always a StepEnd, and its sample is always in a Batch."""
        ...

    async def impedance(self, spec: ImpedanceSpec) -> Spectrum: ...

    async def safe_state(self) -> None:
        """Output off / high impedance; must succeed whatever state the channel is in."""
        ...


# Optional features of a channel, each checked with isinstance() by whoever wants it.


@runtime_checkable
class Named(Protocol):
    """A channel with a name for people: in events, logs and error messages."""

    @property
    def name(self) -> str: ...


@runtime_checkable
class Reconnectable(Protocol):
    """A channel that can reopen its instrument after the link dropped."""

    async def reconnect(self) -> None: ...


@runtime_checkable
class Reopenable(Protocol):
    """An instrument whose driver can open its link again (a SourceMeasure over a socket)."""

    async def reopen(self) -> None: ...


@runtime_checkable
class LinkWatched(Protocol):
    """An instrument that can tell, without asking it anything, that its link was closed (a
    socket the other end closed): a polling stepper then need not wait for its next poll."""

    def link_lost(self) -> bool:
        """Blocking: only in the instrument's worker thread."""
        ...


@runtime_checkable
class KeepsSafety(Protocol):
    """An instrument with safety limits of its own (a cycler's channel): it is told each step's
    limits before the step's output turns on, so that it stops the cell itself when its host is
    late or gone."""

    def keep_safety(self, limits: SafetyLimits) -> None: ...


@runtime_checkable
class Snapshotting(Protocol):
    """A channel whose cell has a state to checkpoint (a simulated cell): after a restart the
    runner restores it, so the cell is as the crash left it, as a real cell would be."""

    def snapshot(self) -> dict[str, Any] | None:
        """The cell's changing state, JSON types; None when the cell keeps none."""
        ...

    def restore(self, state: Mapping[str, Any]) -> None:
        """Put the cell back as it was when `state` was taken."""
        ...


class InstrumentFault(Exception):
    """Something went wrong talking to an instrument; the message names it and what it said."""

    def __init__(self, instrument: str, message: str) -> None:
        self.instrument = instrument
        super().__init__(f"{instrument}: {message}")


class InstrumentTimeout(InstrumentFault):
    """No (complete) reply in time; often transient: the runner may retry."""


class InstrumentGarbled(InstrumentFault):
    """A reply that cannot be read (noise on the line, a half-sent message); usually transient."""


class InstrumentDisconnected(InstrumentFault):
    """The link is gone (socket closed, serial port vanished); reconnecting may help."""


class InstrumentError(InstrumentFault):
    """The instrument reported an error; `code` and `text` are its own words."""

    def __init__(self, instrument: str, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(instrument, f"instrument error {code}: {text}")


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement of a source-measure instrument, with the instrument's own timestamp."""

    t_s: float  # instrument time, s (only differences matter)
    voltage_V: float
    current_A: float
    in_limit: bool = False  # the compliance limit (VLIM or ILIM) is engaged


class SourceMeasure(Protocol):
    """An instrument that only sources and measures (an SMU); the software stepper runs steps on it.

    Implementations keep all I/O of one instrument in one worker thread and expose it as
    coroutines, so a slow instrument never blocks the event loop or another channel.
    """

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    async def source_current(self, current_A: float, voltage_limit_V: float) -> None:
        """Output on, sourcing `current_A` (0 A: open-circuit rest), voltage clamped at the limit."""
        ...

    async def source_voltage(self, voltage_V: float, current_limit_A: float) -> None:
        """Output on, holding `voltage_V` with |current| clamped at the limit."""
        ...

    async def measure(self) -> Reading: ...

    async def output_off(self) -> None:
        """Output off in high-impedance mode: the cell sees an open circuit."""
        ...

    async def in_worker(self, work: Callable[[], T]) -> T:
        """Run `work` in the instrument's worker thread (where `read` and `output_off_now` live)."""
        ...

    def read(self) -> Reading:
        """`measure`, blocking: only inside `in_worker`."""
        ...

    def output_off_now(self) -> None:
        """`output_off`, blocking: only inside `in_worker`."""
        ...

    async def close(self) -> None: ...


async def hold_after_switch(
    constant_current: AsyncGenerator[Batch | StepEnd, None],
    hold: Callable[[StepProgress], AsyncGenerator[Batch | StepEnd, None]],
) -> AsyncGenerator[Batch | StepEnd, None]:
    """A cccv step: the constant-current phase until it ends on "switch", then `hold` from there.

    Any other end of the first phase ends the step. Each phase is closed here when it is left,
    not by the event loop's finalizer hook.
    """
    progress: StepProgress | None = None
    async with contextlib.aclosing(constant_current):
        async for item in constant_current:
            if isinstance(item, StepEnd) and item.reason == "switch":
                progress = item.progress
                break
            yield replace(item, final=False) if isinstance(item, Batch) and item.final else item
    if progress is None:
        return
    voltage_hold = hold(progress)
    async with contextlib.aclosing(voltage_hold):
        async for item in voltage_hold:
            yield item
