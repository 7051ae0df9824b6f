"""MacNet, a Maccor cycler's remote interface: its messages, status words and ranges in one place,
and `MacNetLink`, one blocking JSON-RPC connection for one thread (`identify` asks who is at its
other end). The emulator speaks the same vocabulary from here: the wire format has one definition.

Wire facts (pymacnet 1.1.3; instrument-protocols.md §7): a request is one JSON-RPC 2.0 object,
`{"jsonrpc": "2.0", "method": "MacNet", "params": {"FClass": c, "FNum": n, ...}, "id": i}`, sent
as it is (no terminator); a reply is one JSON object ending in CR LF; channels count from 0 on the
wire. A status reports `Stat` (the channel's state), `RF1` (what the step does) and `RF2` (why a
step ended); their words are Maccor's, as pymacnet and other MacNet clients decode them.
Choices the sources leave open: a failed command answers `Result` with its reason as text; a
direct-mode `Current` is a magnitude, its direction the mode (`C` charge, `D` discharge), as in
Maccor's data files; (4, 6) names the test as `TestName`, `ProcName`, `Comment`.
"""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass
from typing import Any

from cyclerd.drivers.base import (
    InstrumentDisconnected,
    InstrumentError,
    InstrumentGarbled,
    InstrumentTimeout,
)

DEFAULT_PORT = 57570  # JSON-RPC
BINARY_PORT = 57560  # MacNet's binary messages; pymacnet sends its rest there
TERMINATOR = b"\r\n"
MAX_REPLY_BYTES = 1 << 20


@dataclass(frozen=True)
class Message:
    fclass: int
    fnum: int
    what: str


MESSAGES: dict[str, Message] = {
    "system_info": Message(1, 1, "versions of MacTest32 and of the API"),
    "general_info": Message(1, 2, "system id and type, number of test channels"),
    "statuses": Message(4, 1, "RF1, RF2 and Stat of `Len` channels from `Chan`"),
    "aux": Message(4, 4, "a channel's auxiliary readings"),
    "test_info": Message(4, 6, "the test on a channel: its name, procedure and comment"),
    "status": Message(4, 7, "one channel's status and readings, and its last data record"),
    "start_procedure": Message(6, 2, "start a test that runs a procedure file"),
    "reset": Message(6, 5, "reset a channel: its test stops, its output goes off"),
    "start_direct": Message(6, 7, "start a test in direct mode, with its first output"),
    "set_output": Message(6, 8, "a direct-mode channel's output: mode, current, voltage"),
    "set_variable": Message(6, 9, "one of a test's variables, 1 to 16"),
    "safety_limits": Message(6, 10, "a channel's safety limits: it stops its test beyond them"),
}
BY_CODE = {(m.fclass, m.fnum): name for name, m in MESSAGES.items()}

# Stat: the channel's state.
STAT = {
    0: "Available", 1: "Selected", 2: "Active", 3: "Suspended", 4: "Completed", 5: "Problem",
    6: "Not/Avl", 7: "Reset", 8: "Start", 9: "PWR Fail", 10: "No Cntllr", 11: "ShutDown",
    12: "Starting", 13: "Blocked", 14: "Waiting", 15: "FRA", 16: "Rem Maint",
}  # fmt: skip
AVAILABLE, ACTIVE, SUSPENDED, COMPLETED, RESET = 0, 2, 3, 4, 7
FREE = frozenset({AVAILABLE, COMPLETED, RESET})  # no test holds the channel (Completed: reset it first)
HELD = frozenset({1, ACTIVE, SUSPENDED, 8, 12, 14, 15})  # a test holds the channel

# RF1: what the channel's step does.
MODE = {
    0: "Available", 1: "Charge", 2: "Discharge", 4: "Rest", 5: "Pause", 7: "End",
    29: "Problem", 30: "Suspended", 31: "Complete",
}  # fmt: skip
IDLE, CHARGING, DISCHARGING, RESTING, HALTED = 0, 1, 2, 4, 30

# RF2: why the last step ended (128: it has not).
END = {
    128: "None", 189: "Safety Capacity", 190: "Safety Voltage", 191: "Safety Overcharge",
    192: "Suspend or Pause", 193: "Normal End", 196: "Overcharge Safety", 197: "Voltage Safety",
    253: "Safety Absolute", 254: "Lost Current Control",
}  # fmt: skip
NOT_ENDED, SAFETY_CAPACITY, SAFETY_VOLTAGE, SAFETY_ABSOLUTE = 128, 189, 190, 253
SAFETY_ENDS = frozenset({189, 190, 191, 196, 197, 253, 254})

