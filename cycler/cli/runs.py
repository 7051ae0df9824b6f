"""`cyclerd run`, the queue and the runs: start one, queue one, follow, pause, stop, list and show."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

import cyclerd.engine.instruments as instruments
from cyclerd.cli.options import (
    DEFAULT_DB,
    AreaOption,
    CapacityOption,
    DbOption,
    MassOption,
    ReferenceCycleOption,
    cell_spec,
    console,
    errors,
    prepared_or_exit,
)
from cyclerd.cli.progress import RunProgress
from cyclerd.cli.summary_view import render_summary
from cyclerd.drivers.base import InstrumentFault
from cyclerd.engine import session as sessions
from cyclerd.engine.runner import RunResult
from cyclerd.engine.states import FINAL
from cyclerd.protocols.plan import plan
from cyclerd.simulators import presets
from cyclerd.store.database import Store


def run(
    protocol_file: Annotated[Path, typer.Argument(help="The protocol to run.")],
    sim: Annotated[
        str | None, typer.Option("--sim", help=f"Simulated cell: {', '.join(presets.names())}.")
    ] = None,
    instrument: Annotated[
        str | None,
        typer.Option(
            "--instrument", help="A real or emulated instrument: TCPIP::host::5025::SOCKET, /dev/ttyUSB0, ..."
        ),
    ] = None,
    driver: Annotated[
        str | None, typer.Option("--driver", help=f"Instrument driver: {', '.join(instruments.DRIVERS)}.")
    ] = None,
    speed: Annotated[
        float, typer.Option("--speed", help="Time acceleration of an emulated instrument (same as its own).")
    ] = 1.0,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between readings of an SMU.")] = 1.0,
    db: DbOption = DEFAULT_DB,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated cell's randomness.")] = 0,
    area: AreaOption = None,
    capacity: CapacityOption = None,
    mass: MassOption = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a simulator parameter: NAME=VALUE.")
    ] = None,
    params_file: Annotated[
        Path | None, typer.Option("--params", help="YAML/JSON file of simulator parameters.")
    ] = None,
) -> None:
    """Run a protocol on a simulated cell (virtual time) or an instrument, storing every sample."""
    if (sim is None) == (instrument is None):
        errors.print("[red]error:[/red] say what to run on: --sim PRESET or --instrument RESOURCE")
        raise typer.Exit(2)
    prepared = prepared_or_exit(protocol_file, cell_spec(area, capacity, mass))
    device: sessions.Device
    try:
        if instrument is not None:
            driver = driver or instruments.guess_driver(instrument)
            device = sessions.Instrument(driver, instrument, poll_s=poll, speed=speed)
            channel_name = f"{driver}:{instrument}"
            source: dict[str, object] = {"instrument": instrument, "driver": driver}
        else:
            assert sim is not None
            values = presets.parse_overrides(overrides or [], params_file)
            presets.make_cell(sim, seed=seed, area_m2=prepared.program.area_m2, overrides=values)  # checks
            device = sessions.SimulatedCell(sim, seed, values)
            channel_name = f"sim:{sim}"
            source = {"preset": sim, "seed": seed} | ({"overrides": overrides} if overrides else {})
    except (presets.PresetError, ValueError) as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    with Store(db) as store, RunProgress(console, plan(prepared.program).total.high) as progress:
        terminal = sessions.Session(
            store, channel_name, device, sessions.Controls(), views=lambda run_id: [progress]
        )

        async def execute() -> tuple[int, RunResult] | list[str]:
            # `cyclerd pause|resume|stop RUN` from another terminal lands in the store.
            poller = asyncio.create_task(sessions.forward_requests(store, terminal.controls))
            try:
                return await terminal.start(prepared, prepared.cell_info(), source)
            finally:
                poller.cancel()

        try:
            outcome = asyncio.run(execute())
        except InstrumentFault as exc:
            errors.print(f"[red]instrument:[/red] {exc}")
            raise typer.Exit(3) from None
    if isinstance(outcome, list):
        for problem in outcome:
            errors.print(f"[red]refused:[/red] {problem}")
        raise typer.Exit(2)
    run_id = outcome[0]
    with Store(db) as store:
        render_summary(console, store, run_id)
    console.print(f"stored as run {run_id} in {db}")


def submit(
    protocol_file: Annotated[Path, typer.Argument(help="The protocol to queue.")],
    channel: Annotated[str, typer.Option("--channel", help="The channel that will run it.")],
    cell: Annotated[str | None, typer.Option("--cell", help="Your cell's id, stored with the run.")] = None,
    area: AreaOption = None,
    capacity: CapacityOption = None,
    mass: MassOption = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Queue a protocol for a channel; it is checked now, so the queue holds only runnable jobs."""
    program = prepared_or_exit(protocol_file, cell_spec(area, capacity, mass)).program
    given = {"cell": cell, "area": area, "capacity": capacity, "mass": mass}
    text = protocol_file.read_text(encoding="utf-8")
    with Store(db) as store:
        cell_info = {key: value for key, value in given.items() if value}
        job = store.jobs.submit(channel, program.name, text, str(protocol_file), cell_info)
    console.print(f"queued as job {job} for channel {channel}")


