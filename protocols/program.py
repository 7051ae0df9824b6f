"""The compiled program: frozen data in SI units that the runner interprets and channels execute.

Each leaf step is one of a few step types (a tagged union, `StepCommand`), so a channel
dispatches with an exhaustive `match`; loops and every-blocks are explicit. Made by
`cyclerd.protocols.compiler`, which is the only place that reads the protocol model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import ClassVar, Literal, TypeAlias, assert_never

# How a step is stored (the steps table) and shown; one word per step type, three for constant current.
StepKind = Literal["rest", "cc", "plate", "strip", "cv", "cccv", "eis", "sweep"]


@dataclass(frozen=True)
class EndConditions:
    """A step ends when any condition holds. Voltages in V, currents in A, charge in A·s."""

    duration_s: float | None = None
    voltage_above_V: float | None = None
    voltage_below_V: float | None = None
    current_below_A: float | None = None
    charge_As: float | None = None
    dvdt_below_V_per_s: float | None = None


@dataclass(frozen=True)
class RecordRule:
    """Log a sample after `every_s`, or sooner when V or I has moved by the given change."""

    every_s: float | None = None
    voltage_change_V: float | None = None
    current_change_A: float | None = None


@dataclass(frozen=True)
class ImpedanceSpec:
    frequency_start_Hz: float
    frequency_stop_Hz: float
    points_per_decade: int
    amplitude: float  # V when potentiostatic, A when galvanostatic
    galvanostatic: bool
    dc_level: float | None  # V or A like the amplitude; None: around the open-circuit voltage
    dc_is_current: bool = False

    def frequencies_Hz(self) -> tuple[float, ...]:
        """Log-spaced frequencies from start to stop, both included."""
        lo, hi = math.log10(self.frequency_start_Hz), math.log10(self.frequency_stop_Hz)
        count = max(2, round(abs(hi - lo) * self.points_per_decade) + 1)
        return tuple(10 ** (lo + (hi - lo) * i / (count - 1)) for i in range(count))

    def duration_s(self) -> float:
        """Time a spectrum takes: 3 periods or 1 s per frequency, whichever is longer.

        An estimate of a real potentiostat (settling plus integration); simulators use the same
        figure so that virtual time matches what a user plans for.
        """
        return sum(max(3.0 / f, 1.0) for f in self.frequencies_Hz())


@dataclass(frozen=True)
class SweepSpec:
    """A cyclic voltammogram: from `start_V` through each vertex in turn, `scans` times.

    `start_V` None starts at the open-circuit voltage measured when the step begins, and each
    scan then returns to it (OCV -> vertices -> OCV), as a potentiostat's CV from E_begin does.
    """

    start_V: float | None  # None: the open-circuit voltage at the step's start
    vertices_V: tuple[float, ...]
    scan_rate_V_per_s: float
    scans: int

    def corners_V(self, ocv_V: float | None = None) -> tuple[float, ...]:
        """One scan's path: its start and the potentials where it turns (and, from the OCV, its end).

        A sweep from the OCV needs `ocv_V`, the voltage measured when the step began.
        """
        if self.start_V is not None:
            return (self.start_V, *self.vertices_V)
        if ocv_V is None:
            raise ValueError("a sweep from the open-circuit voltage needs that voltage (ocv_V)")
        return (ocv_V, *self.vertices_V, ocv_V)

    def duration_s(self, ocv_V: float | None = None) -> float:
        """The time the sweep takes. From an OCV not known yet: the least it can take (the
        OCV lying on the path between the first and the last vertex)."""
        if self.start_V is None and ocv_V is None:
            ends = (self.vertices_V[-1], self.vertices_V[0])
            path = _length(self.vertices_V) + abs(ends[1] - ends[0])
        else:
            path = _length(self.corners_V(ocv_V))
        return path * self.scans / self.scan_rate_V_per_s


def _length(points: tuple[float, ...]) -> float:
    return sum(abs(b - a) for a, b in pairwise(points))


@dataclass(frozen=True)
class Periodic:
    """An every-block: `body` runs after each `interval_s` of the step's own time."""

    interval_s: float
    at_start: bool
    at_end: bool
    body: tuple[StepCommand, ...]


# -- the step types ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StepFields:
    """What every step type has: where it is, when it ends, what it logs, its every-block."""

    index: int  # unique, in file order
    label: str
    source: str  # where in the protocol, e.g. "steps[2].repeat.steps[0].plate"
    end: EndConditions
    record: RecordRule
    periodic: Periodic | None = None

    @property
    def deadline_s(self) -> float | None:
        """The step's own time after which it ends whatever else happens."""
        return self.end.duration_s


@dataclass(frozen=True, kw_only=True)
class RestCommand(StepFields):
    """Open circuit: no current flows (a channel that must source something sources 0 A)."""

    kind: ClassVar[Literal["rest"]] = "rest"


@dataclass(frozen=True, kw_only=True)
class CurrentCommand(StepFields):
    """Constant current, signed (positive charges); plate and strip are cc with a fixed sign."""

    kind: Literal["cc", "plate", "strip"]
    current_A: float


@dataclass(frozen=True, kw_only=True)
class VoltageCommand(StepFields):
    """Hold a voltage, with |current| clamped at `current_limit_A` when given."""

    kind: ClassVar[Literal["cv"]] = "cv"
    voltage_V: float
    current_limit_A: float | None = None


@dataclass(frozen=True, kw_only=True)
class CurrentVoltageCommand(StepFields):
    """Constant current until `voltage_V`, then hold that voltage (CC-CV)."""

    kind: ClassVar[Literal["cccv"]] = "cccv"
    current_A: float
    voltage_V: float


