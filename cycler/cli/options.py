"""What the `cyclerd` commands share: the consoles they print to and the options they take alike."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cyclerd.cli.exit_codes import ExitCode
from cyclerd.engine.session import CellSpec, Prepared, prepare_file
from cyclerd.protocols import ProtocolError
from cyclerd.protocols.compiler import CellDataMissing

# Plans are read in logs and CI output too, where rich would otherwise wrap at 80 columns.
console = Console(highlight=False, width=None if Console().is_terminal else 120)
errors = Console(stderr=True, highlight=False, soft_wrap=True)  # one problem, one line

AreaOption = Annotated[
    str | None,
    typer.Option("--area", help="Electrode area, e.g. '0.785 cm^2' (overrides cell.area)."),
]
CapacityOption = Annotated[
    str | None,
    typer.Option("--capacity", help="Nominal capacity, e.g. '1.57 mAh' or '2 mAh/cm^2'."),
]
MassOption = Annotated[
    str | None,
    typer.Option(
        "--mass",
        help="Active-material mass, e.g. '10.3 mg' or per area '10.3 mg/cm^2' (overrides cell.active_mass).",
    ),
]

ReferenceCycleOption = Annotated[
    int | None,
    typer.Option(
        "--reference-cycle",
        min=1,
        help="Capacity retention against this cycle (default: the first cycle of each cycle's loop).",
    ),
]


def cell_spec(area: str | None, capacity: str | None, mass: str | None = None) -> CellSpec:
    """--area, --capacity and --mass read once; a value that is not one exits with status 2, saying why."""
    try:
        return CellSpec.parse(area, capacity, mass)
    except ValueError as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(ExitCode.BAD_INPUT) from None


def prepared_or_exit(path: Path, spec: CellSpec) -> Prepared:
    """The protocol file compiled for the cell; else its problems, and exit 1 (errors in the
    file) or 2 (cell data missing)."""
    try:
        return prepare_file(path, spec)
    except ProtocolError as exc:
        errors.print(str(exc), markup=False)
        raise typer.Exit(ExitCode.PROBLEMS) from None
    except CellDataMissing as exc:
        errors.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(ExitCode.BAD_INPUT) from None
