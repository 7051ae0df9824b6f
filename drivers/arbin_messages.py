"""Arbin's Console TCP/IP Interface (CTI): the binary messages cyclerd and its emulator exchange.

A message is a 20-byte header (magic, length, command code, extended code), fields at fixed
offsets, then a 16-bit sum of every byte before it. Codes, offsets and feedback words are those
pycti-arbin exchanges with MITS Pro (after Arbin's "ArbinCTI protocol v1.1"); this module only
encodes and decodes, both ways, so the driver and the emulator share one table and no I/O.

Lengths, as found on the wire: a reply's length field counts the whole message, checksum
included. A request's length field is the one pycti-arbin sends (known to be accepted by MITS
Pro), which is shorter than the fields it carries; so a reader frames a message as the larger of
its length field and its known layout (`frame_size`). pycti-arbin's own test server appends its
checksum beyond the length it declares: a reader skips up to `STRAY_TAIL` bytes before a header.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

MAGIC = 0x11DDDDDDDDDDDDDD
HEADER = struct.Struct("<QLLL")  # magic, length, command code, extended command code
MAGIC_BYTES = HEADER.pack(MAGIC, 0, 0, 0)[:8]
CHECKSUM = struct.Struct("<H")
STRAY_TAIL = CHECKSUM.size  # bytes a reply may leave behind its declared length (see above)
MAX_MESSAGE = 1 << 20  # longer than any CTI message: a length beyond it is a broken header

# Meta variables MV_UD1..MV_UD16 as CTI addresses them (the "meta code" of a set-MV request).
META_CODES = MappingProxyType({1: 52, 2: 53, 3: 54, 4: 55, **{n: 100 + n for n in range(5, 17)}})
MV_OF_META_CODE = MappingProxyType({code: n for n, code in META_CODES.items()})

# Channel status codes, in MITS Pro's words.
STATUS_WORDS = MappingProxyType(
    dict(
        enumerate(
            [
                "Idle", "Transition", "Charge", "Discharge", "Rest", "Wait", "External Charge",
                "Calibration", "Unsafe", "Pulse", "Internal Resistance", "AC Impedance", "ACI Cell",
                "Test Settings", "Error", "Finished", "Volt Meter", "Waiting for ACS", "Pause",
                "Empty", "Idle from MCU", "Start", "Running", "Step Transfer", "Resume", "Go Pause",
                "Go Stop", "Go Next Step", "Online Update", "DAQ Memory Unsafe", "ACR",
            ]
        )
    )
)  # fmt: skip
IDLE, CHARGE, DISCHARGE, REST, UNSAFE = 0, 2, 3, 4, 8
STOPPED = frozenset({IDLE, UNSAFE, 14, 15, 19, 20, 29})  # no test runs: Error, Finished, Empty, ...

LOGIN_WORDS = MappingProxyType({1: "success", 2: "fail", 3: "already logged in"})
LOGIN_OK, LOGIN_FAILED, LOGIN_ALREADY = 1, 2, 3

SUCCESS = 0  # every feedback's code for "done"
ASSIGN_WORDS = MappingProxyType(
    {
        0: "success",
        16: "channel does not exist",
        17: "Monitor window in use at the moment",
        18: "Schedule name cannot be empty",
        19: "Schedule name not found",
        20: "Channel is running",
        21: "Channel is downloading another schedule currently",
        22: "Cannot assign schedule when batch file is open",
        23: "Assign failed",
    }
)
ASSIGN_NO_CHANNEL, ASSIGN_EMPTY_NAME, ASSIGN_NOT_FOUND, ASSIGN_RUNNING = 16, 18, 19, 20
START_WORDS = MappingProxyType(
    {
        0: "success",
        16: "Invalid channel index",
        17: "There is a user controlling the monitor window (Start/Resume channel window is open)",
        18: "Requested channel is running or unsafe",
        19: "Channel not connected to DAQ",
        20: "Schedule not compatible with current system configuration",
        21: "No schedule assigned to channel",
        22: "Schedule version does not match current version of MITS",
        25: "Invalid step number",
        27: "Invalid auxiliary count in schedule",
        28: "Invalid build in auxiliary count",
        30: "Check Aux Test Setting tab",
        31: "No selected channels",
        33: "DAQ still downloading schedule",
        34: "Error querying database (database connection closed most likely)",
        35: "Testname cannot be empty",
        36: "Invalid step number",
        37: "Invalid parallel channel number",
        38: "Schedule safety precheck failed",
        40: "Battery simulation error",
    }
)
START_NO_CHANNEL, START_RUNNING, START_NO_SCHEDULE, START_NO_NAME = 16, 18, 21, 35
STOP_WORDS = MappingProxyType(
    {
        0: "success",
        16: "Channel index does not exist",
        17: "Someone else is controlling monitor window at the moment",
    }
)
STOP_NO_CHANNEL = 16
SET_MV_WORDS = MappingProxyType(
    {0: "success", 16: "Set MV Failure", 17: "Channel is not running", 18: "Meta code does not exist"}
)
SET_MV_FAILED, SET_MV_NOT_RUNNING, SET_MV_NO_CODE = 16, 17, 18


class CtiFormatError(ValueError):
    """Bytes that are not the CTI message expected (a broken header, a short or foreign message)."""


@dataclass(frozen=True)
class Field:
    """One field of a message: its offset from the message's first byte and its struct code
    (little-endian, unaligned); text fields are `Ns` with the encoding they are written in."""

    name: str
    offset: int
    code: str
    encoding: str = ""

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.code)


def _compile(layout: tuple[Field, ...]) -> struct.Struct:
    """One Struct for all fields after the header, gaps as pad bytes: one call per message."""
    parts, at = ["<"], HEADER.size
    for field in sorted(layout, key=lambda f: f.offset):
        if field.offset < at:
            raise ValueError(f"field {field.name} overlaps the one before it")
        parts.append(f"{field.offset - at}x{field.code}" if field.offset > at else field.code)
        at = field.offset + field.size
    return struct.Struct("".join(parts))


class Message:
    """A CTI message type: a frozen dataclass whose fields are named as in its LAYOUT."""

    COMMAND: ClassVar[int]
    LENGTH: ClassVar[int]  # the header's length field
    BODY: ClassVar[int]  # bytes before the checksum: the layout's extent
    LAYOUT: ClassVar[tuple[Field, ...]]
    _struct: ClassVar[struct.Struct]
    _fields: ClassVar[tuple[Field, ...]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "LAYOUT" in cls.__dict__:
            cls._fields = tuple(sorted(cls.LAYOUT, key=lambda f: f.offset))
            cls._struct = _compile(cls.LAYOUT)
            if HEADER.size + cls._struct.size > cls.BODY:
                raise ValueError(f"{cls.__name__}'s fields run past its body")


M = TypeVar("M", bound=Message)


def encode(message: Message) -> bytes:
    kind = type(message)
    body = bytearray(max(kind.BODY, kind.LENGTH - CHECKSUM.size))
    HEADER.pack_into(body, 0, MAGIC, kind.LENGTH, kind.COMMAND, 0)
    values = [_to_wire(field, getattr(message, field.name)) for field in kind._fields]
    kind._struct.pack_into(body, HEADER.size, *values)
    return bytes(body) + CHECKSUM.pack(sum(body) & 0xFFFF)


def decode(kind: type[M], frame: bytes) -> M:
    """`frame` as a `kind` message; CtiFormatError when it is not one."""
    command = command_of(frame)
    if command != kind.COMMAND:
        raise CtiFormatError(f"expected a {kind.__name__} message, got command code 0x{command:08X}")
    if len(frame) < kind.BODY:
        raise CtiFormatError(f"a {kind.__name__} message of {len(frame)} bytes: it has {kind.BODY}")
    values = kind._struct.unpack_from(frame, HEADER.size)
    named = {field.name: _from_wire(field, value) for field, value in zip(kind._fields, values, strict=True)}
    factory: Callable[..., M] = kind
    return factory(**named)


def command_of(frame: bytes) -> int:
    if len(frame) < HEADER.size:
        raise CtiFormatError(f"{len(frame)} bytes: shorter than a CTI header")
    magic, _, command, _ = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise CtiFormatError(f"no CTI header: {frame[:8].hex(' ')}")
    return int(command)


def frame_size(header: bytes) -> int:
    """The whole message's size in bytes, from its first HEADER.size bytes."""
    command = command_of(header)
    length = HEADER.unpack_from(header)[1]
    known = MESSAGES.get(command)
    size = max(length, known.BODY + CHECKSUM.size) if known is not None else length
    if not HEADER.size <= size <= MAX_MESSAGE:
        raise CtiFormatError(f"a CTI message length of {length} bytes")
    return int(size)


