"""The listening sockets of an emulated cycler and the clients on them.

A cycler's PC serves many clients at once (one per lab channel, doctor, the vendor's own tools),
unlike the one-client SCPI server. `faults.drop_connection()` closes every client at once, as a
restarted API or a pulled network cable does; `reply` applies the late and garbled reply faults
to one answer. Each emulator brings its own framing and its own idea of a garbled reply.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from cyclerd.simulators.scpi_server import Faults

log = logging.getLogger(__name__)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
STOP_WAIT_S = 1.0  # a handler still sleeping on a delay fault after this is cancelled


class Clients:
    """Servers on 127.0.0.1 and their clients; `faults` are the emulator's transport faults."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def listen(self, serve: Handler, port: int) -> int:
        """Serve each client of 127.0.0.1:`port` (0: a free one) with `serve`; the bound port."""
        if not self._servers:
            loop = asyncio.get_running_loop()

            def drop() -> None:
                loop.call_soon_threadsafe(self.drop_all)
                self.faults.strike("connections dropped")

            self.faults.on_drop(drop)

        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            self._writers.add(writer)
            try:
                await serve(reader, writer)
            except (ConnectionError, asyncio.CancelledError):
                log.debug("client connection ended")  # quietly: asyncio's stream callback logs otherwise
            finally:
                self._writers.discard(writer)
                self._handlers.discard(task)
                writer.close()

        server = await asyncio.start_server(tracked, "127.0.0.1", port)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def drop_all(self) -> None:
        for writer in list(self._writers):
            writer.close()

    async def reply(
        self, writer: asyncio.StreamWriter, message: bytes, garbled: Callable[[bytes], bytes]
    ) -> bool:
        """Send `message`, late or garbled as the faults say; False if the client is gone."""
        if (delay := self.faults.next_delay()) > 0:
            await asyncio.sleep(delay)
            self.faults.strike(f"a reply {delay:g} s late")
        if writer.is_closing():
            return False
        if self.faults.garble_next > 0:
            self.faults.garble_next -= 1
            message = garbled(message)
            self.faults.strike("a garbled reply")
        writer.write(message)
        await writer.drain()
        return True

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self.drop_all()
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=STOP_WAIT_S)
            for task in pending:
                task.cancel()  # still sleeping on a delay fault
            if pending:
                await asyncio.wait(pending)
        for server in self._servers:
            await server.wait_closed()
        self._servers = []
