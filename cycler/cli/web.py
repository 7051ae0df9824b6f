"""`cyclerd web`: the dashboard of a store no daemon serves, and the dashboard's users."""

from __future__ import annotations

import asyncio
import getpass
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from cyclerd.cli.exit_codes import ExitCode
from cyclerd.cli.lab import ConfigOption, ReadDbOption, fail, find, open_store
from cyclerd.cli.options import console, errors
from cyclerd.daemon.config import Web
from cyclerd.web.roster import Roster
from cyclerd.web.users import NAME_PATTERN, Role, Users, UsersFileError, add_user, remove_user

web_app = typer.Typer(
    help="The dashboard: `cyclerd web --db lab.db` serves a store read-only; `cyclerd web user` sets logins.",
    invoke_without_command=True,
    no_args_is_help=False,
)
user_app = typer.Typer(help="Who may log in to the dashboard, and as what (viewer or operator).")
web_app.add_typer(user_app, name="user")

PASSWORD_ENV = "CYCLERD_WEB_PASSWORD"  # for scripts; otherwise the password is asked for, twice

UsersOption = Annotated[
    Path,
    typer.Option("--users", help="The users file (lab.toml's [web] users).", show_default=True),
]


@web_app.callback()
def web(
    context: typer.Context,
    db: ReadDbOption = None,
    config: ConfigOption = None,
    bind: Annotated[str, typer.Option("--bind", help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0: any free port.")] = 8080,
    users: Annotated[
        Path | None,
        typer.Option("--users", help="Who may log in to look; without it, anyone who reaches the port may."),
    ] = None,
) -> None:
    """Serve the dashboard of a store, read-only: a copy of a lab's store, or a lab with no daemon."""
    if context.invoked_subcommand is not None:
        return
    where = find(db, config, fallback=True)
    open_store(where).close()  # a wrong --db is said now, in one line
    try:
        known = Roster.load(users) if users is not None else Roster(Users())
    except UsersFileError as exc:
        raise fail(str(exc)) from None
    settings = Web(bind=bind, port=port, anonymous=users is None)
    asyncio.run(_serve(where.path, settings, known))


async def _serve(database: Path, settings: Web, roster: Roster) -> None:
    from cyclerd.web import app
    from cyclerd.web.serve import serve_store

    try:
        runner, dashboard = await serve_store(database, settings, roster)
    except OSError as exc:
        raise fail(f"cannot listen on {settings.bind} port {settings.port}: {exc.strerror or exc}") from None
    port = app.bound_port(runner)
    host = settings.bind if ":" not in settings.bind else f"[{settings.bind}]"
    who = (
        "anyone who reaches it"
        if settings.anonymous
        else f"the {len(roster.current())} user(s) of the users file"
    )
    console.print(f"dashboard of {database} (read-only) at http://{host}:{port}/ for {who}", markup=False)
    sys.stdout.flush()  # said now, not when the server stops: a log or a script reads the address
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    try:
        await stopped.wait()
    finally:
        await app.stop(runner, dashboard)


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="The login name (letters, digits, . _ -).")],
    role: Annotated[
        Role, typer.Option("--role", help="viewer: looks; operator: also pauses, stops, submits.")
    ],
    users: UsersOption = Path("users.toml"),
) -> None:
    """Add a user, or set a user's role and password; the password is asked for (or read from
    $CYCLERD_WEB_PASSWORD) and stored as a scrypt hash. A running daemon reads the file as it starts."""
    if not NAME_PATTERN.fullmatch(name):
        raise fail(f"{name!r} cannot be a login name: use letters, digits, '.', '_' and '-'")
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise fail("the two passwords differ; nothing was changed")
    if len(password) < 8:
        raise fail("a password needs at least 8 characters; nothing was changed")
    try:
        add_user(users, name, role, password)
    except (UsersFileError, ValueError) as exc:
        raise fail(str(exc)) from None
    console.print(f"{name} may log in to the dashboard as {role.value} ({users})", markup=False)


@user_app.command("remove")
def user_remove(
    name: Annotated[str, typer.Argument(help="The login name.")],
    users: UsersOption = Path("users.toml"),
) -> None:
    """Remove a user (their open sessions end when the daemon restarts)."""
    try:
        remove_user(users, name)
    except (UsersFileError, ValueError) as exc:
        raise fail(str(exc), ExitCode.PROBLEMS) from None
    console.print(f"{name} removed from {users}", markup=False)


@user_app.command("list")
def user_list(users: UsersOption = Path("users.toml")) -> None:
    """The users and their roles (never their passwords)."""
    try:
        known = Users.load(users)
    except UsersFileError as exc:
        raise fail(str(exc)) from None
    if not known:
        errors.print(
            f"no users in {users}; add one with `cyclerd web user add NAME --role operator`", markup=False
        )
    for name, user in known.items():
        console.print(f"{name}\t{user.role.value}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(web_app, name="web")
