"""The chaos run of issue 16: a daemon killed at random under six channels with every sample
counted, then every instrument fault of tests/test_instrument_faults.py injected once.

Kills: a private Mosquitto, two emulators in processes of their own (`cyclerd emulate
keithley2450` and `cyclerd emulate methodscript`, accelerated) and a real `cyclerd serve` over
six channels: four simulated cells (virtual time, two jobs each) and the two emulators (one long
job each, sized to last through the kills). Each start of the daemon is killed with SIGKILL
at a random moment (seeded: uniform between 0 and twice `--mean-up` seconds after it said it was
serving); then a last `serve --until-idle` finishes every job and the bus is let drain. A
subscriber in this process, connected throughout in a persistent session, counts every `data`
message by `seq`.

Faults: each case of tests/test_instrument_faults.py (its `CASES`, `measure` and `handled`)
against an emulator over TCP in accelerated time, as that slow test runs them.

Reading the figures. Per run, from the store's sample blocks (`Store.read`) and `Store.runs`:
  stored       distinct seqs stored
  lost         holes in the stored seqs (0 .. highest): committed samples that vanished   target 0
  dup          seqs stored more than once                                                target 0
  unpublished  stored but never seen by the subscriber                                   target 0
  unstored     seen by the subscriber but not stored                                     target 0
  resent       samples the subscriber got again (QoS 1 is at least once: a kill before
               the daemon saved its acknowledged mark sends them again)                  informational
  gaps         the run's `gap` events: restarts that took it up (or stopped it)          informational
then `PRAGMA integrity_check` (target "ok"), the kills, the wall time, the retained daemon status
as the subscriber saw it change, and lines of the daemons' logs that say something failed.
Faults, per case: handled as documented (the test's own verdict; why not, if not), the longest
reaction (instrument time from the fault to the output off; the target is one sample period,
10 s) and handled/injected. The exit code is 0 when every target is met, 1 otherwise.

Run: .venv/bin/python bench/chaos.py [--kills 20] [--seed 16] [--skip-faults | --skip-kills]
     [--json figures.json] [--keep]     (--help lists the sizes)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chaos_count import RunFigures, Tally, audit, drained, integrity, subscribe
from chaos_faults import FaultFigures, inject_faults
from chaos_lab import (
    INSTRUMENTS,
    Broker,
    Plan,
    Processes,
    Start,
    finish,
    kill_repeatedly,
    log_findings,
    start_emulator,
    submit_jobs,
    write_lab,
)


@dataclass
class Figures:
    plan: dict[str, Any]
    folder: str
    jobs: int = 0
    starts: list[Start] = field(default_factory=list)
    runs: list[RunFigures] = field(default_factory=list)
    integrity: str = "-"
    messages: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    log_findings: list[str] = field(default_factory=list)
    faults: list[FaultFigures] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    kills_s: float = 0.0
    faults_s: float = 0.0

    def total(self, name: str) -> int:
        return sum(int(getattr(run, name)) for run in self.runs)

    def on_target(self) -> bool:
        stores = all(self.total(name) == 0 for name in ("lost", "dup", "unpublished", "unstored"))
        starts = all(start.ended in ("killed", "exit 0") for start in self.starts)
        kills = not self.runs or (stores and starts and self.integrity == "ok")
        return kills and all(fault.handled for fault in self.faults) and not self.leftovers


async def run_kills(processes: Processes, broker: Broker, plan: Plan, folder: Path, figures: Figures) -> None:
    began = time.monotonic()
    tally, subscribed = Tally(), asyncio.Event()
    listening = asyncio.create_task(subscribe(broker, tally, subscribed))
    try:
        await asyncio.wait_for(subscribed.wait(), 10.0)
        resources = {driver: start_emulator(processes, folder, driver, plan) for driver in plan.instruments}
        config = write_lab(folder, broker, resources, plan)
        figures.jobs = submit_jobs(config, plan)
        print(f"{figures.jobs} jobs queued in {folder}; {plan.kills} kills", flush=True)
        figures.starts = await kill_repeatedly(processes, config, plan)
        print("  the last start, --until-idle ...", flush=True)
        figures.starts.append(await finish(processes, config, len(figures.starts)))
        await drained(tally, plan.drain_s)
    finally:
        listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listening
    figures.kills_s = time.monotonic() - began
    figures.runs = audit(folder / "lab.db", tally)
    figures.integrity = integrity(folder / "lab.db")
    figures.messages = tally.messages
    figures.statuses = dict(collections.Counter(tally.statuses))
    figures.log_findings = log_findings(folder)


def table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


def report_kills(figures: Figures) -> None:
    kills = sum(start.ended == "killed" for start in figures.starts)
    starts = len(figures.starts)
    print(f"\nKills: {kills} SIGKILLs in {starts} starts, {figures.jobs} jobs, {figures.kills_s:.0f} s wall")
    header = ["run", "channel", "state", "gaps", "stored", "lost", "dup", "unpublished", "unstored", "resent"]
    rows = [[str(getattr(run, name)) for name in header] for run in figures.runs]
    table(header, [*rows, ["all", "", "", *(str(figures.total(name)) for name in header[3:])]])
    for run in figures.runs:
        if run.where:
            print(f"  run {run.run} ({run.channel}): {run.where}")
    print(f"PRAGMA integrity_check: {figures.integrity}")
    print(f"MQTT messages seen: {figures.messages}; daemon/status as it came: {figures.statuses}")
    for start in figures.starts:
        if start.ended not in ("killed", "exit 0"):
            print(f"  start {start.number + 1}: {start.ended} (see {start.log})")
    if figures.log_findings:
        print("The daemons' logs:", *figures.log_findings, sep="\n  ")


def report_faults(figures: Figures) -> None:
    print(f"\nInstrument faults ({figures.faults_s:.0f} s wall; reaction: instrument time until output off)")
    header = ["instrument", "fault", "injected", "struck", "handled", "reaction_s", "state"]
    rows = [
        [
            f.instrument,
            f.fault,
            str(f.injected),
            str(f.struck),
            "yes" if f.handled else "NO",
            f"{f.reaction_s:.1f}",
            f.state,
        ]
        for f in figures.faults
    ]
    table(header, rows)
    for fault in figures.faults:
        if fault.problems:
            print(f"  {fault.instrument}: {fault.fault}: " + "; ".join(fault.problems))
    print(f"handled/injected: {sum(f.handled for f in figures.faults)}/{len(figures.faults)}")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--kills", type=int, default=20, help="SIGKILLs of the daemon (default 20)")
    add("--seed", type=int, default=16, help="seeds the kill moments and the emulators' cells (default 16)")
    add("--mean-up", type=float, default=4.0, help="mean seconds a start serves before its kill (default 4)")
    add("--sims", type=int, default=4, choices=range(5), help="simulated channels (default 4)")
    add("--instruments", default="keithley2450,methodscript", help="emulated instruments, or 'none'")
    add("--speed", type=float, default=60.0, help="the emulators' acceleration (default 60)")
    add("--sim-cycles", type=int, default=250, help="cycles of each simulated job (default 250)")
    add("--sim-jobs", type=int, default=2, help="jobs per simulated channel (default 2)")
    add("--every", type=float, default=5.0, help="the instruments' sample period in s (default 5)")
    add("--drain", type=float, default=5.0, help="the bus is drained after this many quiet s (default 5)")
    add("--skip-kills", action="store_true", help="only inject the instrument faults")
    add("--skip-faults", action="store_true", help="only kill the daemon")
    add("--faults", default=None, help="only the fault cases whose 'instrument: fault' contains this")
    add("--json", type=Path, default=None, help="also write the figures to this file as JSON")
    add("--workdir", type=Path, default=None, help="where the files go (default: a new temporary folder)")
    add("--keep", action="store_true", help="keep the files even when every target is met")
    return parser.parse_args()


def plan_of(args: argparse.Namespace) -> Plan | str:
    """The plan, or what is wrong with the arguments."""
    instruments = [] if args.instruments == "none" else args.instruments.split(",")
    if set(instruments) - set(INSTRUMENTS):
        return (
            f"--instruments: {args.instruments!r}; write {', '.join(INSTRUMENTS)} (comma-separated) or none"
        )
    if min(args.kills, args.sim_cycles, args.sim_jobs) < 0 or min(args.mean_up, args.speed, args.every) <= 0:
        return "--kills, --sim-cycles and --sim-jobs must be >= 0; --mean-up, --speed and --every > 0"
    if not args.skip_kills and shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        return "the kills need a Mosquitto broker: install mosquitto (or run --skip-kills)"
    plan = Plan(
        kills=args.kills,
        seed=args.seed,
        mean_up_s=args.mean_up,
        sims=args.sims,
        instruments=instruments,
        speed=args.speed,
        sim_cycles=args.sim_cycles,
        sim_jobs=args.sim_jobs,
        every_s=args.every,
        drain_s=args.drain,
    )
    plan.draw()
    return plan


def main() -> int:
    args = arguments()
    plan = plan_of(args)
    if isinstance(plan, str):
        print(plan, file=sys.stderr)
        return 2
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    # The fault cases' drivers and emulators log what they meet: into a file, not over the figures.
    logging.basicConfig(filename=folder / "faults.log", level=logging.INFO)
    figures = Figures(asdict(plan), str(folder))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a TERM cleans up as Ctrl-C does
    processes, broker = Processes(), None
    try:
        if not args.skip_kills:
            (folder / "broker").mkdir(exist_ok=True)
            broker = Broker(folder / "broker")
            broker.start()
            asyncio.run(run_kills(processes, broker, plan, folder, figures))
        if not args.skip_faults:
            began = time.monotonic()
            print("instrument faults ...", flush=True)
            figures.faults = asyncio.run(inject_faults(folder, args.faults))
            figures.faults_s = time.monotonic() - began
    except (RuntimeError, OSError) as exc:
        print(f"the chaos run broke off: {exc}; its files are in {folder}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted; its files are in {folder}", file=sys.stderr)
        return 130
    finally:
        figures.leftovers = processes.close()
        if broker is not None:
            broker.stop()
    if figures.runs:
        report_kills(figures)
    if figures.faults:
        report_faults(figures)
    for leftover in figures.leftovers:
        print(f"still running at the end, killed: {leftover}")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(figures), indent=1))
    kept = not figures.on_target() or args.keep or args.workdir is not None
    if not kept:
        shutil.rmtree(folder)
    verdict = "every target met" if figures.on_target() else "TARGETS MISSED"
    print(
        f"\n{verdict}; "
        + (f"the files are in {folder}" if kept else "the files are removed (--keep keeps them)")
    )
    return 0 if figures.on_target() else 1


if __name__ == "__main__":
    sys.exit(main())