# Direct-mode charge modes (`ChMode`) and the RF1 each shows.
CHARGE, DISCHARGE, REST = "C", "D", "R"
MODE_OF = {CHARGE: CHARGING, DISCHARGE: DISCHARGING, REST: RESTING}

OK = "OK"
# `Result` of (6, 7) and (6, 8) when they fail, by number (pymacnet's notes on MacNet).
DIRECT_RESULTS = {
    1: "Illegal system type: direct mode works on system type 0 only",
    2: "The channel is not active",
    3: "Command sent too fast: at least 100 ms between commands",
    4: "Direct mode is not active",
    5: "Direct mode is not ready yet",
}
NOT_ACTIVE, TOO_FAST, NOT_DIRECT = 2, 3, 4
COMMAND_GAP_S = 0.1  # what "too fast" means, per channel

# A Maccor Series 4000 channel as cyclerd assumes it: four current ranges (full scale, A), bipolar
# voltage. Numbers beyond a range, such as pymacnet's 4900 V or 65536, mean "no such limit".
CURRENT_RANGES_A = {1: 150e-6, 2: 5e-3, 3: 150e-3, 4: 5.0}
CURRENT_MAX_A = CURRENT_RANGES_A[4]
VOLTAGE_RANGE_V = (-5.0, 5.0)
POWER_MAX_W = 25.0
NO_LIMIT = 65536.0

# JSON-RPC's own error codes.
PARSE_ERROR, INVALID_REQUEST, NO_SUCH_METHOD, INVALID_PARAMS = -32700, -32600, -32601, -32602


def current_range(current_A: float) -> int:
    """The lowest range that holds |current_A| (resolution is best there)."""
    return next((r for r, full in CURRENT_RANGES_A.items() if abs(current_A) <= full), 4)


def request(name: str, request_id: int, **params: Any) -> bytes:
    message = MESSAGES[name]
    body = {"FClass": message.fclass, "FNum": message.fnum, **params}
    return json.dumps({"jsonrpc": "2.0", "method": "MacNet", "params": body, "id": request_id}).encode()


def reply(result: dict[str, Any], request_id: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "result": result, "id": request_id}).encode() + TERMINATOR


def error_reply(code: int, message: str, request_id: Any) -> bytes:
    envelope = {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}
    return json.dumps(envelope).encode() + TERMINATOR


def result_code(result: Any) -> int:
    """A failed `Result` as a number: itself, or the number of a known reason."""
    if isinstance(result, int):
        return result
    return next((code for code, text in DIRECT_RESULTS.items() if text == result), -1)


def output_fields(mode: str, current_A: float, voltage_V: float) -> dict[str, Any]:
    """The output fields of (6, 7) and (6, 8)."""
    return {
        "Current": current_A,
        "Voltage": voltage_V if mode != REST else 0.0,
        "Power": NO_LIMIT,
        "Resistance": 0,
        "CurrentRange": current_range(current_A),
        "ChMode": mode,
    }


@dataclass(slots=True)
class ChannelStatus:
    """A (4, 7) reply: where the channel's test stands, and its readings."""

    stat: int
    mode: int  # RF1
    end: int  # RF2
    voltage_V: float
    current_A: float  # signed: positive charges the cell
    capacity_Ah: float
    energy_Wh: float
    test_time_s: float
    step_time_s: float
    last_record: int

    @classmethod
    def read(cls, result: dict[str, Any]) -> ChannelStatus:
        """Raises KeyError, TypeError or ValueError on a reply that is not a status."""
        mode = int(result["RF1"])
        magnitude = abs(float(result["Current"]))
        return cls(
            stat=int(result["Stat"]),
            mode=mode,
            end=int(result["RF2"]),
            voltage_V=float(result["Voltage"]),
            current_A=-magnitude if mode == DISCHARGING else magnitude,
            capacity_Ah=float(result.get("Capacity", 0.0)),
            energy_Wh=float(result.get("Energy", 0.0)),
            test_time_s=float(result["TestTime"]),
            step_time_s=float(result.get("StepTime", 0.0)),
            last_record=int(result.get("LastRecNum", 0)),
        )

    @property
    def driving(self) -> bool:
        """The channel pushes current through the cell (a test runs, charging or discharging)."""
        return self.stat == ACTIVE and self.mode in (CHARGING, DISCHARGING)

    @property
    def tripped(self) -> bool:
        """The channel's test stopped itself: a safety limit, a problem, a suspension."""
        return self.stat == SUSPENDED or self.mode in (29, HALTED) or self.end in SAFETY_ENDS

    @property
    def words(self) -> str:
        """The status in Maccor's words, e.g. "Suspended (Safety Voltage)"."""
        stat = STAT.get(self.stat, f"Stat {self.stat}")
        end = END.get(self.end, f"RF2 {self.end}")
        mode = MODE.get(self.mode, f"RF1 {self.mode}")
        if self.end != NOT_ENDED:
            return f"{stat} ({end})"
        return stat if mode == stat else f"{stat}, {mode}"


