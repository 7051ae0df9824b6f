"""MethodSCRIPT as text: scripts in (SI literals, the parser over methodscript_commands' table),
packages out.

Pure and byte-exact to instrument-protocols.md §3.3–3.5 and §3.10: the parser refuses what the
device refuses at load time (`!4001` unknown command, `!4004` bad literal, `!4007` undeclared
variable, ...) and the encoder writes packages and error lines. The interpreter and the
emulator share it; the tests check it against the notes' examples.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cyclerd.simulators.methodscript_commands import COMMANDS, NEW, OP, REF, TEXT, VT, Spec

# SI prefixes of literals and packages (§3.3, §3.5); ' ' (x1) appears in packages only.
PREFIXES: dict[str, float] = {
    "a": 1e-18, "f": 1e-15, "p": 1e-12, "n": 1e-9, "u": 1e-6, "m": 1e-3, " ": 1.0,
    "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}  # fmt: skip
OFFSET = 0x8000000  # 2^27, added to the signed integer before it is written as 7 hex digits
LIMIT = 0x7FFFFFF  # the largest magnitude that fits around the offset
NAN_FIELD = "     nan"  # replaces the hex digits and prefix of a value that is not a number

# Variable types (§3.6): code -> (quantity, unit).
VARTYPES: dict[str, tuple[str, str]] = {
    "aa": ("unknown", ""), "ac": ("CE potential", "V"), "ad": ("SE potential", "V"),  # [U] ac..ag
    "ae": ("RE potential", "V"), "af": ("WE vs GND potential", "V"), "ag": ("WE vs CE potential", "V"),
    "ec": ("GPIO pin mask", ""),
    "ab": ("WE potential", "V"), "ba": ("WE current", "A"), "da": ("applied potential", "V"),
    "db": ("applied current", "A"), "dc": ("applied frequency", "Hz"), "dd": ("AC amplitude", "Vrms"),
    "ca": ("phase", "deg"), "cb": ("|Z|", "ohm"), "cc": ("Z real", "ohm"), "cd": ("Z imaginary", "ohm"),
    "eb": ("time", "s"), "ea": ("channel", ""), "ee": ("count", ""), "ed": ("temperature", "degC"),
    "ef": ("temperature", "degC"),
    **{f"j{c}": ("generic", "") for c in "abcd"},
    **{f"a{c}": (f"AIN{i}", "V") for i, c in enumerate("stuvwxyz")},
    **{f"h{c}": ("generic current", "A") for c in "abcd"},
    **{f"i{c}": ("generic potential", "V") for c in "abcd"},
}  # fmt: skip

# Error codes of §3.10 that the emulator raises.
ERR_BAD_VARTYPE, ERR_UNKNOWN_ONLINE, ERR_NOT_NOW, ERR_BAD_ARGUMENT = 0x0002, 0x0003, 0x0006, 0x0007
ERR_WRONG_IDENTIFIER, ERR_NO_SCRIPT, ERR_INVALID_TIME = 0x000A, 0x000C, 0x000D
ERR_INVALID_POTENTIAL, ERR_NOT_FINITE, ERR_INVALID_FREQUENCY = 0x000F, 0x0010, 0x0011
ERR_INVALID_AMPLITUDE, ERR_OCP_CELL_ON, ERR_NEGATIVE_STEP = 0x0012, 0x0014, 0x001C
ERR_NOT_SUPPORTED, ERR_UNKNOWN_MODE, ERR_WRONG_MODE, ERR_SEVERE_OVERLOAD = 0x001B, 0x0021, 0x0023, 0x0032
ERR_SYNTAX, ERR_UNKNOWN_COMMAND, ERR_INVALID_ARGUMENT = 0x4000, 0x4001, 0x4002
ERR_UNEXPECTED_CHARACTER, ERR_UNKNOWN_VARTYPE, ERR_UNDECLARED = 0x4004, 0x4006, 0x4007
ERR_INVALID_OPTION, ERR_NESTED_MEASUREMENT, ERR_CELL_MUST_BE_ON = 0x4008, 0x400B, 0x4027

# Metadata (§3.5): status bits, and the EmStat4 ranges (index -> full scale).
STATUS_OK, STATUS_TIMING, STATUS_OVERLOAD, STATUS_UNDERLOAD = 0, 1, 2, 4
CURRENT_RANGES_ES4_HR = {9: 100e-9, 12: 1e-6, 15: 10e-6, 18: 100e-6, 21: 1e-3, 24: 10e-3, 27: 100e-3}
CURRENT_RANGES_ES4_LR = {3: 1e-9, 6: 10e-9, 9: 100e-9, 12: 1e-6, 15: 10e-6, 18: 100e-6, 21: 1e-3, 24: 10e-3}
POTENTIAL_RANGES_ES4 = {2: 50e-3, 3: 100e-3, 4: 200e-3, 5: 500e-3, 6: 1.0}
UNDERLOAD_FRACTION = 1e-3  # [U] a reading below this share of its full scale is an underload


class LiteralError(ValueError):
    """A numeric literal the device refuses; `offset` is the 0-based bad character."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"unexpected character at offset {offset}")
        self.offset = offset


