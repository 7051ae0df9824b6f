"""The dashboard's web server: pages, JSON reads, the live feed and control, on aiohttp.

It runs on the daemon's own event loop (cyclerd.daemon.service) or alone on a store
(`cyclerd web --db`), where it only reads. Who may do what:

- looking (pages, reads, the live feed): a logged-in user, or anyone when `anonymous` is on;
- pause, resume, stop and submit: a logged-in operator, in a request that carries the session's
  CSRF token and comes from one of the dashboard's own pages (its Origin), so that another site
  open in the same browser cannot act for the user. Each action is an event naming the user.

The page itself is static files (cycler/web/static) filled with a little boot data; everything
else it fetches from /api. Reads go to the dashboard's own thread and connection (reads.Reader).
"""

from __future__ import annotations

import asyncio
import html
import io
import logging
import math
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import WSMsgType, web
from rich.console import Console

from cyclerd.bus.commands import Command, CommandError, Refusals
from cyclerd.cli.plan_view import render_plan
from cyclerd.engine.session import CellSpec, off_the_loop, prepare
from cyclerd.protocols import ProtocolError
from cyclerd.protocols.compiler import CellDataMissing
from cyclerd.web import reads
from cyclerd.web.jsontext import dumps
from cyclerd.web.live import LiveHub
from cyclerd.web.reads import ChannelInfo, Reader
from cyclerd.web.sessions import Session, Sessions, csrf_ok, same_origin
from cyclerd.web.users import Users

log = logging.getLogger(__name__)

# The real folder: aiohttp serves no symbolic links, and an editable install is made of them.
STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "cyclerd_session"
PAGES = ("lab", "run", "history", "submit", "login", "notfound")
ACTIONS = ("pause", "resume", "stop")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class Control(Protocol):
    """What the daemon lets the dashboard do: its channels' commands, as MQTT's are done."""

    async def execute(self, channel: str, command: Command, by: str | None = None) -> dict[str, Any]:
        """The reply's fields; raises CommandError for a command that cannot be carried out."""
        ...

    def refusals(self, channel: str) -> Refusals: ...


@dataclass
class Dashboard:
    """Everything the server needs: the lab, its store, who may log in, and (in the daemon) the
    live feed and the controls; without them it is read-only."""

    lab: str
    channels: Callable[[reads.Reader], Sequence[ChannelInfo]]
    reader: Reader
    users: Users
    sessions: Sessions = field(default_factory=Sessions)
    anonymous: bool = False
    secure: bool = False
    max_upload_bytes: int = 1024 * 1024
    hub: LiveHub | None = None
    control: Control | None = None

    @property
    def live(self) -> bool:
        return self.hub is not None


DASHBOARD = web.AppKey("dashboard", Dashboard)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(dashboard: Dashboard) -> web.Application:
    app = web.Application(
        middlewares=[_errors, _headers], client_max_size=dashboard.max_upload_bytes + 64 * 1024
    )
    app[DASHBOARD] = dashboard
    routes = [
        web.get("/", _page("lab", "Lab")),
        web.get("/history", _page("history", "History")),
        web.get("/submit", _page("submit", "Submit a protocol")),
        web.get("/login", _login_page),
        web.get("/runs/{run:[0-9]+}", _run_page),
        web.get("/runs/{run:[0-9]+}/report", _report),
        web.get("/runs/{run:[0-9]+}/export/{what}", _export),
        web.get("/api/lab", _lab),
        web.get("/api/runs", _runs),
        web.get("/api/queue", _queue),
        web.get("/api/runs/{run:[0-9]+}", _run),
        web.get("/api/runs/{run:[0-9]+}/series", _series),
        web.get("/api/runs/{run:[0-9]+}/cycles", _read_of(reads.cycles_view)),
        web.get("/api/runs/{run:[0-9]+}/spectrum", _read_of(reads.spectrum_view)),
        web.get("/api/runs/{run:[0-9]+}/events", _read_of(reads.events_view)),
        web.get("/api/live", _live),
        web.post("/api/runs/{run:[0-9]+}/{action}", _act),
        web.post("/api/protocols/check", _check),
        web.post("/api/protocols/submit", _submit),
        web.post("/login", _login),
        web.post("/logout", _logout),
    ]
    app.add_routes(routes)
    app.router.add_static("/static/", STATIC, append_version=False)
    return app


