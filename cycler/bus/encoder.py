"""The bus's encoder: a child process that turns batches of samples into `data` JSON.

Encoding samples as JSON is the heaviest per-sample work of the daemon, so the bus does it
on the lab PC's other core. The child is `python -m cyclerd.bus.encoder`, started by
the bus and talking over its stdin/stdout: frames in, payloads out, in the same order, so a
batch's payload is matched to it by position. The child imports json and numpy only, and
never the daemon's sockets, database or threads.

The daemon's side of the pipes is non-blocking and driven by its event loop: a frame is
written as it is queued, and payloads are read whenever the loop polls, between channels'
turns. Both pipes are enlarged to 1 MiB, room for many frames and payloads, so neither side
waits for the other in practice. No threads move the pipes: each frame and payload would
make them and the event loop hand the GIL to each other, costing the daemon's main thread
context switches and CPU time.

Frames are a 4-byte big-endian length and a body: in, a pickle of (run_id, columns), each
column as its dtype and raw bytes (the child is ours, started from our own interpreter; raw
bytes pickle much faster than numpy arrays); out, the UTF-8 payload. A child
that dies fails its pending batches with EncoderGone, and the bus encodes in the daemon from
then on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from cyclerd.bus.payloads import data_payload

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
        self._unsent = bytearray()  # frames the child's stdin pipe had no room for yet
        self._received = bytearray()  # payload bytes read, up to an incomplete frame
        self._chunk = memoryview(bytearray(PIPE_BYTES))  # what one read of the pipe fills
        self._gone: EncoderGone | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._gone = None
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "cyclerd.bus.encoder"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        except OSError as error:
            raise EncoderGone(f"cannot start the encoder process: {error}") from error
        assert process.stdin is not None
        assert process.stdout is not None
        for pipe in (process.stdin, process.stdout):
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)  # Linux; else 64 KiB
            os.set_blocking(pipe.fileno(), False)
        self._process = process
        self._unsent.clear()
        self._received.clear()
        self._loop.add_reader(process.stdout.fileno(), self._read)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._gone is None

    def encode(self, run_id: int, columns: Mapping[str, Any]) -> asyncio.Future[bytes]:
        """Queue one batch; its payload arrives after those of every earlier call."""
        if not self.alive or self._loop is None:
            raise self._gone or EncoderGone("the encoder process is not running")
        future: asyncio.Future[bytes] = self._loop.create_future()
        self._pending.append(future)
        frame = pickle.dumps((run_id, _raw(columns)), protocol=pickle.HIGHEST_PROTOCOL)
        waiting = bool(self._unsent)
        self._unsent += HEADER.pack(len(frame))
        self._unsent += frame
        if not waiting:  # else the writer callback is registered and sends it in turn
            self._write()
        return future

    def kill(self) -> None:
        """Kill the child (as a crash would); its pending batches fail with EncoderGone."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()

    async def close(self) -> None:
        self._fail(EncoderGone("the encoder was closed"))  # its pipes leave the loop
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        with contextlib.suppress(OSError):
            process.stdin.close()  # the child reads EOF and ends
        try:
            await asyncio.to_thread(process.wait, 2.0)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)
        assert process.stdout is not None
        process.stdout.close()

    # -- the pipes, on the event loop ------------------------------------------------------

    def _write(self) -> None:
        process, loop = self._process, self._loop
        if process is None or loop is None or process.stdin is None:
            return
        fd = process.stdin.fileno()
        try:
            sent = os.write(fd, self._unsent)
        except BlockingIOError:
            sent = 0
        except OSError:  # the child is gone (EPIPE): the reader sees its EOF and reports it
            self._unsent.clear()
            loop.remove_writer(fd)
            self._fail(EncoderGone("the encoder process stopped"))
            return
        del self._unsent[:sent]
        if self._unsent:
            loop.add_writer(fd, self._write)
        else:
            loop.remove_writer(fd)

    def _read(self) -> None:
        process, loop = self._process, self._loop
        if process is None or loop is None or process.stdout is None:
            return
        fd = process.stdout.fileno()
        try:
            count = os.readv(fd, [self._chunk])  # into a buffer kept: os.read would map 1 MiB each time
        except BlockingIOError:
            return
        except OSError:
            count = 0
        if not count:
            loop.remove_reader(fd)
            self._fail(EncoderGone("the encoder process stopped"))
            return
        received = self._received
        received += self._chunk[:count]
        start = 0
        while len(received) - start >= HEADER.size:
            size = HEADER.unpack_from(received, start)[0]
            end = start + HEADER.size + size
            if len(received) < end:
                break
            self._resolve(bytes(received[start + HEADER.size : end]))
            start = end
        del received[:start]

    def _resolve(self, payload: bytes) -> None:
        if self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_result(payload)

    def _fail(self, error: EncoderGone) -> None:
        self._gone = self._gone or error
        process, loop = self._process, self._loop
        if loop is not None and process is not None and process.stdout is not None:
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(process.stdout.fileno())
            if process.stdin is not None:
                with contextlib.suppress(OSError, ValueError):
                    loop.remove_writer(process.stdin.fileno())
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(error)
                # Marked as seen: a caller still waiting gets the error all the same, and the
                # batches a closing bus dropped are not each logged as "never retrieved".
                future.exception()


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
    try:
        serve(sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:
        # The daemon is gone (killed): nobody reads payloads any more. Quietly, as a traceback
        # here lands in the daemon's journal and reads like a failure of the next one; stdout
        # is pointed at /dev/null so that Python's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
