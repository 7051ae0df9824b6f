"""Running MethodSCRIPT: the interpreter of the EmStat4 emulator (its front end: methodscript_frontend).

The interpreter walks a parsed script (methodscript_packages.parse), streams `M`/`P`/`T`/`*`
lines through a `Runtime` (the emulator's link and clock) and turns runtime failures into
`!XXXX: Line L`; `on_finished:` runs however the script ends (instrument-protocols.md §3.3–3.9),
also after `abort` (no error line [U]). The front end owns the cell and its time, so a seed gives
the same samples whatever the client. Measurement loops take their readings from
methodscript_techniques and methodscript_mux; peripherals answer in methodscript_peripherals.
A plain loop's iteration costs LOOP_ITERATION_S of device time [U], so that a script polling a
timer or a pin in a loop without `wait` still sees time pass.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from cyclerd.simulators import methodscript_mux as mx
from cyclerd.simulators import methodscript_packages as pk
from cyclerd.simulators import methodscript_peripherals as io
from cyclerd.simulators import methodscript_techniques as mt
from cyclerd.simulators import methodscript_values as mv
from cyclerd.simulators.methodscript_commands import COMMANDS, VAL
from cyclerd.simulators.methodscript_frontend import GALVANOSTAT_MODE, AnalogFrontend
from cyclerd.simulators.methodscript_values import Value

LOOP_ITERATION_S = 1e-3  # [U] device time one iteration of a plain `loop` takes
HIBERNATE_TIMER = 0x04  # the wake-up source bit of `hibernate` that wakes after its seconds


class Runtime(Protocol):
    """Time and output of a running script (the emulator's session)."""

    @property
    def aborted(self) -> bool: ...
    def now(self) -> float: ...
    async def pause(self, seconds: float) -> None: ...  # returns early once aborted
    async def emit(self, line: str) -> None: ...  # may raise DeviceError (an injected fault)


class _Break(Exception):
    pass


class _Aborted(Exception):
    """`Z` from the host, or the script's own `abort`."""


def _some_bit(a: float, b: float) -> bool:
    return int(a) & int(b) != 0


def _any_bit(a: float, b: float) -> bool:
    return int(a) | int(b) != 0


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "==": float.__eq__, "!=": float.__ne__, "<": float.__lt__,
    "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__, "&": _some_bit, "|": _any_bit,
}  # fmt: skip
_ARITH = {"add_var": float.__add__, "sub_var": float.__sub__, "mul_var": float.__mul__}


