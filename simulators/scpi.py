"""SCPI for wire-level emulators: header grammar, typed parameters, the error queue.

An emulated instrument declares its vocabulary as a table of `Command`s in manual notation
(`[:SOURce[1]]:CURRent:VLIMit[:LEVel]`); this module turns a received line into calls on it
with the SCPI rules of instrument-protocols.md §1.2 and §1.7 (scpi_server serves it over raw TCP).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

ERRORS: Mapping[int, str] = MappingProxyType(
    {
        -100: "Command error",
        -102: "Syntax error",
        -104: "Data type error",
        -108: "Parameter not allowed",
        -109: "Missing parameter",
        -113: "Undefined header",
        -114: "Header suffix out of range",
        -221: "Settings conflict",
        -222: "Data out of range",
        -224: "Illegal parameter value",
        -230: "Data corrupt or stale",
        -350: "Queue overflow",
        -410: "Query INTERRUPTED",
        -420: "Query UNTERMINATED",
    }
)
EMPTY_QUEUE = '0,"No error;0;0 0"'  # the 2450-family reply, §1.3


class ScpiError(Exception):
    """A failed command: no reply is sent, `code` goes on the error queue."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(f"{code} {ERRORS.get(code, 'Error')}{': ' + detail if detail else ''}")
        self.code = code
        self.detail = detail


