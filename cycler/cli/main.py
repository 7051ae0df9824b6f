"""The `cyclerd` command line: check protocols now; run, serve and report as they land."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import cyclerd.engine.instruments as instruments
from cyclerd.cli import analysis as analysis_cli
from cyclerd.cli import doctor as doctor_cli
from cyclerd.cli import export as export_cli
from cyclerd.cli.plan_view import render_plan
from cyclerd.cli.progress import RunProgress
from cyclerd.cli.summary_view import render_summary
from cyclerd.daemon.config import load_config
from cyclerd.daemon.service import serve_lab
from cyclerd.drivers.base import Channel, InstrumentFault, unmet_needs
from cyclerd.drivers.clock import AcceleratedClock, Clock, RealClock, VirtualClock
from cyclerd.engine.control import follow_requests
from cyclerd.engine.runner import Runner
from cyclerd.engine.states import FINAL
from cyclerd.protocols import ProtocolError, load
from cyclerd.protocols.compiler import CellDataMissing, compile_protocol
from cyclerd.protocols.plan import plan
from cyclerd.protocols.schema import json_schema_text
from cyclerd.protocols.units import AREA, parse_charge, parse_positive
from cyclerd.simulators import presets
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.store.database import Store

app = typer.Typer(
    help="cyclerd: battery test protocols on real and simulated instruments.",
    no_args_is_help=True,
    add_completion=False,
)
# Plans are read in logs and CI output too, where rich would otherwise wrap at 80 columns.
console = Console(highlight=False, width=None if Console().is_terminal else 120)
errors = Console(stderr=True, highlight=False, soft_wrap=True)  # one problem, one line


def _version(value: bool) -> None:
    if value:
        console.print(f"cyclerd {version('cyclerd')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Battery test protocols on real and simulated instruments."""


AreaOption = Annotated[
    str | None,
    typer.Option("--area", help="Electrode area, e.g. '0.785 cm^2' (overrides cell.area)."),
]
CapacityOption = Annotated[
    str | None,
    typer.Option("--capacity", help="Nominal capacity, e.g. '1.57 mAh' or '2 mAh/cm^2'."),
]


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Protocol files to check.", exists=False)],
    area: AreaOption = None,
    capacity: CapacityOption = None,
) -> None:
    """Check protocol files and print each one's plan; exit 1 if any has an error."""
    try:
        area_m2 = None if area is None else parse_positive(area, AREA)
        cell_capacity = None if capacity is None else parse_charge(capacity)
    except ValueError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    failed = 0
    for path in files:
        try:
            protocol = load(path)
        except ProtocolError as exc:
            failed += 1
            errors.print(f"[red]✗ {path}[/red]")
            errors.print(str(exc), markup=False)
            continue
        try:
            program = compile_protocol(protocol, area_m2, cell_capacity)
        except CellDataMissing as exc:
            console.print(f"[yellow]✓ {path}[/yellow] is valid, but {exc}", markup=True)
            console.print("  give the missing values in the file's cell section or with --area/--capacity")
            continue
        console.print(f"[green]✓ {path}[/green]")
        render_plan(console, program)
    if failed:
        errors.print(f"[red]{failed} of {len(files)} file(s) have errors[/red]")
        raise typer.Exit(1)


DbOption = Annotated[Path, typer.Option("--db", help="The SQLite store (created if missing).")]
DEFAULT_DB = Path("cyclerd.db")


