"""A PalmSens EmStat4 speaking MethodSCRIPT on a real pty and a TCP port, with a simulated cell.

Drivers open it as they open hardware, `serial.Serial(emulator.pty_path, 921600)` or
`serial.serial_for_url(f"socket://127.0.0.1:{emulator.port}")`, so framing, parsing and
recovery are tested byte for byte (instrument-protocols.md §3, §6). The emulator owns the
cell's time: accelerated real time (`speed`), or virtual time (`speed=None`), where output
streams as fast as the client reads and every sample moves the cell by its own interval.
Faults (slow replies, hang-ups, garbled or lost packages, device errors, a reboot, a shorted cell)
are injected from any thread; `faults.struck` and `frontend.switches` say, in device time, when a
fault struck and when the cell was switched. Here: the online-command session; the links are in
`methodscript_transport`, the scripts run in `methodscript_interp` on `methodscript_frontend`
(the cell) and `methodscript_peripherals` (GPIO, clock, multiplexer, ...).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cyclerd.drivers.clock import AcceleratedClock, Clock, VirtualClock
from cyclerd.simulators import methodscript_packages as pk
from cyclerd.simulators.cell import CellModel
from cyclerd.simulators.methodscript_frontend import AnalogFrontend
from cyclerd.simulators.methodscript_interp import Interpreter
from cyclerd.simulators.methodscript_peripherals import Peripherals
from cyclerd.simulators.methodscript_transport import Transport
from cyclerd.simulators.presets import make_cell

log = logging.getLogger(__name__)

BUILD = "Jan 28 2022 11:04:43"  # [U] P1: the build date of the notes' example
METHODSCRIPT_VERSION = "1.8"  # [U] the manual the technique ids come from
_GARBLE = str.maketrans("0123456789ABCDEF", "ghijklmnopqrstuv")

# Online commands (§3.2): letter -> (handler, what the device answers). Other letters: `x!0003`.
ONLINE_COMMANDS: dict[str, tuple[str, str]] = {
    "t": ("_identify", "t<variant>1100#<build>, then R*"),
    "v": ("_identify", "v<MethodSCRIPT version>"),
    "i": ("_identify", "i<serial number>"),
    "G": ("_register", "G<8 hex digits> for G<hh> [U every register reads 0]; G!0007 if hh is bad"),
    "e": ("_capture", "script lines up to an empty line; then e, the output stream, an empty line"),
    "l": ("_capture", "script lines up to an empty line; then l [U], or l!XXXX: Line L, Col C"),
    "r": ("_run_loaded", "r [U] and the loaded script's stream; r!000C if nothing is loaded"),
    "Z": ("_abort", "Z, the on_finished output and the empty line; Z!0006 when idle"),
}


@dataclass
class Faults:
    """What the next replies suffer; set through the emulator's methods."""

    delay_s: float = 0.0  # before each online command is handled; inf: never answered
    delay_count: float = math.inf  # ... for this many next commands (inf: all, until delay_s is 0)
    garble_packages: int = 0  # this many next `P` lines get non-hex digits
    error_code: int | None = None  # raised instead of a `P` line once ...
    error_after_packages: int = 0  # ... this many more packages went out
    lose_until: float = -math.inf  # `P` lines are lost until this device time (a hole in the data)
    # When each fault struck, in device time: what a test measures the host's reaction from.
    struck: list[tuple[float, str]] = field(default_factory=list)

    def next_delay(self) -> float:
        """How late the next online command is handled (0: at once); counts a one-off down."""
        if self.delay_s <= 0 or self.delay_count <= 0:
            return 0.0
        self.delay_count -= 1
        return self.delay_s