class MacNetLink:
    """One TCP connection to MacNet, used from one thread. Every request has its own id; a reply
    to a request that timed out, arriving late, is recognised by its id and skipped."""

    def __init__(self, name: str, host: str, port: int, timeout_s: float) -> None:
        self.name, self.host, self.port, self.timeout_s = name, host, port, timeout_s
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._next_id = 0
        self._abandoned: set[int] = set()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> None:
        self.close()
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except TimeoutError:
            raise InstrumentTimeout(self.name, f"no connection within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise InstrumentDisconnected(self.name, f"cannot connect: {exc.strerror or exc}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._buffer = None, b""
        self._abandoned.clear()

    def call(self, name: str, **params: Any) -> dict[str, Any]:
        """Send message `name` and return its reply's `result`."""
        if self._sock is None:
            raise InstrumentDisconnected(self.name, "not connected: the link was lost")
        self._next_id += 1
        request_id = self._next_id
        try:
            self._sock.sendall(request(name, request_id, **params))
        except OSError as exc:
            self._lose()
            raise InstrumentDisconnected(self.name, f"link failed: {exc.strerror or exc}") from None
        envelope = self._reply_to(request_id)
        if "error" in envelope:
            error = envelope["error"] if isinstance(envelope["error"], dict) else {}
            code = error.get("code")
            raise InstrumentError(self.name, code if isinstance(code, int) else -1, str(error.get("message")))
        result = envelope.get("result")
        message = MESSAGES[name]
        if not isinstance(result, dict):
            raise InstrumentGarbled(self.name, f"a reply without a result: {str(envelope)[:120]}")
        if (result.get("FClass"), result.get("FNum")) != (message.fclass, message.fnum):
            raise InstrumentGarbled(
                self.name,
                f"asked ({message.fclass}, {message.fnum}), the reply is for "
                f"({result.get('FClass')}, {result.get('FNum')})",
            )
        return result

    def peer_closed(self) -> bool:
        """Whether MacNet closed the connection: readable with nothing to read."""
        if self._sock is None:
            return True
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and self._sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _reply_to(self, request_id: int) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            line = self._line(deadline, request_id)
            try:
                envelope = json.loads(line)
            except ValueError:  # UnicodeDecodeError is one
                raise InstrumentGarbled(self.name, f"unreadable reply {line[:120]!r}") from None
            if not isinstance(envelope, dict):
                raise InstrumentGarbled(self.name, f"a reply that is not an object: {line[:120]!r}")
            late = envelope.get("id")
            if isinstance(late, int) and late != request_id and late in self._abandoned:
                # The cycler is working through what it was sent: wait for ours afresh.
                self._abandoned.discard(late)
                deadline = time.monotonic() + self.timeout_s
                continue
            return envelope

    def _line(self, deadline: float, request_id: int) -> bytes:
        assert self._sock is not None
        while TERMINATOR not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._abandoned.add(request_id)
                raise InstrumentTimeout(self.name, f"no reply within {self.timeout_s:g} s")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                self._lose()
                raise InstrumentDisconnected(self.name, f"link failed: {exc.strerror or exc}") from None
            if not chunk:
                self._lose()
                raise InstrumentDisconnected(self.name, "link failed: the cycler closed the connection")
            self._buffer += chunk
            if len(self._buffer) > MAX_REPLY_BYTES:
                self._lose()
                raise InstrumentGarbled(self.name, f"a reply of more than {MAX_REPLY_BYTES} bytes")
        line, _, self._buffer = self._buffer.partition(TERMINATOR)
        return line

    def _lose(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._buffer = None, b""


def identify(link: MacNetLink) -> tuple[str, int]:
    """The cycler's identity for people, and its number of channels."""
    system, general = link.call("system_info"), link.call("general_info")
    try:
        channels = int(general["TestChannels"])
    except (KeyError, TypeError, ValueError):
        raise InstrumentGarbled(link.name, f"no channel count in {general}") from None
    version = ".".join(
        str(system.get(f"MacTest32EXEversion{part}", "?")) for part in ("Major", "Minor", "Build")
    )
    identity = (
        f"Maccor {general.get('SystemID', '?')} (system type {general.get('SystemType', '?')}),"
        f" MacTest32 {version}, MacNet API {system.get('APIVersion', '?')}"
    )
    return identity, channels