@app.command()
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
    try:
        area_m2 = None if area is None else parse_positive(area, AREA)
        cell_capacity = None if capacity is None else parse_charge(capacity)
        protocol = load(protocol_file)
        program = compile_protocol(protocol, area_m2, cell_capacity)
        if instrument is not None:
            driver = driver or instruments.guess_driver(instrument)
            cell = None
        else:
            cell = presets.make_cell(
                sim or "",
                seed=seed,
                area_m2=program.area_m2,
                overrides=presets.parse_overrides(overrides or [], params_file),
            )
    except ProtocolError as exc:
        errors.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    except (CellDataMissing, presets.PresetError, ValueError) as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    text = protocol_file.read_text(encoding="utf-8")
    with Store(db) as store:
        cell_info = {"area_m2": program.area_m2, "capacity_As": program.capacity_As, **program.metadata}
        if cell is not None:
            source: dict[str, object] = {"preset": sim, "seed": seed}
            if overrides:
                source["overrides"] = overrides
            clock: Clock = VirtualClock()
            channel_name = f"sim:{sim}"
        else:
            source = {"instrument": instrument, "driver": driver}
            clock = AcceleratedClock(speed) if speed != 1.0 else RealClock()
            channel_name = f"{driver}:{instrument}"

        async def execute(channel: Channel) -> int:
            problems = unmet_needs(program.needs(), channel.capabilities, channel_name)
            if problems:
                for problem in problems:
                    errors.print(f"[red]refused:[/red] {problem}")
                return -1
            run_id = store.create_run(program.name, channel_name, text, cell_info, source)
            with RunProgress(console, plan(program).total.high) as progress:
                runner = Runner(
                    program, channel, store, run_id, clock, on_batch=progress.batch_callback(clock)
                )
                progress.runner = runner
                # `cyclerd pause|resume|stop RUN` from another terminal lands in the store.
                follower = asyncio.create_task(follow_requests(store, run_id, runner))
                try:
                    await runner.run()
                finally:
                    follower.cancel()
            return run_id

        async def on_instrument() -> int:
            assert instrument is not None
            assert driver is not None
            async with instruments.open_channel(driver, instrument, clock, poll) as channel:
                return await execute(channel)

        try:
            if cell is not None:
                run_id = asyncio.run(execute(SimulatedChannel(cell, clock)))
            else:
                run_id = asyncio.run(on_instrument())
        except InstrumentFault as exc:
            errors.print(f"[red]instrument:[/red] {exc}")
            raise typer.Exit(3) from None
        if run_id < 0:
            raise typer.Exit(2)
        render_summary(console, store, run_id)
        console.print(f"stored as run {run_id} in {db}")


