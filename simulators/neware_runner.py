"""A Neware step file running on one channel of the emulated cycler: rest, CC, CV and CC-CV steps
with their limits, cycle steps, the file's protection, and the records the BTS keeps (at the
record interval, on voltage or current changes, and each step's first and last point).

Each tick asks the cell how it will respond (without changing it) on a grid of at most FINE_S,
aligned to the step's start, up to the clock: records and the first limit met come from there, a
cut-off located between grid points (`crossing`); then the channel's output stage is advanced
exactly there and the next drive starts at the limit, as a BTS acts within milliseconds. Only the
runner moves the cell while a test runs (the channel is not read then): a cell moved on by a
reading would leave a stretch no sample saw, a hole in the records however late the tick. Charge
and energy are counted by the runner over its samples. Ticks come when the next limit is due,
WAKE_WALL_S apart at most.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cyclerd.drivers import neware_wire as wire
from cyclerd.drivers.conditions import End, first
from cyclerd.drivers.neware_stepfile import NewareStep, StepFile, StepType
from cyclerd.drivers.record import RecordState, select
from cyclerd.protocols.program import RecordRule
from cyclerd.simulators.crossing import Sample, crossing
from cyclerd.simulators.cycler_bank import REST, BankChannel, ChannelLimits
from cyclerd.simulators.smu_output import Drive

FloatArray = NDArray[np.float64]
FINE_S = 1.0  # the look-ahead grid (emulator time) at most: records and ends resolve to this
MAX_POINTS = 4096  # per look-ahead; a longer stretch (a stalled loop) is walked more coarsely
COARSE_POINTS = 64  # the look-ahead that decides when to wake
WAKE_WALL_S = 0.02  # the runner wakes at least this often (wall clock)
LATEST_WALL_S = 5e-4  # ... and waits at least this long
COMPLIANCE_V = 5.0  # a current source clamps at the channel's voltage range
CCCV = frozenset({StepType.CCCV_CHARGE, StepType.CCCV_DISCHARGE})
CV = frozenset({StepType.CV_CHARGE, StepType.CV_DISCHARGE})


@dataclass(frozen=True)
class Record:
    """One point of a test's data, as `download` sends it; charge and energy signed by the step's
    direction (a discharge counts its capacity positive), as the BTS reports them."""

    step: int
    cycle: int
    word: str
    step_s: float
    t_s: float  # emulator time
    voltage_V: float
    current_A: float
    capacity_As: float
    energy_J: float


@dataclass(frozen=True)
class _Event:
    t_s: float
    voltage_V: float
    current_A: float
    kind: str  # "end" | "switch" (CC-CV: on to the hold) | "protect"
    why: str = ""  # a protection's reason


class TestRun:
    """One test on one channel: the step file from its first step to its end step, a stop or a
    protection; `records` and `log` are what the BTS keeps of it."""

    def __init__(
        self, channel: BankChannel, file: StepFile, test_id: int, barcode: str, current_max_A: float
    ) -> None:
        self.channel, self.file, self.test_id, self.barcode = channel, file, test_id, barcode
        self.current_max_A = current_max_A
        self.status = wire.WORKING
        self.log_code = wire.STILL_WORKING
        self.why = ""  # a protection's reason, in the channel's words
        self.records: list[Record] = []
        self.log: list[tuple[int, int, float]] = []  # (seqid, log code, emulator time)
        self.started_s = channel.clock.now()
        self.cycle = 1
        self._passes: dict[int, int] = {}  # cycle step number -> passes done
        self.number = 0
        self.step = NewareStep(StepType.END)
        self._t0 = 0.0  # emulator time at the step's start
        self._drive = REST
        self._q = self._e = 0.0  # charge (A·s) and energy (J) since the step began, charge positive
        self._last = (0.0, 0.0, 0.0)  # t, V, I of the last sample
        self._kept = RecordState()
        self._rule = RecordRule()
        limits = file.protection
        currents = [abs(x) for x in (limits.current_max_A, limits.current_min_A) if x is not None]
        channel.limits = ChannelLimits(
            limits.voltage_max_V, limits.voltage_min_V, max(currents, default=None)
        )
        channel.tripped = None
        channel.reading()  # the idle cell to the test's start
        self._note(wire.TEST_STARTED)
        self._goto(1)

    # -- the test's life -------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick until the test is over; cancelled by `stop`."""
        factor = self.channel.clock.factor
        while (wait_s := self.tick()) is not None:
            await asyncio.sleep(min(max(wait_s / factor, LATEST_WALL_S), WAKE_WALL_S))

    def stop(self) -> None:
        """The host stopped the test: the data up to now, then the channel off."""
        if self.status != wire.WORKING:
            return
        self._advance(self.channel.clock.now(), to_end=True)
        self._output(None)
        self._final_point()
        self._finish(wire.STOP, wire.TEST_STOPPED)

    def tick(self) -> float | None:
        """Records up to now, acting on each limit met on the way; emulator seconds until the
        next tick (None: the test is over)."""
        clock = self.channel.clock
        while self.status == wire.WORKING:
            if (why := self._tripped()) is not None:
                self._protect(why)
                break
            event = self._advance(clock.now())
            if event is None:
                if self._tripped() is None:
                    return self._until_next()
            elif event.kind == "switch":
                self._hold()
            elif event.kind == "protect":
                self._protect(event.why)
            else:
                self._goto(self.number + 1)
        return None

    def _tripped(self) -> str | None:
        """Why the channel's own safety stops it (an injected trip), or None.

        The bank would trip the channel when read (`BankChannel.sync`), but reading it moves its
        cell to the clock's present behind the runner's back; so the runner takes the trip itself.
        """
        channel = self.channel
        if channel.tripped is None and (why := channel.faults.trip) is not None:
            channel.faults.trip, channel.tripped = None, why
        return channel.tripped

    def _cell_to(self, t_s: float) -> None:
        """The cell driven as it is up to `t_s`, where a limit was met: the BTS acts on a limit
        within milliseconds, so the next drive starts there, not when the runner woke.

        The bank advances a channel only to the clock's present, when read; here its output
        stage (public) is advanced to the limit instead, and `_output` sets what follows.
        """
        channel = self.channel
        if t_s > channel.terminals.t_s:
            drive = channel.drive if channel.on else REST
            channel.terminals.advance_to(t_s, drive, channel.load())

    def _output(self, drive: Drive | None) -> None:
        """The channel's output is `drive` (None: off) from the cell's present state on."""
        channel = self.channel
        channel.drive, channel.on = (REST, False) if drive is None else (drive, True)

    @property
    def last(self) -> tuple[float, float, float]:
        """Step time, voltage and current of the latest sample."""
        t, v, i = self._last
        return t - self._t0, v, i

    @property
    def counted(self) -> tuple[float, float]:
        """The step's capacity and energy so far, signed by its direction."""
        return self.step.sign * self._q, self.step.sign * self._e

    # -- steps -----------------------------------------------------------------------------------

    def _goto(self, number: int) -> None:
        """On to step `number`, through cycle steps, to the next step that runs or the end."""
        steps = self.file.steps
        while number <= len(steps):
            step = steps[number - 1]
            if step.kind is StepType.END:
                break
            if step.kind is StepType.CYCLE:
                assert step.loop_to is not None  # a cycle step has both (parse_step_file)
                assert step.loop_count is not None
                done = self._passes.get(number, 0) + 1
                if done < step.loop_count:
                    self._passes = {k: n for k, n in self._passes.items() if not step.loop_to <= k < number}
                    self._passes[number] = done
                    self.cycle += 1
                    number = step.loop_to
                else:
                    self._passes.pop(number, None)
                    number += 1
                continue
            self._begin(number, step)
            return
        self._output(None)
        self._finish(wire.FINISH, wire.TEST_FINISHED)

    def _begin(self, number: int, step: NewareStep) -> None:
        self.number, self.step = number, step
        self._rule = step.record or self.file.record
        if step.kind is StepType.REST:
            self._drive = REST
        elif step.kind in CV:
            assert step.voltage_V is not None  # refused at start otherwise (`problem`)
            self._drive = Drive(False, step.voltage_V, step.current_A or self.current_max_A)
        else:  # constant current, or the CC phase of CC-CV
            self._drive = Drive(True, step.sign * (step.current_A or 0.0), COMPLIANCE_V)
        self._output(self._drive)
        self._t0 = self.channel.terminals.t_s
        v, i, _ = self.channel.terminals.measure(self._drive, self.channel.load())
        self._q = self._e = 0.0
        self._last = (self._t0, v, i)
        self._kept = RecordState(0.0, v, i)
        self._keep(np.array([self._t0]), np.array([v]), np.array([i]), np.zeros(1), np.zeros(1))

    def _hold(self) -> None:
        """CC-CV: the constant-voltage phase, from where the cell is now."""
        assert self.step.voltage_V is not None
        self._drive = Drive(False, self.step.voltage_V, self.step.current_A or self.current_max_A)
        self._output(self._drive)

    def _protect(self, why: str) -> None:
        """The test ends in "protect", the output off; the point it stopped at is recorded."""
        self.why = why
        self._output(None)
        self._final_point()
        self._finish(wire.PROTECT, protection_code(why))

    def _final_point(self) -> None:
        """The latest sample recorded as the step's last point (a stop, a protection), unless it is."""
        t, v, i = self._last
        if self.records and self.records[-1].t_s >= t:
            return
        q, e = self.counted
        self.records.append(Record(self.number, self.cycle, self.step.word, t - self._t0, t, v, i, q, e))

    def _finish(self, status: str, code: int) -> None:
        self.status, self.log_code = status, code
        self._note(code)

    def _note(self, code: int) -> None:
        self.log.append((len(self.records), code, self.channel.clock.now()))

    # -- the look-ahead ----------------------------------------------------------------------------

    def _respond(self, rel: FloatArray) -> tuple[FloatArray, FloatArray]:
        """The cell's voltage and current `rel` seconds after its present state, under the drive."""
        load, drive = self.channel.load(), self._drive
        if drive.forces_current:
            voltage = np.clip(load.voltage_at_current(drive.level, rel), -COMPLIANCE_V, COMPLIANCE_V)
            return voltage, np.full(len(rel), drive.level)
        current = np.clip(load.current_at_voltage(drive.level, rel), -drive.limit, drive.limit)
        return np.full(len(rel), drive.level), current

    def _levels(self) -> tuple[float, str] | None:
        """The voltage (CC phases) or current (CV phases) level that ends the phase, and how."""
        step, drive = self.step, self._drive
        if step.kind is StepType.REST:
            return None
        if drive.forces_current:
            level = step.voltage_V if step.kind in CCCV else step.stop_voltage_V
            return None if level is None else (level, "switch" if step.kind in CCCV else "end")
        return None if step.stop_current_A is None else (step.stop_current_A, "end")

    def _level_end(self, level: float) -> Callable[[FloatArray, FloatArray, FloatArray], End]:
        rising, holding = self.step.sign > 0, not self._drive.forces_current

        def met(t: FloatArray, v: FloatArray, i: FloatArray) -> End:
            if holding:
                return first(np.abs(i) <= level), "level", ""
            return first(v >= level if rising else v <= level), "level", ""

        return met

    def _look(
        self, t_to: float, points: int | None, to_end: bool = False
    ) -> tuple[FloatArray, FloatArray, FloatArray, _Event | None]:
        """Samples from the last one to `t_to` (emulator time), cut at the first limit met there.

        `points` None: the record grid (aligned to the step's start) up to `t_to`, `t_to` itself
        a sample only with `to_end` (a stop) or as the step's time limit; else that many, evenly.
        """
        t_state, t_end = self.channel.terminals.t_s, t_to
        limit_t = None if self.step.time_s is None else self._t0 + self.step.time_s
        if limit_t is not None and limit_t <= t_end:
            t_end, to_end = limit_t, True
        times = self._grid(t_state, t_end, points, to_end)
        if len(times) == 0:
            due = limit_t is not None and limit_t <= t_state + 1e-9
            return times, times, times, (self._at(limit_t, t_state) if due and limit_t is not None else None)
        v, i = self._respond(times - t_state)
        candidates: list[_Event] = []
        if (level := self._levels()) is not None:
            met = self._level_end(level[0])
            k = met(times, v, i)[0]
            if k >= 0:
                t_prev, v_prev, i_prev = (times[k - 1], v[k - 1], i[k - 1]) if k else self._last
                before = Sample(max(t_prev - t_state, 0.0), v_prev, i_prev)
                after = Sample(times[k] - t_state, v[k], i[k])
                found, _ = crossing(self._respond, met, before, after, (k, "level", ""))
                candidates.append(_Event(t_state + found.t_s, found.voltage_V, found.current_A, level[1]))
        q, _ = self._count(times, v, i, commit=False)
        if (cap := self.step.capacity_As) is not None and (k := first(np.abs(q) >= cap)) >= 0:
            candidates.append(self._capacity_event(times, q, k, cap, t_state))
        if (unsafe := self._unsafe(times, v, i, q)) is not None:
            candidates.append(unsafe)
        if limit_t is not None and times[-1] >= limit_t - 1e-9:
            candidates.append(_Event(limit_t, v[-1], i[-1], "end"))
        event = min(candidates, key=lambda e: e.t_s, default=None)
        if event is not None:
            keep = times < event.t_s - 1e-9
            times, v, i = (
                np.append(x[keep], y)
                for x, y in zip((times, v, i), (event.t_s, event.voltage_V, event.current_A), strict=True)
            )
        return times, v, i, event

    def _grid(self, t_from: float, t_to: float, points: int | None, to_end: bool) -> FloatArray:
        """Sample times after `t_from` up to `t_to`: the step's grid, and `t_to` itself `to_end`.

        The grid's points only, else: a sample off the grid (when the runner happened to wake)
        could be recorded, and the next record due `every_s` after it would wait for the grid.
        """
        if t_to <= t_from + 1e-9:
            return np.empty(0)
        if points is not None:
            return np.linspace(t_from, t_to, points + 1)[1:]
        step = min(FINE_S, self._rule.every_s or FINE_S)
        step = max(step, (t_to - t_from) / MAX_POINTS)
        m = np.arange(math.floor((t_from - self._t0) / step) + 1, math.floor((t_to - self._t0) / step) + 1)
        times = self._t0 + m.astype(np.float64) * step
        if not to_end:
            return times[(times > t_from + 1e-9) & (times <= t_to)]
        times = times[(times > t_from + 1e-9) & (times < t_to - 1e-9)]
        return np.append(times, t_to)

    def _at(self, t_s: float, t_state: float) -> _Event:
        v, i = self._respond(np.array([max(t_s - t_state, 0.0)]))
        return _Event(t_s, float(v[0]), float(i[0]), "end")

    def _capacity_event(self, times: FloatArray, q: FloatArray, k: int, cap: float, t_state: float) -> _Event:
        """Where between samples k-1 and k the charge reaches `cap` (linear in between)."""
        t_prev, q_prev = (times[k - 1], abs(q[k - 1])) if k else (self._last[0], abs(self._q))
        span = abs(q[k]) - q_prev
        t = float(times[k]) if span <= 0 else t_prev + (cap - q_prev) / span * (times[k] - t_prev)
        return self._at(t, t_state)

    def _unsafe(self, times: FloatArray, v: FloatArray, i: FloatArray, q: FloatArray) -> _Event | None:
        """The first sample beyond the file's protection, and why, in the channel's words."""
        limits, cap = self.channel.limits, self.file.protection.capacity_max_As
        low = None if limits.voltage_min_V is None else -limits.voltage_min_V
        most = None if limits.current_max_A is None else limits.current_max_A * 1.001
        checks = (  # (limit, what is compared with it, its words: the value and the limit)
            (limits.voltage_max_V, v, v, "voltage {:.4f} V above the safety limit {:g} V"),
            (low, -v, v, "voltage {:.4f} V below the safety limit {:g} V"),
            (most, np.abs(i), i, "current {:.6g} A beyond the safety limit {:g} A"),
            (cap, np.abs(q), np.abs(q), "capacity {:.6g} A·s above the protection limit {:g} A·s"),
        )
        hits = [(k, shown[k], abs(limit), words) for limit, seen, shown, words in checks
                if limit is not None and (k := first(seen > limit)) >= 0]  # fmt: skip
        if not hits:
            return None
        k, value, limit, words = min(hits, key=lambda hit: hit[0])
        why = words.format(value, limit / 1.001 if words.startswith("current") else limit)
        return _Event(float(times[k]), float(v[k]), float(i[k]), "protect", why)

    def _advance(self, t_to: float, to_end: bool = False) -> _Event | None:
        """Take the samples up to `t_to` into the counters and the records, and the cell there;
        the limit met on the way, if any (the cell then stands there)."""
        times, v, i, event = self._look(t_to, None, to_end)
        if len(times):
            q, e = self._count(times, v, i)
            self._keep(times, v, i, q, e, last=event is not None and event.kind != "switch")
            self._cell_to(float(times[-1]))
        return event

    def _until_next(self) -> float:
        """Emulator seconds until the next limit is due, at most one wake-up interval."""
        now = self.channel.clock.now()
        horizon = now + WAKE_WALL_S * self.channel.clock.factor
        _, _, _, event = self._look(horizon, COARSE_POINTS)
        return max((horizon if event is None else event.t_s) - now, 0.0)

    # -- counting and recording ----------------------------------------------------------------------

    def _count(
        self, times: FloatArray, v: FloatArray, i: FloatArray, commit: bool = True
    ) -> tuple[FloatArray, FloatArray]:
        """Charge and energy since the step began at each sample (trapezoids from the last one)."""
        t0, v0, i0 = self._last
        dt = np.diff(np.concatenate(([t0], times)))
        i_all, p_all = np.concatenate(([i0], i)), np.concatenate(([v0 * i0], v * i))
        q = self._q + np.cumsum(0.5 * (i_all[1:] + i_all[:-1]) * dt)
        e = self._e + np.cumsum(0.5 * (p_all[1:] + p_all[:-1]) * dt)
        if commit and len(times):
            self._q, self._e = float(q[-1]), float(e[-1])
            self._last = (float(times[-1]), float(v[-1]), float(i[-1]))
        return q, e

    def _keep(
        self, times: FloatArray, v: FloatArray, i: FloatArray, q: FloatArray, e: FloatArray, last: bool = True
    ) -> None:
        """Record the samples the step's rule logs; with `last`, the final one whatever the rule."""
        rel = times - self._t0
        keep = select(self._rule, rel, v, i, self._kept)
        if last:
            keep[-1] = True
        n, cycle, word, sign = self.number, self.cycle, self.step.word, self.step.sign
        for k in np.flatnonzero(keep):
            at = (float(rel[k]), float(times[k]), float(v[k]), float(i[k]))
            self.records.append(Record(n, cycle, word, *at, sign * float(q[k]), sign * float(e[k])))


def protection_code(why: str) -> int:
    """The log code of a protection, from the channel's words for it."""
    if why.startswith("voltage") and "above" in why:
        return wire.OVER_VOLTAGE
    if why.startswith("voltage") and "below" in why:
        return wire.UNDER_VOLTAGE
    if why.startswith("current"):
        return wire.OVER_CURRENT
    if why.startswith("capacity"):
        return wire.OVER_CAPACITY
    return wire.CHANNEL_FAULT
