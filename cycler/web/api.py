"""The JSON the pages read (/api/...), and the live feed's WebSocket."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from cyclerd.web import reads
from cyclerd.web.access import can_control, json_error, json_response, may_look, must_look
from cyclerd.web.dashboard import Handler, of
from cyclerd.web.reads import Reader

LOGGED_OUT = 4001  # the live feed's close code when its viewer may no longer look (ui.js knows it)


async def get_lab(request: web.Request) -> web.StreamResponse:
    must_look(request)
    dashboard = of(request)

    def read() -> dict[str, Any]:
        channels = dashboard.channels(dashboard.reader)
        return reads.lab_view(dashboard.reader, dashboard.lab, channels, dashboard.live)

    return json_response(await dashboard.reader.call(read))


async def get_runs(request: web.Request) -> web.StreamResponse:
    must_look(request)
    dashboard = of(request)
    try:
        found = await dashboard.reader.call(reads.runs_list, dashboard.reader, dict(request.query))
    except ValueError as exc:
        raise json_error(400, str(exc)) from None
    return json_response(found)


async def get_queue(request: web.Request) -> web.StreamResponse:
    must_look(request)
    dashboard = of(request)
    return json_response(await dashboard.reader.call(reads.queue_list, dashboard.reader))


async def get_run(request: web.Request) -> web.StreamResponse:
    must_look(request)
    dashboard, run_id = of(request), int(request.match_info["run"])
    try:
        view = await dashboard.reader.call(reads.run_view, dashboard.reader, run_id)
    except KeyError:
        raise json_error(404, f"there is no run {run_id} in this lab's store") from None
    may = can_control(request)
    view["actions"] = reads.actions(view["state"]) if may else []
    return json_response(view)


async def get_series(request: web.Request) -> web.StreamResponse:
    must_look(request)
    dashboard, run_id = of(request), int(request.match_info["run"])
    t0, t1 = _number(request, "t0"), _number(request, "t1")
    points = _number(request, "points")
    wanted = 1600 if points is None else int(points)

    def read() -> Any:
        dashboard.reader.store().run(run_id)  # KeyError for a run the store does not hold
        return dashboard.reader.series.window(run_id, t0, t1, wanted)

    try:
        window = await dashboard.reader.call(read)
    except KeyError:
        raise json_error(404, f"there is no run {run_id} in this lab's store") from None
    except ValueError as exc:  # t0 after t1, and the like
        raise json_error(400, str(exc)) from None
    return json_response(window)


def _number(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise json_error(400, f"{name}={text!r} is not a number; give seconds of test time, e.g. {name}=3600")
    return value


def read_of(read: Callable[[Reader, int], dict[str, Any]]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        must_look(request)
        dashboard, run_id = of(request), int(request.match_info["run"])
        try:
            return json_response(await dashboard.reader.call(read, dashboard.reader, run_id))
        except KeyError:
            raise json_error(404, f"there is no run {run_id} in this lab's store") from None

    return handler


async def live_feed(request: web.Request) -> web.StreamResponse:
    must_look(request)
    hub = of(request).hub
    if hub is None:
        raise json_error(404, "no live feed: this dashboard reads a store no daemon is running")
    socket = web.WebSocketResponse(heartbeat=30.0)
    await socket.prepare(request)
    page = hub.listen()
    sending = asyncio.create_task(_send(request, socket, page))
    try:
        async for message in socket:  # the page says nothing; this notices it going away
            if message.type == WSMsgType.ERROR:
                break
    finally:
        hub.leave(page)
        sending.cancel()
    return socket


async def _send(request: web.Request, socket: web.WebSocketResponse, page: Any) -> None:
    while (text := await page.get()) is not None:
        if not may_look(request):  # logged out, or taken out of the users file, since it opened
            await socket.close(code=LOGGED_OUT, message=b"logged out: log in again")
            return
        await socket.send_str(text)
    await socket.close(message=b"fell behind: reload")
