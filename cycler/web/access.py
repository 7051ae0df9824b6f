"""Who is asking, and what they may do: looking takes a session (or anonymous viewing); acting
takes an operator's session, its CSRF token and a request from one of the dashboard's own pages
(its Origin), so that another site open in the same browser cannot act for the user. Logging in
and out are here too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from cyclerd.web.dashboard import of
from cyclerd.web.jsontext import dumps
from cyclerd.web.sessions import Session, csrf_ok, same_origin

log = logging.getLogger(__name__)

COOKIE = "cyclerd_session"


def session_of(request: web.Request) -> Session | None:
    """The request's session while its user's entry in the users file is as it was at login:
    a user removed, or given another role or password, is logged out at their next request."""
    dashboard = of(request)
    session = dashboard.sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return None
    user = dashboard.users.get(session.user)
    if user is None or user.stamp != session.stamp:
        dashboard.sessions.close(session.token)
        why = "is no longer in the users file" if user is None else "has a new role or password"
        log.warning("dashboard: %s %s: their session has ended", session.user, why)
        return None
    return session


def may_look(request: web.Request) -> bool:
    return of(request).anonymous or session_of(request) is not None


def must_look(request: web.Request) -> None:
    if not may_look(request):
        raise json_error(401, "log in to see this lab (or ask for anonymous viewing in lab.toml's [web])")


def can_control(request: web.Request) -> bool:
    """Whether this request's user may pause, resume, stop and submit here."""
    session = session_of(request)
    return session is not None and session.may_control and of(request).control is not None


def from_own_page(request: web.Request) -> bool:
    """Whether a state-changing request comes from one of this dashboard's pages: its Origin (or
    Referer) is this server's scheme, host and port. (Behind a reverse proxy that rewrites Host,
    the proxy must pass the original one on.)"""
    headers = request.headers
    return same_origin(headers.get("Origin"), headers.get("Referer"), request.scheme, request.host)


def operator(request: web.Request) -> Session:
    """The session of a state-changing request, which must come from one of the dashboard's own
    pages (Origin), carry the session's CSRF token, and be an operator's; else 403."""
    dashboard = of(request)
    if not from_own_page(request):
        raise json_error(403, "refused: the request does not come from this dashboard's own page")
    if dashboard.control is None:
        raise json_error(403, "this dashboard only reads its store (cyclerd web --db): no control here")
    session = session_of(request)
    if session is None:
        raise json_error(403, "log in first: only a logged-in operator may control runs")
    if not csrf_ok(session, request.headers.get("X-CSRF-Token")):
        raise json_error(403, "refused: the request lacks this session's CSRF token; reload the page")
    if not session.may_control:
        raise json_error(403, f"{session.user} is a {session.role}: only an operator may control runs")
    return session


def json_error(status: int, message: str) -> web.HTTPException:
    error = web.HTTPException(text=dumps({"ok": False, "error": message}), content_type="application/json")
    error.set_status(status)
    return error


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json")


async def log_in(request: web.Request) -> web.StreamResponse:
    dashboard = of(request)
    if not from_own_page(request):
        raise json_error(403, "refused: log in from this dashboard's own login page")
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, Mapping) or not isinstance(body.get("user"), str):
        raise json_error(400, "send {user, password} as JSON")
    name, password = body["user"], str(body.get("password") or "")
    users = dashboard.users
    if dashboard.roster.broken:
        raise json_error(
            401, "nobody can log in: the dashboard's users file does not read (the daemon's log says why)"
        )
    if not users:
        raise json_error(
            401, "nobody can log in yet: add a user with `cyclerd web user add NAME --role operator`"
        )
    user = await asyncio.to_thread(users.authenticate, name, password)  # one scrypt
    if user is None:
        why = users.locked_out(name) or "wrong user name or password"
        log.warning("dashboard: a login as %r failed (%s)", name, why)
        raise json_error(401, why)
    session = dashboard.sessions.open(user)
    log.info("dashboard: %s logged in as %s", user.name, user.role)
    response = json_response({"ok": True, "user": user.name, "role": user.role.value})
    response.set_cookie(COOKIE, session.token, **dashboard.sessions.cookie_attributes(dashboard.secure))
    return response


async def log_out(request: web.Request) -> web.StreamResponse:
    dashboard = of(request)
    if not from_own_page(request):
        raise json_error(403, "refused: log out from this dashboard's own page")
    dashboard.sessions.close(request.cookies.get(COOKIE))
    response = json_response({"ok": True})
    response.del_cookie(COOKIE, path="/")
    return response
