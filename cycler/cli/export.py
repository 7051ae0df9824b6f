"""`cyclerd export` and `cyclerd import`: runs to and from Battery Data Format files (analysis/bdf*.py),
with the cycle table, spectra and fits beside them (analysis/exports.py)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cyclerd.cli.lab import ConfigOption, NewDbOption, ReadDbOption, fail, open_lab, open_or_create_store

# cyclerd.analysis.bdf, bdf_import and exports (and pyarrow with them) load only when a file is written
# or read, so the daemon and every other command start fast. The same conventions as cyclerd.cli.main, which
# imports this module.
console = Console(highlight=False, soft_wrap=True)
DEFAULT_DB = Path("cyclerd.db")


class Format(StrEnum):
    bdf_csv = "bdf-csv"
    bdf_parquet = "bdf-parquet"
    csv = "csv"


SUFFIX = {Format.bdf_csv: ".bdf.csv", Format.bdf_parquet: ".bdf.parquet", Format.csv: ".csv"}


def export(
    run_id: Annotated[int, typer.Argument(metavar="RUN", help="The run's number (see 'cyclerd runs').")],
    fmt: Annotated[
        Format,
        typer.Option("--format", help="bdf-csv or bdf-parquet (Battery Data Format), or csv (SI columns)."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where the samples go (default: runN.bdf.csv, runN.bdf.parquet, runN.csv)."
        ),
    ] = None,
    cycles: Annotated[
        Path | None,
        typer.Option(
            "--cycles", help="Where the cycle table goes (default: NAME.cycles.csv beside the samples)."
        ),
    ] = None,
    spectra: Annotated[
        Path | None,
        typer.Option(
            "--spectra",
            help="Where the spectra go, with step label, DC level, fitted curve (default: NAME.spectra.csv).",
        ),
    ] = None,
    fits: Annotated[
        Path | None,
        typer.Option("--fits", help="Where the fits go, one row per spectrum (default: NAME.fits.csv)."),
    ] = None,
    db: ReadDbOption = None,
    config: ConfigOption = None,
) -> None:
    """Write a run's samples, cycle table, spectra and their fits for other tools to read.

    Each goes to its own file. The samples: runN.bdf.csv, runN.bdf.parquet
    or runN.csv (or -o). Beside them, NAME being that file's name without
    .bdf, .csv and .parquet: NAME.cycles.csv, NAME.spectra.csv and
    NAME.fits.csv (.parquet instead of .csv with bdf-parquet). A run without
    cycles or spectra writes no such file. The DC level comes from the run's
    protocol: an imported run has none, and its spectra leave it out.
    """

    from cyclerd.analysis.bdf import export_run
    from cyclerd.analysis.exports import export_tables, names

    store, _ = open_lab(db, config, fallback=True)  # a wrong --db is named before the output paths
    with store:
        output = output or Path(f"run{run_id}{SUFFIX[fmt]}")
        chosen = {"cycles": cycles, "spectra": spectra, "fits": fits}
        where = {table: chosen[table] or path for table, path in names(output, fmt.value).items()}
        paths = [output, *where.values()]
        for path in paths:
            if not path.parent.is_dir():
                raise fail(f"no directory {path.parent} to write {path.name} in; create it first")
        resolved = [p.resolve() for p in paths]
        clash = next((p for i, p in enumerate(paths) if resolved[i] in resolved[:i]), None)
        if clash is not None:
            raise fail(
                f"two tables would go to {clash}; give each of -o, --cycles, --spectra, --fits its own file"
            )
        try:
            store.run(run_id)
        except KeyError as exc:
            raise fail(exc.args[0]) from None
        try:
            samples = export_run(store, run_id, output, fmt.value)
            console.print(f"run {run_id}: {samples} samples to {output}", markup=False, soft_wrap=True)
            written = export_tables(store, run_id, where)
        except OSError as exc:
            raise fail(f"cannot write {exc.filename or output}: {exc.strerror or exc}") from None
    what = {"cycles": "cycle(s)", "spectra": "spectrum(s)", "fits": "fit(s), one per spectrum"}
    for table, (path, rows) in written.files.items():
        console.print(f"run {run_id}: {rows} {what[table]} to {path}", markup=False, soft_wrap=True)
    if "spectra" in written.files and not written.dc_known:
        console.print(
            f"run {run_id}: no protocol stored with the run to read the DC level from; DC columns left out",
            markup=False,
        )
    for table, asked in chosen.items():
        if asked is not None and table not in written.files:
            console.print(f"run {run_id} has no {table}; nothing written to {asked}", markup=False)


def import_file(
    file: Annotated[Path, typer.Argument(help="A Battery Data Format CSV or Parquet file (or our csv).")],
    channel: Annotated[str, typer.Option("--channel", help="The channel the run is filed under.")] = "import",
    name: Annotated[str | None, typer.Option("--name", help="The run's name (default: the file's).")] = None,
    spectra: Annotated[
        Path | None,
        typer.Option("--spectra", help="A spectra file (CSV or Parquet, as export writes it) to attach."),
    ] = None,
    db: NewDbOption = DEFAULT_DB,
) -> None:
    """Store a file's data as a new run, to show, plot and report like a recorded one."""
    from cyclerd.analysis.bdf_columns import BdfError
    from cyclerd.analysis.bdf_import import import_run

    with open_or_create_store(db) as store:
        try:
            result = import_run(store, file, channel=channel, name=name, spectra=spectra)
        except BdfError as exc:
            raise fail(str(exc)) from None
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
