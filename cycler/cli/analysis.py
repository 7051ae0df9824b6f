"""`cyclerd plot` and `cyclerd report`: the paper's figures and an HTML report from stored runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cyclerd.cli.options import ReferenceCycleOption
from cyclerd.store.database import Store

# The kinds are named here, not imported: matplotlib and scipy load only when a figure is drawn,
# so the daemon and every other command start fast. A test checks this list against plots.KINDS.
KIND_NAMES = (
    "voltage",
    "first-cycle",
    "ce",
    "cumulative-ce",
    "retention",
    "nyquist",
    "resistance",
    "dqdv",
    "cv",
)

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False, soft_wrap=True)  # one problem, one line

# The same options as cyclerd.cli.main's (which imports this module, so it cannot be imported from here).
DbOption = Annotated[Path, typer.Option("--db", help="The SQLite store holding the runs.")]
DEFAULT_DB = Path("cyclerd.db")
RunsArgument = Annotated[
    list[int], typer.Argument(metavar="RUN...", help="The run number(s) (see 'cyclerd runs').")
]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    return typer.Exit(2)


def _open(db: Path) -> Store:
    """The store at `db`; refuse a missing file rather than create an empty store and say 'no run'."""
    if not db.exists():
        raise _fail(f"no store at {db}; give the file the runs were stored in with --db")
    return Store(db)


def _check_runs(store: Store, run_ids: list[int], db: Path) -> None:
    for run_id in run_ids:
        try:
            store.run(run_id)
        except KeyError as exc:
            raise _fail(f"{exc.args[0]}; 'cyclerd runs --db {db}' lists the runs it holds") from None


def _check_output(path: Path) -> None:
    if not path.parent.is_dir():
        raise _fail(f"cannot write {path}: the folder {path.parent} does not exist; create it first")


def plot(
    run_ids: RunsArgument,
    kind: Annotated[str, typer.Option("--kind", "-k", help=f"What to draw: {', '.join(KIND_NAMES)}.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="PNG or SVG file (by its suffix); default run<RUN>-<KIND>.png."),
    ] = None,
    db: DbOption = DEFAULT_DB,
    cycle: Annotated[
        int | None,
        typer.Option("--cycle", help="The cycle drawn by first-cycle and dqdv (default: the first)."),
    ] = None,
    reference_cycle: ReferenceCycleOption = None,
) -> None:
    """Draw one of the paper's figures for a run (several runs overlay or get one panel each)."""
    from cyclerd.analysis.plots import PlotError, figure_of, output_format, save_figure

    if kind not in KIND_NAMES:
        raise _fail(f"no plot kind {kind!r}; choose one of {', '.join(KIND_NAMES)}")
    path = output or Path(f"run{'-'.join(map(str, run_ids))}-{kind}.png")
    try:
        output_format(path)
    except PlotError as exc:
        raise _fail(str(exc)) from None
    _check_output(path)
    with _open(db) as store:
        _check_runs(store, run_ids, db)
        try:
            figure = figure_of(store, run_ids, kind, cycle, reference_cycle)
        except PlotError as exc:
            raise _fail(str(exc)) from None
    save_figure(figure, path)
    console.print(f"wrote {path}", markup=False)


def report(
    run_ids: RunsArgument,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The HTML file; default report-run<RUN>.html."),
    ] = None,
    db: DbOption = DEFAULT_DB,
    reference_cycle: ReferenceCycleOption = None,
) -> None:
    """Write one self-contained HTML page for one run or a comparison of several (opens from file://)."""
    path = output or Path(f"report-run{'-'.join(map(str, run_ids))}.html")
    if path.suffix.lower() not in (".html", ".htm"):
        raise _fail(f"{path}: a report is an HTML page; end the file name in .html")
    _check_output(path)
    with _open(db) as store:
        _check_runs(store, run_ids, db)
        from cyclerd.analysis.report import write_report

        write_report(store, run_ids, path, reference_cycle=reference_cycle)
    console.print(f"wrote {path}", markup=False)


def register(app: typer.Typer) -> None:
    """Add `plot` and `report` to the `cyclerd` app."""
    app.command()(plot)
    app.command()(report)
