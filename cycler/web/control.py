"""Pause, resume, stop and submit from the page: each checked as the CLI and MQTT check it, and
carried out by the daemon (its `execute`) in the user's name."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from rich.console import Console

from cyclerd.bus.commands import Command, CommandError
from cyclerd.cli.plan_view import render_plan
from cyclerd.engine.session import CellSpec, off_the_loop, prepare
from cyclerd.protocols import ProtocolError
from cyclerd.protocols.compiler import CellDataMissing
from cyclerd.web import reads
from cyclerd.web.access import json_error, json_response, operator
from cyclerd.web.dashboard import of

log = logging.getLogger(__name__)

ACTIONS = ("pause", "resume", "stop")


async def act_on_run(request: web.Request) -> web.StreamResponse:
    session = operator(request)
    dashboard, run_id, action = (
        of(request),
        int(request.match_info["run"]),
        request.match_info["action"],
    )
    if action not in ACTIONS:
        raise json_error(404, f"no action {action!r}; actions: {', '.join(ACTIONS)}")
    try:
        run = await dashboard.reader.call(reads.run_view, dashboard.reader, run_id)
    except KeyError:
        raise json_error(404, f"there is no run {run_id} in this lab's store") from None
    assert dashboard.control is not None
    try:
        reply = await dashboard.control.execute(
            run["channel"], Command(action=action, run=run_id), session.user
        )
    except CommandError as exc:
        raise json_error(409, str(exc)) from None
    log.info(
        "%s asked %s of run %d from the dashboard: %s", session.user, action, run_id, reply.get("result")
    )
    return json_response({"ok": True} | reply)


@dataclass(frozen=True)
class _Submission:
    channel: str
    name: str
    text: str
    cell: dict[str, str]


async def _submission(request: web.Request) -> _Submission:
    dashboard = of(request)
    try:
        body = await request.json()
    except ValueError:
        raise json_error(400, "send the protocol as JSON: {channel, name, text, cell}") from None
    if not isinstance(body, Mapping):
        raise json_error(400, "send the protocol as a JSON object: {channel, name, text, cell}")
    text, channel = body.get("text"), body.get("channel")
    if not isinstance(text, str) or not text.strip():
        raise json_error(400, "the protocol is empty: upload a file or paste its text")
    size = len(text.encode("utf-8"))
    if size > dashboard.max_upload_bytes:
        raise json_error(413, too_large(size, dashboard.max_upload_bytes))
    names = [c.name for c in await dashboard.reader.call(dashboard.channels, dashboard.reader)]
    if channel not in names:
        raise json_error(400, f"no channel {channel!r} in this lab; channels: {', '.join(names)}")
    cell = body.get("cell") or {}
    if not isinstance(cell, Mapping):
        raise json_error(400, "cell: give cell, area, capacity and mass as text")
    kept = {
        k: str(v).strip()
        for k, v in cell.items()
        if k in ("cell", "area", "capacity", "mass") and str(v).strip()
    }
    name = str(body.get("name") or "pasted protocol")
    return _Submission(str(channel), Path(name).name or "pasted protocol", text, kept)


def too_large(size: int, limit: int) -> str:
    return (
        f"the protocol is {size / 1024:.0f} kB; the dashboard takes files up to {limit / 1024:.0f} kB"
        " (lab.toml [web] max_upload_kb). A protocol that long is better submitted with `cyclerd submit`."
    )


async def check_protocol(request: web.Request) -> web.StreamResponse:
    operator(request)
    dashboard = of(request)
    submission = await _submission(request)
    try:
        prepared = await off_the_loop(
            prepare, submission.text, submission.name, CellSpec.of_job(submission.cell)
        )
    except ProtocolError as exc:
        return json_response({"ok": False, "errors": str(exc)})
    except (CellDataMissing, ValueError) as exc:
        return json_response({"ok": False, "errors": f"{submission.name}: {exc}"})
    assert dashboard.control is not None
    refusals = dashboard.control.refusals(submission.channel)(prepared.program)
    if refusals:
        errors = "\n".join(f"{submission.channel}: {why}" for why in refusals)
        return json_response({"ok": False, "errors": errors})
    plan = io.StringIO()
    render_plan(Console(file=plan, width=110, color_system=None, highlight=False), prepared.program)
    return json_response({"ok": True, "name": prepared.program.name, "plan": plan.getvalue()})


async def submit_protocol(request: web.Request) -> web.StreamResponse:
    session = operator(request)
    dashboard = of(request)
    submission = await _submission(request)
    command = Command(action="submit", protocol=submission.text, name=submission.name, cell=submission.cell)
    assert dashboard.control is not None
    try:
        reply = await dashboard.control.execute(submission.channel, command, session.user)
    except CommandError as exc:
        return json_response({"ok": False, "error": str(exc)}, status=400)
    log.info(
        "%s submitted job %s on %s from the dashboard", session.user, reply.get("job"), submission.channel
    )
    return json_response({"ok": True} | reply)
