"""The lab's configuration (lab.toml): database, instruments, channels, broker, resume policy.

Validated by pydantic like protocols are, and reported the same way: file:line: what is wrong.
Credentials never come from the command line: a password is read from a file or from an
environment variable named in the config.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from cyclerd.alerts.config import AlertsConfig
from cyclerd.drivers.cycler import CYCLERS
from cyclerd.protocols.errors import Problem, ProtocolError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Mqtt(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(1883, gt=0, lt=65536)
    username: str | None = None
    password_file: Path | None = Field(None, description="A file holding only the password.")
    password_env: str | None = Field(None, description="An environment variable holding the password.")
    tls: bool = False
    ca_file: Path | None = None

    def password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        if self.password_env is not None:
            return os.environ.get(self.password_env)
        return None


class Web(_Strict):
    """The dashboard (cyclerd.web): where it listens, who may log in, and its certificate."""

    bind: str = Field("127.0.0.1", description="The address to listen on; 0.0.0.0 opens it to the network.")
    port: int = Field(8080, ge=0, lt=65536, description="0: any free port (the log says which).")
    users: Path = Field(Path("users.toml"), description="Who may log in (`cyclerd web user add`).")
    anonymous: bool = Field(False, description="Anyone who can reach the port may look, never control.")
    tls_cert: Path | None = Field(None, description="A PEM certificate (chain): serve https.")
    tls_key: Path | None = Field(None, description="The certificate's PEM private key.")
    session_hours: float = Field(12.0, gt=0, description="A login lasts this long.")
    max_upload_kb: int = Field(1024, gt=0, description="The largest protocol file the page takes.")

    @model_validator(mode="after")
    def _both_or_neither(self) -> Web:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both for https, or neither")
        return self


class Instrument(_Strict):
    name: str
    driver: Literal["keithley2450", "methodscript", "maccor", "neware", "arbin"]
    resource: str = Field(
        examples=["TCPIP::192.168.1.20::5025::SOCKET", "/dev/ttyUSB0", "tcp://192.168.1.30:57570"]
    )
    poll_s: float = Field(1.0, gt=0)
    reconnect_s: float = Field(1.0, gt=0, description="First wait before reconnecting; doubles each try.")
    reconnect_max_s: float = Field(60.0, gt=0, description="The longest wait between reconnection tries.")
    give_up_s: float | None = Field(
        None, gt=0, description="Fail the job after trying this long; unset: wait for the instrument."
    )
    speed: float | None = Field(
        None,
        gt=0,
        description="An emulated instrument's time acceleration (its own --speed); unset: the lab's speed.",
    )


class Channel(_Strict):
    """One cell position: on an instrument, or a simulated cell (`sim` names a preset)."""

    name: str
    instrument: str | None = None
    cycler_channel: int | None = Field(
        None,
        ge=1,
        description="On a cycler: its channel (from 1, in the order the vendor's software lists them).",
    )
    sim: str | None = None
    seed: int = 0
    cell: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> Channel:
        if (self.instrument is None) == (self.sim is None):
            raise ValueError(f"channel {self.name!r} needs exactly one of 'instrument' or 'sim'")
        return self


class Lab(_Strict):
    lab: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Used in MQTT topics.")
    database: Path = Path("cyclerd.db")
    mqtt: Mqtt | None = None
    web: Web | None = Field(None, description="The dashboard the daemon serves; unset: none.")
    instruments: list[Instrument] = Field(default_factory=list)
    channels: list[Channel] = Field(min_length=1)
    resume: Literal["resume", "stop"] = Field(
        "resume", description="After a crash: resume running runs from their checkpoint, or stop them safely."
    )
    resume_max_gap_s: float | None = Field(
        None, gt=0, description="Stop instead of resuming when the daemon was away longer than this."
    )
    speed: float = Field(
        1.0, gt=0, description="Time acceleration for instrument channels: >1 only against emulators."
    )
    sim_speed: float | None = Field(
        None,
        gt=0,
        description="Simulated channels' pace in simulated seconds per second, to watch them live;"
        " unset: as fast as the CPU allows.",
    )
    alerts: AlertsConfig | None = Field(
        None, description="Who is told when a run ends other than completed, or the daemon goes away."
    )

    def speed_of(self, instrument: Instrument) -> float:
        """The time acceleration the daemon runs `instrument` at: its own, else the lab's."""
        return self.speed if instrument.speed is None else instrument.speed

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Lab:
        # load_config reports these itself, each at its line; a Lab built in code gets them here.
        if not (info.context or {}).get(_LOCATED_LATER):
            problems = [message for _, message in _inconsistencies(self)]
            if problems:
                raise ValueError("; ".join(problems))
        return self


