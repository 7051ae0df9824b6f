"""An emulated Maccor cycler on MacNet: JSON-RPC on one TCP port, the binary messages on another,
many clients at once (one per cyclerd channel, plus doctor, plus pymacnet), N channels of
simulated cells on one `CyclerBank` (`cyclerd emulate maccor`).

What it answers is `maccor_wire.MESSAGES`; each channel is a `MacNetChannel`. Choices the MacNet
sources leave open:
- A test started with a procedure (6, 2) rests the cell (there are no procedure files here) until
  the channel is reset. A direct-mode rest works over JSON (pymacnet notes MacNet versions where
  it does not; cyclerd's driver reads the status back).
- Safety limits are set with (6, 10), at any time, and kept until changed; a channel beyond them
  stops its test as Suspended, RF2 "Safety Voltage" (a voltage limit) or "Safety Absolute"
  (current, or an injected trip), until the channel is reset. The channel checks them every
  SAFETY_TICK_S of wall time, whether or not a client asks, and at every request.
- "Command sent too fast" holds for (6, 8) within 100 ms of the channel's last output command,
  in the emulator's time.
- Binary port: a frame `<HHHH` (FClass, FNum, Chan, length) and its data; (6, 8) `<ffffBB`
  (current, voltage, power, resistance, range, mode) is the JSON (6, 8); the reply is the header
  and one result byte (0 OK). Chan counts from 0 as on the JSON port; pymacnet 1.1.3 adds 1 to
  its own 1-based channel there, so its binary rest reaches the channel two above the one it names.
- pymacnet's (4, 1) sends Chan -1 (its 0-based shift applied to a 0): a start below 0 is 0.
Faults: the bank's `Faults` (a delay makes clients time out; `garble_next` sends replies that are
not JSON; `drop_connection` closes every client's sockets; `error_next` answers the next request
with a JSON-RPC error) and each bank channel's `ChannelFaults` (`trip`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Callable
from typing import Any

from cyclerd.drivers import maccor_wire as mn
from cyclerd.simulators.cycler_bank import CyclerBank
from cyclerd.simulators.maccor_channels import MacNetChannel, Refused, number
from cyclerd.simulators.scpi_server import Faults, garble, running
from cyclerd.simulators.tcp_clients import Clients

__all__ = ["DEFAULT_PORT", "Faults", "MaccorEmulator", "running", "serve"]
log = logging.getLogger(__name__)

DEFAULT_PORT = mn.DEFAULT_PORT
SAFETY_TICK_S = 0.2  # wall time between the channels' own safety checks
MAX_REQUEST_BYTES = 1 << 16
BINARY_HEADER = struct.Struct("<HHHH")
BINARY_OUTPUT = struct.Struct("<ffffBB")
SYSTEM_ID = "cyclerd emulator"
VERSION = (3, 3, 0)  # MacTest32 major, minor, build, as the emulator reports it


def binary_port_for(port: int) -> int:
    """MacNet's binary port sits 10 below its JSON port (57560, 57570); 0: any free one."""
    return port - 10 if port > 1024 + 10 else 0


