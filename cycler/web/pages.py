"""The dashboard's pages: one static shell (static/page.html) filled with a little boot data, from
which the page's scripts fetch the rest; and the run's report and exports as downloads.
"""

from __future__ import annotations

import html
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from aiohttp import web

from cyclerd.web import reads
from cyclerd.web.access import can_control, may_look, must_look, session_of
from cyclerd.web.dashboard import Handler, of
from cyclerd.web.jsontext import dumps

# The real folder: aiohttp serves no symbolic links, and an editable install is made of them.
STATIC = Path(__file__).resolve().parent / "static"


def boot(request: web.Request, page: str, **extra: Any) -> dict[str, Any]:
    dashboard = of(request)
    session = session_of(request)
    return {
        "page": page,
        "lab": dashboard.lab,
        "user": None if session is None else session.user,
        "role": None if session is None else session.role.value,
        "csrf": None if session is None else session.csrf,
        "can_control": can_control(request),
        "live": dashboard.live and may_look(request),  # a visitor who may not look gets no feed
        "max_upload_bytes": dashboard.max_upload_bytes,
    } | extra


def shell(request: web.Request, page: str, title: str, status: int = 200, **extra: Any) -> web.Response:
    template = (STATIC / "page.html").read_text(encoding="utf-8")
    data = dumps(boot(request, page, **extra)).replace("<", "\\u003c").replace(">", "\\u003e")
    text = template.replace("{{title}}", html.escape(title)).replace("{{page}}", page)
    text = text.replace("{{boot}}", data.replace("&", "\\u0026"))
    return web.Response(
        text=text, status=status, content_type="text/html", headers={"Cache-Control": "no-store"}
    )


def to_login(request: web.Request) -> web.HTTPFound:
    if request.path == "/":
        return web.HTTPFound("/login")
    return web.HTTPFound(f"/login?next={urllib.parse.quote(request.path_qs, safe='/')}")


def page(page: str, title: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not may_look(request):
            raise to_login(request)
        return shell(request, page, f"{title} · {of(request).lab}")

    return handler


async def login_page(request: web.Request) -> web.StreamResponse:
    return shell(request, "login", f"Log in · {of(request).lab}")


async def run_page(request: web.Request) -> web.StreamResponse:
    if not may_look(request):
        raise to_login(request)
    dashboard, run_id = of(request), int(request.match_info["run"])
    try:
        run = await dashboard.reader.call(reads.run_view, dashboard.reader, run_id)
    except KeyError:
        return not_found(request, f"There is no run {run_id} in this lab's store.")
    return shell(request, "run", f"Run {run_id}: {run['name']} · {dashboard.lab}", run_id=run_id)


def not_found(request: web.Request, message: str) -> web.Response:
    return shell(request, "notfound", "Not found", status=404, message=message)


async def report_page(request: web.Request) -> web.StreamResponse:
    from cyclerd.analysis.report import build_report  # matplotlib: only when a report is asked for

    must_look(request)
    dashboard, run_id = of(request), int(request.match_info["run"])
    try:
        text = await dashboard.reader.call(lambda: build_report(dashboard.reader.store(), [run_id]))
    except KeyError:
        return not_found(request, f"There is no run {run_id} in this lab's store.")
    return web.Response(text=text, content_type="text/html")


EXPORTS = {"bdf.csv": "text/csv", "bdf.parquet": "application/vnd.apache.parquet", "cycles.csv": "text/csv"}


async def export_file(request: web.Request) -> web.StreamResponse:
    must_look(request)
    dashboard, run_id, what = of(request), int(request.match_info["run"]), request.match_info["what"]
    if what not in EXPORTS:
        return not_found(request, f"No export {what!r}; there are {', '.join(EXPORTS)}.")

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
        return not_found(request, f"There is no run {run_id} in this lab's store.")
    disposition = f'attachment; filename="run{run_id}.{what}"'
    return web.Response(body=body, content_type=EXPORTS[what], headers={"Content-Disposition": disposition})
