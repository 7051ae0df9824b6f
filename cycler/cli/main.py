"""The `cyclerd` command line: check protocols now; run, serve and report as they land."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer

from cyclerd.cli import analysis as analysis_cli
from cyclerd.cli import doctor as doctor_cli
from cyclerd.cli import export as export_cli
from cyclerd.cli import runs as runs_cli
from cyclerd.cli.options import AreaOption, CapacityOption, MassOption, cell_spec, console, errors
from cyclerd.cli.plan_view import render_plan
from cyclerd.daemon.config import load_config
from cyclerd.daemon.service import serve_lab
from cyclerd.protocols import ProtocolError, load
from cyclerd.protocols.compiler import CellDataMissing, compile_protocol
from cyclerd.protocols.schema import json_schema_text
from cyclerd.simulators import presets

app = typer.Typer(
    help="cyclerd: battery test protocols on real and simulated instruments.",
    no_args_is_help=True,
    add_completion=False,
)


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


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Protocol files to check.", exists=False)],
    area: AreaOption = None,
    capacity: CapacityOption = None,
    mass: MassOption = None,
) -> None:
    """Check protocol files and print each one's plan; exit 1 if any has an error."""
    spec = cell_spec(area, capacity, mass)
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
            program = compile_protocol(protocol, spec.area_m2, spec.capacity, spec.mass)
        except CellDataMissing as exc:
            console.print(f"[yellow]✓ {path}[/yellow] is valid, but {exc}", markup=True)
            console.print(
                "  give the missing values in the file's cell section or with --area/--capacity/--mass"
            )
            continue
        console.print(f"[green]✓ {path}[/green]")
        render_plan(console, program)
    if failed:
        errors.print(f"[red]{failed} of {len(files)} file(s) have errors[/red]")
        raise typer.Exit(1)


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

            asyncio.run(serve_keithley(preset, port, speed, virtual_step, seed))
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


runs_cli.register(app)
analysis_cli.register(app)
export_cli.register(app)
doctor_cli.register(app)


def main() -> None:
    app()
