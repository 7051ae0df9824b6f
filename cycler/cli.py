"""The `cyclerd` command line: check protocols now; run, serve and report as they land."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cyclerd.clock import VirtualClock
from cyclerd.engine import Runner
from cyclerd.plan_view import render_plan
from cyclerd.progress import RunProgress
from cyclerd.protocols import ProtocolError, load
from cyclerd.protocols.compiler import CellDataMissing, compile_protocol
from cyclerd.protocols.plan import plan
from cyclerd.protocols.schema import json_schema_text
from cyclerd.protocols.units import AREA, parse_charge, parse_positive
from cyclerd.simulators import presets
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.store import Store
from cyclerd.summary_view import render_summary

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
    """Run a protocol on a simulated cell (in virtual time) and store every sample."""
    if sim is None:
        errors.print("[red]error:[/red] say what to run on: --sim PRESET (instruments come with the drivers)")
        raise typer.Exit(2)
    try:
        area_m2 = None if area is None else parse_positive(area, AREA)
        cell_capacity = None if capacity is None else parse_charge(capacity)
        protocol = load(protocol_file)
        program = compile_protocol(protocol, area_m2, cell_capacity)
        cell = presets.make_cell(
            sim,
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
    source = {"preset": sim, "seed": seed, **({"overrides": overrides} if overrides else {})}
    with Store(db) as store:
        cell_info = {"area_m2": program.area_m2, "capacity_As": program.capacity_As, **program.metadata}
        run_id = store.create_run(program.name, f"sim:{sim}", text, cell_info, source)
        clock = VirtualClock()
        channel = SimulatedChannel(cell, clock)
        with RunProgress(console, plan(program).total.high) as progress:
            runner = Runner(program, channel, store, run_id, clock, on_batch=progress.batch_callback(clock))
            progress.runner = runner
            asyncio.run(runner.run())
        render_summary(console, store, run_id)
        console.print(f"stored as run {run_id} in {db}")


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


def main() -> None:
    app()