_LITERAL = re.compile(r"-?(0x[0-9a-fA-F]+|0b[01]+|[0-9]+)([afpnumkMGTPE]|i)?")
_BASES = {"0x": 16, "0b": 2}


def parse_literal(text: str) -> tuple[float, bool]:
    """`100m` -> (0.1, False); `11i`, `0x0f` and `0b101` are integers (True). Decimals are refused."""
    match = _LITERAL.match(text)
    if match is None or match.end() != len(text):
        raise LiteralError(match.end() if match else 0)
    digits, suffix = match.groups()
    base = _BASES.get(digits[:2], 10)
    value = (-1 if text[0] == "-" else 1) * int(digits[2:] if base != 10 else digits, base)
    if suffix == "i" or base != 10:
        return float(value), True
    # Correctly rounded, as the literal is written: 100u is the double nearest 1e-4, where
    # 100 * 1e-6 is one ulp off, and a script dividing 20m by 100u must get 200 sample slots.
    decade = round(math.log10(PREFIXES[suffix or " "]))
    return float(value * 10**decade if decade >= 0 else value / 10**-decade), False


def encode_value(value: float, is_int: bool = False) -> str:
    """7 hex digits of value + 2^27, then the finest SI prefix that fits (§3.5); `i` for integers."""
    if not math.isfinite(value):
        return NAN_FIELD
    if is_int:
        return f"{max(-LIMIT, min(LIMIT, int(value))) + OFFSET:07X}i"
    for prefix, factor in PREFIXES.items():  # finest first
        n = round(value / factor)
        if abs(n) <= LIMIT:
            return f"{n + OFFSET:07X}{prefix}"
    return f"{(LIMIT if value > 0 else -LIMIT) + OFFSET:07X}E"  # beyond 1.3e26: saturate


@dataclass(frozen=True)
class Meta:
    """Status nibble and range index of a measured value: `,1X,2XX` (§3.5)."""

    status: int
    range_index: int

    def encode(self) -> str:
        return f",1{self.status:X},2{self.range_index:02X}"


def encode_variable(vartype: str, value: float, is_int: bool = False, meta: Meta | None = None) -> str:
    """One package field, e.g. `ba48D503Dp,10,288`."""
    return vartype + encode_value(value, is_int) + (meta.encode() if meta else "")


def package_line(fields: Sequence[str]) -> str:
    return "P" + ";".join(fields)


def error_line(code: int, line: int | None = None, col: int | None = None, letter: str = "") -> str:
    """`!4001: Line 3, Col 1` (load time), `!0014: Line 7` (run time), `Z!0006` (online)."""
    where = "" if line is None else f": Line {line}" + ("" if col is None else f", Col {col}")
    return f"{letter}!{code:04X}{where}"


def full_scale(table: dict[int, float], value: float) -> float:
    """The smallest full scale of `table` that holds |value| (the largest if none does)."""
    return min((fs for fs in table.values() if abs(value) <= fs), default=max(table.values()))


def choose_range(table: dict[int, float], value: float, window: tuple[float, float] | None) -> Meta:
    """Range index and status of a reading, autoranging within `window` (full scales; None: all)."""
    lo, hi = window or (min(table.values()), max(table.values()))
    allowed = sorted((fs, i) for i, fs in table.items() if lo <= fs <= hi) or [(hi, max(table))]
    fs, index = next(((fs, i) for fs, i in allowed if abs(value) <= fs), allowed[-1])
    if not abs(value) <= fs:
        return Meta(STATUS_OVERLOAD, index)
    return Meta(STATUS_UNDERLOAD if abs(value) < UNDERLOAD_FRACTION * fs else STATUS_OK, index)