class MethodScriptEmulator:
    """One EmStat4 channel on a pty and/or TCP. Its session is the scripts' `Runtime`."""

    def __init__(
        self,
        cell: CellModel | None = None,
        *,
        preset: str = "mgagsn",
        seed: int = 1,
        speed: float | None = None,
        variant: str = "es4_hr",
        pty: bool = True,
        tcp: bool = True,
        port: int = 0,
        serial_number: str = "ES4HR22B0001",
    ) -> None:
        self.speed = speed if speed and speed > 0 else None  # None: virtual time
        self.clock: Clock = VirtualClock() if self.speed is None else AcceleratedClock(self.speed)
        self.frontend = AnalogFrontend(cell or make_cell(preset, seed=seed), self.clock, variant)
        self.peripherals = Peripherals(started_s=self.clock.now())  # GPIO, clock, multiplexer, ...
        self.firmware = f"{variant}1100#{BUILD}"
        self.serial_number = serial_number
        self.faults = Faults()
        self.transport = Transport(pty=pty, tcp=tcp, port=port, wait_for_reader=self.speed is None)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._abort_event = asyncio.Event()
        self._consumer: asyncio.Task[None] | None = None
        self._capturing: tuple[str, list[str]] | None = None  # ("e" | "l", lines so far)
        self._loaded: pk.Script | None = None
        self._script: asyncio.Task[None] | None = None

    @property
    def pty_path(self) -> str | None:
        """The slave side of the pty, for `serial.Serial(...)`; a new one after a dropped connection."""
        return self.transport.pty_path

    @property
    def port(self) -> int | None:
        return self.transport.port

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the pty and/or the TCP listener on 127.0.0.1 (`pty_path`, `port`)."""
        self._loop = asyncio.get_running_loop()
        await self.transport.start()
        self._consumer = asyncio.create_task(self._consume())
        log.info("MethodSCRIPT emulator on pty %s, tcp port %s", self.pty_path, self.port)

    async def stop(self) -> None:
        for task in (self._consumer, self._script):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.transport.stop()
        self.frontend.finish()

    @contextlib.contextmanager
    def threaded(self, timeout_s: float = 10.0) -> Iterator[MethodScriptEmulator]:
        """Serve from a background thread with its own event loop, for synchronous clients."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="methodscript-emulator", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout_s)
            yield self
        finally:
            try:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout_s)
            finally:
                loop.call_soon_threadsafe(loop.stop)
                thread.join(timeout_s)
                loop.close()

    # -- faults (from any thread) ---------------------------------------------------------------

    def set_delay(self, seconds: float, count: float = math.inf) -> None:
        """Answer the next `count` online commands (inf: all) `seconds` late (math.inf: never):
        a busy or hung device."""

        def arm() -> None:
            self.faults.delay_s, self.faults.delay_count = seconds, count

        self._in_loop(arm)

    def garble_packages(self, count: int = 1) -> None:
        """Scramble the hex digits of the next `count` data packages (line noise)."""
        self._in_loop(lambda: setattr(self.faults, "garble_packages", count))

    def inject_error(self, code: int = pk.ERR_SEVERE_OVERLOAD, after_packages: int = 0) -> None:
        """Fail the running (or next) script with `!code: Line L` after that many packages."""

        def arm() -> None:
            self.faults.error_code, self.faults.error_after_packages = code, after_packages

        self._in_loop(arm)

    def lose_packages(self, seconds: float) -> None:
        """Lose the data packages of the next `seconds` of device time (an overrun on the line):
        the script goes on, the host sees a hole."""

        def arm() -> None:
            self.faults.lose_until = self.clock.now() + seconds

        self._in_loop(arm)

    def drop_connection(self, tcp: bool = True, pty: bool = True) -> None:
        """Hang up: close the TCP client's socket; close the pty and open a new one (new path)."""

        def drop() -> None:
            self._strike("connection dropped")
            self.transport.drop(tcp, pty)

        self._in_loop(drop)

    def power_cycle(self) -> None:
        """A reboot (power lost, a watchdog): the running script is gone without its
        on_finished, the cell is off, the pgstat unpowered, and the link drops (as USB does)."""

        def reboot() -> None:
            if self._script is not None:
                self._script.cancel()
            self._capturing, self._loaded = None, None
            self.frontend.power_off()
            self.peripherals.reset()
            self._strike("power cycled")
            self.transport.drop(True, True)

        self._in_loop(reboot)

    def short_cell(self, resistance_ohm: float = 1e-3) -> None:
        """Put `resistance_ohm` across the cell terminals (a Li filament through the separator)."""
        self._in_loop(lambda: self.frontend.short(resistance_ohm))

    def clear_short(self) -> None:
        self._in_loop(lambda: self.frontend.short(None))

    def _strike(self, what: str) -> None:
        self.faults.struck.append((self.clock.now(), what))

    def _in_loop(self, action: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or _running_loop() is loop:
            action()
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def call() -> None:
            try:
                action()
                done.set_result(None)
            except Exception as exc:  # noqa: BLE001 - handed to the calling thread
                done.set_exception(exc)

        loop.call_soon_threadsafe(call)
        done.result(10.0)

    # -- the session: online commands, and the `Runtime` of running scripts ---------------

    async def _consume(self) -> None:
        while True:
            line = await self.transport.next_line()
            if self._capturing is not None:
                if line:
                    self._capturing[1].append(line)
                else:
                    (letter, lines), self._capturing = self._capturing, None
                    await self._load(letter, lines)
            elif line:  # a bare newline flushes a half command
                delay = self.faults.next_delay()
                if math.isinf(delay):
                    continue  # a hung device: never answered
                if delay > 0:
                    await asyncio.sleep(delay)
                    self._strike(f"an online command handled {delay:g} s late")
                await self._online(line)

    async def _online(self, line: str) -> None:
        letter, argument = line[0], line[1:]
        entry = ONLINE_COMMANDS.get(letter)
        if entry is None:
            await self.transport.write(pk.error_line(pk.ERR_UNKNOWN_ONLINE, letter=letter))
        elif self._script is not None and not self._script.done() and letter != "Z":
            await self.transport.write(pk.error_line(pk.ERR_NOT_NOW, letter=letter))  # [U] busy
        elif argument and letter != "G":
            await self.transport.write(pk.error_line(pk.ERR_BAD_ARGUMENT, letter=letter))  # [U]
        else:
            await getattr(self, entry[0])(letter, argument)

    async def _identify(self, letter: str, argument: str) -> None:
        replies = {"t": ("t" + self.firmware, "R*"), "v": ("v" + METHODSCRIPT_VERSION,)}
        for reply in replies.get(letter, ("i" + self.serial_number,)):
            await self.transport.write(reply)

    async def _register(self, letter: str, argument: str) -> None:
        valid = len(argument) == 2 and all(c in "0123456789abcdefABCDEF" for c in argument)
        await self.transport.write("G00000000" if valid else pk.error_line(pk.ERR_BAD_ARGUMENT, letter="G"))

    async def _capture(self, letter: str, argument: str) -> None:
        self._capturing = (letter, [])

    async def _load(self, letter: str, lines: list[str]) -> None:
        try:
            script = pk.parse(lines)
        except pk.ScriptError as exc:
            where = pk.error_line(exc.code, exc.line, exc.col)
            for out in ("e", where, "") if letter == "e" else ("l" + where,):  # P2 for `e`
                await self.transport.write(out)
            return
        if letter == "l":
            self._loaded = script
            await self.transport.write("l")
        else:
            await self._start_script(script, "e")

    async def _run_loaded(self, letter: str, argument: str) -> None:
        if self._loaded is None:
            await self.transport.write(pk.error_line(pk.ERR_NO_SCRIPT, letter="r"))
        else:
            await self._start_script(self._loaded, "r")

    async def _abort(self, letter: str, argument: str) -> None:
        if self._script is None or self._script.done():
            await self.transport.write(pk.error_line(pk.ERR_NOT_NOW, letter="Z"))
        else:
            await self.transport.write("Z")
            self._abort_event.set()

    async def _start_script(self, script: pk.Script, ack: str) -> None:
        await self.transport.write(ack)
        self._abort_event = asyncio.Event()
        interpreter = Interpreter(script, self, self.frontend, self.peripherals)
        self._script = asyncio.create_task(interpreter.run())

    @property
    def aborted(self) -> bool:
        return self._abort_event.is_set()

    def now(self) -> float:
        return self.clock.now()

    async def pause(self, seconds: float) -> None:
        if self.speed is None:
            await self.clock.sleep(seconds)  # virtual: time jumps, the event loop still turns
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0) / self.speed):
                await self._abort_event.wait()

    async def emit(self, line: str) -> None:
        """A line of script output; the package faults strike here."""
        faults = self.faults
        if line.startswith("P") and faults.error_code is not None:
            if faults.error_after_packages <= 0:
                code, faults.error_code = faults.error_code, None
                self._strike(f"device error {code:04X}")
                raise pk.DeviceError(code)
            faults.error_after_packages -= 1
        if line.startswith("P") and self.clock.now() < faults.lose_until:
            if not any(what == "packages lost" for _, what in faults.struck[-1:]):
                self._strike("packages lost")
            return
        if line.startswith("P") and faults.garble_packages > 0:
            faults.garble_packages -= 1
            line = line[:3] + line[3:10].translate(_GARBLE) + line[10:]
            self._strike("a garbled package")
        await self.transport.write(line)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def serve(
    preset: str = "mgagsn", port: int | None = 0, pty: bool = True, speed: float | None = 1.0, seed: int = 1
) -> None:
    """Run an emulator until cancelled and print where drivers reach it.

    `port=None` serves no TCP; `speed=None` or 0 runs in virtual time.
    """
    emulator = MethodScriptEmulator(
        preset=preset, seed=seed, speed=speed, pty=pty, tcp=port is not None, port=port or 0
    )
    await emulator.start()
    try:
        where = [f"pty {emulator.pty_path}"] if emulator.pty_path else []
        where += [f"socket://127.0.0.1:{emulator.port}"] if emulator.port is not None else []
        clock = "virtual time" if emulator.speed is None else f"{emulator.speed:g}x real time"
        print(
            f"MethodSCRIPT {emulator.firmware}, {preset} seed {seed}, {clock}: {', '.join(where)}", flush=True
        )
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
