"""`cyclerd plot` and `cyclerd report`: the paper's figures and an HTML report from stored runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cyclerd.cli.lab import ConfigOption, ReadDbOption, fail, open_lab
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
RunsArgument = Annotated[
    list[int], typer.Argument(metavar="RUN...", help="The run number(s) (see 'cyclerd runs').")
]


def _open(db: Path | None, config: Path | None, run_ids: list[int]) -> Store:
    """The store holding the runs, refused when missing rather than created empty to say 'no run'."""
    store, where = open_lab(db, config, fallback=True)
    for run_id in run_ids:
        try:
            store.run(run_id)
        except KeyError as exc:
            store.close()
            raise fail(f"{exc.args[0]}; 'cyclerd runs --db {where.path}' lists the runs it holds") from None
    return store


def _check_output(path: Path) -> None:
    if not path.parent.is_dir():
        raise fail(f"cannot write {path}: the folder {path.parent} does not exist; create it first")


def plot(
    run_ids: RunsArgument,
    kind: Annotated[str, typer.Option("--kind", "-k", help=f"What to draw: {', '.join(KIND_NAMES)}.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="PNG or SVG file (by its suffix); default run<RUN>-<KIND>.png."),
    ] = None,
    db: ReadDbOption = None,
    config: ConfigOption = None,
    cycle: Annotated[
        int | None,
        typer.Option("--cycle", help="The cycle drawn by first-cycle and dqdv (default: the first)."),
    ] = None,
    reference_cycle: ReferenceCycleOption = None,
) -> None:
    """Draw one of the paper's figures for a run (several runs overlay or get one panel each)."""
    from cyclerd.analysis.plots import PlotError, figure_of, output_format, save_figure

    if kind not in KIND_NAMES:
        raise fail(f"no plot kind {kind!r}; choose one of {', '.join(KIND_NAMES)}")
    path = output or Path(f"run{'-'.join(map(str, run_ids))}-{kind}.png")
    try:
        output_format(path)
    except PlotError as exc:
        raise fail(str(exc)) from None
    _check_output(path)
    with _open(db, config, run_ids) as store:
        try:
            figure = figure_of(store, run_ids, kind, cycle, reference_cycle)
        except PlotError as exc:
            raise fail(str(exc)) from None
    try:
        save_figure(figure, path)
    except OSError as exc:
        raise fail(f"cannot write {path}: {exc.strerror or exc}") from None
    console.print(f"wrote {path}", markup=False, soft_wrap=True)


def report(
    run_ids: RunsArgument,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="The HTML file; default report-run<RUN>.html."),
    ] = None,
    db: ReadDbOption = None,
    config: ConfigOption = None,
    reference_cycle: ReferenceCycleOption = None,
) -> None:
    """Write one self-contained HTML page for one run or a comparison of several (opens from file://)."""
    path = output or Path(f"report-run{'-'.join(map(str, run_ids))}.html")
    if path.suffix.lower() not in (".html", ".htm"):
        raise fail(f"{path}: a report is an HTML page; end the file name in .html")
    _check_output(path)
    with _open(db, config, run_ids) as store:
        from cyclerd.analysis.report import write_report

        try:
            write_report(store, run_ids, path, reference_cycle=reference_cycle)
        except OSError as exc:
            raise fail(f"cannot write {path}: {exc.strerror or exc}") from None
        except UnicodeEncodeError:  # the page names its store, and cannot hold a name that is not text
            raise fail(
                f"cannot write {path}: the store's name {store.path} is not UTF-8; rename it"
            ) from None
    console.print(f"wrote {path}", markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `plot` and `report` to the `cyclerd` app."""
    app.command()(plot)
    app.command()(report)