# -- scripts in ------------------------------------------------------------------------------

_OPENERS = {"if", "loop"} | {name for name, spec in COMMANDS.items() if spec.technique is not None}
_OPS = {"==", "!=", "<", "<=", ">", ">=", "&", "|"}  # & |: the bitwise result is not 0 [U |]
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_REF = re.compile(r"([a-z][a-z0-9_]*)(?:\[([^\]]*)\])?")
_TOKEN = re.compile(r'f?"[^"]*"|[a-z_]+\([^)]*\)|\S+')
_PLACEHOLDER = re.compile(r"\{([^}]*)\}")


class ScriptError(Exception):
    """Refused at load time: `!code: Line L, Col C`."""

    def __init__(self, code: int, line: int, col: int) -> None:
        super().__init__(error_line(code, line, col))
        self.code, self.line, self.col = code, line, col


class DeviceError(Exception):
    """Refused while running (interpreter or front end): `!code: Line L`."""

    def __init__(self, code: int) -> None:
        super().__init__(error_line(code))
        self.code = code


@dataclass(frozen=True)
class Lit:
    value: float
    is_int: bool


@dataclass(frozen=True)
class Ref:
    name: str
    index: Lit | Ref | None = None  # array element


@dataclass(frozen=True)
class Text:
    text: str
    refs: dict[str, Ref] = field(default_factory=dict)  # f-string placeholders


@dataclass(frozen=True)
class Opt:
    name: str
    values: tuple[Lit | Ref, ...]  # `eis_tdd(u c n s 0)`: arrays and variables the loop fills


Arg = Lit | Ref | Text | Opt | str  # str: a variable type, an operator or a new name


@dataclass
class Stmt:
    line: int
    name: str
    args: list[Arg]


@dataclass
class Loop:
    head: Stmt
    body: list[Node] = field(default_factory=list)


@dataclass
class If:
    branches: list[tuple[Stmt | None, list[Node]]]  # (condition, body); None for else


Node = Stmt | Loop | If


@dataclass
class Script:
    main: list[Node]
    on_finished: list[Node]
    variables: dict[str, int]  # name -> array length (0 for a plain variable)


def parse(lines: Sequence[str]) -> Script:
    """Script lines (after `e`, without the final empty line) -> tree; raises ScriptError.

    Lines count from 1 at the first line after `e` [U]; columns from 1.
    """
    declared: dict[str, int] = {}
    main: list[Node] = []
    finished: list[Node] | None = None
    stack: list[tuple[Loop | If, list[Node]]] = []  # open blocks, with the list they sit in
    body = main
    for number, raw in enumerate(lines, start=1):
        tokens = [(m.group(), m.start() + 1) for m in _TOKEN.finditer(_strip_comment(raw))]
        if not tokens:
            continue
        word, col = tokens[0]
        if word == "on_finished:":
            if stack or finished is not None or len(tokens) > 1:
                raise ScriptError(ERR_SYNTAX, number, col)
            finished = body = []
            continue
        spec = COMMANDS.get(word)
        if spec is None:
            raise ScriptError(ERR_UNKNOWN_COMMAND, number, col)
        stmt = Stmt(number, word, _arguments(spec, tokens, number, declared))
        if word == "array":  # a size from a variable is known when the line runs
            if isinstance(size := stmt.args[1], Lit) and size.value < 1:
                raise ScriptError(ERR_INVALID_ARGUMENT, number, tokens[2][1])
            declared[str(stmt.args[0])] = int(size.value) if isinstance(size, Lit) else 1
        if word in _OPENERS:
            if spec.technique is not None and any(
                isinstance(b, Loop) and COMMANDS[b.head.name].technique is not None for b, _ in stack
            ):
                raise ScriptError(ERR_NESTED_MEASUREMENT, number, col)
            block: Loop | If = If([(stmt, [])]) if word == "if" else Loop(stmt)
            body.append(block)
            stack.append((block, body))
            body = block.branches[0][1] if isinstance(block, If) else block.body
        elif word in ("elseif", "else", "endif"):
            top = stack[-1][0] if stack else None
            if not isinstance(top, If) or (top.branches[-1][0] is None and word != "endif"):
                raise ScriptError(ERR_SYNTAX, number, col)
            if word == "endif":
                body = stack.pop()[1]
            else:
                top.branches.append((stmt if word == "elseif" else None, []))
                body = top.branches[-1][1]
        elif word == "endloop":
            if not stack or not isinstance(stack[-1][0], Loop):
                raise ScriptError(ERR_SYNTAX, number, col)
            body = stack.pop()[1]
        elif word == "breakloop" and not any(isinstance(b, Loop) for b, _ in stack):
            raise ScriptError(ERR_SYNTAX, number, col)
        else:
            body.append(stmt)
    if stack:  # a block left open: reported at its first line [U]
        opened = stack[-1][0]
        raise ScriptError(ERR_SYNTAX, opened.head.line if isinstance(opened, Loop) else _if_line(opened), 1)
    return Script(main, finished or [], declared)


