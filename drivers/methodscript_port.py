"""The serial line to a MethodSCRIPT device (a device path, a pty or a `socket://` URL) and the one
worker thread that ever touches it: text out, whole lines in, pyserial's failures as the channel's
faults. What the lines mean is methodscript_link's.
"""

from __future__ import annotations

import asyncio
import select
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar, cast

import serial

from cyclerd.drivers.base import InstrumentDisconnected, InstrumentTimeout

T = TypeVar("T")

SLICE_S = 0.05  # the worker waits in slices this short, so an abort or safe_state never waits long
READ_MAX = 1 << 16  # bytes taken from the port at once
WRITE_TIMEOUT_S = 2.0


class Port(Protocol):
    """What the driver uses of a pyserial port, a device path or a `socket://` URL alike.

    `fileno` (POSIX: serial devices and sockets) lets the worker wait with select and then take
    all that has arrived at once: a fast stream is read in blocks, not byte by byte.
    """

    def read(self, size: int = 1) -> bytes: ...
    def write(self, data: bytes, /) -> int | None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


class SerialLine:
    """The port and its worker thread. pyserial blocks, so every call on the port runs in the
    worker, never in the event loop; one thread keeps the port's use strictly in order."""

    def __init__(self, url: str, baudrate: int, name: str) -> None:
        self.url, self.baudrate, self.name = url, baudrate, name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"methodscript {name}")
        self._port: Port | None = None
        self._buffer = bytearray()  # bytes read after the last complete line
        self._closed = False  # the worker is released: nothing more can reach the port

    async def open(self) -> None:
        """Open the port; on failure the worker is released too, and the fault raised."""
        try:
            await self._call(self._open)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._closed:
            return
        try:
            await self._call(self._close)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)

    async def write(self, text: str) -> None:
        await self._call(self._write, text)

    async def read_lines(self, wait_s: float) -> list[str]:
        """Every complete line that arrives within `wait_s` (at least one, or none at all)."""
        return await self._call(self._read_lines, wait_s)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in the worker; pyserial's failures become the channel's own faults."""
        if self._closed:
            raise InstrumentDisconnected(self.name, "not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except serial.SerialTimeoutException as exc:
            raise InstrumentTimeout(self.name, f"writing to {self.url} timed out") from exc
        except (serial.SerialException, OSError) as exc:
            raise InstrumentDisconnected(self.name, f"the link to {self.url} is gone: {exc}") from exc

    # -- worker thread only ----------------------------------------------------------------

    def _open(self) -> None:
        port = serial.serial_for_url(
            self.url, baudrate=self.baudrate, timeout=0, write_timeout=WRITE_TIMEOUT_S
        )
        self._port = cast(Port, port)
        self._buffer.clear()

    def _close(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            port.close()

    def _open_port(self) -> Port:
        if self._port is None:
            raise serial.SerialException("the port is not open")
        return self._port

    def _write(self, text: str) -> None:
        self._open_port().write(text.encode("ascii"))

    def _read_lines(self, wait_s: float) -> list[str]:
        port = self._open_port()
        give_up = time.monotonic() + wait_s
        while True:
            while len(self._buffer) < READ_MAX and (chunk := port.read(READ_MAX)):  # never blocks
                self._buffer += chunk
            if b"\n" in self._buffer:
                break
            left = give_up - time.monotonic()
            if left <= 0:
                return []
            select.select([port.fileno()], [], [], min(left, SLICE_S))
        complete, _, rest = self._buffer.rpartition(b"\n")
        self._buffer = bytearray(rest)
        return [line.rstrip("\r") for line in complete.decode("ascii", "replace").split("\n")]
