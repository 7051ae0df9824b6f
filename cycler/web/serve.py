"""The dashboard as the daemon serves it (lab.toml's [web]) and as `cyclerd web --db` serves a store.

The dashboard is a view: when it cannot start (its port is taken, its users file is wrong, its
certificate cannot be read) the daemon says so in its log and runs the lab's channels without
it, rather than leaving cells idle for want of a web page.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Protocol

from aiohttp import web

from cyclerd.daemon.config import Lab, Web
from cyclerd.web import app
from cyclerd.web.dashboard import Control, Dashboard
from cyclerd.web.live import LiveHub
from cyclerd.web.reads import ChannelInfo, Reader, channels_of_store
from cyclerd.web.roster import Roster
from cyclerd.web.sessions import Sessions
from cyclerd.web.users import Users, UsersFileError

log = logging.getLogger(__name__)


class Daemonic(Control, Protocol):
    """The daemon as the dashboard needs it: its commands and its live feed."""

    live: LiveHub | None


def lab_channels(lab: Lab) -> list[ChannelInfo]:
    infos = []
    for channel in lab.channels:
        if channel.sim is not None:
            source = f"simulated {channel.sim}"
        else:
            number = "" if channel.cycler_channel is None else f" channel {channel.cycler_channel}"
            source = f"{channel.instrument}{number}"
        cell = channel.cell.get("cell")
        infos.append(ChannelInfo(channel.name, source, None if cell is None else str(cell)))
    return infos


def url(web_config: Web, port: int) -> str:
    scheme = "https" if web_config.tls_cert is not None else "http"
    host = web_config.bind if ":" not in web_config.bind else f"[{web_config.bind}]"
    return f"{scheme}://{host}:{port}/"


@contextlib.asynccontextmanager
async def serve_dashboard(lab: Lab, daemon: Daemonic) -> AsyncIterator[web.AppRunner | None]:
    """The daemon's dashboard while the block runs (None: not configured, or it could not start)."""
    config = lab.web
    if config is None:
        yield None
        return
    try:
        roster = Roster.load(config.users)
        tls = (
            None
            if config.tls_cert is None or config.tls_key is None
            else app.tls_context(config.tls_cert, config.tls_key)
        )
    except (UsersFileError, OSError) as exc:
        log.error("the dashboard is not served: %s; the channels run without it", exc)
        yield None
        return
    infos = lab_channels(lab)
    dashboard = Dashboard(
        lab=lab.lab,
        channels=lambda _: infos,
        reader=Reader(lab.database),
        roster=roster,
        sessions=Sessions(config.session_hours * 3600),
        anonymous=config.anonymous,
        secure=tls is not None,
        max_upload_bytes=config.max_upload_kb * 1024,
        hub=daemon.live,
        control=daemon,
    )
    try:
        runner = await app.start(dashboard, config.bind, config.port, tls)
    except OSError as exc:
        log.error(
            "the dashboard cannot listen on %s port %d (%s); the channels run without it",
            config.bind,
            config.port,
            exc.strerror or exc,
        )
        dashboard.reader.close()
        yield None
        return
    _say_where(lab.lab, config, app.bound_port(runner), roster.current())
    try:
        yield runner
    finally:
        await app.stop(runner, dashboard)


def _say_where(lab: str, config: Web, port: int, users: Users) -> None:
    log.info("dashboard of lab %s at %s", lab, url(config, port))
    if not users:
        log.warning(
            "the dashboard has no users in %s: nobody can log in to control runs; add one with"
            " `cyclerd web user add NAME --role operator --users %s`",
            config.users,
            config.users,
        )


async def serve_store(database: Path, config: Web, roster: Roster) -> tuple[web.AppRunner, Dashboard]:
    """A read-only dashboard of a store no daemon serves (a copy, or a lab at rest)."""
    reader = Reader(database)
    tls = None
    if config.tls_cert is not None and config.tls_key is not None:
        tls = app.tls_context(config.tls_cert, config.tls_key)

    def channels(reader: Reader) -> Sequence[ChannelInfo]:
        return channels_of_store(reader.store())

    dashboard = Dashboard(
        lab=database.stem,
        channels=channels,
        reader=reader,
        roster=roster,
        sessions=Sessions(config.session_hours * 3600),
        anonymous=config.anonymous,
        secure=tls is not None,
        max_upload_bytes=config.max_upload_kb * 1024,
    )
    runner = await app.start(dashboard, config.bind, config.port, tls)
    return runner, dashboard
