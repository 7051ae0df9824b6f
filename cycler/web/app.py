"""The dashboard's web server on aiohttp: its routes, what wraps every request, and serving.

It runs on the daemon's own event loop (cyclerd.web.serve) or alone on a store (`cyclerd web
--db`), where it only reads. Who may do what is cyclerd.web.access's; the pages are
cyclerd.web.pages', the JSON and the live feed cyclerd.web.api's, control cyclerd.web.control's.
Reads go to the dashboard's own thread and connection (cyclerd.web.reads.Reader).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from aiohttp import web

from cyclerd.web import api, control, pages
from cyclerd.web.access import json_response, log_in, log_out
from cyclerd.web.dashboard import DASHBOARD, Dashboard, Handler, of
from cyclerd.web.reads import cycles_view, events_view, spectrum_view

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def make_app(dashboard: Dashboard) -> web.Application:
    app = web.Application(
        middlewares=[_errors, _headers], client_max_size=dashboard.max_upload_bytes + 64 * 1024
    )
    app[DASHBOARD] = dashboard
    routes = [
        web.get("/", pages.page("lab", "Lab")),
        web.get("/history", pages.page("history", "History")),
        web.get("/submit", pages.page("submit", "Submit a protocol")),
        web.get("/login", pages.login_page),
        web.get("/runs/{run:[0-9]+}", pages.run_page),
        web.get("/runs/{run:[0-9]+}/report", pages.report_page),
        web.get("/runs/{run:[0-9]+}/export/{what}", pages.export_file),
        web.get("/api/lab", api.get_lab),
        web.get("/api/runs", api.get_runs),
        web.get("/api/queue", api.get_queue),
        web.get("/api/runs/{run:[0-9]+}", api.get_run),
        web.get("/api/runs/{run:[0-9]+}/series", api.get_series),
        web.get("/api/runs/{run:[0-9]+}/cycles", api.read_of(cycles_view)),
        web.get("/api/runs/{run:[0-9]+}/spectrum", api.read_of(spectrum_view)),
        web.get("/api/runs/{run:[0-9]+}/events", api.read_of(events_view)),
        web.get("/api/live", api.live_feed),
        web.post("/api/runs/{run:[0-9]+}/{action}", control.act_on_run),
        web.post("/api/protocols/check", control.check_protocol),
        web.post("/api/protocols/submit", control.submit_protocol),
        web.post("/login", log_in),
        web.post("/logout", log_out),
    ]
    app.add_routes(routes)
    app.router.add_static("/static/", pages.STATIC, append_version=False)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A page asked for that does not exist is the 404 page; an API error is JSON; an error
    nobody expected is logged with its traceback and shown as a sentence, never the traceback."""
    api = request.path.startswith("/api/") or request.method != "GET"
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = of(request).max_upload_bytes
        size = request.content_length or 0
        refusal = control.too_large(max(size, limit + 1), limit)
        return json_response({"ok": False, "error": refusal}, status=413)
    except web.HTTPException as exc:
        if exc.status == 404 and not api:
            return pages.not_found(request, f"There is no page {request.path} on this dashboard.")
        if exc.status in (404, 405) and exc.content_type != "application/json":
            return json_response(
                {"ok": False, "error": f"no {request.method} {request.path} here"}, status=exc.status
            )
        raise
    except Exception:
        log.exception("dashboard: %s %s failed", request.method, request.path)
        message = "the dashboard failed to answer this; the daemon's log says why"
        if api:
            return json_response({"ok": False, "error": message}, status=500)
        return web.Response(text=message, status=500, content_type="text/plain")


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


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