class Interpreter:
    """Runs one parsed script to its final empty line, whatever happens."""

    def __init__(
        self, script: pk.Script, runtime: Runtime, frontend: AnalogFrontend, peripherals: io.Peripherals
    ) -> None:
        self.script, self.rt, self.fe, self.io = script, runtime, frontend, peripherals
        self.vars = {name: [Value() for _ in range(max(n, 1))] for name, n in script.variables.items()}
        self.line = 0
        self._package: list[str] = []
        self._output = True
        self._finishing = False
        self._device_t = self._timer0 = self._int0 = runtime.now()  # see _now
        self._interval = 0.0

    async def run(self) -> None:
        for block in (self.script.main, self.script.on_finished):
            try:
                await self._block(block)
            except _Aborted:
                pass  # `Z` (the session has answered it) or `abort`: no error line
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
            elif COMMANDS[node.head.name].technique is None:
                await self.rt.emit("L")
                with contextlib.suppress(_Break):
                    while self._holds(node.head):
                        await self._block(node.body)
                        await self._pause_until(self._now() + LOOP_ITERATION_S)  # lets `Z` in too
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
        outputs, points = self._points(head)
        await self.rt.emit(f"M{COMMANDS[head.name].technique:04X}")
        async with contextlib.aclosing(points):
            async for item in points:
                self._check_abort()
                if isinstance(item, str):  # a scan's `C` / `-`
                    await self.rt.emit(item)
                    continue
                for ref, value in zip(outputs, item, strict=True):
                    if isinstance(value, list):  # one per multiplexer channel, into an array
                        for k, one in enumerate(value):
                            self._set(pk.Ref(ref.name, pk.Lit(float(k), True)), one)
                    else:
                        self._set(ref, value)
                try:
                    await self._block(node.body)
                except _Break:
                    break
                self.line = head.line
        self.fe.end_loop()
        await self.rt.emit("*")

    async def _statement(self, s: pk.Stmt) -> None:
        name, a = s.name, s.args
        if name == "breakloop":
            raise _Break
        if name == "abort":
            raise _Aborted
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
            self._output = int(self._num(a[0])) & 1 == 1  # [U] bit 0: the link (2: file only); P, T lines
        elif name == "timer_start":
            self._timer0 = self._now()
        elif name == "timer_get":
            self._set(_ref(a[0]), Value(self._now() - self._timer0, "eb"))
        elif name == "set_int":
            self._interval, self._int0 = self._time(a[0]), self._now()
        elif name == "await_int" and self._interval > 0:
            periods = math.floor((self._now() - self._int0) / self._interval + 1e-9) + 1
            await self._pause_until(self._int0 + periods * self._interval)
        elif name == "wait":
            await self._pause_until(self._now() + self._time(a[0]))
        elif name == "hibernate":  # the cell stays as it is [U]; other sources than the timer wake it at once
            sources, seconds = int(self._num(a[0])), self._time(a[1])
            if not sources:
                raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)  # at least one wake-up source
            if sources & HIBERNATE_TIMER:
                await self._pause_until(self._now() + seconds)
        elif name == "cell_off":
            self.fe.cell_switch(False)
        elif name == "cell_on":  # ocp(E): switched on at E, no step on the cell [U] galvanostat: as is
            if a and self.fe.mode != GALVANOSTAT_MODE:
                self.fe.level("E", self._num(_opt(a[0]).values[0]))
            self.fe.cell_switch(True)
        elif name == "array":  # a size from a variable (its value when the line runs)
            if (size := int(self._num(a[1]))) < 1:
                raise pk.DeviceError(pk.ERR_BAD_ARGUMENT)
            self.vars[str(a[0])] = [Value() for _ in range(size)]
        elif name in mv.STATEMENTS:
            mv.run(s, self)
        elif name in io.STATEMENTS:
            io.run(s, self, self.io, self._now())
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
        await self._pause_until(self._now() + duration)
        voltage, current = self.fe.sample(duration)
        self._set(ref, self._measured(vartype, voltage if vartype == "ab" else current))

    # -- measurement loops -----------------------------------------------------------------

    def _points(self, head: pk.Stmt) -> tuple[list[pk.Ref], mt.Readings]:
        """Check the loop's arguments and the device state (before `M`): its outputs and readings."""
        outputs = COMMANDS[head.name].args.index(VAL)  # output variables come first
        refs = [_ref(x) for x in head.args[:outputs]]
        numbers = [self._num(x) for x in head.args[outputs:] if not isinstance(x, pk.Opt)]
        options = {o.name: o.values for o in head.args if isinstance(o, pk.Opt)}
        name = head.name.removeprefix("meas_loop_")
        if name in mx.NAMES:
            return refs, mx.points(self, self.io.mux, name, numbers, refs)
        return refs, mt.points(self, name, numbers, options)

    # -- values -------------------------------------------------------------------------------

    def array(self, arg: pk.Arg) -> list[Value]:
        return self.vars[_ref(arg).name]

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

    def _now(self) -> float:
        """The device's time: the time it last waited for.

        A device runs a loop body in microseconds and samples on its own timer; an emulator on a
        busy machine (or at 3600x) wakes late and computes for a while. It keeps pace with its
        clock (a late wait is no wait), but its timer reads the schedule, so timestamps are those
        of the samples, each of which moves the cell by its own interval.
        """
        return self._device_t

    async def _pause_until(self, t: float) -> None:
        await self.rt.pause(max(0.0, t - self.rt.now()))
        self._device_t = max(self._device_t, min(t, self.rt.now()))  # an abort wakes it early

    # what the techniques (methodscript_techniques.Device) and statements (mv.Variables) use
    get, set, num, now, pause_until, measured = _get, _set, _num, _now, _pause_until, _measured


def _opt(arg: pk.Arg) -> pk.Opt:
    assert isinstance(arg, pk.Opt), arg
    return arg


def _ref(arg: pk.Arg) -> pk.Ref:
    assert isinstance(arg, pk.Ref), arg  # the parser put a variable here
    return arg
