"""The simulated channel: a cell model behind the Channel protocol, a whole step at a time.

Each step is computed on a fine time grid in chunks, with numpy: the model's response over
the chunk, the first sample where an end condition or a safety limit holds (vectorised); a
level crossed between two samples (a cut-off) is found on finer grids in that interval
(`crossing`), so the step's last sample lies on it; then the model is advanced by exactly that
much and the logged samples go out as one Batch. Times that are known in advance (duration,
charge at constant current, a pause for an every-block) are put on the grid exactly, so a
plating step delivers exactly its charge.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, assert_never

import numpy as np

from cyclerd.drivers.base import (
    Batch,
    Capabilities,
    Spectrum,
    StepEnd,
    StepProgress,
    dc_sample_times,
    hold_after_switch,
)
from cyclerd.drivers.clock import Clock
from cyclerd.drivers.conditions import (
    LEVELS,
    NO_END,
    Counter,
    End,
    EndWatch,
    first,
    safety_end_one,
    scheduled_end,
)
from cyclerd.drivers.record import RecordState, select, select_one
from cyclerd.protocols.program import (
    CurrentCommand,
    CurrentVoltageCommand,
    ImpedanceCommand,
    ImpedanceSpec,
    RestCommand,
    SafetyLimits,
    StepCommand,
    SweepCommand,
    SweepSpec,
    VoltageCommand,
)
from cyclerd.simulators.cell import CellModel, FloatArray, Resumable
from cyclerd.simulators.crossing import Sample, crossing

CAPABILITIES = Capabilities(
    kinds=frozenset({"rest", "cc", "plate", "strip", "cv", "cccv", "eis", "sweep"}),
    current_max_A=1.0,
    voltage_range_V=(-10.0, 10.0),
    eis_modes=frozenset({"potentiostatic", "galvanostatic"}),
    frequency_range_Hz=(1e-5, 1e7),
)
SWEEP_STEP_V = 1e-3  # the staircase of a simulated cyclic voltammogram
CROSSINGS = LEVELS | {"switch"}  # ends found between two samples of the grid (see `crossing`)


@dataclass
class _Segment:
    """One chunk of a step on the fine grid, relative to the chunk's start."""

    t_s: FloatArray  # step time of each sample
    voltage_V: FloatArray
    current_A: FloatArray


