"""The `cyclerd` command line: check protocols now; run, serve and report as they land."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cyclerd.plan_view import render_plan
from cyclerd.protocols import ProtocolError, load
from cyclerd.protocols.compiler import CellDataMissing, compile_protocol
from cyclerd.protocols.schema import json_schema_text
from cyclerd.protocols.units import AREA, parse_charge, parse_positive

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