# -- who is asking ----------------------------------------------------------------------------


def _dashboard(request: web.Request) -> Dashboard:
    return request.app[DASHBOARD]


def _session(request: web.Request) -> Session | None:
    return _dashboard(request).sessions.get(request.cookies.get(COOKIE))


def _may_look(request: web.Request) -> bool:
    return _dashboard(request).anonymous or _session(request) is not None


def _operator(request: web.Request) -> Session:
    """The session of a state-changing request, which must come from one of the dashboard's own
    pages (Origin), carry the session's CSRF token, and be an operator's; else 403."""
    dashboard = _dashboard(request)
    if not same_origin(
        request.headers.get("Origin"), request.headers.get("Referer"), request.scheme, request.host
    ):
        raise _json_error(403, "refused: the request does not come from this dashboard's own page")
    if dashboard.control is None:
        raise _json_error(403, "this dashboard only reads its store (cyclerd web --db): no control here")
    session = _session(request)
    if session is None:
        raise _json_error(403, "log in first: only a logged-in operator may control runs")
    if not csrf_ok(session, request.headers.get("X-CSRF-Token")):
        raise _json_error(403, "refused: the request lacks this session's CSRF token; reload the page")
    if not session.may_control:
        raise _json_error(403, f"{session.user} is a {session.role}: only an operator may control runs")
    return session


def _json_error(status: int, message: str) -> web.HTTPException:
    error = web.HTTPException(text=dumps({"ok": False, "error": message}), content_type="application/json")
    error.set_status(status)
    return error


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json")


# -- pages ------------------------------------------------------------------------------------


def _boot(request: web.Request, page: str, **extra: Any) -> dict[str, Any]:
    dashboard = _dashboard(request)
    session = _session(request)
    return {
        "page": page,
        "lab": dashboard.lab,
        "user": None if session is None else session.user,
        "role": None if session is None else session.role.value,
        "csrf": None if session is None else session.csrf,
        "can_control": session is not None and session.may_control and dashboard.control is not None,
        "live": dashboard.live,
        "max_upload_bytes": dashboard.max_upload_bytes,
    } | extra


