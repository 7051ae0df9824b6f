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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class Instrument(_Strict):
    name: str
    driver: Literal["keithley2450", "methodscript"]
    resource: str = Field(examples=["TCPIP::192.168.1.20::5025::SOCKET", "/dev/ttyUSB0"])
    poll_s: float = Field(1.0, gt=0)
    reconnect_s: float = Field(1.0, gt=0, description="First wait before reconnecting; doubles each try.")
    reconnect_max_s: float = Field(60.0, gt=0, description="The longest wait between reconnection tries.")
    give_up_s: float | None = Field(
        None, gt=0, description="Fail the job after trying this long; unset: wait for the instrument."
    )


class Channel(_Strict):
    """One cell position: on an instrument, or a simulated cell (`sim` names a preset)."""

    name: str
    instrument: str | None = None
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

    @model_validator(mode="after")
    def _known_instruments(self) -> Lab:
        names = {i.name for i in self.instruments}
        for channel in self.channels:
            if channel.instrument is not None and channel.instrument not in names:
                close = difflib.get_close_matches(channel.instrument, names, n=1)
                hint = (
                    f"; did you mean {close[0]!r}?" if close else f"; instruments: {', '.join(sorted(names))}"
                )
                raise ValueError(
                    f"channel {channel.name!r} names an unknown instrument {channel.instrument!r}{hint}"
                )
        return self


def load_config(path: str | Path) -> Lab:
    """The lab configuration in `path`; raises ProtocolError (file:line: message) on any problem."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = int(m[1]) if (m := re.search(r"line (\d+)", str(exc))) else 1
        raise ProtocolError([Problem(str(path), line, 1, f"TOML: {exc}")]) from None
    try:
        lab = Lab.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(
            [_problem(path, text, tuple(e["loc"]), e["msg"], e["type"]) for e in exc.errors()]
        ) from None
    # Paths in the file are relative to the file, wherever the daemon was started from.
    update: dict[str, Any] = {"database": _beside(path, lab.database)}
    if lab.mqtt is not None:
        files = {
            key: _beside(path, value)
            for key in ("password_file", "ca_file")
            if (value := getattr(lab.mqtt, key)) is not None
        }
        update["mqtt"] = lab.mqtt.model_copy(update=files)
    return lab.model_copy(update=update)


def _beside(config: Path, path: Path) -> Path:
    return path if path.is_absolute() else config.parent / path


def _problem(path: Path, text: str, loc: tuple[Any, ...], message: str, kind: str) -> Problem:
    """Find the line a pydantic location points at in TOML text (tables, arrays of tables, keys)."""
    lines = text.splitlines()
    row = 0
    parts = [p for p in loc if isinstance(p, str | int)]
    if parts and isinstance(parts[0], str) and len(parts) > 1 and isinstance(parts[1], int):
        headers = [i for i, line in enumerate(lines) if line.strip() == f"[[{parts[0]}]]"]
        if parts[1] < len(headers):
            row = headers[parts[1]]
        parts = parts[2:]
    elif parts and isinstance(parts[0], str) and any(line.strip() == f"[{parts[0]}]" for line in lines):
        row = next(i for i, line in enumerate(lines) if line.strip() == f"[{parts[0]}]")
        parts = parts[1:]
    key = next((p for p in parts if isinstance(p, str)), None)
    if key is not None:
        for i in range(row, len(lines)):
            if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
                row = i
                break
            if i > row and lines[i].lstrip().startswith("["):
                break
    what = f"unknown key '{key}'" if kind == "extra_forbidden" else message.removeprefix("Value error, ")
    where = ".".join(str(p) for p in loc)
    return Problem(str(path), row + 1, 1, f"{where}: {what}")
