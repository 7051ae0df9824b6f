"""`cyclerd submit`, `queue`, `status`, `pause`, `resume` and `stop`: the lab's queue and its runs.

They work on the lab's store (cyclerd.cli.lab says how it is found) with or without a daemon
running, and say which: the daemon and each `cyclerd run` write a heartbeat to the store
(cyclerd.store.heartbeat), so a run whose process is gone is not reported as running, and a
request is not promised "within a second" when nobody is there to act on it.
"""

from __future__ import annotations

import contextlib
import difflib
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cyclerd.cli.exit_codes import ExitCode
from cyclerd.cli.lab import ConfigOption, LabDbOption, LabStore, fail, find, open_lab, open_store
from cyclerd.cli.options import AreaOption, CapacityOption, MassOption, cell_spec, console, prepared_or_exit
from cyclerd.cli.status_view import Estimates, progress_table, standing
from cyclerd.daemon.reach import refusals
from cyclerd.engine.states import FINAL, TRANSITIONS, RunState
from cyclerd.store import heartbeat
from cyclerd.store.database import Run, Store
from cyclerd.store.queue import Job

FINAL_STATES = {state.value for state in FINAL}


def submit(
    protocol_file: Annotated[Path, typer.Argument(help="The protocol to queue.")],
    channel: Annotated[str, typer.Option("--channel", help="The channel that will run it.")],
    cell: Annotated[str | None, typer.Option("--cell", help="Your cell's id, stored with the run.")] = None,
    area: AreaOption = None,
    capacity: CapacityOption = None,
    mass: MassOption = None,
    db: LabDbOption = None,
    config: ConfigOption = None,
) -> None:
    """Queue a protocol for a channel; it is checked now, so the queue holds only runnable jobs."""
    where = find(db, config)
    if where.lab is not None and channel not in (names := [c.name for c in where.lab.channels]):
        close = difflib.get_close_matches(channel, names, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise fail(f"lab {where.lab.lab} has no channel {channel!r}; {hint}its channels: {', '.join(names)}")
    prepared = prepared_or_exit(protocol_file, cell_spec(area, capacity, mass))
    if where.lab is not None and (why := refusals(where.lab, channel, prepared.program)):
        raise fail(f"refused: {'; '.join(why)}; nothing was queued", ExitCode.REFUSED)
    given = {"cell": cell, "area": area, "capacity": capacity, "mass": mass}
    with open_store(where) as store:
        cell_info = {key: value for key, value in given.items() if value}
        job = store.jobs.submit(channel, prepared.program.name, prepared.text, str(protocol_file), cell_info)
        daemon = heartbeat.last(store)
    console.print(f"queued as job {job} for channel {channel}", markup=False)
    if daemon is None or not daemon.alive():
        console.print(f"{_daemon_line(daemon, where)}: the job starts when it does", markup=False)


REFUSED_SHOWN_S = 7 * 86400.0  # `queue` lists the jobs refused or failed this recently


def queue(db: LabDbOption = None, config: ConfigOption = None) -> None:
    """The jobs waiting for their channels, oldest first; then those of the last week that the
    daemon refused or that failed, with why (they never became runs, so `runs` cannot say)."""
    store, _ = open_lab(db, config)
    with store:
        waiting = store.jobs.list("queued")
        since = time.time() - REFUSED_SHOWN_S
        ended = [
            job
            for job in store.jobs.list()
            if job["state"] in ("refused", "failed") and job["submitted_unix"] >= since
        ]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("job", "channel", "name", "cell", "submitted (UTC)"):
        table.add_column(name)
    for job in waiting:
        table.add_row(str(job["id"]), job["channel"], job["name"], _cell_of(job), _utc(job["submitted_unix"]))
    console.print(table if waiting else "no job waiting")
    if not ended:
        return
    console.print("\nrefused or failed in the last 7 days (nothing was run):")
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("job", "channel", "name", "cell", "submitted (UTC)", "why"):
        table.add_column(name, overflow="fold")
    for job in ended:
        why = f"{job['state']}: {job['reason'] or 'no reason was recorded'}"
        table.add_row(
            str(job["id"]), job["channel"], job["name"], _cell_of(job), _utc(job["submitted_unix"]), why
        )
    console.print(table)


def _cell_of(job: Job) -> str:
    return str(job["cell"].get("cell", ""))


def _utc(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M")


WATCH_EVERY_S = 1.0
WatchOption = Annotated[
    bool, typer.Option("--watch", help="Keep the table on screen, refreshed every second, until Ctrl-C.")
]


def status(db: LabDbOption = None, config: ConfigOption = None, watch: WatchOption = False) -> None:
    """Whether the daemon is running, where every run that is not over stands, the queue.

    Per run: who serves it, step, cycle, step time, elapsed, last V and I, time left by its plan.
    """
    store, where = open_lab(db, config)
    estimates = Estimates()  # each run's program compiled once, however many frames
    with store:
        if not watch:
            console.print(_status_view(store, where, estimates))
            return
        with contextlib.suppress(KeyboardInterrupt), Live(console=console, auto_refresh=False) as live:
            due = time.monotonic()
            while True:
                live.update(_status_view(store, where, estimates), refresh=True)
                due = max(due + WATCH_EVERY_S, time.monotonic())
                time.sleep(due - time.monotonic())


def _status_view(store: Store, where: LabStore, estimates: Estimates) -> Group:
    daemon = heartbeat.last(store)
    up = daemon is not None and daemon.alive()
    lines: list[RenderableType] = [Text(_daemon_line(daemon, where))]
    live = [r for r in store.runs() if r.state not in FINAL_STATES]
    if not live:
        lines.append(Text("no run in progress"))
    for r in live:
        waiting = ", ".join(action for _, action in store.requests.pending(r.id))
        asked = f" (asked: {waiting})" if waiting else ""
        lines.append(Text(f"run {r.id} {r.name} on {r.channel}: {_served(store, r, where)}{asked}"))
    if live:
        lines.append(progress_table([standing(store, r, estimates) for r in live]))
    if where.lab is not None:  # the lab is known: its channels with nothing to do say so too
        busy = {r.channel for r in live}
        idle = [c.name for c in where.lab.channels if c.name not in busy]
        if idle:
            lines.append(Text(f"idle: {', '.join(idle)}"))
    queued = len(store.jobs.list("queued"))
    waits = "; they start when the daemon does" if queued and not up else ""
    lines.append(Text(f"{queued} job(s) queued{waits}"))
    return Group(*lines)


RunArgument = Annotated[int, typer.Argument(metavar="RUN", help="The run's number (see 'cyclerd status').")]


def pause(run_id: RunArgument, db: LabDbOption = None, config: ConfigOption = None) -> None:
    """Pause a run: the cell is held safe and the step resumes where it stood."""
    _request("pause", run_id, db, config)


def resume(run_id: RunArgument, db: LabDbOption = None, config: ConfigOption = None) -> None:
    """Resume a paused run."""
    _request("resume", run_id, db, config)


def stop(run_id: RunArgument, db: LabDbOption = None, config: ConfigOption = None) -> None:
    """Stop a run: the cell is made safe and the run ends."""
    _request("stop", run_id, db, config)


def _request(action: str, run_id: int, db: Path | None, config: Path | None) -> None:
    store, where = open_lab(db, config)
    with store:
        try:
            run = store.run(run_id)
        except KeyError as exc:
            raise fail(f"{exc.args[0]}; 'cyclerd status' lists the runs in progress") from None
        if run.state in FINAL_STATES:
            raise fail(f"run {run_id} is {run.state}; it cannot {action}")
        ask = _ask_daemon if _daemons(run, where) else _ask_terminal
        said = ask(store, run, action)
    console.print(f"asked run {run_id} to {action}; {said}", markup=False)


def _ask_daemon(store: Store, run: Run, action: str) -> str:
    daemon = heartbeat.last(store)
    store.requests.add(run.id, action)
    if daemon is not None and daemon.alive():
        return f"the daemon (pid {daemon.pid} on {daemon.host}) acts within a second"
    down = _daemon_line(daemon)
    if action == "stop" and RunState.STOPPING in TRANSITIONS[RunState(run.state)]:
        # Taken up in this state, the run is stopped safely instead of resumed first.
        with store.transaction():
            store.set_state(run.id, RunState.STOPPING.value)
            store.record_event(run.id, "state", "stopping: asked to stop while the daemon was not running")
        return f"{down}: run {run.id} will be stopped safely, not resumed, when it starts"
    return f"{down}: the request waits, and run {run.id} will {action} once the daemon starts and takes it up"


def _ask_terminal(store: Store, run: Run, action: str) -> str:
    beat = heartbeat.last(store, heartbeat.run_holder(run.id))
    if beat is not None and beat.alive():
        store.requests.add(run.id, action)
        return f"its `cyclerd run` (pid {beat.pid} on {beat.host}) acts within a second"
    raise fail(
        f"run {run.id} was started by a `cyclerd run` that is gone{_since(beat)}: nothing would act on"
        " the request, and the daemon takes up only its own channels' runs; check the cell by hand"
    )


# -- who serves a run -------------------------------------------------------------------------


def _daemons(run: Run, where: LabStore) -> bool:
    """Whether the daemon serves (or after a restart, takes up) `run`: it came from the queue, or
    its channel is one of the lab's; `cyclerd run` names its channel after the device instead."""
    if where.lab is not None and run.channel in {c.name for c in where.lab.channels}:
        return True
    return "job" in run.source or "channel" in run.source


def _served(store: Store, run: Run, where: LabStore) -> str:
    """A live run's state, and whether anyone is there to carry it on."""
    if _daemons(run, where):
        daemon = heartbeat.last(store)
        if daemon is not None and daemon.alive():
            return run.state
        policy = _policy(run, where)
        return f"{run.state} when the daemon stopped; it will be taken up when the daemon starts{policy}"
    beat = heartbeat.last(store, heartbeat.run_holder(run.id))
    if beat is not None and beat.alive():
        return f"{run.state} in `cyclerd run` (pid {beat.pid} on {beat.host})"
    return (
        f"{run.state} when last recorded, but the `cyclerd run` that ran it is gone{_since(beat)}:"
        " nothing will take the run up"
    )


def _policy(run: Run, where: LabStore) -> str:
    """What taking the run up will do, when the lab's resume policy is known."""
    if run.state == RunState.STOPPING.value:
        return " (a stop was asked for: it will be stopped safely)"
    if where.lab is None:
        return ""
    if where.lab.resume == "stop":
        return ' (resume = "stop": it will be stopped safely)'
    gap = where.lab.resume_max_gap_s
    longer = f", unless the daemon was away more than {gap:g} s (then it is stopped safely)" if gap else ""
    return f" (resumed from its checkpoint{longer})"


def _daemon_line(daemon: heartbeat.Heartbeat | None, where: LabStore | None = None) -> str:
    if daemon is None:
        start = f": start it with `cyclerd serve --config {where.config}`" if where and where.config else ""
        return f"daemon not running: no daemon has served this store yet{start}"
    if daemon.alive():
        return (
            f"daemon running: pid {daemon.pid} on {daemon.host} since {_when(daemon.started_unix)},"
            f" heartbeat {_ago(daemon.beat_unix)} ago"
        )
    how = "stopped" if daemon.stopped_unix is not None else "last heard of"
    return f"daemon not running since {_when(daemon.gone_since)} ({how} {_ago(daemon.gone_since)} ago)"


def _since(beat: heartbeat.Heartbeat | None) -> str:
    return "" if beat is None else f" since {_when(beat.gone_since)}"


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(unix: float) -> str:
    seconds = max(0.0, time.time() - unix)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `cyclerd` app."""
    for command in (submit, queue, status, pause, resume, stop):
        app.command()(command)