@dataclass(frozen=True, kw_only=True)
class SweepCommand(StepFields):
    """Cyclic voltammetry along `spec`'s path; it runs to its end (its deadline)."""

    kind: ClassVar[Literal["sweep"]] = "sweep"
    spec: SweepSpec

    @property
    def deadline_s(self) -> float | None:
        """Known in advance unless the sweep starts at the (not yet measured) OCV."""
        return None if self.spec.start_V is None else self.spec.duration_s()


@dataclass(frozen=True, kw_only=True)
class ImpedanceCommand(StepFields):
    """One impedance spectrum; measured by `Channel.impedance`, not streamed by `Channel.run`."""

    kind: ClassVar[Literal["eis"]] = "eis"
    spec: ImpedanceSpec

    @property
    def deadline_s(self) -> float:
        return self.spec.duration_s()


StepCommand: TypeAlias = (
    RestCommand | CurrentCommand | VoltageCommand | CurrentVoltageCommand | SweepCommand | ImpedanceCommand
)


# -- loops and the program ----------------------------------------------------------------------


@dataclass(frozen=True)
class CycleLimits:
    duration_s: float | None = None
    coulombic_efficiency_below: float | None = None
    capacity_retention_below: float | None = None
    short_circuit: bool = False


@dataclass(frozen=True)
class Loop:
    """A repeat block; when `innermost`, each pass is one cycle of the run."""

    index: int
    label: str
    source: str
    count: int | None
    until: CycleLimits
    body: tuple[Node, ...]
    innermost: bool
    retention_reference: int | None = None  # a cycle of the run; None: the loop's first cycle


Node: TypeAlias = StepCommand | Loop


@dataclass(frozen=True)
class SafetyLimits:
    voltage_min_V: float | None = None
    voltage_max_V: float | None = None
    current_max_A: float | None = None
    temperature_max_K: float | None = None
    duration_max_s: float | None = None


@dataclass(frozen=True)
class Program:
    """A compiled protocol for one cell."""

    name: str
    description: str
    area_m2: float | None
    capacity_As: float | None
    metadata: dict[str, object]
    safety: SafetyLimits
    body: tuple[Node, ...]
    record: RecordRule = field(default_factory=RecordRule)
    active_mass_kg: float | None = None

    def commands(self) -> Iterator[StepCommand]:
        """Every step command, including those inside loops and every-blocks, in file order."""
        yield from _walk(self.body)

    def needs(self) -> Needs:
        """What an instrument channel must be able to do to run this program."""
        kinds: set[StepKind] = set()
        currents: list[float] = [0.0]
        # The instrument must measure across the whole safety window, not only at the setpoints.
        window = (self.safety.voltage_min_V, self.safety.voltage_max_V)
        voltages: list[float] = [v for v in window if v is not None]
        eis_modes: set[str] = set()
        frequencies: list[float] = []
        first_of_kind: dict[StepKind, str] = {}
        interrupted: str | None = None
        for command in self.commands():
            kinds.add(command.kind)
            first_of_kind.setdefault(command.kind, _named(command))
            if command.periodic is not None and interrupted is None:
                interrupted = _named(command)
            end = command.end
            if end.current_below_A is not None:
                currents.append(abs(end.current_below_A))
            voltages.extend(v for v in (end.voltage_above_V, end.voltage_below_V) if v is not None)
            match command:
                case RestCommand():
                    pass
                case CurrentCommand():
                    currents.append(abs(command.current_A))
                case VoltageCommand():
                    voltages.append(command.voltage_V)
                    if command.current_limit_A is not None:
                        currents.append(abs(command.current_limit_A))
                case CurrentVoltageCommand():
                    currents.append(abs(command.current_A))
                    voltages.append(command.voltage_V)
                case SweepCommand():
                    start = command.spec.start_V  # the OCV (None) lies in the safety window
                    voltages.extend((*([] if start is None else [start]), *command.spec.vertices_V))
                case ImpedanceCommand():
                    spec = command.spec
                    eis_modes.add("galvanostatic" if spec.galvanostatic else "potentiostatic")
                    frequencies.extend((spec.frequency_start_Hz, spec.frequency_stop_Hz))
                case _:
                    assert_never(command)
        return Needs(
            kinds=frozenset(kinds),
            current_max_A=max(currents),
            voltage_range_V=(min(voltages), max(voltages)) if voltages else None,
            eis_modes=frozenset(eis_modes),
            frequency_range_Hz=(min(frequencies), max(frequencies)) if frequencies else None,
            first_of_kind=first_of_kind,
            interrupted=interrupted,
        )


def _named(command: StepCommand) -> str:
    """A step as a refusal names it: its label and where it is in the file."""
    return f"step {command.label!r} ({command.source})"


@dataclass(frozen=True)
class Needs:
    """Instrument capabilities a program requires (checked against a channel before a run)."""

    kinds: frozenset[StepKind]
    current_max_A: float
    voltage_range_V: tuple[float, float] | None
    eis_modes: frozenset[str]
    frequency_range_Hz: tuple[float, float] | None
    # Where the program asks it, for the refusal's words: the first step of each kind, and the
    # first step an every-block interrupts (None: no step is interrupted).
    first_of_kind: Mapping[StepKind, str] = field(default_factory=dict)
    interrupted: str | None = None


def _walk(nodes: tuple[Node, ...]) -> Iterator[StepCommand]:
    for node in nodes:
        if isinstance(node, Loop):
            yield from _walk(node.body)
        else:
            yield node
            if node.periodic is not None:
                yield from node.periodic.body
