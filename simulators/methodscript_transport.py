"""Where the MethodSCRIPT emulator's bytes travel: the master side of a pty (a COM port to the
client) and a TCP listener on 127.0.0.1. Received bytes are cut into lines; output goes to the
link the last line came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable
from typing import Any, Protocol


class Link(Protocol):
    closed: bool
    partial: bytes  # received after the last newline

    async def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class TcpLink:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer, self.closed, self.partial = writer, False, b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.closed = True
        self.writer.close()


class PtyLink:
    """The master side of a pseudo-terminal; clients open the slave path like a COM port."""

    def __init__(self, on_data: Callable[[PtyLink, bytes], None]) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # before any client opens it: nothing is echoed or translated
        os.set_blocking(self.master, False)
        self.path, self.closed, self.partial = os.ttyname(self.slave), False, b""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.master, self._readable, on_data)
        self._room: asyncio.Future[None] | None = None  # a write waiting for the client to read

    def _readable(self, on_data: Callable[[PtyLink, bytes], None]) -> None:
        with contextlib.suppress(OSError):  # EAGAIN, or EIO with no slave (we hold it open)
            on_data(self, os.read(self.master, 4096))

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.closed:
            try:
                view = view[os.write(self.master, view) :]
            except BlockingIOError:  # the client is not reading: stall as a UART would
                self._room = self._loop.create_future()
                self._loop.add_writer(self.master, _resolve, self._room)
                try:
                    await self._room
                finally:
                    self._room = None
                    if not self.closed:  # else close() did it: the number may be a new pty's now
                        self._loop.remove_writer(self.master)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.master)
            if self._room is not None:  # unregister before the descriptor's number is reused
                self._loop.remove_writer(self.master)
                _resolve(self._room)
            os.close(self.master)  # the client's next read fails, as with a pulled USB cable
            os.close(self.slave)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Transport:
    """The pty and/or TCP link of one device, as lines in (`next_line`) and lines out (`write`).

    `wait_for_reader`: output with no client connected waits for one (virtual time, where the
    stream goes as fast as it is read); otherwise it is lost, as a real device's would be.
    """

    def __init__(self, *, pty: bool, tcp: bool, port: int, wait_for_reader: bool) -> None:
        self.pty_path: str | None = None
        self.port: int | None = None
        self._options = (pty, tcp, port)
        self._wait_for_reader = wait_for_reader
        self._server: asyncio.Server | None = None
        self._pty: PtyLink | None = None
        self._tcp: TcpLink | None = None
        self._link: Link | None = None  # output goes where the last command came from
        self._lines: asyncio.Queue[tuple[str, Link]] = asyncio.Queue()
        self._write_lock = asyncio.Lock()
        self._new_link = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()  # one per TCP connection

    async def start(self) -> None:
        """Open the pty and/or the TCP listener on 127.0.0.1 (`pty_path`, `port`)."""
        pty, tcp, port = self._options
        if pty:
            self._open_pty()
        if tcp:
            self._server = await asyncio.start_server(self._serve_tcp, "127.0.0.1", port)
            self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in (self._tcp, self._pty):
            if link is not None:
                link.close()  # TCP handlers see the end of their stream and return
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def drop(self, tcp: bool, pty: bool) -> None:
        """Hang up: close the TCP client's socket; close the pty and open a new one (new path)."""
        if tcp and self._tcp is not None:
            self._tcp.close()
        if pty and self._pty is not None:
            self._pty.close()
            self._open_pty()

    async def next_line(self) -> str:
        """The next received line (without its newline); its link becomes the one output goes to."""
        line, self._link = await self._lines.get()
        self._new_link.set()
        return line

    async def write(self, line: str) -> None:
        """One line to the active link. Virtual time waits for a reader; real time does not."""
        data = line.encode("ascii", errors="replace") + b"\n"
        async with self._write_lock:
            while True:
                link = self._link
                if link is not None and not link.closed:
                    try:
                        await link.write(data)
                        return
                    except OSError:  # includes ConnectionError: the client went away
                        link.close()
                if not self._wait_for_reader:
                    return  # a real device's output to an absent host is lost
                self._new_link.clear()
                await self._new_link.wait()

    def _open_pty(self) -> None:
        self._pty = PtyLink(self._feed)
        self.pty_path = self._pty.path

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = TcpLink(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        if self._tcp is not None:  # [U] one client at a time: the newest connection wins
            self._tcp.close()
        self._tcp = link
        try:
            while data := await reader.read(4096):
                self._feed(link, data)
        except ConnectionError:
            pass
        finally:
            link.close()
            self._handlers.discard(task)

    def _feed(self, link: Link, data: bytes) -> None:
        *lines, link.partial = (link.partial + data).split(b"\n")
        for raw in lines:
            self._lines.put_nowait((raw.decode("ascii", errors="replace").rstrip("\r"), link))