class JsonObjects:
    """Top-level JSON objects out of a byte stream: MacNet's requests carry no terminator."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0
        self._depth = 0
        self._in_string = self._escaped = False

    def feed(self, data: bytes) -> list[bytes | None]:
        """The objects completed by `data`; None for a run of bytes that cannot start one."""
        self._buffer += data
        found: list[bytes | None] = []
        i = self._scanned
        while i < len(self._buffer):
            c = self._buffer[i]
            if self._depth == 0:
                if c == ord("{"):
                    del self._buffer[:i]
                    i, self._depth = 0, 1
                elif chr(c).isspace():
                    pass
                else:
                    end = self._buffer.find(b"{", i)
                    del self._buffer[: len(self._buffer) if end < 0 else end]
                    found.append(None)
                    i = 0
                    continue
            elif self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == ord("\\"):
                    self._escaped = True
                elif c == ord('"'):
                    self._in_string = False
            elif c == ord('"'):
                self._in_string = True
            elif c in (ord("{"), ord("[")):
                self._depth += 1
            elif c in (ord("}"), ord("]")):
                self._depth -= 1
                if self._depth == 0:
                    found.append(bytes(self._buffer[: i + 1]))
                    del self._buffer[: i + 1]
                    i = 0
                    continue
            i += 1
        if self._depth == 0:
            self._buffer.clear()
            i = 0
        self._scanned = i
        return found

    @property
    def pending(self) -> int:
        return len(self._buffer)


class MaccorEmulator:
    """The cycler: its bank of channels, MacNet's two servers and their clients."""

    def __init__(
        self,
        preset: str,
        channels: int,
        seed: int = 0,
        speed: float = 1.0,
        port: int = 0,
        *,
        binary_port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.bank = CyclerBank(preset, channels, seed, speed)
        self.faults: Faults = self.bank.faults
        self.channels = [MacNetChannel(channel) for channel in self.bank.channels]
        self.host, self.port = host, port
        self.binary_port = binary_port_for(port) if binary_port is None else binary_port
        self._clients = Clients(self.faults)
        self._watch: asyncio.Task[None] | None = None
        self._dispatch: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "system_info": self._system_info,
            "general_info": self._general_info,
            "statuses": self._statuses,
            "aux": lambda p: self._channel(p).aux(),
            "test_info": lambda p: self._channel(p).test_info(),
            "status": lambda p: self._channel(p).status(),
            "start_procedure": lambda p: self._channel(p).start_procedure(p),
            "reset": lambda p: self._channel(p).reset(),
            "start_direct": lambda p: self._channel(p).start_direct(p),
            "set_output": lambda p: self._channel(p).set_output(p),
            "set_variable": lambda p: self._channel(p).set_variable(p),
            "safety_limits": lambda p: self._channel(p).set_limits(p),
        }

    async def start(self) -> int:
        """Listen on both ports (0: free ones); returns the JSON-RPC port."""
        try:
            self.port = await self._clients.listen(self._serve_json, self.port)
            self.binary_port = await self._clients.listen(self._serve_binary, self.binary_port)
        except OSError:
            await self._clients.stop()
            raise
        self._watch = asyncio.create_task(self._watch_safety())
        return self.port

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self._clients.stop()

    def answer(self, params: dict[str, Any]) -> dict[str, Any]:
        """A MacNet request's `params` -> its reply's `result`; raises Refused."""
        try:
            code = (int(params["FClass"]), int(params["FNum"]))
        except (KeyError, TypeError, ValueError):
            raise Refused(mn.INVALID_REQUEST, "FClass and FNum are needed") from None
        name = mn.BY_CODE.get(code)
        if name is None:
            raise Refused(mn.NO_SUCH_METHOD, f"no MacNet message ({code[0]}, {code[1]})")
        message = mn.MESSAGES[name]
        return {"FClass": message.fclass, "FNum": message.fnum, **self._dispatch[name](params)}

    # -- messages that are not one channel's ---------------------------------------------

    def _system_info(self, params: dict[str, Any]) -> dict[str, Any]:
        major, minor, build = VERSION
        return {
            "APIVersion": 1,
            "MacTest32EXEversionMajor": major,
            "MacTest32EXEversionMinor": minor,
            "MacTest32EXEversionBuild": build,
            "MacTest32DLLversionMajor": major,
            "MacTest32DLLversionMinor": minor,
            "MacTest32DLLversionBuild": build,
        }

    def _general_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "SystemID": SYSTEM_ID,
            "SystemType": 0,
            "ControllerBoards": -(-len(self.channels) // 8),
            "TestChannels": len(self.channels),
            "AuxBoards": 0,
            "AuxChannels": 0,
            "SMB1Pos": 0,
            "SMB3Pos": 0,
        }

    def _statuses(self, params: dict[str, Any]) -> dict[str, Any]:
        first = max(0, int(number(params, "Chan")))
        count = max(0, min(int(number(params, "Len")), 128, len(self.channels) - first))
        chosen = self.channels[first : first + count]
        for channel in chosen:
            channel.follow()
        return {"Chan": first, "Len": len(chosen), "Status": [channel.summary() for channel in chosen]}

    def _channel(self, params: dict[str, Any]) -> MacNetChannel:
        chan = params.get("Chan")
        if not isinstance(chan, int) or not 0 <= chan < len(self.channels):
            raise Refused(mn.INVALID_PARAMS, f"Chan {chan!r}: channels are 0 to {len(self.channels) - 1}")
        return self.channels[chan]

    # -- the JSON-RPC port ---------------------------------------------------------------

    def _reply_to(self, text: bytes | None) -> bytes:
        if text is None:
            return mn.error_reply(mn.PARSE_ERROR, "Parse error: not a JSON object", None)
        try:
            envelope = json.loads(text)
        except ValueError:
            return mn.error_reply(mn.PARSE_ERROR, "Parse error", None)
        request_id = envelope.get("id") if isinstance(envelope, dict) else None
        params = envelope.get("params") if isinstance(envelope, dict) else None
        if (
            not isinstance(envelope, dict)
            or envelope.get("method") != "MacNet"
            or not isinstance(params, dict)
        ):
            return mn.error_reply(
                mn.INVALID_REQUEST, "Invalid Request: method MacNet with params", request_id
            )
        if self.faults.error_next is not None:
            code, message = self.faults.error_next
            self.faults.error_next = None
            self.faults.strike(f"error {code}")
            return mn.error_reply(code, message, request_id)
        try:
            return mn.reply(self.answer(params), request_id)
        except Refused as exc:
            return mn.error_reply(exc.code, exc.message, request_id)

    async def _serve_json(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = JsonObjects()
        while data := await reader.read(65536):
            for request in stream.feed(data):
                await self._clients.reply(writer, self._reply_to(request), _garbled)
            if stream.pending > MAX_REQUEST_BYTES:
                too_long = mn.error_reply(mn.INVALID_REQUEST, "request too long", None)
                await self._clients.reply(writer, too_long, _garbled)
                return

    # -- the binary port -----------------------------------------------------------------

    async def _serve_binary(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                header = await reader.readexactly(BINARY_HEADER.size)
                fclass, fnum, chan, length = BINARY_HEADER.unpack(header)
                data = await reader.readexactly(length)
            except asyncio.IncompleteReadError:
                return
            outcome = 0xFF  # a message not emulated here
            if (fclass, fnum) == (6, 8) and length == BINARY_OUTPUT.size:
                current, voltage, _, _, current_range, mode = BINARY_OUTPUT.unpack(data)
                params = {"Chan": chan, "ChMode": chr(mode), "Current": current, "Voltage": voltage}
                params["CurrentRange"] = current_range
                try:
                    result = self._channel(params).set_output(params)
                    outcome = 0 if result["Result"] == mn.OK else mn.result_code(result["Result"]) & 0xFF
                except Refused:
                    outcome = 0xFE
            writer.write(BINARY_HEADER.pack(fclass, fnum, chan, 1) + bytes([outcome]))
            await writer.drain()

    # -- clients and the channels' own watch ---------------------------------------------

    async def _watch_safety(self) -> None:
        """A cycler checks its channels' limits continuously, with or without a host asking."""
        while True:
            await asyncio.sleep(SAFETY_TICK_S)
            for channel in self.channels:
                if channel.bank.on:
                    channel.follow()


def _garbled(reply: bytes) -> bytes:
    return ("<" + garble(reply.decode())[1:]).encode()  # never JSON: not even its first brace


async def serve(preset: str, port: int | None, speed: float, seed: int, channels: int) -> None:
    """Serve a Maccor with `channels` channels of `preset` cells until cancelled."""
    emulator = MaccorEmulator(preset, channels, seed, speed, DEFAULT_PORT if port is None else port)
    bound = await emulator.start()
    log.info(
        "Maccor MacNet emulator: %d channels of %s cells on 127.0.0.1:%d (JSON-RPC), binary port %d,"
        " %gx real time",
        channels,
        preset,
        bound,
        emulator.binary_port,
        speed,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