_LOCATED_LATER = "located later"
Loc = tuple[str | int, ...]


def emulated(resource: str) -> bool:
    """Whether `resource` is an instrument emulator on this PC (`cyclerd emulate` listens on the
    loopback interface or a pty): only those may run on accelerated time. On a real instrument
    an accelerated clock would end a one-hour step after seconds."""
    return EMULATOR_RESOURCE.match(resource) is not None


EMULATOR_RESOURCE = re.compile(
    r"^(?:TCPIP\d*::(?:127(?:\.\d{1,3}){3}|localhost|::1)::|(?:socket|tcp)://(?:127(?:\.\d{1,3}){3}|localhost):"
    r"|/dev/pts/)",
    re.IGNORECASE,
)
EMULATOR_EXAMPLES = (
    "TCPIP::127.0.0.1::5025::SOCKET, socket://127.0.0.1:7000, tcp://127.0.0.1:57570 or /dev/pts/N"
)


def _inconsistencies(lab: Lab) -> list[tuple[Loc, str]]:
    """What the sections of a valid-looking lab.toml get wrong together, with where to look."""
    found: list[tuple[Loc, str]] = []
    for section, named in (
        ("instruments", [i.name for i in lab.instruments]),
        ("channels", [c.name for c in lab.channels]),
    ):
        for i, name in enumerate(named):
            if name in named[:i]:
                found.append(((section, i, "name"), f"a second {section[:-1]} named {name!r}: rename one"))
    names = [i.name for i in lab.instruments]
    for i, channel in enumerate(lab.channels):
        if channel.instrument is not None and channel.instrument not in names:
            close = difflib.get_close_matches(channel.instrument, names, n=1)
            hint = (
                f"; did you mean {close[0]!r}?"
                if close
                else f"; instruments: {', '.join(sorted(names)) or 'none (add an [[instruments]] table)'}"
            )
            found.append(
                (
                    ("channels", i, "instrument"),
                    f"channel {channel.name!r} names an unknown instrument {channel.instrument!r}{hint}",
                )
            )
    by_name = {i.name: i for i in lab.instruments}
    taken: dict[tuple[str, int], str] = {}
    for i, channel in enumerate(lab.channels):
        if (instrument := by_name.get(channel.instrument or "")) is None:
            continue
        cycler = instrument.driver in CYCLERS
        if cycler and channel.cycler_channel is None:
            found.append(
                (
                    ("channels", i, "instrument"),
                    f"channel {channel.name!r} is on {instrument.driver} cycler {instrument.name!r}: add"
                    " cycler_channel = N (from 1) to say which of its channels",
                )
            )
        elif not cycler and channel.cycler_channel is not None:
            found.append(
                (
                    ("channels", i, "cycler_channel"),
                    f"channel {channel.name!r} is on {instrument.driver} {instrument.name!r}, which has one"
                    " channel: remove cycler_channel",
                )
            )
        elif cycler and channel.cycler_channel is not None:
            key = (instrument.name, channel.cycler_channel)
            if key in taken:
                found.append(
                    (
                        ("channels", i, "cycler_channel"),
                        f"channel {channel.name!r} and channel {taken[key]!r} both drive channel"
                        f" {channel.cycler_channel} of {instrument.name!r}: give each its own",
                    )
                )
            taken.setdefault(key, channel.name)
    for i, instrument in enumerate(lab.instruments):
        speed = lab.speed_of(instrument)
        if speed != 1.0 and not emulated(instrument.resource):
            where: Loc = ("speed",) if instrument.speed is None else ("instruments", i, "speed")
            found.append(
                (
                    where,
                    f"speed {speed:g} for instrument {instrument.name!r} at {instrument.resource}: only an"
                    f" emulator on this PC ({EMULATOR_EXAMPLES}) may run accelerated; a real"
                    " instrument keeps real time, so remove speed (or set it to 1)",
                )
            )
    return found


