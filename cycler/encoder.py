"""The bus's encoder: a child process that turns batches of samples into `data` JSON.

Encoding a sample as JSON costs more than simulating, checking and storing it, so the bus
does it on the lab PC's other core. The child is `python -m cyclerd.encoder`, started by
the bus and talking over its stdin/stdout: frames in, payloads out, in the same order, so a
batch's payload is matched to it by position. The child imports json and numpy only, and
never the daemon's sockets, database or threads.

The pipes are moved by two threads of the daemon, not by its event loop: a loop busy with
64 simulated channels visits its file descriptors only between channels' turns, and a pipe
holds at most 1 MiB, so the child would wait for the loop. The threads spend their time in
blocking reads and writes (no GIL held) and hand each payload to the loop as it arrives.

Frames are a 4-byte big-endian length and a body: in, a pickle of (run_id, columns), each
column as its dtype and raw bytes (the child is ours, started from our own interpreter; raw
bytes pickle at memcpy speed, numpy arrays at a third of it); out, the UTF-8 payload. A child
that dies fails its pending batches with EncoderGone, and the bus encodes in the daemon from
then on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import pickle
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any, BinaryIO

import numpy as np

from cyclerd.payloads import data_payload

HEADER = struct.Struct(">I")
PIPE_BYTES = 1 << 20


class EncoderGone(ConnectionError):
    """The encoder process exited or could not be started."""


class Encoder:
    """One encoder process; `encode` returns a future of the payload, resolved in call order."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
        self._frames: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._gone: EncoderGone | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._gone = None
        self._frames = queue.SimpleQueue()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "cyclerd.encoder"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        except OSError as error:
            raise EncoderGone(f"cannot start the encoder process: {error}") from error
        assert process.stdin is not None
        assert process.stdout is not None
        for pipe in (process.stdin, process.stdout):
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # Linux; else 64 KiB
        self._process = process
        threading.Thread(target=self._write, args=(process.stdin,), name="encoder in", daemon=True).start()
        threading.Thread(target=self._read, args=(process.stdout,), name="encoder out", daemon=True).start()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._gone is None and self._process.poll() is None

    def encode(self, run_id: int, columns: Mapping[str, Any]) -> asyncio.Future[bytes]:
        """Queue one batch; its payload arrives after those of every earlier call."""
        if not self.alive or self._loop is None:
            raise self._gone or EncoderGone("the encoder process is not running")
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._pending.append(future)
        self._frames.put(pickle.dumps((run_id, _raw(columns)), protocol=pickle.HIGHEST_PROTOCOL))
        return future

    def kill(self) -> None:
        """Kill the child (as a crash would); its pending batches fail with EncoderGone."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()

    async def close(self) -> None:
        process, self._process = self._process, None
        self._frames.put(None)  # the writer closes the child's stdin: the child ends
        if process is not None:
            try:
                await asyncio.to_thread(process.wait, 2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        self._fail(EncoderGone("the encoder was closed"))

    # -- the threads -----------------------------------------------------------------------

    def _write(self, stdin: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):  # the child is gone: the reader reports it
            while (frame := self._frames.get()) is not None:
                stdin.write(HEADER.pack(len(frame)))
                stdin.write(frame)
                stdin.flush()
        with contextlib.suppress(OSError, ValueError):
            stdin.close()

    def _read(self, stdout: IO[bytes]) -> None:
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(OSError, ValueError):
            while len(header := stdout.read(HEADER.size)) == HEADER.size:
                size = HEADER.unpack(header)[0]
                payload = stdout.read(size)
                if len(payload) < size:
                    break
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self._resolve, payload)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._fail, EncoderGone("the encoder process stopped"))

    # -- back on the event loop ------------------------------------------------------------

    def _resolve(self, payload: bytes) -> None:
        if self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(payload)

    def _fail(self, error: EncoderGone) -> None:
        self._gone = self._gone or error
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(error)


def _raw(columns: Mapping[str, Any]) -> dict[str, tuple[str, bytes]]:
    return {
        name: ((array := np.asarray(values)).dtype.str, array.tobytes()) for name, values in columns.items()
    }


def _arrays(raw: Mapping[str, tuple[str, bytes]]) -> dict[str, Any]:
    return {name: np.frombuffer(data, dtype=dtype) for name, (dtype, data) in raw.items()}


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The child's loop: a frame in, its payload out, until stdin closes."""
    while True:
        header = stdin.read(HEADER.size)
        if len(header) < HEADER.size:
            return
        run_id, raw = pickle.loads(stdin.read(HEADER.unpack(header)[0]))
        payload = data_payload(run_id, _arrays(raw)).encode()
        stdout.write(HEADER.pack(len(payload)) + payload)
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
