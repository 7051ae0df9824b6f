"""The conversation with a MethodSCRIPT device over its serial line: identification, scripts sent
and acknowledged, their packages read back, aborts and device errors (instrument-protocols.md §3.2).
One conversation at a time; the step logic that decides what to send is the channel's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable

from cyclerd.drivers import methodscript_scripts as ms
from cyclerd.drivers.base import InstrumentError, InstrumentFault, InstrumentGarbled, InstrumentTimeout
from cyclerd.drivers.methodscript_packages import (
    DeviceInfo,
    LineKind,
    Value,
    decode_package,
    device_error,
    family_of,
    firmware_version,
    kind_of,
    what_is,
)
from cyclerd.drivers.methodscript_port import SLICE_S, SerialLine

log = logging.getLogger(__name__)

ERROR_PAUSE_S = 0.06  # wait > 50 ms after any `!` reply before the next command (§3.2)

Package = tuple[Value, ...]


class NotSupported(InstrumentFault):
    """The device (or cyclerd's use of it) cannot do what was asked; nothing was started."""


class Link:
    """An open, identified MethodSCRIPT device: one script at a time, and `cell_off` always gets in.

    A script is known by the token `start` returns. `cell_off` ends whatever runs and retires the
    token, so a step still reading that script's packages learns that it is gone.
    """

    def __init__(self, url: str, baudrate: int, name: str, timeout_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s  # how long a reply may take to come
        self._line = SerialLine(url, baudrate, name)
        self._unread: deque[str] = deque()  # lines read but not yet consumed
        self._session = asyncio.Lock()  # one conversation with the device at a time
        self._script = 0  # token of the latest script; bumped when cell_off() ends it
        self._running = False  # a script runs: its end (the empty line) is still to come

    # -- the link's life --------------------------------------------------------------------

    async def open(self) -> DeviceInfo:
        """Open the port, end anything left running, and identify the device (refusing others).

        On any failure the port is closed again before the error propagates.
        """
        await self._line.open()
        try:
            async with self._session:
                await self._resync()
                return await self._identify()
        except BaseException:
            with contextlib.suppress(InstrumentFault):
                await self._line.close()
            raise

    async def close(self) -> None:
        """Release the port and its worker thread (the cell is the channel's to switch off first)."""
        await self._line.close()

    async def cell_off(self) -> None:
        """Abort whatever script runs and switch the cell off; an already-off cell is fine."""
        async with self._session:
            self._script += 1  # a step still streaming learns that its script is gone
            await self._resync()
            await self._write(ms.cell_off())
            self._running = True
            await self._until("the cell_off script", lambda line: line == "e", errors=True)
            await self._until("the cell_off script", lambda line: line == "", errors=True)
            self._running = False

    # -- scripts ----------------------------------------------------------------------------

    async def start(self, script: str) -> int:
        """Send a script; its token once the device has acknowledged it with `e`."""
        async with self._session:
            await self._write(script)
            self._running = True
            self._script += 1
            await self._until("the script (its e acknowledgement)", lambda line: line == "e", errors=True)
            return self._script

    async def packages(self, token: int, timeout_s: float) -> tuple[list[Package], bool]:
        """The packages of script `token` that arrived next, and whether it is over (its empty
        line). A device error is raised once the script has ended; a script that `cell_off`
        ended is an InstrumentFault."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while True:
            async with self._session:  # held per slice: cell_off() can always get in
                if token != self._script or not self._running:
                    raise InstrumentFault(self.name, "the step's script was ended by safe_state()")
                if not self._unread:
                    self._unread.extend(await self._line.read_lines(SLICE_S))
                if self._unread:
                    return await self._take_packages()
            if loop.time() > give_up:
                raise InstrumentTimeout(self.name, f"no data from the running script for {timeout_s:.3g} s")

    async def collect(self, script: str, per_line_s: float) -> list[Package]:
        """Run a script to its end and return all its packages (EIS, the OCV probe)."""
        token = await self.start(script)
        found: list[Package] = []
        over = False
        while not over:
            more, over = await self.packages(token, per_line_s + self.timeout_s)
            found += more
        return found

    async def abort(self, token: int) -> None:
        """Stop script `token` if it still runs (else cell_off() has ended it already)."""
        async with self._session:
            if token == self._script and self._running:
                await self._write(ms.ABORT)
                await self._after_abort()

    # -- lines (with the session held) ------------------------------------------------------

    async def _identify(self) -> DeviceInfo:
        await self._write(ms.FIRMWARE_QUERY)
        reply = [await self._until("the firmware query (t)", _starts_with("t"))]
        while not reply[-1].endswith("*"):
            reply.append(await self._until("the rest of the firmware reply", lambda line: True))
        firmware = firmware_version(reply)
        family = family_of(firmware)
        if family is None:
            raise NotSupported(
                self.name,
                f"the device is {what_is(firmware)} (firmware {firmware!r}); cyclerd drives "
                "EmStat4 LR/HR, MultiEmStat4 and Nexus (and an EmStat Pico for potentiostatic "
                "steps): check the port and the instrument",
            )
        answers = []
        for query, letter in ((ms.METHODSCRIPT_VERSION_QUERY, "v"), (ms.SERIAL_NUMBER_QUERY, "i")):
            await self._write(query)
            line = await self._until(f"the {letter} query", _starts_with(letter))
            answers.append("unknown" if device_error(line) else line[1:].strip())
        return DeviceInfo(firmware, answers[0], answers[1], family)

    async def _take_packages(self) -> tuple[list[Package], bool]:
        found: list[Package] = []
        while self._unread:
            line = self._unread.popleft()
            kind = kind_of(line)
            if kind is LineKind.PACKAGE:
                try:
                    found.append(decode_package(line))
                except ValueError as exc:  # line noise: the step cannot vouch for this sample
                    raise InstrumentGarbled(self.name, f"unreadable package {line!r}: {exc}") from None
            elif kind is LineKind.ERROR:
                await self._fail(line)
            elif kind is LineKind.SCRIPT_END:
                self._running = False
                return found, True
            elif kind is LineKind.TEXT:
                log.info("%s says: %s", self.name, line[1:])
        return found, False

    async def _resync(self) -> None:
        """End anything running, whatever state the device and the line are in (§3.2)."""
        self._unread.clear()
        await self._write(ms.FLUSH + ms.ABORT)
        await self._after_abort()

    async def _after_abort(self) -> None:
        """Read to the `Z` reply; a plain `Z` means a script was running: read to its end."""
        reply = await self._until(
            "the abort (Z): is this a MethodSCRIPT device?", lambda x: x.startswith("Z")
        )
        if reply == "Z":
            await self._until("the end of the aborted script", lambda line: line == "")
        self._running = False

    async def _fail(self, line: str) -> None:
        """A `!XXXX` line: read to the script's end (on_finished runs), pause, raise it."""
        error = device_error(line)
        assert error is not None
        if self._running:
            with contextlib.suppress(InstrumentTimeout):
                await self._until("the end of a failed script", lambda line: line == "")
            self._running = False
        await asyncio.sleep(ERROR_PAUSE_S)
        raise InstrumentError(self.name, error.code, error.text)

    async def _until(self, what: str, stop: Callable[[str], bool], errors: bool = False) -> str:
        """Consume lines up to the first for which `stop` holds and return it; with `errors`, a
        device error on the way is raised. Stale lines before it are dropped."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.timeout_s
        while True:
            while self._unread:
                line = self._unread.popleft()
                if errors and kind_of(line) is LineKind.ERROR:
                    await self._fail(line)
                if stop(line):
                    return line
            if loop.time() > give_up:
                raise InstrumentTimeout(self.name, f"no reply in {self.timeout_s:.3g} s to {what}")
            self._unread.extend(await self._line.read_lines(SLICE_S))

    async def _write(self, text: str) -> None:
        await self._line.write(text)


def _starts_with(letter: str) -> Callable[[str], bool]:
    """A reply line to the online command `letter` (its answer or `letter!XXXX`)."""
    return lambda line: line.startswith(letter)