def load_config(path: str | Path) -> Lab:
    """The lab configuration in `path`; raises ProtocolError (file:line:column: message) for what
    is wrong in it, and OSError (FileNotFoundError, IsADirectoryError, ...) when it cannot be read."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        message = f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        raise ProtocolError([Problem(str(path), line, column, message)]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError([_toml_problem(path, exc)]) from None
    except RecursionError:
        message = "TOML: nested too deeply to be a lab configuration; flatten it"
        raise ProtocolError([Problem(str(path), 1, 1, message)]) from None
    try:
        lab = Lab.model_validate(data, context={_LOCATED_LATER: True})
    except ValidationError as exc:
        raise ProtocolError([_problem(path, text, tuple(e["loc"]), e) for e in exc.errors()]) from None
    except RecursionError:  # pydantic's own nesting limit: a table of tables of tables ...
        message = "nested too deeply to be a lab configuration; flatten it"
        raise ProtocolError([Problem(str(path), 1, 1, message)]) from None
    if found := _inconsistencies(lab):
        raise ProtocolError([_at(path, text, loc, f"{_dotted(loc)}: {message}") for loc, message in found])
    # Paths in the file are relative to the file, wherever the daemon was started from.
    update: dict[str, Any] = {"database": _beside(path, lab.database)}
    if lab.mqtt is not None:
        files = {
            key: _beside(path, value)
            for key in ("password_file", "ca_file")
            if (value := getattr(lab.mqtt, key)) is not None
        }
        update["mqtt"] = lab.mqtt.model_copy(update=files)
    if lab.web is not None:
        files = {
            key: _beside(path, value)
            for key in ("users", "tls_cert", "tls_key")
            if (value := getattr(lab.web, key)) is not None
        }
        update["web"] = lab.web.model_copy(update=files)
    if lab.alerts is not None:
        update["alerts"] = lab.alerts.beside(path.parent)
    return lab.model_copy(update=update)


def _beside(config: Path, path: Path) -> Path:
    """`path` as lab.toml means it: relative to the file's folder, made absolute, since messages
    and alerts that name it are read from other folders (and a daemon may change its own)."""
    return path if path.is_absolute() else (config.parent / path).absolute()


def _toml_problem(path: Path, exc: tomllib.TOMLDecodeError) -> Problem:
    """tomllib's message, placed at the line and column it names."""
    text = str(exc)
    found = re.search(r"\s*\(at line (\d+), column (\d+)\)$", text)
    if found is None:
        return Problem(str(path), 1, 1, f"TOML: {text}")
    what = text[: found.start()]
    return Problem(str(path), int(found[1]), int(found[2]), f"TOML: {what}")


# -- where a problem is, and what to write instead ------------------------------------------------


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc) or "lab.toml"


def _problem(path: Path, text: str, loc: Loc, error: Any) -> Problem:
    kind, message = error["type"], error["msg"]
    if len(loc) >= 4 and loc[0] == "channels" and loc[2] == "cell":  # one value, tried as each type
        loc = loc[:4]
        return _at(path, text, loc, f"{_dotted(loc)}: a cell value is text, a number or true/false")
    return _at(path, text, loc, f"{_dotted(loc)}: {_message(loc, kind, message, error)}")