class ErrorQueue:
    """FIFO of formatted `:SYST:ERR?` replies; when full, the newest entry becomes -350."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: deque[tuple[int, str]] = deque()

    def push(self, code: int, text: str | None = None, severity: int = 1) -> None:
        stamp = dt.datetime.now().strftime("%Y/%m/%d %H:%M:%S.%f")[:-3]  # K2: ms resolution
        entry = (code, f'{code},"{text or ERRORS.get(code, "Error")};{severity};{stamp}"')
        if len(self._items) >= self.capacity:
            if self._items[-1][0] != -350:
                self._items[-1] = (-350, f'-350,"{ERRORS[-350]};1;{stamp}"')
            return
        self._items.append(entry)

    def pop(self) -> str:
        return self._items.popleft()[1] if self._items else EMPTY_QUEUE

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


def nr3(value: float, precision: int = 0) -> str:
    """A Keithley ASCII number: 7 significant digits unless `:FORM:ASC:PREC` asks otherwise."""
    digits = 6 if precision <= 0 else precision - 1
    return f"{value:.{digits}E}"


# -- headers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    short: str
    long: str
    optional: bool
    suffix: bool  # takes a numeric suffix ([1] in the manual): only 1 exists on a one-channel SMU
    number: str = ""  # a suffix the node requires (`USER3`: one table entry per <n> of `USER<n>`)


_NODE = re.compile(r"(\[:|:|^)(\*?[A-Za-z][A-Za-z0-9]*?)(\[1\])?(\]?)(?=[\[:]|$)")
_WORD = re.compile(r"(\*?[A-Za-z]+)(\d*)")
_UNIT = re.compile(
    r":?(\*[A-Za-z]+|[A-Za-z][A-Za-z0-9]*(?::[A-Za-z][A-Za-z0-9]*)*)(\?)?(?:\s+(.*)|\s*)", re.S
)


def compile_header(pattern: str) -> tuple[Node, ...]:
    """Manual notation (`[:SENSe[1]]:VOLTage[:DC]:NPLCycles`) -> nodes; short form = capitals."""
    nodes, end = [], 0
    for m in _NODE.finditer(pattern):
        if m.start() != end or not m.group(2):
            break
        name, end = m.group(2), m.end()
        number = name[len(name.rstrip("0123456789")) :]
        name = name[: len(name) - len(number)]
        short = "".join(c for c in name if not c.islower())
        nodes.append(Node(short, name.upper(), m.group(1) == "[:", m.group(3) is not None, number))
    if end != len(pattern) or not nodes:
        raise ValueError(f"cannot read the header pattern {pattern!r}")
    return tuple(nodes)


def match_header(nodes: Sequence[Node], words: Sequence[tuple[str, str]]) -> bool | None:
    """Does the received header (upper-case words with their suffix digits) fit `nodes`?

    None if not; True if it does with valid suffixes; False if it does but a suffix is wrong.
    """

    def walk(i: int, j: int) -> list[int] | None:
        if j == len(words):
            return [] if all(n.optional for n in nodes[i:]) else None
        if i == len(nodes):
            return None
        if words[j][0] in (nodes[i].short, nodes[i].long):
            rest = walk(i + 1, j + 1)
            if rest is not None:
                return [i, *rest]
        return walk(i + 1, j) if nodes[i].optional else None

    path = walk(0, 0)
    if path is None:
        return None
    return all(suffix_fits(nodes[i], s) for i, (_, s) in zip(path, words, strict=True))


def suffix_fits(node: Node, suffix: str) -> bool:
    if node.number:
        return suffix.lstrip("0") == node.number
    return not suffix or (node.suffix and int(suffix) == 1)


@dataclass(frozen=True)
class Token:
    """One parameter as received: text without its quotes, and whether it was quoted."""

    text: str
    quoted: bool = False

    @property
    def word(self) -> str:
        return self.text.upper() if not self.quoted else ""


def split_outside_quotes(text: str, sep: str) -> list[str]:
    """`text` cut at each `sep` that is not inside '...' or "..." (-102 if a quote is left open)."""
    parts: list[str] = []
    current: list[str] = []
    quote = ""
    for c in text:
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == sep:
            parts.append("".join(current))
            current = []
            continue
        current.append(c)
    if quote:
        raise ScpiError(-102, "unterminated string")
    parts.append("".join(current))
    return parts


def parse_args(text: str | None) -> list[Token]:
    """The comma-separated parameters after a header."""
    if text is None or not text.strip():
        return []
    tokens = []
    for part in split_outside_quotes(text, ","):
        part = part.strip()
        if not part:
            raise ScpiError(-109, "empty parameter")
        if part[0] in "'\"":
            if len(part) < 2 or part[-1] != part[0] or part[0] in part[1:-1].replace(part[0] * 2, ""):
                raise ScpiError(-102, f"bad string {part}")
            tokens.append(Token(part[1:-1].replace(part[0] * 2, part[0]), quoted=True))
        elif re.fullmatch(r"[A-Za-z0-9_.+\-]+", part):
            tokens.append(Token(part))
        else:
            raise ScpiError(-102, f"cannot read parameter {part!r}")
    return tokens


# -- parameter kinds: each parses a Token and renders a value for a query --------------------

_NRF = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_BOUNDS = {"MIN": "MIN", "MINIMUM": "MIN", "MAX": "MAX", "MAXIMUM": "MAX", "DEF": "DEF", "DEFAULT": "DEF"}


def number(token: Token) -> float:
    """An NRf number (`1e-3`, `0.001`, `+5`); anything else is -104."""
    if token.quoted or not _NRF.fullmatch(token.text):
        raise ScpiError(-104, f"expected a number, got {token.text!r}")
    return float(token.text)


@dataclass(frozen=True)
class Number:
    """NRf in [low, high] with MIN/MAX/DEF; `magnitude` stores |value| (limits are symmetric)."""

    low: float
    high: float
    default: float
    magnitude: bool = False
    integer: bool = False

    def bound(self, token: Token) -> float | None:
        key = _BOUNDS.get(token.word)
        return None if key is None else {"MIN": self.low, "MAX": self.high, "DEF": self.default}[key]

    def parse(self, token: Token) -> Any:
        value = self.bound(token)
        if value is None:
            value = abs(number(token)) if self.magnitude else number(token)
        if not self.low <= value <= self.high:
            raise ScpiError(-222, f"{value:g} outside {self.low:g}..{self.high:g}")
        return round(value) if self.integer else value

    def render(self, value: Any, precision: int) -> str:
        return str(int(value)) if self.integer else nr3(float(value), precision)


@dataclass(frozen=True)
class Ranges:
    """A range setting: a value picks the lowest range that holds it (§1.4)."""

    values: tuple[float, ...]
    default: float

    def parse(self, token: Token) -> Any:
        key = _BOUNDS.get(token.word)
        if key is not None:
            return {"MIN": self.values[0], "MAX": self.values[-1], "DEF": self.default}[key]
        wanted = abs(number(token))
        for value in self.values:
            if value >= wanted * (1 - 1e-9):
                return value
        raise ScpiError(-222, f"no range holds {wanted:g}")

    def render(self, value: Any, precision: int) -> str:
        return nr3(float(value), precision)


class Boolean:
    """ON/OFF, or a number (non-zero is ON); replies 1/0."""

    def parse(self, token: Token) -> Any:
        if token.word in ("ON", "OFF"):
            return token.word == "ON"
        return round(number(token)) != 0

    def render(self, value: Any, precision: int) -> str:
        return "1" if value else "0"


class Choice:
    """Character data in manual spelling (`HIMPedance`, `PROT2`), short or long form in any case;
    the stored value is the short form."""

    def __init__(self, *spellings: str) -> None:
        nodes = [compile_header(s)[0] for s in spellings]
        self.shorts = [n.short + n.number for n in nodes]
        self.words = {form + n.number: n.short + n.number for n in nodes for form in (n.short, n.long)}

    def parse(self, token: Token) -> Any:
        if token.quoted or _NRF.fullmatch(token.text):
            raise ScpiError(-104, f"expected one of {self.shorts}")
        if token.word in self.words:
            return self.words[token.word]
        raise ScpiError(-224, f"{token.text!r} is not one of {self.shorts}")

    def render(self, value: Any, precision: int) -> str:
        return str(value)


class QuotedChoice:
    """A string parameter naming a function (`"VOLT"`, `'CURRent:DC'`); replies quoted."""

    def __init__(self, choices: Mapping[str, str]) -> None:
        self.choices = [(compile_header(pattern), reply) for pattern, reply in choices.items()]

    def parse(self, token: Token) -> Any:
        if not token.quoted:
            raise ScpiError(-104, "expected a quoted string")
        words = [(w.upper(), "") for w in token.text.split(":")]
        for nodes, reply in self.choices:
            if match_header(nodes, words):
                return reply
        raise ScpiError(-224, f"unknown function {token.text!r}")

    def render(self, value: Any, precision: int) -> str:
        return f'"{value}"'


class Kind(Protocol):
    def parse(self, token: Token) -> Any: ...
    def render(self, value: Any, precision: int) -> str: ...


# -- the command table -------------------------------------------------------------------

InstT = TypeVar("InstT")
Setter = Callable[[InstT, list[Token]], None]
Query = Callable[[InstT, list[Token]], str]


@dataclass(frozen=True)
class Command(Generic[InstT]):
    """One header of an instrument: what a set does, what a query answers (None: not allowed)."""

    pattern: str
    set: Setter[InstT] | None = None
    query: Query[InstT] | None = None
    nodes: tuple[Node, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", compile_header(self.pattern))


class Dispatcher(Generic[InstT]):
    """Runs a line of `;`-separated message units against a command table, SCPI path rules included.

    Earlier entries win when a header with optional nodes left out fits several commands.
    """

    def __init__(self, commands: Sequence[Command[InstT]]) -> None:
        self.commands = tuple(commands)

    def run(self, instrument: InstT, line: str, on_error: Callable[[ScpiError], None]) -> list[str]:
        replies: list[str] = []
        path: list[str] = []
        try:
            units = split_outside_quotes(line, ";")
        except ScpiError as exc:
            on_error(exc)
            return replies
        for unit in units:
            unit = unit.strip()
            if not unit:
                continue  # a trailing `;` (pymeasure) is fine
            try:
                header, query, args, path = self._resolve(unit, path)
                reply = self._call(instrument, header, query, parse_args(args))
            except ScpiError as exc:
                on_error(exc)
                continue
            if reply is not None:
                replies.append(reply)
        return replies

    @staticmethod
    def _resolve(unit: str, path: list[str]) -> tuple[list[str], bool, str | None, list[str]]:
        """Header words (with the compound path applied), query flag, argument text, next path."""
        m = _UNIT.fullmatch(unit)
        if m is None:
            raise ScpiError(-102, f"cannot read {unit!r}")
        words = m.group(1).upper().split(":")
        if words[0].startswith("*"):
            return words, m.group(2) is not None, m.group(3), path  # common commands keep the path
        if not unit.startswith(":"):
            words = path + words
        return words, m.group(2) is not None, m.group(3), words[:-1]

    def command_for(self, unit: str) -> Command[InstT]:
        """The command one message unit (`:sour:curr:vlim?`) names, without running it."""
        header, query, _, _ = self._resolve(unit.strip(), [])
        return self.find(header, query)

    def find(self, header: Sequence[str], query: bool) -> Command[InstT]:
        """The command a header (upper-case words, compound path applied) names; -113/-114 if none."""
        words = [(m.group(1), m.group(2)) if (m := _WORD.fullmatch(w)) else (w, "x") for w in header]
        bad_suffix = False
        for command in self.commands:
            fits = match_header(command.nodes, words)
            if fits is None:
                continue
            if not fits:
                bad_suffix = True
                continue
            if (command.query if query else command.set) is not None:
                return command
        raise ScpiError(-114 if bad_suffix else -113, ":".join(header) + ("?" if query else ""))

    def _call(self, instrument: InstT, header: list[str], query: bool, args: list[Token]) -> str | None:
        command = self.find(header, query)
        if query:
            assert command.query is not None
            return command.query(instrument, args)
        assert command.set is not None
        command.set(instrument, args)
        return None


def one(args: list[Token]) -> Token:
    """The single parameter of a command (-109 if missing, -108 if more were sent)."""
    if not args:
        raise ScpiError(-109)
    return optional(args) or args[0]


def optional(args: list[Token]) -> Token | None:
    """The parameter of a command that may have one."""
    if len(args) > 1:
        raise ScpiError(-108, f"{len(args)} parameters, expected at most one")
    return args[0] if args else None
