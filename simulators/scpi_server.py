"""Serving a line-based emulated instrument over raw TCP: the socket server, runtime `Faults`
(delay, garbled replies, dropped connections, cell faults) and `running`, which serves an
emulator from a background thread for synchronous clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass
class Faults:
    """Faults injected at runtime (from any thread): transport ones here, cell ones for the physics."""

    delay_s: float = 0.0  # replies wait this long: clients time out
    delay_count: float = math.inf  # ... this many next replies (inf: every one until delay_s is 0)
    garble_next: int = 0  # this many next replies are scrambled (no longer numbers)
    error_next: tuple[int, str] | None = None  # queued when the next line arrives
    short_cell: bool = False  # a near-zero resistance across the cell: the voltage collapses
    short_ohm: float = 0.01
    open_circuit: bool = False  # the cell is disconnected from the terminals
    # When each fault struck, in the instrument's time: what a test measures the host's reaction from.
    struck: list[tuple[float, str]] = field(default_factory=list)
    now: Callable[[], float] = field(default=time.monotonic, repr=False)
    _drop: Callable[[], None] | None = field(default=None, repr=False)

    def drop_connection(self) -> None:
        """Close the client's socket now, as a rebooting instrument or a pulled cable would."""
        if self._drop is not None:
            self._drop()

    def on_drop(self, drop: Callable[[], None]) -> None:
        """What `drop_connection` does: the server closes its client (thread-safe)."""
        self._drop = drop

    def strike(self, what: str) -> None:
        self.struck.append((self.now(), what))

    def next_delay(self) -> float:
        """How late the next reply goes out (0: on time); counts a one-off delay down."""
        if self.delay_s <= 0 or self.delay_count <= 0:
            return 0.0
        self.delay_count -= 1
        return self.delay_s


def garble(reply: str) -> str:
    """The reply with digits and signs replaced: same length, printable, not a number."""
    return reply.translate(str.maketrans("0123456789.+-,", "OIZEASGTBP#*~;"))


class LineInstrument(Protocol):
    async def handle(self, line: str) -> str | None: ...


class ScpiServer:
    """LF-framed SCPI on 127.0.0.1, one client at a time: a new connection replaces the old one."""

    def __init__(self, instrument: LineInstrument, faults: Faults, host: str = "127.0.0.1") -> None:
        self.instrument, self.faults, self.host = instrument, faults, host
        self._server: asyncio.Server | None = None
        self._client: tuple[asyncio.StreamWriter, asyncio.Task[Any]] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()  # replaced clients' may still be finishing
        self.port = 0

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._serve, self.host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])

        def drop() -> None:
            loop.call_soon_threadsafe(self._close_client)
            self.faults.strike("connection dropped")

        self.faults.on_drop(drop)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        client, self._client = self._client, None
        if client is not None:
            client[0].close()  # the handler sees end of file and returns
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=1.0)
            for task in pending:
                task.cancel()  # still sleeping on a delay fault
            if pending:
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _close_client(self) -> None:
        if self._client is not None:
            self._client[0].close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._client is not None:
            log.info("new client: closing the previous connection")
            self._client[0].close()
        self._client = (writer, task)
        self._handlers.add(task)
        try:
            while line := await reader.readline():
                text = line.decode("ascii", errors="replace").rstrip("\r\n")
                reply = await self.instrument.handle(text)
                if reply is None or writer.is_closing():
                    continue
                if (delay := self.faults.next_delay()) > 0:
                    await asyncio.sleep(delay)
                    self.faults.strike(f"a reply {delay:g} s late")
                    if writer.is_closing():
                        continue
                if self.faults.garble_next > 0:
                    self.faults.garble_next -= 1
                    reply = garble(reply)
                    self.faults.strike("a garbled reply")
                writer.write(reply.encode("ascii", errors="replace") + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            log.info("client connection lost")  # ValueError: a line longer than the stream limit
        except asyncio.CancelledError:
            # Only stop() cancels a handler; ending quietly keeps asyncio's stream callback, which
            # asks the finished task for its exception, from logging a spurious traceback.
            log.debug("client handler cancelled")
        finally:
            if self._client is not None and self._client[1] is task:
                self._client = None
            self._handlers.discard(task)
            writer.close()


class Startable(Protocol):
    async def start(self) -> int: ...
    async def stop(self) -> None: ...


@contextlib.contextmanager
def running(emulator: Startable, timeout_s: float = 10.0) -> Iterator[int]:
    """Serve `emulator` from a background thread with its own event loop; yields the port.

    For synchronous clients (plain sockets, pyvisa) in tests and notebooks.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="scpi-emulator", daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(emulator.start(), loop).result(timeout_s)
    finally:
        try:
            asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            loop.close()