def _if_line(block: If) -> int:
    head = block.branches[0][0]
    return head.line if head else 0


def _strip_comment(text: str) -> str:
    quoted = False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return text[:i]
    return text


def _arguments(spec: Spec, tokens: list[tuple[str, int]], line: int, declared: dict[str, int]) -> list[Arg]:
    args: list[Arg] = []
    for i, (text, col) in enumerate(tokens[1:]):
        kind = spec.args[i] if i < len(spec.args) else None
        if kind is None:  # past the fixed arguments: only `name(value)` options
            name, paren, inner = text.partition("(")
            if name not in spec.options or not text.endswith(")"):
                raise ScriptError(ERR_INVALID_OPTION if paren else ERR_INVALID_ARGUMENT, line, col)
            words = [(m.group(), col + len(name) + 1 + m.start()) for m in re.finditer(r"\S+", inner[:-1])]
            if not words:
                raise ScriptError(ERR_INVALID_OPTION, line, col)
            args.append(Opt(name, tuple(_operand(w, c, line, declared) for w, c in words)))
        elif kind == NEW:
            if not _NAME.fullmatch(text):
                raise ScriptError(ERR_WRONG_IDENTIFIER, line, col)
            declared[text] = 0
            args.append(text)
        elif kind in (VT, OP):
            if text not in (VARTYPES if kind == VT else _OPS):
                raise ScriptError(ERR_UNKNOWN_VARTYPE if kind == VT else ERR_INVALID_ARGUMENT, line, col)
            args.append(text)
        elif kind == TEXT:
            fstring = text.startswith("f")
            if len(text) < 2 + fstring or not text.endswith('"'):
                raise ScriptError(ERR_INVALID_ARGUMENT, line, col)
            places = _PLACEHOLDER.finditer(text) if fstring else ()
            refs = {m.group(1): reference(m.group(1), col + m.start(1), line, declared) for m in places}
            args.append(Text(text[1 + fstring : -1], refs))
        else:
            args.append(
                reference(text, col, line, declared) if kind == REF else _operand(text, col, line, declared)
            )
    if len(tokens) - 1 < len(spec.args) - spec.optional:  # missing: the column after the line [U]
        last, col = tokens[-1]
        raise ScriptError(ERR_INVALID_ARGUMENT, line, col + len(last))
    return args


def _operand(text: str, col: int, line: int, declared: dict[str, int]) -> Lit | Ref:
    if text[:1].isalpha():
        return reference(text, col, line, declared)
    try:
        return Lit(*parse_literal(text))
    except LiteralError as exc:
        raise ScriptError(ERR_UNEXPECTED_CHARACTER, line, col + exc.offset) from None


def reference(text: str, col: int, line: int, declared: dict[str, int]) -> Ref:
    """A declared variable `name` or array element `name[i]`."""
    m = _REF.fullmatch(text)
    if m is None:
        raise ScriptError(ERR_WRONG_IDENTIFIER, line, col)
    if m.group(1) not in declared:
        raise ScriptError(ERR_UNDECLARED, line, col)
    index = None if m.group(2) is None else _operand(m.group(2), col + m.start(2), line, declared)
    return Ref(m.group(1), index)