def _shell(request: web.Request, page: str, title: str, status: int = 200, **extra: Any) -> web.Response:
    template = (STATIC / "page.html").read_text(encoding="utf-8")
    boot = dumps(_boot(request, page, **extra)).replace("<", "\\u003c").replace(">", "\\u003e")
    text = template.replace("{{title}}", html.escape(title)).replace("{{page}}", page)
    text = text.replace("{{boot}}", boot.replace("&", "\\u0026"))
    return web.Response(
        text=text, status=status, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


def _to_login(request: web.Request) -> web.HTTPFound:
    return web.HTTPFound(f"/login?next={request.path_qs}" if request.path != "/" else "/login")


def _page(page: str, title: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not _may_look(request):
            raise _to_login(request)
        return _shell(request, page, f"{title} · {_dashboard(request).lab}")

    return handler


async def _login_page(request: web.Request) -> web.StreamResponse:
    return _shell(request, "login", f"Log in · {_dashboard(request).lab}")


async def _run_page(request: web.Request) -> web.StreamResponse:
    if not _may_look(request):
        raise _to_login(request)
    dashboard, run_id = _dashboard(request), int(request.match_info["run"])
    try:
        run = await dashboard.reader.call(reads.run_view, dashboard.reader, run_id)
    except KeyError:
        return _not_found(request, f"There is no run {run_id} in this lab's store.")
    return _shell(request, "run", f"Run {run_id}: {run['name']} · {dashboard.lab}", run_id=run_id)


def _not_found(request: web.Request, message: str) -> web.Response:
    return _shell(request, "notfound", "Not found", status=404, message=message)


async def _report(request: web.Request) -> web.StreamResponse:
    from cyclerd.analysis.report import build_report  # matplotlib: only when a report is asked for

    _must_look(request)
    dashboard, run_id = _dashboard(request), int(request.match_info["run"])
    try:
        text = await dashboard.reader.call(lambda: build_report(dashboard.reader.store(), [run_id]))
    except KeyError:
        return _not_found(request, f"There is no run {run_id} in this lab's store.")
    return web.Response(text=text, content_type="text/html")


EXPORTS = {"bdf.csv": "text/csv", "bdf.parquet": "application/vnd.apache.parquet", "cycles.csv": "text/csv"}


async def _export(request: web.Request) -> web.StreamResponse:
    _must_look(request)
    dashboard, run_id, what = _dashboard(request), int(request.match_info["run"]), request.match_info["what"]
    if what not in EXPORTS:
        return _not_found(request, f"No export {what!r}; there are {', '.join(EXPORTS)}.")

    def export() -> bytes:
        from cyclerd.analysis.bdf import export_run
        from cyclerd.analysis.exports import cycles_table, write_side_table

        store = dashboard.reader.store()
        store.run(run_id)
        with tempfile.TemporaryDirectory(prefix="cyclerd-export-") as folder:
            path = Path(folder) / f"run{run_id}.{what}"
            if what == "cycles.csv":
                write_side_table(cycles_table(store, run_id), path)
            else:
                export_run(store, run_id, path, what.replace(".", "-"))
            return path.read_bytes()

    try:
        body = await dashboard.reader.call(export)
    except KeyError:
        return _not_found(request, f"There is no run {run_id} in this lab's store.")
    disposition = f'attachment; filename="run{run_id}.{what}"'
    return web.Response(body=body, content_type=EXPORTS[what], headers={"Content-Disposition": disposition})


# -- reads ------------------------------------------------------------------------------------


def _must_look(request: web.Request) -> None:
    if not _may_look(request):
        raise _json_error(401, "log in to see this lab (or ask for anonymous viewing in lab.toml's [web])")


async def _lab(request: web.Request) -> web.StreamResponse:
    _must_look(request)
    dashboard = _dashboard(request)

    def read() -> dict[str, Any]:
        channels = dashboard.channels(dashboard.reader)
        return reads.lab_view(dashboard.reader, dashboard.lab, channels, dashboard.live)

    return _json(await dashboard.reader.call(read))


async def _runs(request: web.Request) -> web.StreamResponse:
    _must_look(request)
    dashboard = _dashboard(request)
    try:
        found = await dashboard.reader.call(reads.runs_list, dashboard.reader, dict(request.query))
    except ValueError as exc:
        raise _json_error(400, str(exc)) from None
    return _json(found)


async def _queue(request: web.Request) -> web.StreamResponse:
    _must_look(request)
    dashboard = _dashboard(request)
    return _json(await dashboard.reader.call(reads.queue_list, dashboard.reader))


async def _run(request: web.Request) -> web.StreamResponse:
    _must_look(request)
    dashboard, run_id = _dashboard(request), int(request.match_info["run"])
    try:
        view = await dashboard.reader.call(reads.run_view, dashboard.reader, run_id)
    except KeyError:
        raise _json_error(404, f"there is no run {run_id} in this lab's store") from None
    may = _boot(request, "run")["can_control"]
    view["actions"] = reads.actions(view["state"]) if may else []
    return _json(view)


async def _series(request: web.Request) -> web.StreamResponse:
    _must_look(request)
    dashboard, run_id = _dashboard(request), int(request.match_info["run"])
    t0, t1 = _number(request, "t0"), _number(request, "t1")
    points = _number(request, "points")
    wanted = 1600 if points is None else int(points)

    def read() -> Any:
        dashboard.reader.store().run(run_id)  # KeyError for a run the store does not hold
        return dashboard.reader.series.window(run_id, t0, t1, wanted)

    try:
        window = await dashboard.reader.call(read)
    except KeyError:
        raise _json_error(404, f"there is no run {run_id} in this lab's store") from None
    except ValueError as exc:  # t0 after t1, and the like
        raise _json_error(400, str(exc)) from None
    return _json(window)


def _number(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _json_error(
            400, f"{name}={text!r} is not a number; give seconds of test time, e.g. {name}=3600"
        )
    return value


def _read_of(read: Callable[[Reader, int], dict[str, Any]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        _must_look(request)
        dashboard, run_id = _dashboard(request), int(request.match_info["run"])
        try:
            return _json(await dashboard.reader.call(read, dashboard.reader, run_id))
        except KeyError:
            raise _json_error(404, f"there is no run {run_id} in this lab's store") from None

    return handler


async def _live(request: web.Request) -> web.StreamResponse:
    _must_look(request)
    hub = _dashboard(request).hub
    if hub is None:
        raise _json_error(404, "no live feed: this dashboard reads a store no daemon is running")
    socket = web.WebSocketResponse(heartbeat=30.0)
    await socket.prepare(request)
    page = hub.listen()
    sending = asyncio.create_task(_send(socket, page))
    try:
        async for message in socket:  # the page says nothing; this notices it going away
            if message.type == WSMsgType.ERROR:
                break
    finally:
        hub.leave(page)
        sending.cancel()
    return socket


async def _send(socket: web.WebSocketResponse, page: Any) -> None:
    while (text := await page.get()) is not None:
        await socket.send_str(text)
    await socket.close(message=b"fell behind: reload")


# -- control ----------------------------------------------------------------------------------


async def _act(request: web.Request) -> web.StreamResponse:
    session = _operator(request)
    dashboard, run_id, action = (
        _dashboard(request),
        int(request.match_info["run"]),
        request.match_info["action"],
    )
    if action not in ACTIONS:
        raise _json_error(404, f"no action {action!r}; actions: {', '.join(ACTIONS)}")
    try:
        run = await dashboard.reader.call(reads.run_view, dashboard.reader, run_id)
    except KeyError:
        raise _json_error(404, f"there is no run {run_id} in this lab's store") from None
    assert dashboard.control is not None
    try:
        reply = await dashboard.control.execute(
            run["channel"], Command(action=action, run=run_id), session.user
        )
    except CommandError as exc:
        raise _json_error(409, str(exc)) from None
    log.info(
        "%s asked %s of run %d from the dashboard: %s", session.user, action, run_id, reply.get("result")
    )
    return _json({"ok": True} | reply)


@dataclass(frozen=True)
class _Submission:
    channel: str
    name: str
    text: str
    cell: dict[str, str]


async def _submission(request: web.Request) -> _Submission:
    dashboard = _dashboard(request)
    try:
        body = await request.json()
    except ValueError:
        raise _json_error(400, "send the protocol as JSON: {channel, name, text, cell}") from None
    if not isinstance(body, Mapping):
        raise _json_error(400, "send the protocol as a JSON object: {channel, name, text, cell}")
    text, channel = body.get("text"), body.get("channel")
    if not isinstance(text, str) or not text.strip():
        raise _json_error(400, "the protocol is empty: upload a file or paste its text")
    size = len(text.encode("utf-8"))
    if size > dashboard.max_upload_bytes:
        raise _json_error(413, _too_large(size, dashboard.max_upload_bytes))
    names = [c.name for c in await dashboard.reader.call(dashboard.channels, dashboard.reader)]
    if channel not in names:
        raise _json_error(400, f"no channel {channel!r} in this lab; channels: {', '.join(names)}")
    cell = body.get("cell") or {}
    if not isinstance(cell, Mapping):
        raise _json_error(400, "cell: give cell, area, capacity and mass as text")
    kept = {
        k: str(v).strip()
        for k, v in cell.items()
        if k in ("cell", "area", "capacity", "mass") and str(v).strip()
    }
    name = str(body.get("name") or "pasted protocol")
    return _Submission(str(channel), Path(name).name or "pasted protocol", text, kept)


def _too_large(size: int, limit: int) -> str:
    return (
        f"the protocol is {size / 1024:.0f} kB; the dashboard takes files up to {limit / 1024:.0f} kB"
        " (lab.toml [web] max_upload_kb). A protocol that long is better submitted with `cyclerd submit`."
    )


async def _check(request: web.Request) -> web.StreamResponse:
    _operator(request)
    dashboard = _dashboard(request)
    submission = await _submission(request)
    try:
        prepared = await off_the_loop(
            prepare, submission.text, submission.name, CellSpec.of_job(submission.cell)
        )
    except ProtocolError as exc:
        return _json({"ok": False, "errors": str(exc)})
    except (CellDataMissing, ValueError) as exc:
        return _json({"ok": False, "errors": f"{submission.name}: {exc}"})
    assert dashboard.control is not None
    refusals = dashboard.control.refusals(submission.channel)(prepared.program)
    if refusals:
        return _json({"ok": False, "errors": "\n".join(f"{submission.channel}: {why}" for why in refusals)})
    plan = io.StringIO()
    render_plan(Console(file=plan, width=110, color_system=None, highlight=False), prepared.program)
    return _json({"ok": True, "name": prepared.program.name, "plan": plan.getvalue()})


async def _submit(request: web.Request) -> web.StreamResponse:
    session = _operator(request)
    dashboard = _dashboard(request)
    submission = await _submission(request)
    command = Command(action="submit", protocol=submission.text, name=submission.name, cell=submission.cell)
    assert dashboard.control is not None
    try:
        reply = await dashboard.control.execute(submission.channel, command, session.user)
    except CommandError as exc:
        return _json({"ok": False, "error": str(exc)}, status=400)
    log.info(
        "%s submitted job %s on %s from the dashboard", session.user, reply.get("job"), submission.channel
    )
    return _json({"ok": True} | reply)


# -- logging in -------------------------------------------------------------------------------


async def _login(request: web.Request) -> web.StreamResponse:
    dashboard = _dashboard(request)
    if not same_origin(
        request.headers.get("Origin"), request.headers.get("Referer"), request.scheme, request.host
    ):
        raise _json_error(403, "refused: log in from this dashboard's own login page")
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, Mapping) or not isinstance(body.get("user"), str):
        raise _json_error(400, "send {user, password} as JSON")
    name, password = body["user"], str(body.get("password") or "")
    if not dashboard.users:
        raise _json_error(
            401, "nobody can log in yet: add a user with `cyclerd web user add NAME --role operator`"
        )
    user = await asyncio.to_thread(dashboard.users.authenticate, name, password)  # one scrypt
    if user is None:
        why = dashboard.users.locked_out(name) or "wrong user name or password"
        log.warning("dashboard: a login as %r failed (%s)", name, why)
        raise _json_error(401, why)
    session = dashboard.sessions.open(user)
    log.info("dashboard: %s logged in as %s", user.name, user.role)
    response = _json({"ok": True, "user": user.name, "role": user.role.value})
    response.set_cookie(COOKIE, session.token, **dashboard.sessions.cookie_attributes(dashboard.secure))
    return response


async def _logout(request: web.Request) -> web.StreamResponse:
    dashboard = _dashboard(request)
    if not same_origin(
        request.headers.get("Origin"), request.headers.get("Referer"), request.scheme, request.host
    ):
        raise _json_error(403, "refused: log out from this dashboard's own page")
    dashboard.sessions.close(request.cookies.get(COOKIE))
    response = _json({"ok": True})
    response.del_cookie(COOKIE, path="/")
    return response


# -- around every request -----------------------------------------------------------------------


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A page asked for that does not exist is the 404 page; an API error is JSON; an error
    nobody expected is logged with its traceback and shown as a sentence, never the traceback."""
    api = request.path.startswith("/api/") or request.method != "GET"
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = _dashboard(request).max_upload_bytes
        size = request.content_length or 0
        return _json({"ok": False, "error": _too_large(max(size, limit + 1), limit)}, status=413)
    except web.HTTPException as exc:
        if exc.status == 404 and not api:
            return _not_found(request, f"There is no page {request.path} on this dashboard.")
        if exc.status in (404, 405) and exc.content_type != "application/json":
            return _json(
                {"ok": False, "error": f"no {request.method} {request.path} here"}, status=exc.status
            )
        raise
    except Exception:
        log.exception("dashboard: %s %s failed", request.method, request.path)
        message = "the dashboard failed to answer this; the daemon's log says why"
        if api:
            return _json({"ok": False, "error": message}, status=500)
        return web.Response(text=message, status=500, content_type="text/plain")


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


# -- serving ------------------------------------------------------------------------------------


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def start(
    dashboard: Dashboard, bind: str, port: int, tls: ssl.SSLContext | None = None
) -> web.AppRunner:
    """Listen on `bind`:`port` (0: a free port; `bound_port` says which); OSError when it cannot."""
    runner = web.AppRunner(make_app(dashboard), access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, bind, port, ssl_context=tls)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("the dashboard is not listening")


async def stop(runner: web.AppRunner, dashboard: Dashboard) -> None:
    if dashboard.hub is not None:
        await dashboard.hub.close()
    await runner.cleanup()
    await asyncio.to_thread(dashboard.reader.close)
