"""The `cyclerd` command line: check protocols now; run, serve and report as they land."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cyclerd.alerts.config import AlertsSetupError
from cyclerd.alerts.notifier import Alerts
from cyclerd.alerts.watch import watch_lab
from cyclerd.cli import analysis as analysis_cli
from cyclerd.cli import control as control_cli
from cyclerd.cli import doctor as doctor_cli
from cyclerd.cli import export as export_cli
from cyclerd.cli import runs as runs_cli
from cyclerd.cli import web as web_cli
from cyclerd.cli.exit_codes import ExitCode
from cyclerd.cli.lab import fail, load_lab, store_to_serve
from cyclerd.cli.options import AreaOption, CapacityOption, MassOption, cell_spec, console, errors
from cyclerd.cli.plan_view import render_plan
from cyclerd.daemon.lock import LabInUse
from cyclerd.daemon.logs import LogFormat, configure_logging
from cyclerd.daemon.service import serve_lab
from cyclerd.drivers.cycler import CYCLERS
from cyclerd.protocols import ProtocolError, load
from cyclerd.protocols.compiler import CellDataMissing, compile_protocol
from cyclerd.protocols.schema import json_schema_text
from cyclerd.simulators import presets

app = typer.Typer(
    help="cyclerd: battery test protocols on real and simulated instruments.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
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
    # A file name that is not UTF-8 reaches Python with surrogates in it; echoing it back in a
    # message must not fail, so it is printed escaped (`\udcff`) rather than raise.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


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
            errors.print(f"[red]✗ {escape(str(path))}[/red]")
            errors.print(str(exc), markup=False)
            continue
        try:
            program = compile_protocol(protocol, spec.area_m2, spec.capacity, spec.mass)
        except CellDataMissing as exc:
            console.print(f"[yellow]✓ {escape(str(path))}[/yellow] is valid, but {escape(str(exc))}")
            console.print(
                "  give the missing values in the file's cell section or with --area/--capacity/--mass"
            )
            continue
        console.print(f"[green]✓ {escape(str(path))}[/green]")
        render_plan(console, program)
    if failed:
        errors.print(f"[red]{failed} of {len(files)} file(s) have errors[/red]")
        raise typer.Exit(ExitCode.PROBLEMS)


@app.command()
def emulate(
    instrument: Annotated[str, typer.Argument(help="keithley2450, methodscript, maccor, neware or arbin.")],
    preset: Annotated[str, typer.Option("--preset", help="The simulated cell on its terminals.")] = "mgagsn",
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=0, max=65535, help="TCP port (0: any free one); default: the instrument's own."
        ),
    ] = None,
    channels: Annotated[
        int, typer.Option("--channels", min=1, max=512, help="A cycler's channels, each with its own cell.")
    ] = 8,
    speed: Annotated[
        float, typer.Option("--speed", help="Real time x this; 0: virtual time (not for cyclers).")
    ] = 1.0,
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

            asyncio.run(serve_keithley(preset, 5025 if port is None else port, speed, virtual_step, seed))
        elif instrument == "methodscript":
            from cyclerd.simulators.methodscript_emulator import serve as serve_methodscript

            asyncio.run(
                serve_methodscript(
                    preset, 5025 if port is None else port, pty=True, speed=speed or None, seed=seed
                )
            )
        elif instrument in CYCLERS:
            from cyclerd.simulators.cycler_emulators import cycler_emulator

            emulator = cycler_emulator(instrument)
            asyncio.run(emulator.serve(preset, port, speed, seed, channels))
        else:
            raise fail(f"no emulator {instrument!r}; choose keithley2450, methodscript, {', '.join(CYCLERS)}")
    except KeyboardInterrupt:
        pass
    except (presets.PresetError, ValueError) as exc:  # ValueError: a cycler at speed 0, say
        raise fail(str(exc)) from None
    except OSError as exc:  # the port is taken, or a pty cannot be opened
        raise fail(f"cannot serve the {instrument} emulator: {exc.strerror or exc}") from None


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", help="The lab's configuration (see docs/lab.toml).")],
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Stop once no channel has a queued job (tests, batch use).")
    ] = False,
    log_format: Annotated[
        LogFormat,
        typer.Option(
            "--log-format",
            help="text for people; json: one object a line (time, level, logger, message, run, channel,"
            " cell, kind), for journald and log shippers.",
        ),
    ] = LogFormat.TEXT,
) -> None:
    """Run the lab: one task per channel, each working through its queued jobs."""
    configure_logging(log_format)
    lab = load_lab(config)
    # What the daemon needs from disk is checked before any channel starts: a message now, not
    # a traceback from inside the event loop.
    if (waiting := store_to_serve(lab.database)) is not None:
        errors.print(f"cannot write the store now: {waiting}; the daemon starts and waits", markup=False)
    if lab.mqtt is not None:
        try:
            lab.mqtt.password()
        except (OSError, UnicodeDecodeError) as exc:
            doctor = f"`cyclerd doctor --config {config}` says more"
            raise fail(f"cannot read the broker password ({exc}); {doctor}") from None
    try:  # the alerts' secrets, likewise: a missing webhook token is found now, not at a fault
        Alerts.from_config(lab.alerts, lab=lab.lab)
    except AlertsSetupError as exc:
        raise fail(str(exc)) from None
    serving = f"cyclerd serving lab {lab.lab}: {len(lab.channels)} channel(s), store {lab.database}"
    console.print(serving, markup=False)
    # SIGINT and SIGTERM both end here once every channel has made its cell safe: a clean exit.
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        try:
            asyncio.run(serve_lab(lab, until_idle))
        except LabInUse as exc:
            raise fail(str(exc), ExitCode.REFUSED) from None
        except Exception:  # a daemon's own failure: its traceback belongs in the journal
            logging.getLogger("cyclerd").exception("the daemon stopped on an error it did not expect")
            raise typer.Exit(ExitCode.INTERNAL_ERROR) from None


@app.command()
def watch(
    config: Annotated[Path, typer.Option("--config", help="The lab's configuration (see docs/lab.toml).")],
) -> None:
    """Alert the lab's receivers when its daemon goes offline (run it on another PC: docs/alerts.md)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    lab = load_lab(config)
    if lab.alerts is None:
        raise fail(f"{config} has no [alerts] table: nobody to tell (see docs/alerts.md)")
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        try:
            asyncio.run(watch_lab(lab, lab.alerts))
        except (AlertsSetupError, OSError) as exc:
            raise fail(str(exc)) from None


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
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise fail(f"cannot write {output}: {exc.strerror or exc}") from None
        errors.print(f"wrote {output}", markup=False, soft_wrap=True)


