"""Running MethodSCRIPT: the interpreter, and the EmStat4 analog front end it commands.

The interpreter walks a parsed script (methodscript_packages.parse), streams `M`/`P`/`T`/`*`
lines through a `Runtime` (the emulator's link and clock) and turns runtime failures into
`!XXXX: Line L`; `on_finished:` runs however the script ends (instrument-protocols.md §3.3–3.9).
The front end owns the cell and its time, so a seed gives the same samples whatever the client.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from cyclerd.clock import Clock
from cyclerd.simulators import methodscript_packages as pk
from cyclerd.simulators.cell import CellModel, ComplexArray, FloatArray

EIS_MAX_HZ = 200e3  # [U] the top frequency meas_loop_eis accepts
COMPLIANCE_V = 6.0  # [U] P7: the EmStat4 HR potential limit, applied and measured
POTENTIOSTATIC_MODES = {2, 3}  # low-speed, high-speed potentiostat
GALVANOSTAT_MODE = 6
PGSTAT_MODES = {0, *POTENTIOSTATIC_MODES, GALVANOSTAT_MODE}  # 4 (max range) is the Pico's
CHUNK_MAX = 256  # samples evaluated at once while the drive stays the same


class Runtime(Protocol):
    """Time and output of a running script (the emulator's session)."""

    @property
    def aborted(self) -> bool: ...
    def now(self) -> float: ...
    async def pause(self, seconds: float) -> None: ...  # returns early once aborted
    async def emit(self, line: str) -> None: ...  # may raise DeviceError (an injected fault)


class ShortedCell:
    """`cell` with a resistance across its terminals: a Li filament through the separator.

    The cell is seen as its rest voltage behind |Z(1 Hz)|, all a near-zero shunt needs: the
    terminal voltage collapses and the cell discharges into the shunt.
    """

    def __init__(self, cell: CellModel, resistance_ohm: float) -> None:
        self.inner, self.r_short = cell, resistance_ohm
        self.r_cell = float(abs(cell.impedance(np.array([1.0]))[0]))

    @property
    def area_m2(self) -> float:
        return self.inner.area_m2

    def _split(self, current_A: float, t_s: FloatArray) -> tuple[FloatArray, FloatArray]:
        v_oc = self.inner.voltage_at_current(0.0, t_s)
        v = (v_oc / self.r_cell + current_A) / (1.0 / self.r_cell + 1.0 / self.r_short)
        return v, (v - v_oc) / self.r_cell  # terminal voltage, current into the cell

    def voltage_at_current(self, current_A: float, t_s: FloatArray) -> FloatArray:
        return self._split(current_A, t_s)[0]

    def advance_at_current(self, current_A: float, duration_s: float) -> None:
        self.inner.advance_at_current(float(self._split(current_A, np.zeros(1))[1][0]), duration_s)

    def current_at_voltage(self, voltage_V: float, t_s: FloatArray) -> FloatArray:
        return voltage_V / self.r_short + self.inner.current_at_voltage(voltage_V, t_s)

    def advance_at_voltage(self, voltage_V: float, duration_s: float) -> None:
        self.inner.advance_at_voltage(voltage_V, duration_s)

    def impedance(self, frequencies_Hz: FloatArray) -> ComplexArray:
        z = self.inner.impedance(frequencies_Hz)
        return (z * self.r_short / (z + self.r_short)).astype(np.complex128)


Drive = tuple[str, float]  # ("off" | "E" | "I", level)


@dataclass
class _Chunk:
    drive: Drive
    dt: float
    generation: int
    voltage: FloatArray
    current: FloatArray
    used: int = 0


class AnalogFrontend:
    """Cell switch, pgstat mode, applied levels and ranges of one EmStat4 channel, over a cell.

    The cell moves only here. In a measurement loop each sample advances it by its interval,
    evaluated in chunks that double while the drive stays the same and committed as consumed;
    outside loops `sync` catches it up with the clock at the applied drive.
    """

    def __init__(self, cell: CellModel, clock: Clock, variant: str = "es4_hr") -> None:
        self.healthy = self.cell = cell
        self.clock = clock
        self.current_ranges = pk.CURRENT_RANGES_ES4_LR if variant == "es4_lr" else pk.CURRENT_RANGES_ES4_HR
        self.mode, self.on = 0, False  # [U] power-up state: pgstat off, cell off
        self.levels = {"E": 0.0, "I": 0.0}
        self.windows: dict[str, tuple[float, float] | None] = {"ba": None, "ab": None}  # None: all
        self.settings: dict[str, object] = {}  # accepted, not modelled (bandwidth, applied ranges)
        self._t = clock.now()  # the clock time the cell has been advanced to
        self._chunk: _Chunk | None = None
        self._generation = 0  # bumped by a fault so that precomputed samples are dropped

    def drive(self) -> Drive:
        if not self.on:
            return ("off", 0.0)
        kind = "I" if self.mode == GALVANOSTAT_MODE else "E"
        return (kind, self.levels[kind])

    def configure(self, command: str, values: Sequence[float | str]) -> None:
        """set_pgstat_chan/mode, set_range*, set_autoranging, set_max_bandwidth, ..."""
        self.sync()
        first = values[0]
        if command == "set_pgstat_chan":
            if first != 0:
                raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)  # one channel on an EmStat4
        elif command == "set_pgstat_mode":
            if first not in PGSTAT_MODES:
                raise pk.DeviceError(pk.ERR_UNKNOWN_MODE)
            self.mode = int(first)
            self.on = self.on and self.mode != 0
        elif isinstance(first, str):  # set_range / set_range_minmax / set_autoranging <vartype> ...
            magnitudes = [abs(float(v)) for v in values[1:]]
            if first not in ("ba", "ab", "da", "db"):
                raise pk.DeviceError(pk.ERR_BAD_VARTYPE)
            if first not in self.windows:
                self.settings[f"{command} {first}"] = magnitudes
                return
            table = self.current_ranges if first == "ba" else pk.POTENTIAL_RANGES_ES4
            top = pk.full_scale(table, max(magnitudes))
            low = pk.full_scale(table, min(magnitudes)) if command == "set_autoranging" else top
            self.windows[first] = (low, top)  # [U] the last range command wins
        elif first <= 0:
            raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
        else:
            self.settings[command] = first

    def cell_switch(self, on: bool) -> None:
        self.sync()
        if on and self.mode == 0:
            raise pk.DeviceError(pk.ERR_WRONG_MODE)
        self.on = on

    def level(self, kind: str, value: float) -> None:
        """set_e / set_i: the level applied at cell_on (at once if the cell is on)."""
        self.sync()
        self.apply(kind, value)

    def apply(self, kind: str, value: float) -> None:
        """A loop's own level; no sync, since the loop's samples account for its time."""
        if kind == "E" and abs(value) > COMPLIANCE_V:
            raise pk.DeviceError(pk.ERR_INVALID_POTENTIAL)
        if kind == "I" and abs(value) > max(self.current_ranges.values()):
            raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)  # [U] beyond the top current range
        self.levels[kind] = value  # [U] stays applied after the loop, as a DAC would

    def begin(self, technique: str) -> None:
        """Catch up with the clock; refuse a technique the present state does not allow."""
        self.sync()
        if technique == "ocp" and self.on:
            raise pk.DeviceError(pk.ERR_OCP_CELL_ON)
        if technique not in ("ocp", "meas"):
            if self.mode == 0 or (self.mode == GALVANOSTAT_MODE) != (technique in ("cp", "geis")):
                raise pk.DeviceError(pk.ERR_WRONG_MODE)
            if not self.on:
                raise pk.DeviceError(pk.ERR_CELL_MUST_BE_ON)  # [U] rather than switching it on

    def sample(self, dt_s: float) -> tuple[float, float]:
        """(voltage, current) after `dt_s` more seconds at the present drive."""
        key, c = (self.drive(), dt_s, self._generation), self._chunk
        if c is None or (c.drive, c.dt, c.generation) != key or c.used == len(c.voltage):
            size = 1 if c is None or (c.drive, c.dt, c.generation) != key else min(2 * c.used, CHUNK_MAX)
            self.finish()
            c = self._chunk = _Chunk(
                *key, *self._respond(key[0], dt_s * np.arange(1.0, size + 1.0, dtype=np.float64))
            )
        c.used += 1
        return float(c.voltage[c.used - 1]), float(c.current[c.used - 1])

    def finish(self) -> None:
        """Commit the samples taken from the present chunk; drop the rest."""
        c, self._chunk = self._chunk, None
        if c is not None and c.used:
            self._advance(c.drive, c.used * c.dt)
            self._t += c.used * c.dt

    def sync(self) -> None:
        self.finish()
        now = self.clock.now()
        if now > self._t:
            self._advance(self.drive(), now - self._t)
            self._t = now

    def spectrum(self, frequencies_Hz: FloatArray) -> ComplexArray:
        return self.cell.impedance(frequencies_Hz)

    def reading(self, vartype: str, value: float) -> tuple[float, pk.Meta]:
        """A measured value as reported: clipped at overload, with status and range index."""
        if vartype in ("ba", "cc"):
            meta = pk.choose_range(self.current_ranges, value, self.windows["ba"])
            if meta.status == pk.STATUS_OVERLOAD and math.isfinite(value):
                value = math.copysign(self.current_ranges[meta.range_index], value)
            return value, meta
        # [U] potentials above 1 V are reported on the 1 V range; overload only past compliance
        meta = pk.choose_range(pk.POTENTIAL_RANGES_ES4, min(abs(value), 1.0), self.windows["ab"])
        if not abs(value) <= COMPLIANCE_V:
            return math.copysign(COMPLIANCE_V, value), pk.Meta(pk.STATUS_OVERLOAD, meta.range_index)
        return value, meta

    def short(self, resistance_ohm: float | None) -> None:
        self.sync()
        self.cell = self.healthy if resistance_ohm is None else ShortedCell(self.healthy, resistance_ohm)
        self._generation += 1

    def _respond(self, drive: Drive, t: FloatArray) -> tuple[FloatArray, FloatArray]:
        kind, level = drive
        if kind == "E":
            return np.full(t.shape, level), self.cell.current_at_voltage(level, t)
        return self.cell.voltage_at_current(level, t), np.full(t.shape, level)

    def _advance(self, drive: Drive, duration_s: float) -> None:
        kind, level = drive
        if kind == "E":
            self.cell.advance_at_voltage(level, duration_s)
        else:
            self.cell.advance_at_current(level, duration_s)


