"""`cyclerd doctor`: the report of cyclerd.doctor.diagnose's checks as a table, and an exit code a script
(or an installer) can act on: 0 when everything is ok or only warns, 1 when anything failed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cyclerd.doctor.diagnose import Check, Verdict, diagnose, exit_code

# Wide when not a terminal: the details are read in journals and CI logs, where wrapping hurts.
console = Console(highlight=False, width=None if Console().is_terminal else 160)
STYLES = {Verdict.OK: "green", Verdict.WARN: "yellow", Verdict.FAIL: "bold red"}


def render(console: Console, config: Path, checks: list[Check]) -> None:
    table = Table(title=Text(f"cyclerd doctor: {config}"), title_justify="left")
    table.add_column("check", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for check in checks:
        # Text, not markup: details hold paths and "[mqtt]", which rich would take for tags.
        table.add_row(check.name, Text(str(check.verdict), STYLES[check.verdict]), Text(check.detail))
    console.print(table)
    counts = {v: sum(c.verdict is v for c in checks) for v in Verdict}
    console.print(f"{counts[Verdict.OK]} ok, {counts[Verdict.WARN]} warn, {counts[Verdict.FAIL]} FAIL")


def doctor(
    config: Annotated[Path, typer.Option("--config", help="The lab's configuration (see docs/lab.toml).")],
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.1, help="Seconds each broker and instrument check may take.")
    ] = 2.0,
    instruments: Annotated[
        bool,
        typer.Option(
            "--instruments/--no-instruments", help="Ask each instrument who it is (read-only queries)."
        ),
    ] = True,
) -> None:
    """Check that this PC can serve the lab: config, database, broker, instruments; exit 1 on a FAIL."""
    checks = asyncio.run(diagnose(config, timeout, instruments))
    render(console, config, checks)
    raise typer.Exit(exit_code(checks))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `cyclerd` app."""
    app.command()(doctor)