def _message(loc: Loc, kind: str, message: str, error: Any) -> str:
    name = str(loc[-1]) if loc else "lab.toml"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown key '{name}'; {hint}allowed {_section(loc[:-1])}: {', '.join(allowed)}"
    if kind == "missing":
        example = _example(loc)
        return f"missing '{name}' {_section(loc[:-1])}; add {example}"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
        given = error.get("input")
        close = difflib.get_close_matches(str(given), expected, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"'{name}' is {given!r}; write one of {', '.join(expected)}{hint}"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"'{name}' must be a table ([{name}] or {name} = {{ ... }})"
    if kind == "list_type":
        return f"'{name}' must be an array of tables ([[{name}]])"
    if kind.startswith("int"):
        return f"'{name}' must be a whole number, e.g. {name} = {_sample(loc)}"
    if kind.startswith("float") or kind == "finite_number":
        return f"'{name}' must be a number, e.g. {name} = {_sample(loc)}"
    if kind in ("string_type",):
        return f"'{name}' must be text in quotes, e.g. {name} = \"...\""
    if kind in ("bool_type", "bool_parsing"):
        return f"'{name}' must be true or false"
    if kind == "string_pattern_mismatch":
        return f"'{name}' may hold only letters, digits, '_', '.' and '-' (it is part of MQTT topics)"
    if kind.startswith(("greater_than", "less_than")):
        limit = next(iter((error.get("ctx") or {}).values()), "")
        words = kind.replace("_", " ").replace("equal", "or equal to")
        return f"'{name}' must be {words} {limit}"
    if kind == "too_short":
        return f"'{name}' must not be empty; add at least one [[{name}]] table"
    return message.removeprefix("Value error, ")


def _model_at(loc: Loc) -> type[BaseModel]:
    """The table a location lies in, followed through the models' fields (`[alerts.email]`
    is the alerts' Email model), so that its allowed keys can be listed."""
    model: type[BaseModel] = Lab
    for part in (p for p in loc if isinstance(p, str)):
        field = model.model_fields.get(part)
        table = _table_of(field.annotation) if field is not None else None
        if table is None:
            break
        model = table
    return model


def _table_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (itself, a list of it, or optionally), if it holds one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _table_of(arg)) is not None:
            return found
    return None


def _allowed_keys(loc: Loc) -> list[str]:
    return list(_model_at(loc).model_fields)


def _section(loc: Loc) -> str:
    parts = [p for p in loc if isinstance(p, str)]
    if not parts:
        return "at the top level"
    return f"in [[{'.'.join(parts)}]]" if isinstance(loc[-1], int) else f"in [{'.'.join(parts)}]"


def _example(loc: Loc) -> str:
    name = str(loc[-1])
    field = _model_at(loc[:-1]).model_fields.get(name)
    if field is not None and field.examples:
        return f'{name} = "{field.examples[0]}"'
    if name == "channels":
        return '[[channels]] with name = "ch1" and sim = "mgagsn" (or instrument = "...")'
    return f'{name} = "..."'


def _sample(loc: Loc) -> str:
    field = _model_at(loc[:-1]).model_fields.get(str(loc[-1]))
    default = None if field is None else field.default
    return str(default) if isinstance(default, int | float) and not isinstance(default, bool) else "1"


def _at(path: Path, text: str, loc: Loc, message: str) -> Problem:
    """Find the line a pydantic location points at in TOML text (tables, arrays of tables, keys)."""
    lines = [line.strip() for line in text.splitlines()]
    row = 0
    names: list[str] = []
    parts = [p for p in loc if isinstance(p, str | int)]
    while parts and isinstance(name := parts[0], str):  # down the headers: [a], [a.b], [[a.c]] ...
        dotted = ".".join([*names, name])
        if len(parts) > 1 and isinstance(nth := parts[1], int):
            headers = [i for i, line in enumerate(lines) if i >= row and line == f"[[{dotted}]]"]
            if nth >= len(headers):
                break
            row, names, parts = headers[nth], [*names, name], parts[2:]
            continue
        header = next((i for i, line in enumerate(lines) if i >= row and line == f"[{dotted}]"), None)
        if header is None:
            break
        row, names, parts = header, [*names, name], parts[1:]
    lines = text.splitlines()
    key = next((p for p in parts if isinstance(p, str)), None)
    column = 1
    if key is not None:
        for i in range(row, len(lines)):
            if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
                row, column = i, len(lines[i]) - len(lines[i].lstrip()) + 1
                break
            if i > row and lines[i].lstrip().startswith("["):
                break
    return Problem(str(path), row + 1, column, message)
