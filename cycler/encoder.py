"""The bus's encoder: a child process that turns batches of samples into `data` JSON.

Encoding a sample as JSON costs more than simulating, checking and storing it, so the bus
does it on the lab PC's other core. The child is `python -m cyclerd.encoder`, started by
the bus and talking over its stdin/stdout: frames in, payloads out, in the same order, so a
batch's payload is matched to it by position. The child imports json and numpy only, and
never the daemon's sockets, database or threads.

Frames are a 4-byte big-endian length and a body: in, a pickle of (run_id, columns) (the
child is ours, started from our own interpreter); out, the UTF-8 payload. A child that dies
fails its pending batches with EncoderGone, and the bus encodes in the daemon from then on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import pickle
import struct
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

from cyclerd.payloads import data_payload

HEADER = struct.Struct(">I")


class EncoderGone(ConnectionError):
    """The encoder process exited or could not be started."""


class Encoder:
    """One encoder process; `encode` returns a future of the payload, resolved in call order."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cyclerd.encoder",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as error:
            raise EncoderGone(f"cannot start the encoder process: {error}") from error
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="bus encoder")

    def kill(self) -> None:
        """Kill the child (as a crash would); its pending batches fail with EncoderGone."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None and self._reader is not None

    def encode(self, run_id: int, columns: Mapping[str, Any]) -> asyncio.Future[bytes]:
        """Queue one batch; its payload arrives after those of every earlier call."""
        process = self._process
        if not self.alive or process is None or process.stdin is None or process.stdin.is_closing():
            raise EncoderGone("the encoder process is not running")
        body = pickle.dumps((run_id, dict(columns)), protocol=pickle.HIGHEST_PROTOCOL)
        process.stdin.write(HEADER.pack(len(body)) + body)  # the bus bounds what is in flight
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        return future

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        stdout = self._process.stdout
        try:
            while True:
                size = HEADER.unpack(await stdout.readexactly(HEADER.size))[0]
                payload = await stdout.readexactly(size)
                future = self._pending.popleft()
                if not future.done():
                    future.set_result(payload)
        except (asyncio.IncompleteReadError, ConnectionError, IndexError) as error:
            self._fail(EncoderGone(f"the encoder process stopped ({error!r})"))

    def _fail(self, error: EncoderGone) -> None:
        self._reader = None
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        process, reader = self._process, self._reader
        self._process = None
        if process is not None and process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            try:
                async with asyncio.timeout(2.0):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail(EncoderGone("the encoder was closed"))


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child's loop: a frame in, its payload out, until stdin closes."""
    while True:
        header = stdin.read(HEADER.size)
        if len(header) < HEADER.size:
            return
        run_id, columns = pickle.loads(stdin.read(HEADER.unpack(header)[0]))
        payload = data_payload(run_id, columns).encode()
        stdout.write(HEADER.pack(len(payload)) + payload)
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