def _to_wire(field: Field, value: Any) -> Any:
    if not field.encoding:
        return value
    raw = str(value).encode(field.encoding, errors="replace")[: field.size]
    return raw[: len(raw) - len(raw) % 2] if field.encoding == "utf-16-le" else raw


def _from_wire(field: Field, value: Any) -> Any:
    if not field.encoding:
        return value
    return bytes(value).decode(field.encoding, errors="replace").split("\x00", 1)[0]


def _text(name: str, offset: int, size: int, encoding: str = "utf-8") -> Field:
    return Field(name, offset, f"{size}s", encoding)


# -- the messages cyclerd uses: requests (host -> cycler) and their feedbacks ----------------


@dataclass(frozen=True)
class Login(Message):
    COMMAND = 0xEEAB0001
    LENGTH, BODY = 74, 84
    LAYOUT = (_text("username", 20, 32), _text("password", 52, 32))
    username: str
    password: str


@dataclass(frozen=True)
class LoginFeedback(Message):
    COMMAND = 0xEEBA0001
    LENGTH, BODY = 8678, 8676
    LAYOUT = (
        Field("result", 20, "I"),
        _text("serial", 28, 16, "ascii"),
        _text("nickname", 300, 2048, "utf-16-le"),
        _text("location", 2348, 2048, "utf-16-le"),
        Field("version", 8656, "I"),
        Field("allow_control", 8660, "I"),
        Field("channels", 8664, "I"),
        Field("user_type", 8668, "I"),
    )
    result: int
    serial: str = ""
    nickname: str = ""
    location: str = ""
    version: int = 0
    allow_control: int = 1
    channels: int = 0
    user_type: int = 1


