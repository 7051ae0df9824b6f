"""Commands that arrive over MQTT on cyclerd/<lab>/<channel>/cmd, checked and carried out.

A command is a JSON object. It changes the store exactly as the CLI would (a request for a
running run, a job in the queue), so the daemon's usual machinery acts on it, and the reply
says what happened. A command that cannot be understood gets an error reply and changes
nothing. Who may send commands at all is the broker's decision (password file and ACL).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cyclerd.engine.session import CellSpec, Controls, off_the_loop, prepare
from cyclerd.engine.states import FINAL
from cyclerd.protocols import ProtocolError
from cyclerd.protocols.compiler import CellDataMissing
from cyclerd.protocols.program import Program
from cyclerd.store.database import Store

RESULT_WAIT_S = 5.0  # a running daemon acts on requests within about a second


class Command(BaseModel):
    """One command. `run` defaults to the channel's active run; `submit` needs `protocol`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["status", "pause", "resume", "stop", "submit"]
    run: int | None = Field(None, gt=0)
    protocol: str | None = Field(None, description="The protocol file's text (submit).")
    name: str | None = Field(None, description="Where the protocol came from, for the record (submit).")
    cell: dict[str, str] = Field(default_factory=dict, description="cell id, area, capacity, mass (submit).")


class CommandError(ValueError):
    """The command was understood but cannot be carried out (no such run, not this channel's ...)."""


def parse_command(payload: bytes) -> Command:
    """The command in `payload`; raises CommandError saying what is wrong and what to send instead."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f'not JSON ({exc}); send e.g. {{"action": "stop", "run": 3}}') from None
    if not isinstance(data, dict):
        raise CommandError('a command is a JSON object, e.g. {"action": "status"}')
    try:
        return Command.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'command'}: {e['msg']}" for e in exc.errors()
        )
        raise CommandError(problems) from None


Refusals = Callable[[Program], list[str]]
"""Why the channel cannot run a program ([] if it may): the lab's check at submit time."""


async def execute(
    store: Store,
    channel: str,
    command: Command,
    controls: Controls | None = None,
    refusals: Refusals | None = None,
    by: str | None = None,
) -> dict[str, Any]:
    """Carry out `command` on `channel`, asked by user `by` when known (the dashboard's login,
    named in the run's events); the reply's fields, without `ok`.

    Pause, resume and stop of a run in `controls` (this process's) act at once; for a run that
    another process runs, the request waits in the store for that process to act on it. A
    submitted protocol is read and compiled off the event loop (a large file takes seconds,
    and the channels run meanwhile) and refused with `refusals`' reasons.
    """
    if command.action == "status":
        return _status(store, channel)
    if command.action == "submit":
        return await _submit(store, channel, command, refusals, by)
    run_id = _target_run(store, channel, command.run)
    if controls is not None and run_id in controls:
        done = controls.act(run_id, command.action, by)
        if done.startswith("refused"):
            raise CommandError(done)
        return {"run": run_id, "result": done}
    if by is not None:  # the process that runs it says what it did, but not who asked
        store.record_event(run_id, "control", f"{command.action} asked by {by}", data={"by": by})
    request = store.requests.add(run_id, command.action)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RESULT_WAIT_S
    while (result := store.requests.result(request)) is None and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if result is not None and result.startswith("refused"):
        raise CommandError(result)
    return {"run": run_id, "request": request, "result": result or "pending"}


def _status(store: Store, channel: str) -> dict[str, Any]:
    runs = [r for r in store.runs() if r.channel == channel]
    active = next((r for r in reversed(runs) if r.state not in FINAL), None)
    queued = [job["id"] for job in store.jobs.list("queued") if job["channel"] == channel]
    return {
        "channel": channel,
        "run": None if active is None else active.id,
        "state": "idle" if active is None else active.state,
        "queued": queued,
    }


def _target_run(store: Store, channel: str, run_id: int | None) -> int:
    runs = [r for r in store.runs() if r.channel == channel]
    if run_id is None:
        active = [r for r in runs if r.state not in FINAL]
        if not active:
            raise CommandError(f"channel {channel} has no active run; name one with 'run'")
        return active[-1].id
    run = next((r for r in runs if r.id == run_id), None)
    if run is None:
        raise CommandError(f"run {run_id} is not a run of channel {channel}")
    if run.state in FINAL:
        raise CommandError(f"run {run_id} is already {run.state}")
    return run_id


async def _submit(
    store: Store, channel: str, command: Command, refusals: Refusals | None, by: str | None
) -> dict[str, Any]:
    if command.protocol is None:
        raise CommandError("submit needs 'protocol': the protocol file's text")
    source = command.name or (f"mqtt:{channel}" if by is None else f"web:{by}")
    unknown = sorted(set(command.cell) - {"cell", "area", "capacity", "mass"})
    if unknown:
        raise CommandError(f"cell: unknown keys {', '.join(unknown)}; use cell, area, capacity, mass")
    try:
        cell = CellSpec.of_job(command.cell)
        program = (await off_the_loop(prepare, command.protocol, source, cell)).program
    except ProtocolError as exc:
        raise CommandError(str(exc)) from None
    except (CellDataMissing, ValueError) as exc:
        raise CommandError(str(exc)) from None
    if refusals is not None and (why := refusals(program)):
        raise CommandError(f"refused: {'; '.join(why)}; nothing was queued")
    job = store.jobs.submit(channel, program.name, command.protocol, source, dict(command.cell))
    if by is not None:
        store.record_event(
            None, "job", f"job {job} on {channel} ({program.name}) submitted by {by}", data={"by": by}
        )
    return {"job": job, "name": program.name}