@app.command()
def submit(
    protocol_file: Annotated[Path, typer.Argument(help="The protocol to queue.")],
    channel: Annotated[str, typer.Option("--channel", help="The channel that will run it.")],
    cell: Annotated[str | None, typer.Option("--cell", help="Your cell's id, stored with the run.")] = None,
    area: AreaOption = None,
    capacity: CapacityOption = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Queue a protocol for a channel; it is checked now, so the queue holds only runnable jobs."""
    try:
        area_m2 = None if area is None else parse_positive(area, AREA)
        cell_capacity = None if capacity is None else parse_charge(capacity)
        program = compile_protocol(load(protocol_file), area_m2, cell_capacity)
    except ProtocolError as exc:
        errors.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    except (CellDataMissing, ValueError) as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    given = {"cell": cell, "area": area, "capacity": capacity}
    text = protocol_file.read_text(encoding="utf-8")
    with Store(db) as store:
        cell_info = {key: value for key, value in given.items() if value}
        job = store.submit_job(channel, program.name, text, str(protocol_file), cell_info)
    console.print(f"queued as job {job} for channel {channel}")


@app.command()
def queue(db: DbOption = DEFAULT_DB) -> None:
    """The jobs waiting for their channels, oldest first."""
    with Store(db) as store:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name in ("job", "channel", "name", "cell", "submitted (UTC)"):
            table.add_column(name)
        for job in store.jobs("queued"):
            submitted = datetime.fromtimestamp(job["submitted_unix"], UTC).strftime("%Y-%m-%d %H:%M")
            cell_id = str(job["cell"].get("cell", ""))
            table.add_row(str(job["id"]), job["channel"], job["name"], cell_id, submitted)
        console.print(table)


@app.command()
def status(db: DbOption = DEFAULT_DB) -> None:
    """Every run that is not over, with its state and the requests still waiting."""
    over = {state.value for state in FINAL}
    with Store(db) as store:
        live = [r for r in store.runs() if r.state not in over]
        if not live:
            console.print("no run in progress")
        for r in live:
            waiting = ", ".join(action for _, action in store.pending_requests(r.id))
            asked = f" (asked: {waiting})" if waiting else ""
            console.print(f"run {r.id} {r.name} on {r.channel}: {r.state}{asked}", markup=False)
        console.print(f"{len(store.jobs('queued'))} job(s) queued")


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
        store.request(run_id, action)
    console.print(f"asked run {run_id} to {action}; whoever runs it acts within a second")


RunArgument = Annotated[int, typer.Argument(metavar="RUN", help="The run's number (see 'cyclerd status').")]


@app.command()
def pause(run_id: RunArgument, db: DbOption = DEFAULT_DB) -> None:
    """Pause a run: the cell is held safe and the step resumes where it stood."""
    _request("pause", run_id, db)


@app.command()
def resume(run_id: RunArgument, db: DbOption = DEFAULT_DB) -> None:
    """Resume a paused run."""
    _request("resume", run_id, db)


@app.command()
def stop(run_id: RunArgument, db: DbOption = DEFAULT_DB) -> None:
    """Stop a run: the cell is made safe and the run ends."""
    _request("stop", run_id, db)


@app.command()
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


@app.command()
def show(
    run_id: Annotated[int, typer.Argument(metavar="RUN", help="The run's number (see 'cyclerd runs').")],
    db: DbOption = DEFAULT_DB,
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
        render_summary(console, store, run_id)


@app.command()
def emulate(
    instrument: Annotated[str, typer.Argument(help="keithley2450 or methodscript.")],
    preset: Annotated[str, typer.Option("--preset", help="The simulated cell on its terminals.")] = "mgagsn",
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free one).")] = 5025,
    speed: Annotated[float, typer.Option("--speed", help="Real time x this; 0: virtual time.")] = 1.0,
    virtual_step: Annotated[
        float | None, typer.Option("--virtual-step", help="Keithley: seconds of cell time per reading.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Serve an emulated instrument with a simulated cell, for drivers or any SCPI/serial tool."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if instrument == "keithley2450":
            from cyclerd.simulators.keithley2450_emulator import serve as serve_keithley

            asyncio.run(serve_keithley(preset, port, speed or 1.0, virtual_step, seed))
        elif instrument == "methodscript":
            from cyclerd.simulators.methodscript_emulator import serve as serve_methodscript

            asyncio.run(serve_methodscript(preset, port, pty=True, speed=speed or None, seed=seed))
        else:
            errors.print(f"[red]error:[/red] no emulator {instrument!r}; choose keithley2450 or methodscript")
            raise typer.Exit(2)
    except KeyboardInterrupt:
        pass
    except presets.PresetError as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", help="The lab's configuration (see docs/lab.toml).")],
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Stop once no channel has a queued job (tests, batch use).")
    ] = False,
) -> None:
    """Run the lab: one task per channel, each working through its queued jobs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        lab = load_config(config)
    except ProtocolError as exc:
        errors.print(str(exc), markup=False)
        raise typer.Exit(1) from None
    console.print(f"cyclerd serving lab {lab.lab}: {len(lab.channels)} channel(s), store {lab.database}")
    # SIGINT and SIGTERM both end here once every channel has made its cell safe: a clean exit.
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(serve_lab(lab, until_idle))


@app.command()
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of to stdout.")
    ] = None,
) -> None:
    """Write the JSON Schema of protocol files (point your editor at it to check as you type)."""
    text = json_schema_text()
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        errors.print(f"wrote {output}")


analysis_cli.register(app)
export_cli.register(app)
doctor_cli.register(app)


def main() -> None:
    app()
