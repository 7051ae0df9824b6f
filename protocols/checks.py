"""Semantic checks of a validated protocol: steps that never end, limits that contradict.

The model checks each value on its own; these checks look at values together. Each issue
carries the model path of the value at fault so the loader can name its line and column.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from itertools import pairwise

from cyclerd.protocols.model import (
    ConstantCurrent,
    ConstantCurrentConstantVoltage,
    ConstantVoltage,
    Every,
    Impedance,
    Plate,
    Protocol,
    Repeat,
    Rest,
    Strip,
    Sweep,
)
from cyclerd.protocols.scale import CellScale
from cyclerd.protocols.units import SECONDS_PER_HOUR, Amount, Basis, duration_text, engineering

Path = tuple[int | str, ...]

# EIS amplitudes are RMS (as MethodSCRIPT's meas_loop_eis takes them): the excitation's peak
# is √2 times the amplitude, and that peak is what must stay inside the safety limits.
PEAK_PER_RMS = math.sqrt(2.0)


@dataclass(frozen=True)
class Issue:
    path: Path
    message: str
    at_key: bool = False


def signed_current(
    step: ConstantCurrent | Plate | Strip | ConstantCurrentConstantVoltage,
) -> Amount:
    """The step's current in the cyclerd sign convention (positive charges the cell)."""
    if isinstance(step, Plate):
        return -abs(step.current)
    if isinstance(step, Strip):
        return abs(step.current)
    return step.current


def step_time_bound(
    step: Rest | ConstantCurrent | Plate | Strip | ConstantVoltage | ConstantCurrentConstantVoltage,
    scale: CellScale,
) -> float | None:
    """The longest the step can run (its own time, periodic blocks excluded), if knowable."""
    bounds = [step.until.duration] if step.until.duration is not None else []
    if step.until.charge is not None and isinstance(step, ConstantCurrent | Plate | Strip):
        charge, current = scale.resolve(step.until.charge), scale.resolve(step.current)
        if charge is None and current is None and step.until.charge.basis is step.current.basis:
            charge, current = step.until.charge.value, step.current.value  # same basis: ratio holds
        if charge is not None and current:
            bounds.append(abs(charge / current))
    return min(bounds) if bounds else None


def check(protocol: Protocol, unread: Collection[Path] = ()) -> list[Issue]:
    """Every contradiction in `protocol`, in file order.

    `unread` are the paths of values the file gave but that could not be read (the loader
    dropped them to check the rest): a check treats them as present, value unknown, so that
    e.g. an unreadable 'count' does not also make its loop "unbounded".
    """
    return list(_Checker(protocol, unread).run())


