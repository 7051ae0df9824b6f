"""Keithley 2450 SourceMeter in its native SCPI mode, through pyvisa with the pyvisa-py backend.

Resource strings are pyvisa's: `TCPIP::host::5025::SOCKET` (LAN raw socket), and USB or GPIB
resources the same way. The 2450 only sources and measures, so steps run on the software
stepper (`SteppedChannel`). All I/O of one instrument runs in one worker thread: pyvisa-py
sessions are not safe to share, and a slow instrument must never block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pyvisa
from pyvisa import errors as visa_errors

from cyclerd.drivers.base import (
    Capabilities,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentFault,
    InstrumentGarbled,
    InstrumentTimeout,
    Reading,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

# The 2450's SCPI vocabulary used here, in one place (instrument-protocols.md §1.4-1.5).
SCPI = {
    "identify": "*IDN?",
    "language": "*LANG?",
    "reset": "*RST",
    "clear": "*CLS",
    "operation_complete": "*OPC?",
    "next_error": ":SYST:ERR?",
    "error_count": ":SYST:ERR:COUN?",
    "output_on": ":OUTP ON",
    "output_off": ":OUTP OFF",
    "off_mode_current": ":OUTP:CURR:SMOD HIMP",  # relay opens when off: no current from the cell
    "off_mode_voltage": ":OUTP:VOLT:SMOD HIMP",
    "source_current_mode": ":SOUR:FUNC CURR",
    "source_voltage_mode": ":SOUR:FUNC VOLT",
    "current_level": ":SOUR:CURR {:.6E}",
    "voltage_limit": ":SOUR:CURR:VLIM {:.6E}",
    "voltage_level": ":SOUR:VOLT {:.6E}",
    "current_limit": ":SOUR:VOLT:ILIM {:.6E}",
    "voltage_limit_tripped": ":SOUR:CURR:VLIM:TRIP?",
    "current_limit_tripped": ":SOUR:VOLT:ILIM:TRIP?",
    "sense_voltage": ':SENS:FUNC "VOLT"',
    "sense_current": ':SENS:FUNC "CURR"',
    "remote_sense": ":SENS:VOLT:RSEN {}",
    "voltage_autorange": ":SENS:VOLT:RANG:AUTO ON",
    "integration": ":SENS:VOLT:NPLC {:g}",
    # A reading and the error queue's length in one round trip: an error the instrument queues
    # during a step (a refused level, a front-panel change) is seen with the next reading.
    "read": ':READ? "defbuffer1", READ, SOUR, REL;:SYST:ERR:COUN?',
    "measure_current": ":MEAS:CURR?",
}

CLOSED = "link failed: the instrument closed the connection"

CAPABILITIES = Capabilities(
    kinds=frozenset({"rest", "cc", "plate", "strip", "cv", "cccv"}),
    current_max_A=1.05,
    voltage_range_V=(-21.0, 21.0),
)


class Keithley2450:
    """One 2450 on one resource; implements SourceMeasure."""

    def __init__(
        self,
        resource: str,
        remote_sense: bool = True,
        nplc: float = 1.0,
        timeout_s: float = 2.0,
        backend: str = "@py",
    ) -> None:
        self.resource = resource
        self.remote_sense = remote_sense
        self.nplc = nplc
        self.timeout_s = timeout_s
        self.backend = backend
        self.identity = ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"k2450-{resource}")
        self._session: Any = None
        self._lost = False  # the link failed and is closed: the output's state is unknown
        self._mode = "off"  # "current" | "voltage" | "off"
        self._voltage_limit_V = 0.0

    @property
    def name(self) -> str:
        return f"Keithley 2450 at {self.resource}"

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check it is a 2450 in SCPI mode, reset to a safe, known state."""
        await self._call(self._open)

    def _open(self) -> None:
        manager = pyvisa.ResourceManager(self.backend)
        self._session = manager.open_resource(
            self.resource,
            read_termination="\n",
            write_termination="\n",
            timeout=int(self.timeout_s * 1000),
        )
        self.identity = self._query(SCPI["identify"])
        if "MODEL 2450" not in self.identity:
            raise InstrumentFault(self.name, f"expected a Keithley 2450, it says {self.identity!r}")
        self._configure(
            SCPI["reset"],
            SCPI["clear"],
            SCPI["off_mode_current"],
            SCPI["off_mode_voltage"],
            SCPI["sense_voltage"],
            SCPI["remote_sense"].format("ON" if self.remote_sense else "OFF"),
            SCPI["voltage_autorange"],
            SCPI["integration"].format(self.nplc),
        )
        self._mode, self._lost = "off", False

    async def reopen(self) -> None:
        """Reconnect after a dropped link; the instrument is reset, so its output is off."""
        await self._call(self._close)
        await self._call(self._open)
        log.info("%s: reconnected; reset, output off", self.name, extra={"kind": "reconnect"})

    async def close(self) -> None:
        """Output off, then release the link. An output-off the link cannot carry (it was lost, or
        a stalled instrument left late replies in it) is sent once more over a new link: the
        reset that opening sends leaves the output off."""
        try:
            try:
                await self.output_off()
            except (InstrumentTimeout, InstrumentDisconnected):
                await self.reopen()
        finally:
            await self._call(self._close)
            self._executor.shutdown(wait=False)

    def _close(self) -> None:
        if self._session is not None:
            with contextlib.suppress(visa_errors.VisaIOError, OSError):
                self._session.close()
            self._session = None

    # -- SourceMeasure -------------------------------------------------------------------

    async def source_current(self, current_A: float, voltage_limit_V: float) -> None:
        await self._call(self._source_current, current_A, voltage_limit_V)

    def _source_current(self, current_A: float, voltage_limit_V: float) -> None:
        # Function, then limit, then level, then sense, output on last: the order of the
        # procedures in instrument-protocols.md §1.5. The limit is set before the level and the
        # output, so that it already sits above the cell voltage when the new level drives the
        # cell (Keithley's sink-mode guidance, §1.5).
        self._configure(
            SCPI["source_current_mode"],
            SCPI["voltage_limit"].format(voltage_limit_V),
            SCPI["current_level"].format(current_A),
            SCPI["sense_voltage"],
            SCPI["output_on"],
        )
        self._mode, self._voltage_limit_V = "current", voltage_limit_V

    async def source_voltage(self, voltage_V: float, current_limit_A: float) -> None:
        await self._call(self._source_voltage, voltage_V, current_limit_A)

    def _source_voltage(self, voltage_V: float, current_limit_A: float) -> None:
        # The same order (§1.5 CV hold): the current cap is set before the level and the output.
        self._configure(
            SCPI["source_voltage_mode"],
            SCPI["current_limit"].format(current_limit_A),
            SCPI["voltage_level"].format(voltage_V),
            SCPI["sense_current"],
            SCPI["output_on"],
        )
        self._mode = "voltage"

    async def measure(self) -> Reading:
        reading: Reading = await self._call(self._measure)
        return reading

    def link_lost(self) -> bool:
        return self._lost or (self._session is not None and self._peer_closed())

    def _measure(self) -> Reading:
        if self._session is not None and self._peer_closed():
            self._lose()
            raise InstrumentDisconnected(self.name, CLOSED)
        values, _, count = self._query(SCPI["read"]).rpartition(";")
        self._raise_queued(count)
        reading, source, t = self._numbers(values, 3)
        if self._mode == "voltage":
            return Reading(t, source, reading, in_limit=False)
        # Sourcing current: near the voltage limit the 2450 clamps and the current tapers; only
        # then is the programmed current not the real one, so only then ask for it (§1.5).
        near_limit = self._voltage_limit_V and abs(reading) >= 0.99 * self._voltage_limit_V
        if near_limit and self._query(SCPI["voltage_limit_tripped"]).strip() == "1":
            (actual,) = self._numbers(self._query(SCPI["measure_current"]), 1)
            self._write(SCPI["sense_voltage"])  # :MEAS:CURR? left current sensing on
            return Reading(t, reading, actual, in_limit=True)
        return Reading(t, reading, source)

    async def in_worker(self, work: Callable[[], T]) -> T:
        result: T = await self._call(work)
        return result

    def read(self) -> Reading:
        reading: Reading = self._guarded(self._measure)
        return reading

    def output_off_now(self) -> None:
        if self._session is not None or self._lost:
            self._guarded(self._output_off)

    async def output_off(self) -> None:
        if self._session is not None or self._lost:
            await self._call(self._output_off)

    def _output_off(self) -> None:
        # Wait for *OPC? so "safe" means the instrument has acted, not that a line was sent.
        self._write(SCPI["output_off"])
        self._mode = "off"
        self._query(SCPI["operation_complete"])

    async def errors(self) -> list[tuple[int, str]]:
        """Drain the instrument's error queue."""
        queued: list[tuple[int, str]] = await self._call(self._drain)
        return queued

    # -- plumbing (worker thread only) ---------------------------------------------------

    async def _call(self, function: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, function, *args)

    def _guarded(self, function: Any, *args: Any) -> Any:
        try:
            return function(*args)
        except visa_errors.VisaIOError as exc:
            if exc.error_code != pyvisa.constants.StatusCode.error_timeout:
                self._lose()
                raise InstrumentDisconnected(self.name, f"link failed: {exc.description}") from None
            if self._peer_closed():
                self._lose()  # nothing more can pass this link: fail at once, not after a timeout
                raise InstrumentDisconnected(self.name, CLOSED) from None
            raise InstrumentTimeout(self.name, f"no reply within {self.timeout_s:g} s") from None
        except (ConnectionError, OSError) as exc:
            self._lose()
            raise InstrumentDisconnected(self.name, f"link failed: {exc}") from None

    def _peer_closed(self) -> bool:
        """Whether the instrument closed the connection (a reboot, a pulled cable at its end).

        pyvisa-py reads a socket closed by the other end as a timeout; its socket tells the two
        apart: readable with nothing to read means closed. Other links answer False.
        """
        try:
            link = self._session.visalib.sessions[self._session.session].interface
        except (AttributeError, KeyError, TypeError):
            return False
        if not isinstance(link, socket.socket):
            return False
        try:
            readable, _, _ = select.select([link], [], [], 0)
            return bool(readable) and link.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):  # ValueError: already closed
            return True

    def _lose(self) -> None:
        self._close()
        self._lost = True

    def _query(self, command: str) -> str:
        if self._session is None:
            raise InstrumentDisconnected(self.name, "not connected: the link was lost")
        return str(self._session.query(command))

    def _write(self, command: str) -> None:
        if self._session is None:
            raise InstrumentDisconnected(self.name, "not connected: the link was lost")
        self._session.write(command)

    def _configure(self, *commands: str) -> None:
        """Send a configuration block, then make sure the instrument accepted all of it."""
        for command in commands:
            self._write(command)
        queued = self._drain()
        if queued:
            code, text = queued[0]
            raise InstrumentError(self.name, code, text)

    def _raise_queued(self, count: str) -> None:
        """An error the instrument queued (`count` is the queue's length) as InstrumentError."""
        try:
            queued = int(count)
        except ValueError:
            raise InstrumentGarbled(self.name, f"unreadable error count {count!r}") from None
        if queued > 0 and (found := self._drain()):
            code, text = found[0]
            raise InstrumentError(self.name, code, text)

    def _drain(self) -> list[tuple[int, str]]:
        found: list[tuple[int, str]] = []
        for _ in range(100):  # the queue holds at most a few dozen entries
            reply = self._query(SCPI["next_error"])
            code, _, rest = reply.partition(",")
            try:
                number = int(code)
            except ValueError:
                raise InstrumentGarbled(self.name, f"unreadable error queue entry {reply!r}") from None
            if number == 0:
                break
            found.append((number, rest.strip().strip('"').split(";")[0]))
        return found

    def _numbers(self, reply: str, count: int) -> list[float]:
        try:
            values = [float(part) for part in reply.split(",")]
        except ValueError:
            raise InstrumentGarbled(self.name, f"unreadable reply {reply!r}") from None
        if len(values) != count:
            raise InstrumentGarbled(self.name, f"expected {count} values, got {reply!r}")
        return values