class SimulatedChannel:
    """A simulated cell on a simulated instrument channel, in the time of `clock`.

    It is `Snapshotting`: the runner checkpoints the simulated cell with every batch, so after
    a daemon restart the cell is as the crash left it, as a real cell would be.
    """

    def __init__(
        self, cell: CellModel, clock: Clock, resolution_s: float = 1.0, chunk: int = 4096, name: str = "sim"
    ) -> None:
        self.cell = cell
        self.clock = clock
        self.resolution_s = resolution_s
        self.chunk = chunk
        self.name = name
        self.output_on = False
        self._snapshot: dict[str, Any] | None = None  # the cell's live state, until the cell moves on

    def snapshot(self) -> dict[str, Any] | None:
        """The cell's changing state for a checkpoint (JSON types), taken again only after a change.

        The runner checkpoints at every batch and at every step boundary; from a step's last
        batch through its end and the start of the next step nothing touches the cell, so two of
        every three checkpoints reuse the previous snapshot (the same dict: read it, never change
        it). Whatever moves the cell or draws from its noise generators calls `_touched` first.
        None for a cell model without such state (a test's stand-in): nothing of it travels
        with the checkpoint.
        """
        if self._snapshot is None and isinstance(self.cell, Resumable):
            self._snapshot = self.cell.live_state()
        return self._snapshot

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Put the cell back as it was when `snapshot` was taken, to resume a run after a restart.

        Only the changing part of a cell is in a snapshot: the channel's cell must be freshly
        made with the preset, seed, area and overrides of the cell the snapshot came from.
        Raises `LiveStateError` (the cell unchanged) if the snapshot is of another model.
        """
        cell = self.cell
        if not isinstance(cell, Resumable):
            raise TypeError(f"{self.name}: a {type(cell).__name__} keeps no state to restore")
        self._snapshot = None
        cell.restore_live_state(snapshot)

    def _touched(self) -> CellModel:
        """The cell, about to change (its state or its generators): the snapshot is stale."""
        self._snapshot = None
        return self.cell

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    async def safe_state(self) -> None:
        self.output_on = False

    async def impedance(self, spec: ImpedanceSpec) -> Spectrum:
        """The spectrum of the cell now; the cell rests (and the clock runs) while it is measured,
        and its open-circuit voltage meanwhile is the DC level it is measured at."""
        frequencies = np.asarray(spec.frequencies_Hz(), dtype=np.float64)
        cell = self._touched()
        duration = spec.duration_s()
        t = dc_sample_times(duration)
        resting_V = cell.voltage_at_current(0.0, t)
        z = cell.impedance(frequencies)
        cell.advance_at_current(0.0, duration)
        await self.clock.sleep(duration)
        nothing = np.zeros(len(t))
        rest = Batch(t, resting_V, nothing, nothing, nothing, final=True)
        return Spectrum(frequencies, z, float(resting_V[0]), rest)

    async def run(
        self,
        command: StepCommand,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None = None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        steps: AsyncGenerator[Batch | StepEnd, None]
        match command:
            case RestCommand():
                steps = self._current_phase(command, 0.0, start, limits, pause_at_s, final=True)
            case CurrentCommand():
                steps = self._current_phase(command, command.current_A, start, limits, pause_at_s, final=True)
            case VoltageCommand():
                voltage_V, ceiling_A = command.voltage_V, command.current_limit_A
                steps = self._voltage_phase(command, voltage_V, ceiling_A, start, limits, pause_at_s)
            case CurrentVoltageCommand():
                steps = self._cccv(command, start, limits, pause_at_s)
            case SweepCommand():
                steps = self._sweep(command, command.spec, limits)
            case ImpedanceCommand():
                raise ValueError("the simulated channel measures a spectrum with impedance(), not run()")
            case _:
                assert_never(command)
        self.output_on = not isinstance(command, RestCommand)
        async with contextlib.aclosing(steps):  # closed here, not by the loop's finalizer hook
            async for item in steps:
                yield item

    def _cccv(
        self,
        command: CurrentVoltageCommand,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        voltage_V = command.voltage_V
        return hold_after_switch(
            self._current_phase(
                command, command.current_A, start, limits, pause_at_s, final=False, switch_V=voltage_V
            ),
            lambda progress: self._voltage_phase(command, voltage_V, None, progress, limits, pause_at_s),
        )

    async def _sweep(
        self, command: StepCommand, sweep: SweepSpec, limits: SafetyLimits
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Cyclic voltammetry as short potential holds on a grid of SWEEP_STEP_V steps.

        The same approximation a potentiostat's staircase makes (and the MethodSCRIPT emulator),
        one model call per step; a sweep is not interrupted by every-blocks. It runs to its end
        unless a safety limit (or an end condition) holds at a point: the cell and the clock
        then stop at that point's time, where its last sample is.
        """
        dt = SWEEP_STEP_V / sweep.scan_rate_V_per_s
        ocv_V = None
        if sweep.start_V is None:  # from `ocv`: the cell's voltage at zero current as the step begins
            ocv_V = float(self._touched().voltage_at_current(0.0, np.zeros(1))[0])
        corners = sweep.corners_V(ocv_V)
        points = [corners[0]]
        for a, b in pairwise(corners):
            n = max(1, round(abs(b - a) / SWEEP_STEP_V))
            points += [a + (b - a) * k / n for k in range(1, n + 1)]
        # Scans repeat the path (closed, as a voltammogram's is: last vertex = start).
        grid = np.array([points[0]] + points[1:] * sweep.scans)
        t = dt * np.arange(len(grid), dtype=np.float64)
        counter, watch, record = Counter(StepProgress()), EndWatch(command, limits), RecordState()
        currents, q, e = np.empty(len(grid)), np.empty(len(grid)), np.empty(len(grid))
        reason, detail, cut = "", "", len(grid)
        for k, (t_s, volts) in enumerate(zip(t.tolist(), grid.tolist(), strict=True)):
            current = float(self._touched().current_at_voltage(volts, np.array([dt]))[-1])
            currents[k] = current
            q[k], e[k] = counter.add_one(t_s, volts, current)
            index, reason, detail = watch.check_one(t_s, volts, current, float(q[k]))
            if index >= 0:
                cut = k + 1  # the cell has held the potentials before this point: up to t_s
                break
            self.cell.advance_at_voltage(volts, dt)
        await self.clock.sleep(float(t[cut - 1]) + (0.0 if reason else dt))
        t, grid, currents, q, e = (x[:cut] for x in (t, grid, currents, q, e))
        keep = select(command.record, t, grid, currents, record)
        keep[0] = keep[-1] = True
        yield Batch(t[keep], grid[keep], currents[keep], q[keep], e[keep], final=True)
        yield StepEnd(reason or "sweep", StepProgress(float(t[-1]), float(q[-1]), float(e[-1])), detail)

    async def _current_phase(
        self,
        command: StepCommand,
        current_A: float,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None,
        final: bool,
        switch_V: float | None = None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        t_stop, scheduled = scheduled_end(command, current_A, start, pause_at_s)

        def respond(rel: FloatArray) -> tuple[FloatArray, FloatArray]:
            return self._touched().voltage_at_current(current_A, rel), np.full(len(rel), current_A)

        def commit(duration: float) -> None:
            self._touched().advance_at_current(current_A, duration)

        def extra(seg: _Segment) -> End:
            if switch_V is None:
                return NO_END
            over = seg.voltage_V >= switch_V if current_A > 0 else seg.voltage_V <= switch_V
            return first(over), "switch", ""

        stream = self._stream(command, start, limits, t_stop, scheduled, respond, commit, extra)
        async with contextlib.aclosing(stream):
            async for item in stream:
                yield item

    async def _voltage_phase(
        self,
        command: StepCommand,
        voltage_V: float,
        ceiling_A: float | None,
        start: StepProgress,
        limits: SafetyLimits,
        pause_at_s: float | None,
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        t_stop, scheduled = scheduled_end(command, 0.0, start, pause_at_s)  # charge: not scheduled

        def respond(rel: FloatArray) -> tuple[FloatArray, FloatArray]:
            current = self._touched().current_at_voltage(voltage_V, rel)
            if ceiling_A is not None:
                current = np.clip(current, -ceiling_A, ceiling_A)
            return np.full(len(rel), voltage_V), current

        def commit(duration: float) -> None:
            self._touched().advance_at_voltage(voltage_V, duration)

        def no_extra(seg: _Segment) -> End:
            return NO_END

        stream = self._stream(command, start, limits, t_stop, scheduled, respond, commit, no_extra)
        async with contextlib.aclosing(stream):
            async for item in stream:
                yield item

    async def _stream(
        self,
        command: StepCommand,
        start: StepProgress,
        limits: SafetyLimits,
        t_stop: float,
        scheduled: str,
        respond: Callable[[FloatArray], tuple[FloatArray, FloatArray]],
        commit: Callable[[float], None],
        extra: Callable[[_Segment], End],
    ) -> AsyncGenerator[Batch | StepEnd, None]:
        """Walk the fine grid chunk by chunk until a condition holds; yield logged samples."""
        dt = min(self.resolution_s, command.record.every_s or self.resolution_s)
        record = RecordState()
        counter = Counter(start)
        watch = EndWatch(command, limits)
        t_now = start.t_s
        first: Batch | None = None  # the step's first sample: sent with the first chunk's samples
        # The step's first sample, before any current flows, is due; so is the first sample of a
        # stretch that resumes the step after an every-block, so that charge integrated from the
        # stored samples never spans the block (design.md: every step records its first sample).
        at_start = True
        before: Sample | None = None  # the last sample (at t_now), when it is short of every level
        opening: Sample | None = None  # the step's first sample, its levels not yet looked at

        def levels(rel: FloatArray, voltage: FloatArray, current: FloatArray) -> End:
            return watch.levels(voltage, current, extra(_Segment(t_now + rel, voltage, current)))

        while True:
            left = (t_stop - t_now) / dt
            count = self.chunk if left > self.chunk else max(1, math.ceil(left - 1e-9))
            rel = dt * np.arange(1, count + 1, dtype=np.float64)
            at_stop = t_now + rel >= t_stop - 1e-9
            if at_stop.any():
                rel = rel[: int(np.argmax(at_stop)) + 1]
                rel[-1] = t_stop - t_now
            if at_start:
                # One model call for the first sample and the first chunk: a model call costs
                # about as much for one sample as for a chunk, so the first sample rides along.
                at_start = False
                voltage, current = respond(np.concatenate(([0.0], rel)))
                t0, v0, i0 = np.full(1, t_now), voltage[:1], current[:1]
                voltage, current = voltage[1:], current[1:]
                # One sample: the scalar forms, the same arithmetic without numpy's per-call cost.
                q0, e0 = (np.array([x]) for x in counter.add_one(t_now, float(v0[0]), float(i0[0])))
                select_one(command.record, t_now, float(v0[0]), float(i0[0]), record)  # always logged
                index, reason, detail = safety_end_one(limits, float(v0[0]), float(i0[0]))
                if index >= 0:
                    yield Batch(t0, v0, i0, q0, e0, final=True)
                    yield StepEnd(reason, StepProgress(t_now, float(q0[0]), float(e0[0])), detail)
                    return
                first, opening = Batch(t0, v0, i0, q0, e0), Sample(t_now, float(v0[0]), float(i0[0]))
            else:
                voltage, current = respond(rel)
            seg = _Segment(t_now + rel, voltage, current)
            charge = counter.charge_As + np.cumsum(current * np.diff(np.concatenate(([0.0], rel))))
            index, reason, detail = watch.check(seg.t_s, voltage, current, charge, extra(seg))
            if index < 0 and at_stop.any():
                index, reason = len(rel) - 1, scheduled
            if reason in CROSSINGS:
                if index > 0:
                    before = _sample(index - 1, rel, voltage, current)
                elif opening is not None and _short_of_levels(levels, opening):
                    before = opening  # the step began short of every level
                if before is not None:  # None: the level held from the start of this stretch
                    after = _sample(index, rel, voltage, current)
                    found, (_, reason, detail) = crossing(
                        respond, levels, before, after, (index, reason, detail)
                    )
                    rel, voltage, current = _ending_at(index, found, rel, voltage, current)
                    seg = _Segment(t_now + rel, voltage, current)
            cut = len(rel) if index < 0 else index + 1
            seg = _Segment(seg.t_s[:cut], seg.voltage_V[:cut], seg.current_A[:cut])
            q, e = counter.add(seg.t_s, seg.voltage_V, seg.current_A)
            elapsed = float(rel[cut - 1])  # exactly the time the model's response was asked for
            commit(elapsed)
            await self.clock.sleep(elapsed)
            if reason:  # the step's last sample is logged: the rule looks at the ones before it
                last = len(seg.t_s) - 1  # (off the grid at a crossing: its interval is shorter)
                before_last = select(
                    command.record, seg.t_s[:last], seg.voltage_V[:last], seg.current_A[:last], record
                )
                keep = np.append(before_last, True)
            else:
                keep = select(command.record, seg.t_s, seg.voltage_V, seg.current_A, record)
            kept = Batch(
                seg.t_s[keep], seg.voltage_V[keep], seg.current_A[keep], q[keep], e[keep], final=bool(reason)
            )
            if first is not None:
                kept, first = _joined(first, kept), None
            if len(kept):
                yield kept
            t_now = float(seg.t_s[-1])
            before, opening = Sample(0.0, float(seg.voltage_V[-1]), float(seg.current_A[-1])), None
            if reason:
                yield StepEnd(reason, StepProgress(t_now, counter.charge_As, counter.energy_J), detail)
                return


def _sample(index: int, rel: FloatArray, voltage: FloatArray, current: FloatArray) -> Sample:
    return Sample(float(rel[index]), float(voltage[index]), float(current[index]))


def _short_of_levels(levels: Callable[[FloatArray, FloatArray, FloatArray], End], sample: Sample) -> bool:
    return levels(*(np.array([value]) for value in sample))[0] < 0


def _ending_at(index: int, found: Sample, *columns: FloatArray) -> list[FloatArray]:
    """The columns up to sample `index`, which is `found`: the step ends on its crossing."""
    return [np.append(column[:index], value) for column, value in zip(columns, found, strict=True)]


def _joined(a: Batch, b: Batch) -> Batch:
    """One batch of a's samples then b's: a step's first sample costs no batch of its own."""
    return Batch(
        np.concatenate((a.t_s, b.t_s)),
        np.concatenate((a.voltage_V, b.voltage_V)),
        np.concatenate((a.current_A, b.current_A)),
        np.concatenate((a.charge_As, b.charge_As)),
        np.concatenate((a.energy_J, b.energy_J)),
        final=b.final,
    )