class _Checker:
    def __init__(self, protocol: Protocol, unread: Collection[Path] = ()) -> None:
        self.protocol = protocol
        self.safety = protocol.safety
        cell = protocol.cell
        self.scale = CellScale(cell.area, cell.capacity, cell.active_mass, cell.specific_capacity)
        self.unread = tuple(unread)

    def given(self, path: Path) -> bool:
        """Whether the file gave a value at or under `path` that could not be read."""
        return any(u[: len(path)] == path for u in self.unread)

    def run(self) -> Iterator[Issue]:
        s = self.safety
        if s.voltage_min is not None and s.voltage_max is not None and s.voltage_min >= s.voltage_max:
            yield Issue(
                ("safety", "voltage_min"),
                f"voltage_min ({s.voltage_min:g} V) must be below "
                f"voltage_max ({s.voltage_max:g} V); lower voltage_min or raise voltage_max",
            )
        yield from self._cell()
        if s.current_max is not None and s.current_max.value <= 0:
            yield Issue(("safety", "current_max"), "current_max must be positive, e.g. '5 mA'")
        yield from self._record(("record",), self.protocol.record)
        bounded = s.duration_max is not None or self.given(("safety", "duration_max"))
        yield from self._steps(("steps",), self.protocol.steps, bounded=bounded)

    def _cell(self) -> Iterator[Issue]:
        """A nominal capacity given twice (capacity; specific_capacity × active_mass) must agree."""
        cell = self.protocol.cell
        mismatch = self.scale.capacity_mismatch()
        if mismatch is None or cell.capacity is None or cell.specific_capacity is None:
            return
        given, from_mass = mismatch
        assert cell.active_mass is not None
        per_area = self.scale.area_m2 is None and cell.capacity.basis is Basis.AREAL
        unit = "mAh/cm²" if per_area else "mAh"
        scale = SECONDS_PER_HOUR * (10.0 if per_area else 1e-3)  # A·s/m² -> mAh/cm², A·s -> mAh
        yield Issue(
            ("cell", "specific_capacity"),
            f"cell.capacity ({cell.capacity.text('Ah')}) and cell.specific_capacity "
            f"({cell.specific_capacity.text('Ah')}) × cell.active_mass ({cell.active_mass.text('g')}) "
            f"= {from_mass / scale:.4g} {unit} disagree by {100 * abs(from_mass / given - 1):.1f} % "
            "(more than 1 %); give only one of them, or correct the one that is wrong",
        )

    def _steps(
        self, path: Path, steps: Sequence[object], bounded: bool, periodic: bool = False
    ) -> Iterator[Issue]:
        for i, step in enumerate(steps):
            here = (*path, i, str(getattr(step, "kind", "")))
            if periodic and not isinstance(step, Rest | Impedance):
                yield Issue(
                    here,
                    "an every-block may hold only rest and eis steps (they must not move charge); "
                    "move this step out of the every-block",
                )
                continue
            if isinstance(step, Repeat):
                yield from self._repeat(here, step, bounded)
            elif isinstance(step, Impedance):
                yield from self._impedance(here, step)
            elif isinstance(step, Sweep):
                yield from self._sweep(here, step)
            elif isinstance(
                step,
                Rest | ConstantCurrent | Plate | Strip | ConstantVoltage | ConstantCurrentConstantVoltage,
            ):
                yield from self._sourcing(here, step, periodic)

    def _repeat(self, path: Path, loop: Repeat, bounded: bool) -> Iterator[Issue]:
        until = loop.until
        bounded = bounded or loop.count is not None or until.duration is not None
        bounded = bounded or any(map(self.given, [(*path, "count"), (*path, "until", "duration")]))
        if not bounded:
            yield Issue(
                path,
                "this loop has no bound: add 'count: N', 'until: {duration: ...}' or "
                "safety.duration_max (a CE or short-circuit condition alone may never trigger)",
                at_key=True,
            )
        for name in ("coulombic_efficiency_below", "capacity_retention_below"):
            value = getattr(until, name)
            if value is not None and not 0 < value <= 1:
                yield Issue((*path, "until", name), f"{name} must lie between 0 % and 100 %, e.g. '95 %'")
        yield from self._steps((*path, "steps"), loop.steps, bounded=True)

    def _sourcing(
        self,
        path: Path,
        step: Rest | ConstantCurrent | Plate | Strip | ConstantVoltage | ConstantCurrentConstantVoltage,
        periodic: bool,
    ) -> Iterator[Issue]:
        until = step.until
        if until.is_empty() and not self.given((*path, "until")):
            example = (
                "'until: {duration: 10 min}'" if isinstance(step, Rest) else "'until: {voltage_above: 4.2 V}'"
            )
            yield Issue(path, f"this step never ends: add an end condition, e.g. {example}", at_key=True)
        if isinstance(step, Plate | Strip) and step.current.value <= 0:
            yield Issue(
                (*path, "current"),
                f"{step.kind} takes the size of the current and implies its sign; "
                f"write e.g. 'current: {step.current.text('A').lstrip('-')}'",
            )
        if isinstance(step, ConstantCurrent | ConstantCurrentConstantVoltage) and step.current.value == 0:
            yield Issue((*path, "current"), "a zero current is a rest; write '- rest: ...' instead")
        yield from self._direction(path, step)
        yield from self._window(path, step)
        for name in ("current_below", "charge"):
            amount = getattr(until, name)
            if amount is not None and amount.value <= 0:
                yield Issue((*path, "until", name), f"{name} must be positive")
        if step.record is not None:
            yield from self._record((*path, "record"), step.record)
        if step.every is not None:
            if periodic:
                yield Issue(
                    (*path, "every"),
                    "an every-block cannot hold another every-block; remove this 'every' "
                    "(the outer block already runs its steps periodically)",
                    at_key=True,
                )
            else:
                yield from self._every((*path, "every"), step, step.every)

    def _direction(self, path: Path, step: object) -> Iterator[Issue]:
        if not isinstance(step, ConstantCurrent | Plate | Strip):
            return
        current = signed_current(step)
        if current.value > 0 and step.until.voltage_below is not None:
            yield Issue(
                (*path, "until", "voltage_below"),
                "with a positive (charging) current the voltage rises: end on 'voltage_above', "
                "or make the current negative",
                at_key=True,
            )
        if current.value < 0 and step.until.voltage_above is not None:
            yield Issue(
                (*path, "until", "voltage_above"),
                "with a negative (discharging/plating) current the voltage falls: end on "
                "'voltage_below', or make the current positive",
                at_key=True,
            )
        limit = self.safety.current_max
        if limit is not None:
            size, allowed = self.scale.resolve(abs(current)), self.scale.resolve(limit)
            if size is not None and allowed is not None and size > allowed * (1 + 1e-9):
                yield Issue(
                    (*path, "current"),
                    f"{engineering(size, 'A')} exceeds safety.current_max ({engineering(allowed, 'A')}); "
                    "lower the current or raise the limit",
                )

    def _window(self, path: Path, step: object) -> Iterator[Issue]:
        lo, hi = self.safety.voltage_min, self.safety.voltage_max
        values: list[tuple[Path, float]] = []
        if isinstance(step, ConstantVoltage | ConstantCurrentConstantVoltage):
            values.append(((*path, "voltage"), step.voltage))
        until = getattr(step, "until", None)
        if until is not None:
            for name in ("voltage_above", "voltage_below"):
                if getattr(until, name) is not None:
                    values.append(((*path, "until", name), getattr(until, name)))
        for where, volts in values:
            if (lo is not None and volts < lo) or (hi is not None and volts > hi):
                yield Issue(
                    where,
                    f"{volts:g} V lies outside the safety window "
                    f"[{_v(lo)}, {_v(hi)}]: the run would stop on the limit; change one of them",
                )

    def _every(
        self,
        path: Path,
        step: Rest | ConstantCurrent | Plate | Strip | ConstantVoltage | ConstantCurrentConstantVoltage,
        every: Every,
    ) -> Iterator[Issue]:
        bound = step_time_bound(step, self.scale)
        if bound is not None and every.interval >= bound:
            yield Issue(
                (*path, "interval"),
                f"the every-block would never run: its interval ({duration_text(every.interval)}) is not "
                f"shorter than the step ({duration_text(bound)}); shorten the interval",
            )
        yield from self._steps((*path, "steps"), every.steps, bounded=True, periodic=True)

    def _impedance(self, path: Path, eis: Impedance) -> Iterator[Issue]:
        start, stop = eis.frequency_start, eis.frequency_stop
        if start == stop:
            yield Issue(
                (*path, "frequency_stop"),
                "frequency_stop equals frequency_start; a spectrum needs a range",
            )
        elif start < stop:
            yield Issue(
                (*path, "frequency_start"),
                f"frequency_start ({_hz(start)}) is below frequency_stop ({_hz(stop)}); a spectrum is "
                "measured from the high to the low frequency: swap them, "
                f"'frequency_start: {_hz(stop)}' and 'frequency_stop: {_hz(start)}'",
            )
        amplitude = eis.amplitude.value if isinstance(eis.amplitude, Amount) else eis.amplitude
        if amplitude <= 0:
            yield Issue((*path, "amplitude"), "the amplitude must be positive, e.g. '10 mV'")
        elif isinstance(eis.amplitude, Amount):
            yield from self._galvanostatic(path, eis.amplitude, eis.dc_level)
        else:
            yield from self._potentiostatic(path, eis.amplitude, eis.dc_level)

    def _potentiostatic(self, path: Path, amplitude: float, dc: str | float | Amount) -> Iterator[Issue]:
        """The excitation, dc_level ± √2 × amplitude, must stay inside the safety window."""
        if isinstance(dc, Amount):
            yield Issue(
                (*path, "dc_level"),
                "a voltage amplitude makes the spectrum potentiostatic, around a DC voltage: write "
                "dc_level as a voltage or 'ocv', or give the amplitude as a current (galvanostatic)",
            )
            return
        lo, hi = self.safety.voltage_min, self.safety.voltage_max
        peak = PEAK_PER_RMS * amplitude
        window = f"the safety window [{_v(lo)}, {_v(hi)}]"
        if isinstance(dc, float):
            if (lo is not None and dc < lo) or (hi is not None and dc > hi):
                yield Issue(
                    (*path, "dc_level"), f"dc_level {dc:g} V lies outside {window}; change one of them"
                )
                return
            if (lo is None or dc - peak >= lo) and (hi is None or dc + peak <= hi):
                return
            room = min(dc - lo if lo is not None else math.inf, hi - dc if hi is not None else math.inf)
            yield Issue(
                (*path, "amplitude"),
                f"an amplitude of {engineering(amplitude, 'V')} swings the cell from {dc - peak:.4g} to "
                f"{dc + peak:.4g} V around dc_level {dc:g} V (peak = √2 × the RMS amplitude), outside "
                f"{window}; use at most {engineering(room / PEAK_PER_RMS, 'V')}, e.g. '10 mV'",
            )
        elif lo is not None and hi is not None and 2 * peak > hi - lo and not self.given((*path, "dc_level")):
            yield Issue(
                (*path, "amplitude"),
                f"an amplitude of {engineering(amplitude, 'V')} swings the cell by ±{engineering(peak, 'V')} "
                f"(peak = √2 × the RMS amplitude), more than {window} holds around any open-circuit "
                f"voltage; use at most {engineering((hi - lo) / 2 / PEAK_PER_RMS, 'V')}, e.g. '10 mV'",
            )

    def _galvanostatic(self, path: Path, amplitude: Amount, dc: str | float | Amount) -> Iterator[Issue]:
        """The excitation, |dc_level| + √2 × amplitude, must stay within safety.current_max."""
        if isinstance(dc, float):
            yield Issue(
                (*path, "dc_level"),
                "a current amplitude makes the spectrum galvanostatic, around a DC current: write "
                "dc_level as a current (e.g. '0 A') or 'ocv', or give the amplitude as a voltage",
            )
            return
        limit = self.safety.current_max
        size = self.scale.resolve(abs(amplitude))
        offset = self.scale.resolve(abs(dc)) if isinstance(dc, Amount) else 0.0
        allowed = None if limit is None else self.scale.resolve(limit)
        if size is None or offset is None or allowed is None:
            return
        if offset + PEAK_PER_RMS * size > allowed * (1 + 1e-9):
            yield Issue(
                (*path, "amplitude"),
                f"the excitation reaches {engineering(offset + PEAK_PER_RMS * size, 'A')} (|dc_level| + √2 × "
                f"the RMS amplitude), more than safety.current_max ({engineering(allowed, 'A')}); "
                "lower the amplitude or raise the limit",
            )

    def _sweep(self, path: Path, sweep: Sweep) -> Iterator[Issue]:
        points: list[float | str] = [sweep.start, *sweep.vertices]
        for i, (a, b) in enumerate(pairwise(points)):
            if a == b:
                yield Issue((*path, "vertices", i), f"vertex {b:g} V equals the point before it; remove it")
        yield from self._window(path, sweep)
        lo, hi = self.safety.voltage_min, self.safety.voltage_max
        for i, volts in enumerate(sweep.vertices):
            if (lo is not None and volts < lo) or (hi is not None and volts > hi):
                yield Issue(
                    (*path, "vertices", i),
                    f"vertex {volts:g} V lies outside the safety window [{_v(lo)}, {_v(hi)}]",
                )
        if sweep.record is not None:
            yield from self._record((*path, "record"), sweep.record)

    def _record(self, path: Path, record: object) -> Iterator[Issue]:
        dv = getattr(record, "voltage_change", None)
        if dv is not None and dv <= 0:
            yield Issue((*path, "voltage_change"), "voltage_change must be positive, e.g. '1 mV'")
        di = getattr(record, "current_change", None)
        if di is not None and di.value <= 0:
            yield Issue((*path, "current_change"), "current_change must be positive, e.g. '0.01 mA'")


def _v(volts: float | None) -> str:
    return "-" if volts is None else f"{volts:g} V"


def _hz(hertz: float) -> str:
    return engineering(hertz, "Hz")