@dataclass(frozen=True)
class ChannelInfoRequest(Message):
    COMMAND = 0xEEAB0003
    LENGTH, BODY = 50, 60
    LAYOUT = (Field("channel", 20, "h"), Field("selection", 22, "h"), Field("aux_options", 24, "I"))
    channel: int  # from 0
    selection: int = 1  # 1: the one channel named
    aux_options: int = 0


@dataclass(frozen=True)
class ChannelStatus(Message):
    """One channel's status (a channel-info feedback without auxiliary readings)."""

    COMMAND = 0xEEBA0003
    LENGTH, BODY = 1779, 1777
    LAYOUT = (
        Field("channels", 20, "I"),
        Field("channel", 24, "I"),
        Field("status", 28, "h"),
        Field("comm_failure", 30, "B"),
        _text("schedule", 31, 400, "utf-16-le"),
        _text("test_name", 431, 144, "utf-16-le"),
        _text("exit_condition", 575, 100),
        _text("step_and_cycle", 675, 64),
        Field("test_time_s", 1685, "d"),
        Field("step_time_s", 1693, "d"),
        Field("voltage_V", 1701, "f"),
        Field("current_A", 1705, "f"),
        Field("power_W", 1709, "f"),
        Field("charge_Ah", 1713, "f"),
        Field("discharge_Ah", 1717, "f"),
        Field("charge_Wh", 1721, "f"),
        Field("discharge_Wh", 1725, "f"),
    )
    channels: int  # channels in this reply: 1, or 0 when the cycler has no such channel
    channel: int  # from 0
    status: int
    comm_failure: int = 0
    schedule: str = ""
    test_name: str = ""
    exit_condition: str = ""
    step_and_cycle: str = ""
    test_time_s: float = 0.0
    step_time_s: float = 0.0
    voltage_V: float = 0.0
    current_A: float = 0.0
    power_W: float = 0.0
    charge_Ah: float = 0.0
    discharge_Ah: float = 0.0
    charge_Wh: float = 0.0
    discharge_Wh: float = 0.0

    @property
    def words(self) -> str:
        return STATUS_WORDS.get(self.status, f"status {self.status}")

    @property
    def running(self) -> bool:
        return self.status not in STOPPED


