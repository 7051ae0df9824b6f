"""`cyclerd export` and `cyclerd import`: runs to and from Battery Data Format files (analysis/bdf*.py)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cyclerd.store.database import Store

# cyclerd.analysis.bdf and bdf_import (and pyarrow with them) load only when a file is written or read,
# so the daemon and every other command start fast. The same conventions as cyclerd.cli.main, which
# imports this module.
console = Console(highlight=False, soft_wrap=True)
errors = Console(stderr=True, highlight=False, soft_wrap=True)  # one problem, one line
DbOption = Annotated[Path, typer.Option("--db", help="The SQLite store (created if missing).")]
DEFAULT_DB = Path("cyclerd.db")


class Format(StrEnum):
    bdf_csv = "bdf-csv"
    bdf_parquet = "bdf-parquet"
    csv = "csv"


SUFFIX = {Format.bdf_csv: ".bdf.csv", Format.bdf_parquet: ".bdf.parquet", Format.csv: ".csv"}


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(2)


def export(
    run_id: Annotated[int, typer.Argument(metavar="RUN", help="The run's number (see 'cyclerd runs').")],
    fmt: Annotated[
        Format,
        typer.Option("--format", help="bdf-csv or bdf-parquet (Battery Data Format), or csv (SI columns)."),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Where to write (default: runN.bdf.csv, ...).")
    ] = None,
    spectra: Annotated[
        Path | None, typer.Option("--spectra", help="Where the run's spectra go (default: runN.spectra.csv).")
    ] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Write a run's samples (and its spectra, if it has any) for other tools to read."""
    from cyclerd.analysis.bdf import export_run, export_spectra, stem

    if not db.exists():
        raise _fail(f"no store at {db}")
    output = output or Path(f"run{run_id}{SUFFIX[fmt]}")
    where = spectra or output.with_name(f"{stem(output)}.spectra.csv")
    for path in (output, where):
        if not path.parent.is_dir():
            raise _fail(f"no directory {path.parent} to write {path.name} in; create it first")
    with Store(db) as store:
        try:
            store.run(run_id)
        except KeyError as exc:
            raise _fail(exc.args[0]) from None
        try:
            samples = export_run(store, run_id, output, fmt.value)
            console.print(f"run {run_id}: {samples} samples to {output}", markup=False)
            count = export_spectra(store, run_id, where)
        except OSError as exc:
            raise _fail(f"cannot write {exc.filename or output}: {exc.strerror or exc}") from None
    if count:
        console.print(f"run {run_id}: {count} spectrum(s) to {where}", markup=False)
    elif spectra is not None:
        console.print(f"run {run_id} has no spectra; nothing written to {spectra}", markup=False)


def import_file(
    file: Annotated[Path, typer.Argument(help="A Battery Data Format CSV or Parquet file (or our csv).")],
    channel: Annotated[str, typer.Option("--channel", help="The channel the run is filed under.")] = "import",
    name: Annotated[str | None, typer.Option("--name", help="The run's name (default: the file's).")] = None,
    spectra: Annotated[
        Path | None, typer.Option("--spectra", help="A spectra CSV (as export writes it) to attach.")
    ] = None,
    db: DbOption = DEFAULT_DB,
) -> None:
    """Store a file's data as a new run, to show, plot and report like a recorded one."""
    from cyclerd.analysis.bdf_columns import BdfError
    from cyclerd.analysis.bdf_import import import_run

    with Store(db) as store:
        try:
            result = import_run(store, file, channel=channel, name=name, spectra=spectra)
        except BdfError as exc:
            raise _fail(str(exc)) from None
    console.print(
        f"run {result.run_id} in {db}: {result.samples} samples from {file},"
        f" {result.steps} step(s), {result.cycles} cycle(s)",
        markup=False,
    )
    if spectra is not None:
        console.print(f"run {result.run_id}: {result.spectra} spectrum(s) from {spectra}", markup=False)
    if result.ignored:
        console.print(f"columns cyclerd does not use: {', '.join(result.ignored)}", markup=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `cyclerd` app."""
    app.command("export")(export)
    app.command("import")(import_file)