@dataclass
class Value:
    value: float = 0.0
    vartype: str = "ja"  # [U] what a declared, never stored variable reports
    is_int: bool = False
    meta: pk.Meta | None = None


Point = list[tuple[pk.Ref, Value]]  # the loop's output variables at one sample
_Points = AsyncGenerator[Point | str, None]  # points, and `C` / `-` scan markers


class _Break(Exception):
    pass


class _Aborted(Exception):
    pass


_COMPARE = {
    "==": float.__eq__, "!=": float.__ne__, "<": float.__lt__,
    "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__,
}  # fmt: skip
_ARITH = {"add_var": float.__add__, "sub_var": float.__sub__, "mul_var": float.__mul__}


class Interpreter:
    """Runs one parsed script to its final empty line, whatever happens."""

    def __init__(self, script: pk.Script, runtime: Runtime, frontend: AnalogFrontend) -> None:
        self.script, self.rt, self.fe = script, runtime, frontend
        self.vars = {name: [Value() for _ in range(max(n, 1))] for name, n in script.variables.items()}
        self.line = 0
        self._package: list[str] = []
        self._output = True
        self._finishing = False
        self._timer0 = self._int0 = runtime.now()
        self._interval = 0.0

    async def run(self) -> None:
        for block in (self.script.main, self.script.on_finished):
            try:
                await self._block(block)
            except _Aborted:
                pass  # the session has answered `Z` already
            except pk.DeviceError as exc:
                await self.rt.emit(pk.error_line(exc.code, self.line))
            finally:
                self.fe.finish()
            self._finishing = True
        await self.rt.emit("")

    async def _block(self, nodes: list[pk.Node]) -> None:
        for node in nodes:
            self._check_abort()
            if isinstance(node, pk.Stmt):
                self.line = node.line
                await self._statement(node)
            elif isinstance(node, pk.If):
                for cond, body in node.branches:
                    if cond is None or self._holds(cond):
                        await self._block(body)
                        break
            elif pk.COMMANDS[node.head.name].technique is None:
                await self.rt.emit("L")
                with contextlib.suppress(_Break):
                    while self._holds(node.head):
                        await self._block(node.body)
                        await self.rt.pause(0.0)  # a busy loop must still let `Z` in
                await self.rt.emit("+")
            else:
                await self._measurement(node)

    def _check_abort(self) -> None:
        if self.rt.aborted and not self._finishing:
            raise _Aborted

    def _holds(self, stmt: pk.Stmt) -> bool:
        self.line = stmt.line
        a, op, b = stmt.args
        return bool(_COMPARE[str(op)](self._num(a), self._num(b)))

    async def _measurement(self, node: pk.Loop) -> None:
        head = node.head
        self.line = head.line
        points = self._points(head)
        await self.rt.emit(f"M{pk.COMMANDS[head.name].technique:04X}")
        async with contextlib.aclosing(points):
            async for item in points:
                self._check_abort()
                if isinstance(item, str):  # a scan's `C` / `-`
                    await self.rt.emit(item)
                    continue
                for ref, value in item:
                    self._set(ref, value)
                try:
                    await self._block(node.body)
                except _Break:
                    break
                self.line = head.line
        self.fe.finish()
        await self.rt.emit("*")

    async def _statement(self, s: pk.Stmt) -> None:
        name, a = s.name, s.args
        if name == "breakloop":
            raise _Break
        if name == "store_var":
            self._set(_ref(a[0]), self._value(a[1], str(a[2])))
        elif name == "copy_var":
            self._set(_ref(a[1]), replace(self._get(a[0])))
        elif name in ("add_var", "sub_var", "mul_var", "div_var"):
            self._arith(name, _ref(a[0]), a[1])
        elif name == "alter_vartype":
            self._set(_ref(a[0]), replace(self._get(a[0]), vartype=str(a[1])))
        elif name == "pck_start":
            self._package = []
        elif name == "pck_add":
            v = self._get(a[0])
            self._package.append(pk.encode_variable(v.vartype, v.value, v.is_int, v.meta))
        elif name in ("pck_end", "send_string"):
            text = pk.package_line(self._package) if name == "pck_end" else "T" + self._render(a[0])
            if self._output:
                await self.rt.emit(text)
        elif name == "set_script_output":
            self._output = self._num(a[0]) != 0  # [U] gates P and T lines only
        elif name == "timer_start":
            self._timer0 = self.rt.now()
        elif name == "timer_get":
            self._set(_ref(a[0]), Value(self.rt.now() - self._timer0, "eb"))
        elif name == "set_int":
            self._interval, self._int0 = self._time(a[0]), self.rt.now()
        elif name == "await_int" and self._interval > 0:
            periods = math.floor((self.rt.now() - self._int0) / self._interval + 1e-9) + 1
            await self._pause_until(self._int0 + periods * self._interval)
        elif name == "wait":
            await self._pause_until(self.rt.now() + self._time(a[0]))
        elif name in ("cell_on", "cell_off"):
            self.fe.cell_switch(name == "cell_on")
        elif name in ("set_e", "set_i"):
            self.fe.level(name[-1].upper(), self._num(a[0]))
        elif name == "meas":
            await self._meas(self._time(a[0]), _ref(a[1]), str(a[2]))
        elif name.startswith("set_"):
            self.fe.configure(name, [x if isinstance(x, str) else self._num(x) for x in a])

    async def _meas(self, duration: float, ref: pk.Ref, vartype: str) -> None:
        if vartype not in ("ab", "ba"):
            raise pk.DeviceError(pk.ERR_BAD_VARTYPE)
        self.fe.begin("meas")
        await self._pause_until(self.rt.now() + duration)
        voltage, current = self.fe.sample(duration)
        self._set(ref, self._measured(vartype, voltage if vartype == "ab" else current))

    # -- techniques: each yields the readings of one point (or a `C` / `-` scan marker) ------

    def _points(self, head: pk.Stmt) -> _Points:
        """Check the loop's arguments and the device state (before `M`), then yield its points."""
        outputs = pk.COMMANDS[head.name].args.index(pk.VAL)  # output variables come first
        r = [_ref(x) for x in head.args[:outputs]]
        n = [self._num(x) for x in head.args[outputs:] if not isinstance(x, pk.Opt)]
        name = head.name.removeprefix("meas_loop_")
        if name in ("ca", "cp", "ocp"):
            level, t_int, t_run = (0.0, *n) if name == "ocp" else n
            if t_int <= 0 or t_run < 0:
                raise pk.DeviceError(pk.ERR_INVALID_TIME)
            self._start(name, "E" if name == "ca" else "I", level)
            return self._hold(name, r, level, t_int, int(t_run / t_int + 1e-9))
        if name in ("cv", "lsv"):
            options = {o.name: self._num(o.value) for o in head.args if isinstance(o, pk.Opt)}
            vertices, step, rate = ([*n[:3], n[0]] if name == "cv" else n[:2]), n[-2], n[-1]
            scans = int(options.get("nscans", 1))
            if step < 0:
                raise pk.DeviceError(pk.ERR_NEGATIVE_STEP)
            if step == 0 or rate <= 0 or scans < 1:
                raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
            self._start("cv", "E", vertices[0])
            return self._sweep(r, vertices, step, step / rate, scans)
        amplitude, f_start, f_end, count, dc = n
        if amplitude <= 0:
            raise pk.DeviceError(pk.ERR_INVALID_AMPLITUDE)
        if not (0 < f_start <= EIS_MAX_HZ and 0 < f_end <= EIS_MAX_HZ):
            raise pk.DeviceError(pk.ERR_INVALID_FREQUENCY)
        if count < 1:
            raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
        self._start(name, "E" if name == "eis" else "I", dc)
        return self._eis(
            name == "eis", r, amplitude, np.logspace(np.log10(f_start), np.log10(f_end), int(count))
        )

    def _start(self, technique: str, kind: str, level: float) -> None:
        self.fe.begin(technique)
        if technique != "ocp":
            self.fe.apply(kind, level)

    async def _hold(self, name: str, r: list[pk.Ref], level: float, t_int: float, count: int) -> _Points:
        t0 = self.rt.now()
        for k in range(1, count + 1):  # [U] the first point comes after one interval
            await self._pause_until(t0 + k * t_int)
            voltage, current = self.fe.sample(t_int)
            if name == "ca":  # P4: CA da + ba, CP ab + db, OCP ab
                yield [(r[0], Value(level, "da")), (r[1], self._measured("ba", current))]
            elif name == "cp":
                yield [(r[0], self._measured("ab", voltage)), (r[1], Value(level, "db"))]
            else:
                yield [(r[0], self._measured("ab", voltage))]

    async def _sweep(
        self, r: list[pk.Ref], vertices: list[float], step: float, dt: float, scans: int
    ) -> _Points:
        """CV / LSV as short potential holds on the step grid, one point per step."""
        grid = [vertices[0]]
        for a, b in itertools.pairwise(vertices):
            n = max(1, round(abs(b - a) / step))
            grid += [a + (b - a) * k / n for k in range(1, n + 1)]
        k, t0 = 0, self.rt.now()
        for scan in range(scans):
            if scans > 1:
                yield f"C{scan:04X}"  # [U] the scan index
            for potential in grid[1:] if scan else grid:
                k += 1
                await self._pause_until(t0 + k * dt)
                self.fe.apply("E", potential)
                _, current = self.fe.sample(dt)
                yield [(r[0], Value(potential, "da")), (r[1], self._measured("ba", current))]
            if scans > 1:
                yield "-"

    async def _eis(
        self, potentiostatic: bool, r: list[pk.Ref], amplitude: float, freqs: FloatArray
    ) -> _Points:
        """EIS / GEIS: Z of the cell at the frequencies, held at the DC level meanwhile."""
        for f, z in zip(freqs, self.fe.spectrum(freqs), strict=True):
            duration = max(2.0 / f, 0.05)  # [U] two periods, at least 50 ms per frequency
            await self.rt.pause(duration)
            self.fe.sample(duration)
            i_ac = amplitude / abs(z) if potentiostatic else amplitude
            i_meta, e_meta = self.fe.reading("ba", i_ac)[1], self.fe.reading("ab", i_ac * abs(z))[1]
            yield [
                (r[0], Value(float(f), "dc")),
                (r[1], Value(float(z.real), "cc", meta=i_meta)),  # §3.5: cc on the current range,
                (r[2], Value(float(z.imag), "cd", meta=e_meta)),  # cd on the potential range
            ]

    # -- values -------------------------------------------------------------------------------

    def _measured(self, vartype: str, raw: float) -> Value:
        value, meta = self.fe.reading(vartype, raw)
        return Value(value, vartype, meta=meta)

    def _slot(self, ref: pk.Ref) -> tuple[list[Value], int]:
        cells = self.vars[ref.name]
        index = 0 if ref.index is None else int(self._num(ref.index))
        if not 0 <= index < len(cells):
            raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
        return cells, index

    def _get(self, arg: pk.Arg) -> Value:
        cells, index = self._slot(_ref(arg))
        return cells[index]

    def _set(self, ref: pk.Ref, value: Value) -> None:
        cells, index = self._slot(ref)
        cells[index] = value

    def _num(self, arg: pk.Arg) -> float:
        return arg.value if isinstance(arg, pk.Lit) else self._get(arg).value

    def _value(self, arg: pk.Arg, vartype: str) -> Value:
        v = Value(arg.value, is_int=arg.is_int) if isinstance(arg, pk.Lit) else self._get(arg)
        return Value(v.value, vartype, v.is_int)

    def _arith(self, name: str, target: pk.Ref, operand: pk.Arg) -> None:
        a, b = self._get(target), self._value(operand, "ja")
        is_int = a.is_int and b.is_int
        if name == "div_var":
            result = a.value / b.value if b.value else math.inf
        else:
            result = _ARITH[name](a.value, b.value)
        if not math.isfinite(result):
            raise pk.DeviceError(pk.ERR_NOT_FINITE)
        self._set(
            target, Value(float(int(result)) if is_int else result, a.vartype, is_int)
        )  # [U] truncation

    def _render(self, arg: pk.Arg) -> str:
        text = arg if isinstance(arg, pk.Text) else pk.Text(str(arg))

        def one(m: re.Match[str]) -> str:
            v = self._get(text.refs[m.group(1)])
            return str(int(v.value)) if v.is_int else f"{v.value:.6g}"  # [U] number format

        return re.sub(r"\{([^}]*)\}", one, text.text) if text.refs else text.text

    def _time(self, arg: pk.Arg) -> float:
        seconds = self._num(arg)
        if seconds < 0:
            raise pk.DeviceError(pk.ERR_INVALID_TIME)
        return seconds

    async def _pause_until(self, t: float) -> None:
        await self.rt.pause(max(0.0, t - self.rt.now()))


def _ref(arg: pk.Arg) -> pk.Ref:
    assert isinstance(arg, pk.Ref), arg  # the parser put a variable here
    return arg