def queue(db: DbOption = DEFAULT_DB) -> None:
    """The jobs waiting for their channels, oldest first."""
    with Store(db) as store:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name in ("job", "channel", "name", "cell", "submitted (UTC)"):
            table.add_column(name)
        for job in store.jobs.list("queued"):
            submitted = datetime.fromtimestamp(job["submitted_unix"], UTC).strftime("%Y-%m-%d %H:%M")
            cell_id = str(job["cell"].get("cell", ""))
            table.add_row(str(job["id"]), job["channel"], job["name"], cell_id, submitted)
        console.print(table)


def status(db: DbOption = DEFAULT_DB) -> None:
    """Every run that is not over, with its state and the requests still waiting."""
    over = {state.value for state in FINAL}
    with Store(db) as store:
        live = [r for r in store.runs() if r.state not in over]
        if not live:
            console.print("no run in progress")
        for r in live:
            waiting = ", ".join(action for _, action in store.requests.pending(r.id))
            asked = f" (asked: {waiting})" if waiting else ""
            console.print(f"run {r.id} {r.name} on {r.channel}: {r.state}{asked}", markup=False)
        console.print(f"{len(store.jobs.list('queued'))} job(s) queued")


def _request(action: str, run_id: int, db: Path) -> None:
    with Store(db) as store:
        try:
            run = store.run(run_id)
        except KeyError as exc:
            errors.print(f"[red]error:[/red] {exc.args[0]}")
            raise typer.Exit(2) from None
        if run.state in {state.value for state in FINAL}:
            errors.print(f"[red]error:[/red] run {run_id} is {run.state}; it cannot {action}")
            raise typer.Exit(2)
        store.requests.add(run_id, action)
    console.print(f"asked run {run_id} to {action}; whoever runs it acts within a second")


RunArgument = Annotated[int, typer.Argument(metavar="RUN", help="The run's number (see 'cyclerd status').")]


def pause(run_id: RunArgument, db: DbOption = DEFAULT_DB) -> None:
    """Pause a run: the cell is held safe and the step resumes where it stood."""
    _request("pause", run_id, db)


def resume(run_id: RunArgument, db: DbOption = DEFAULT_DB) -> None:
    """Resume a paused run."""
    _request("resume", run_id, db)


def stop(run_id: RunArgument, db: DbOption = DEFAULT_DB) -> None:
    """Stop a run: the cell is made safe and the run ends."""
    _request("stop", run_id, db)


def runs(db: DbOption = DEFAULT_DB) -> None:
    """List the runs in a store."""
    if not db.exists():
        errors.print(f"[red]error:[/red] no store at {db}")
        raise typer.Exit(2)
    with Store(db) as store:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name in ("run", "name", "channel", "state", "started (UTC)"):
            table.add_column(name)
        for r in store.runs():
            started = datetime.fromtimestamp(r.started_unix, UTC).strftime("%Y-%m-%d %H:%M")
            table.add_row(str(r.id), r.name, r.channel, r.state, started)
        console.print(table)


def show(
    run_id: Annotated[int, typer.Argument(metavar="RUN", help="The run's number (see 'cyclerd runs').")],
    db: DbOption = DEFAULT_DB,
    reference_cycle: ReferenceCycleOption = None,
) -> None:
    """Print one run's cycle summary, recomputed from its stored samples."""
    if not db.exists():
        errors.print(f"[red]error:[/red] no store at {db}")
        raise typer.Exit(2)
    with Store(db) as store:
        try:
            store.run(run_id)
        except KeyError as exc:
            errors.print(f"[red]error:[/red] {exc.args[0]}")
            raise typer.Exit(2) from None
        render_summary(console, store, run_id, reference_cycle)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `cyclerd` app."""
    for command in (run, submit, queue, status, pause, resume, stop, runs, show):
        app.command()(command)
