"""`cyclerd run`, `runs` and `show`: run a protocol here and now, list the stored runs, show one.

`run` exits with a code that says how the run ended (cyclerd.cli.exit_codes), and beats a
heartbeat into the store while it runs, so that `cyclerd status` and `stop` in another terminal
know it is there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

import cyclerd.engine.instruments as instruments
from cyclerd.cli.exit_codes import ExitCode, of_run
from cyclerd.cli.lab import (
    DEFAULT_DB,
    ConfigOption,
    NewDbOption,
    ReadDbOption,
    fail,
    open_lab,
    open_or_create_store,
)
from cyclerd.cli.options import (
    AreaOption,
    CapacityOption,
    MassOption,
    ReferenceCycleOption,
    cell_spec,
    console,
    errors,
    prepared_or_exit,
)
from cyclerd.cli.progress import RunProgress
from cyclerd.cli.summary_view import render_summary
from cyclerd.daemon.config import EMULATOR_EXAMPLES, emulated
from cyclerd.drivers.base import InstrumentFault
from cyclerd.drivers.cycler import CYCLERS
from cyclerd.engine import session as sessions
from cyclerd.engine.runner import RunResult
from cyclerd.engine.sinks import Sink
from cyclerd.protocols.plan import plan
from cyclerd.protocols.program import Program
from cyclerd.simulators import presets
from cyclerd.store import heartbeat
from cyclerd.store.database import Store


def run(
    protocol_file: Annotated[Path, typer.Argument(help="The protocol to run.")],
    sim: Annotated[
        str | None, typer.Option("--sim", help=f"Simulated cell: {', '.join(presets.names())}.")
    ] = None,
    instrument: Annotated[
        str | None,
        typer.Option(
            "--instrument", help="A real or emulated instrument: TCPIP::host::5025::SOCKET, /dev/ttyUSB0, ..."
        ),
    ] = None,
    driver: Annotated[
        str | None, typer.Option("--driver", help=f"Instrument driver: {', '.join(instruments.DRIVERS)}.")
    ] = None,
    speed: Annotated[
        float, typer.Option("--speed", help="Time acceleration of an emulated instrument (same as its own).")
    ] = 1.0,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between readings of an SMU.")] = 1.0,
    cycler_channel: Annotated[
        int | None,
        typer.Option("--cycler-channel", min=1, help="Which channel of a cycler (tcp://...), from 1."),
    ] = None,
    db: NewDbOption = DEFAULT_DB,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the simulated cell's randomness.")] = 0,
    cell: Annotated[str | None, typer.Option("--cell", help="Your cell's id, stored with the run.")] = None,
    area: AreaOption = None,
    capacity: CapacityOption = None,
    mass: MassOption = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a simulator parameter: NAME=VALUE.")
    ] = None,
    params_file: Annotated[
        Path | None, typer.Option("--params", help="YAML/JSON file of simulator parameters.")
    ] = None,
) -> None:
    """Run a protocol on a simulated cell (virtual time) or an instrument, storing every sample.

    The exit code says how the run ended: 0 completed, 3 instrument fault, 4 refused (the
    instrument cannot do what the protocol needs), 5 stopped by a safety limit, 6 stopped on
    request; see docs/cli.md.
    """
    if sim is not None and instrument is not None:
        raise fail("give --sim PRESET or --instrument RESOURCE, not both: a run has one cell")
    if sim is None and instrument is None:
        raise fail("say what to run on: --sim PRESET or --instrument RESOURCE")
    if speed <= 0 or poll <= 0:
        raise fail(f"--speed and --poll must be more than 0 (got --speed {speed:g}, --poll {poll:g})")
    prepared = prepared_or_exit(protocol_file, cell_spec(area, capacity, mass))
    device: sessions.Device
    try:
        if instrument is not None:
            driver = driver or instruments.guess_driver(instrument)
            if driver == "cycler":
                cyclers = "|".join(CYCLERS)
                raise fail(f"{instrument} is a cycler: add --driver {cyclers} and --cycler-channel N")
            if driver not in instruments.DRIVERS:
                raise fail(f"no driver {driver!r}; drivers: {', '.join(instruments.DRIVERS)}")
            if (driver in CYCLERS) != (cycler_channel is not None):
                needs = "needs --cycler-channel N" if cycler_channel is None else "has no --cycler-channel"
                raise fail(f"driver {driver} {needs}")
            if speed != 1.0 and not emulated(instrument):
                raise fail(
                    f"--speed {speed:g} is for an emulator on this PC ({EMULATOR_EXAMPLES}); {instrument}"
                    " is not one, and a real instrument keeps real time: leave --speed out"
                )
            device = sessions.Instrument(
                driver, instrument, poll_s=poll, speed=speed, cycler_channel=cycler_channel
            )
            channel_name = f"{driver}:{instrument}" + (f"#{cycler_channel}" if cycler_channel else "")
            source: dict[str, object] = {"instrument": instrument, "driver": driver}
        else:
            assert sim is not None
            values = _overrides(overrides or [], params_file)
            presets.make_cell(sim, seed=seed, area_m2=prepared.program.area_m2, overrides=values)  # checks
            device = sessions.SimulatedCell(sim, seed, values)
            channel_name = f"sim:{sim}"
            source = {"preset": sim, "seed": seed} | ({"overrides": overrides} if overrides else {})
    except (presets.PresetError, ValueError) as exc:
        raise fail(str(exc)) from None
    given = {"cell": cell} if cell else {}
    with (
        open_or_create_store(db) as store,
        RunProgress(console, plan(prepared.program).total.high) as progress,
    ):
        started: list[int] = []
        outcome = _execute(store, channel_name, device, progress, prepared, given, source, started)
        if isinstance(outcome, list):
            for problem in outcome:
                errors.print(f"[red]refused:[/red] {problem}")
            raise typer.Exit(ExitCode.REFUSED)
        run_id, result = outcome
    with open_or_create_store(db) as store:
        render_summary(console, store, run_id)
    console.print(f"stored as run {run_id} in {db}", markup=False, soft_wrap=True)
    code = of_run(result)
    if code is not ExitCode.OK:
        errors.print(f"run {run_id} {result.state}: {result.reason}", markup=False)
        raise typer.Exit(code)


def _execute(
    store: Store,
    channel_name: str,
    device: sessions.Device,
    progress: RunProgress,
    prepared: sessions.Prepared,
    given: dict[str, str],
    source: dict[str, object],
    started: list[int],
) -> tuple[int, RunResult] | list[str]:
    """The run in this process: its result, or what the device cannot do; a fault or Ctrl-C exits."""
    beats: list[asyncio.Task[None]] = []

    def views(run_id: int, program: Program) -> Sequence[Sink]:
        # From the moment the run exists: `cyclerd status` and `stop` elsewhere see it is served.
        started.append(run_id)
        holder = heartbeat.run_holder(run_id)
        beats.append(asyncio.get_running_loop().create_task(heartbeat.keep_beating(store, holder)))
        return [progress]

    terminal = sessions.Session(store, channel_name, device, sessions.Controls(), views=views)

    async def execute() -> tuple[int, RunResult] | list[str]:
        # `cyclerd pause|resume|stop RUN` from another terminal lands in the store.
        poller = asyncio.create_task(sessions.forward_requests(store, terminal.controls))
        try:
            return await terminal.start(prepared, prepared.cell_info(given), source)
        finally:
            poller.cancel()
            for beat in beats:
                beat.cancel()
            await asyncio.gather(poller, *beats, return_exceptions=True)

    try:
        return asyncio.run(execute())
    except (InstrumentFault, OSError) as exc:
        errors.print(f"instrument: {exc}", markup=False)
        raise typer.Exit(ExitCode.INSTRUMENT_FAULT) from None
    except KeyboardInterrupt:
        ended = f"; run {started[0]} is recorded as failed (interrupted)" if started else ""
        errors.print(f"interrupted: the cell was made safe{ended}", markup=False)
        raise typer.Exit(ExitCode.INTERRUPTED) from None


def _overrides(pairs: list[str], params_file: Path | None) -> dict[str, Any]:
    """--set and --params read, or a message saying what is wrong with them."""
    try:
        return presets.parse_overrides(pairs, params_file)
    except UnicodeDecodeError:
        raise fail(f"--params {params_file}: not UTF-8 text; save it as UTF-8 YAML or JSON") from None
    except IsADirectoryError:
        raise fail(f"--params {params_file} is a folder; give a YAML or JSON file") from None
    except FileNotFoundError:
        raise fail(f"--params {params_file}: no such file") from None
    except OSError as exc:
        raise fail(f"cannot read --params {params_file}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise fail(f"--params {params_file} is not YAML or JSON: {exc}") from None
    except RecursionError:
        raise fail("a --set value or --params file is nested too deeply; give plain numbers") from None


def runs(db: ReadDbOption = None, config: ConfigOption = None) -> None:
    """List the runs in a store."""
    store, _ = open_lab(db, config, fallback=True)
    with store:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for name in ("run", "name", "channel", "cell", "state", "started (UTC)"):
            table.add_column(name)
        for r in store.runs():
            started = datetime.fromtimestamp(r.started_unix, UTC).strftime("%Y-%m-%d %H:%M")
            table.add_row(str(r.id), r.name, r.channel, str(r.cell.get("cell", "")), r.state, started)
        console.print(table)


def show(
    run_id: Annotated[int, typer.Argument(metavar="RUN", help="The run's number (see 'cyclerd runs').")],
    db: ReadDbOption = None,
    config: ConfigOption = None,
    reference_cycle: ReferenceCycleOption = None,
) -> None:
    """Print one run's cycle summary, recomputed from its stored samples."""
    store, _ = open_lab(db, config, fallback=True)
    with store:
        try:
            store.run(run_id)
        except KeyError as exc:
            raise fail(f"{exc.args[0]}; 'cyclerd runs' lists the runs it holds") from None
        render_summary(console, store, run_id, reference_cycle)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `cyclerd` app."""
    for command in (run, runs, show):
        app.command()(command)