runs_cli.register(app)
control_cli.register(app)
analysis_cli.register(app)
export_cli.register(app)
doctor_cli.register(app)
web_cli.register(app)


def _said(command: Callable[..., None]) -> Callable[..., None]:
    """An OSError a command did not foresee (a name too long for the file system, a full disk)
    is still about a file: it is said in one line, naming the file, with the bad-input code."""

    @functools.wraps(command)
    def said(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            raise fail(f"{where}{exc.strerror or exc}") from None

    return said


for _info in app.registered_commands:
    if _info.callback is not None and _info.callback is not serve:
        _info.callback = _said(_info.callback)

DEBUG_ENV = "CYCLERD_DEBUG"


def main() -> None:
    """The `cyclerd` command. A failure no command foresaw is a bug: it is reported in one line
    with exit code 70, not as a traceback ($CYCLERD_DEBUG=1 shows the traceback)."""
    try:
        app()
    except Exception as exc:  # the last net under every command, for the operator
        if os.environ.get(DEBUG_ENV):
            raise
        errors.print(
            f"cyclerd: internal error ({type(exc).__name__}: {exc}); please report it with the command"
            f" you ran ({DEBUG_ENV}=1 shows where it happened)",
            markup=False,
        )
        sys.exit(ExitCode.INTERNAL_ERROR)