@dataclass(frozen=True)
class AssignSchedule(Message):
    COMMAND = 0xBB210001
    LENGTH, BODY = 659, 669
    LAYOUT = (
        Field("channel", 20, "i"),
        Field("all_channels", 24, "B"),
        _text("schedule", 25, 400, "utf-16-le"),
        Field("test_capacity_Ah", 425, "f"),
        _text("barcode", 429, 144, "utf-16-le"),
    )
    channel: int
    schedule: str
    all_channels: int = 0
    test_capacity_Ah: float = 0.0
    barcode: str = ""


@dataclass(frozen=True)
class StartSchedule(Message):
    COMMAND = 0xBB320004
    LENGTH, BODY = 160, 170
    LAYOUT = (_text("test_name", 20, 144, "utf-16-le"), Field("count", 164, "I"), Field("channel", 168, "H"))
    channel: int
    test_name: str
    count: int = 1  # channels to start: this one


@dataclass(frozen=True)
class StopSchedule(Message):
    COMMAND = 0xBB310001
    LENGTH, BODY = 116, 126
    LAYOUT = (Field("channel", 20, "I"), Field("all_channels", 24, "B"))
    channel: int
    all_channels: int = 0


@dataclass(frozen=True)
class SetMetaVariable(Message):
    COMMAND = 0xBB150001
    LENGTH, BODY = 62, 72
    LAYOUT = (
        Field("channel", 20, "I"),
        Field("mv_type", 24, "i"),
        Field("meta_code", 28, "i"),
        Field("value_type", 48, "i"),
        Field("value", 52, "f"),
    )
    channel: int
    meta_code: int
    value: float
    mv_type: int = 1  # CTI sets user meta variables only
    value_type: int = 1  # float


@dataclass(frozen=True)
class Feedback(Message):
    """What the cycler answers a schedule or meta-variable request: a code, 0 for success."""

    LENGTH, BODY = 128, 126
    LAYOUT = (Field("channel", 20, "I"), Field("code", 24, "B"))
    WORDS: ClassVar[Mapping[int, str]]
    channel: int
    code: int = SUCCESS

    @property
    def words(self) -> str:
        return self.WORDS.get(self.code, f"feedback code {self.code}")


@dataclass(frozen=True)
class AssignScheduleFeedback(Feedback):
    COMMAND = 0xBB120001
    WORDS = ASSIGN_WORDS


@dataclass(frozen=True)
class StartScheduleFeedback(Feedback):
    COMMAND = 0xBB230004
    WORDS = START_WORDS


@dataclass(frozen=True)
class StopScheduleFeedback(Feedback):
    COMMAND = 0xBB130001
    WORDS = STOP_WORDS


@dataclass(frozen=True)
class SetMetaVariableFeedback(Feedback):
    COMMAND = 0xBB510001
    WORDS = SET_MV_WORDS


REQUESTS: tuple[type[Message], ...] = (
    Login,
    ChannelInfoRequest,
    AssignSchedule,
    StartSchedule,
    StopSchedule,
    SetMetaVariable,
)
FEEDBACKS: tuple[type[Message], ...] = (
    LoginFeedback,
    ChannelStatus,
    AssignScheduleFeedback,
    StartScheduleFeedback,
    StopScheduleFeedback,
    SetMetaVariableFeedback,
)
MESSAGES = MappingProxyType({kind.COMMAND: kind for kind in (*REQUESTS, *FEEDBACKS)})
