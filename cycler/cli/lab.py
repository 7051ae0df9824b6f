"""Which store a command works on, and opening it with a message instead of a traceback.

A command finds the lab's store from --db, else from the lab's lab.toml (--config, else the file
$CYCLERD_CONFIG names). The commands that act on the lab (submit, queue, status, pause, resume,
stop) go no further and never create a store: a job queued in a file no daemon reads would wait
forever. The commands that only read runs (runs, show, plot, report, export) then try
./cyclerd.db, where `cyclerd run` stores by default; `run` and `import` create their store.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from cyclerd.cli.exit_codes import ExitCode
from cyclerd.cli.options import errors
from cyclerd.daemon.config import Lab, load_config
from cyclerd.doctor.verdict import current_user
from cyclerd.engine.record import StoreUnwritable, as_unwritable
from cyclerd.protocols import ProtocolError
from cyclerd.store.database import Store

CONFIG_ENV = "CYCLERD_CONFIG"
DEFAULT_DB = Path("cyclerd.db")
HOW_TO_POINT = (
    f"point at the lab with --config lab.toml (or set {CONFIG_ENV}=/etc/cyclerd/lab.toml once),"
    " or at its store with --db FILE"
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help=f"The lab's lab.toml: work on the store it names (default: the file ${CONFIG_ENV} names).",
        show_default=False,
    ),
]
LabDbOption = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="The lab's store (default: the database of --config's lab); it must exist: serve creates it.",
        show_default=False,
    ),
]
ReadDbOption = Annotated[
    Path | None,
    typer.Option(
        "--db",
        help="The store holding the runs (default: the lab's, from --config; else ./cyclerd.db).",
        show_default=False,
    ),
]
NewDbOption = Annotated[Path, typer.Option("--db", help="The store to write to (created if missing).")]


def fail(message: str, code: ExitCode = ExitCode.BAD_INPUT) -> typer.Exit:
    """Print one problem (no markup is read in it: paths hold brackets) and the exit to raise."""
    errors.print("[red]error:[/red] ", end="")
    errors.print(message, markup=False)
    return typer.Exit(code)


@dataclass(frozen=True)
class LabStore:
    """A store, the lab it belongs to when that is known, and how it was found (for messages)."""

    path: Path
    lab: Lab | None
    via: str
    config: Path | None = None


def find(db: Path | None, config: Path | None, fallback: bool = False) -> LabStore:
    """The store a command should open; exits with a message when none is given."""
    if db is not None:
        return LabStore(db, None, "--db")
    via = "--config"
    if config is None and (named := os.environ.get(CONFIG_ENV)):
        config, via = Path(named), f"${CONFIG_ENV}"
    if config is not None:
        lab = load_lab(config, via)
        return LabStore(lab.database, lab, via, config)
    if fallback:
        return LabStore(DEFAULT_DB, None, "default")
    raise fail(f"which lab? {HOW_TO_POINT}")


def load_lab(config: Path, via: str = "--config") -> Lab:
    """The lab configured in `config`, or its problems and exit 1 (2 when there is no such file)."""
    named = f"{config} (from {via})" if via != "--config" else str(config)
    try:
        return load_config(config)
    except ProtocolError as exc:
        errors.print(str(exc), markup=False)
        raise typer.Exit(ExitCode.PROBLEMS) from None
    except FileNotFoundError:
        raise fail(f"no lab configuration at {named}; docs/lab.toml is an example to copy") from None
    except IsADirectoryError:
        raise fail(f"{named} is a folder; give the lab.toml file in it") from None
    except PermissionError:
        raise fail(f"user {current_user()} may not read {named}") from None
    except OSError as exc:
        raise fail(f"cannot read {named}: {exc.strerror or exc}") from None


def open_store(where: LabStore) -> Store:
    """The existing store `where` points at; a missing file or one that is not a store is an error."""
    path = where.path
    if _stat(path) is None:
        if where.via == "--db":
            hint = f"give the lab's store (`database` in its lab.toml), or {HOW_TO_POINT}"
        elif where.lab is not None:
            hint = (
                f"lab {where.lab.lab} has no store yet: `cyclerd serve --config {where.config}`"
                " creates it when it starts"
            )
        else:
            hint = f"no `cyclerd run` stored here; {HOW_TO_POINT}"
        raise fail(f"no store at {path}: {hint}")
    try:
        return _open(path)
    except StoreUnwritable as exc:
        raise fail(exc.why) from None


def open_or_create_store(path: Path) -> Store:
    """The store at `path`, created (with its folder) if missing: `run`, `import`; a file that
    is not a store, or one that cannot be written now, is an error."""
    try:
        return _open_or_create(path)
    except StoreUnwritable as exc:
        raise fail(exc.why) from None


def store_to_serve(path: Path) -> str | None:
    """serve's look at its store before any channel starts. A file that is not a store is an
    error now; a store that cannot be written now (a full disk, a read-only file) is something
    the daemon waits out with every cell safe, so why is returned, for serve to say and go on."""
    try:
        _open_or_create(path).close()
    except StoreUnwritable as exc:
        return exc.why
    return None


def _open_or_create(path: Path) -> Store:
    found = _stat(path)
    if found is None or (stat.S_ISREG(found.st_mode) and found.st_size == 0):
        return _create(path)  # an empty file is an empty SQLite database
    return _open(path)


def _stat(path: Path) -> os.stat_result | None:
    """The file's status, None if there is none; a name the system refuses is an error."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise fail(f"cannot use {path}: {exc.strerror or exc}") from None


def _create(path: Path) -> Store:
    try:
        return Store(path)
    except (sqlite3.Error, OSError) as exc:
        _raise_if_unwritable(exc, path)
        raise fail(f"cannot create a store at {path}: {exc}") from None


def _open(path: Path) -> Store:
    found = _stat(path)
    if found is not None and stat.S_ISDIR(found.st_mode):
        raise fail(f"{path} is a folder, not a store; give the database file in it")
    if (problem := _not_a_store(path)) is not None:
        raise fail(f"{path} is not a cyclerd store ({problem}); give the lab's database file")
    try:
        return Store(path)
    except (sqlite3.Error, OSError) as exc:
        _raise_if_unwritable(exc, path)
        raise fail(f"cannot open the store {path}: {exc}") from None


def _not_a_store(path: Path) -> str | None:
    """Why the file at `path` is not a cyclerd store, read without writing to it; None if it is one.

    Raises StoreUnwritable when the disk is full: SQLite then cannot create the files a closed
    store is read through, which says nothing about the file itself.
    """
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except PermissionError:
        return f"user {current_user()} may not read it"
    except sqlite3.Error as exc:
        if (unwritable := as_unwritable(exc, path)) is not None and unwritable.full:
            raise unwritable from None
        return str(exc)
    except (OSError, ValueError) as exc:
        return str(exc)
    return None if "runs" in tables else "an SQLite file without cyclerd's tables"


def _raise_if_unwritable(exc: BaseException, path: Path) -> None:
    if (unwritable := as_unwritable(exc, path)) is not None:
        raise unwritable from None


def open_lab(db: Path | None, config: Path | None, fallback: bool = False) -> tuple[Store, LabStore]:
    """find, then open_store: the store a command works on and how it was found."""
    where = find(db, config, fallback)
    return open_store(where), where
