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
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiomqtt
import numpy as np
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' broker and faults
from mosquitto import USERS, Mosquitto

from cyclerd.store.database import Store

CYCLERD = str(Path(sys.executable).with_name("cyclerd"))
LAB = "chaos"
LIBRARY = files("cyclerd.protocols") / "library"
# (channel, preset, seed, library protocol): three half-cells on E1 (Ag shorts early, so its
# queue moves on while the others cycle) and the anode-less full cell on E8.
SIMS = [
    ("sim1", "mgagsn", 1, "plating_stripping.yaml"),
    ("sim2", "mgagsn-pvdf", 2, "plating_stripping.yaml"),
    ("sim3", "ag", 3, "plating_stripping.yaml"),
    ("sim4", "ncm811-anodeless", 4, "cycling.yaml"),
]
INSTRUMENTS = {"keithley2450": "smu", "methodscript": "emstat"}  # driver: its channel's name
# For the emulated instruments: `cycles` of about 12 min of instrument time each.
INSTRUMENT_PROTOCOL = """\
name: chaos plating/stripping
cell: {{area: 0.785 cm^2}}
safety: {{voltage_min: -0.5 V, voltage_max: 3 V}}
record: {{every: {every_s:g} s}}
steps:
  - rest: 30 s
  - repeat:
      count: {cycles}
      steps:
        - plate: {{current: 1 mA/cm^2, until: {{charge: 0.1 mAh/cm^2}}}}
        - strip: {{current: 1 mA/cm^2, until: {{voltage_above: 1.0 V, duration: 6 min}}}}
"""
INSTRUMENT_CYCLE_S = 12 * 60
ANNOUNCED = {  # how each emulator says where it listens
    "keithley2450": re.compile(r"on 127\.0\.0\.1:(\d+)"),
    "methodscript": re.compile(r"(socket://127\.0\.0\.1:\d+)"),
}
SERVING = re.compile("cyclerd serving lab")


@dataclass
class Plan:
    kills: int
    seed: int
    mean_up_s: float
    sims: int
    instruments: list[str]
    speed: float
    sim_cycles: int
    sim_jobs: int
    every_s: float
    drain_s: float
    ups_s: list[float] = field(default_factory=list)  # per start: how long it serves until its kill

    def draw(self) -> None:
        rng = random.Random(self.seed)
        self.ups_s = [rng.uniform(0.0, 2 * self.mean_up_s) for _ in range(self.kills)]

    def instrument_cycles(self) -> int:
        """Enough cycles that the instruments' runs last through the kills."""
        return max(1, math.ceil(sum(self.ups_s) * self.speed / INSTRUMENT_CYCLE_S))


# -- processes: each one started here is ended here ---------------------------------------------


def identity(pid: int) -> str:
    """A process's command line and start time; '' once it is gone (a reused pid differs)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace") + "@" + stat[19]
    except (OSError, IndexError):
        return ""


class Processes:
    """The child processes of this run, each in a session of its own: Ctrl-C reaches only this
    script, which ends them itself (daemons by SIGTERM first, so their cells are made safe)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []
        self.orphans: list[tuple[int, str]] = []  # children of killed daemons: must end by themselves

    def spawn(self, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
        self.running.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the process alone, as `kill -9` does; its children (the bus's encoder) are
        remembered, to see at the end that they went by themselves."""
        for path in Path(f"/proc/{process.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                self.orphans += [(int(pid), identity(int(pid))) for pid in path.read_text().split()]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def close(self) -> list[str]:
        """End what still runs; the orphans that had not gone by themselves (killed now)."""
        for process in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    self.kill(process)
        self.running.clear()
        leftovers = []
        for pid, was in self.orphans:
            if was and identity(pid) == was:
                leftovers.append(f"pid {pid}: {was.split('@')[0].replace(chr(0), ' ')}")
                os.kill(pid, signal.SIGKILL)
        return leftovers


class Broker(Mosquitto):
    """The tests' broker, queueing without limit for a slow subscriber (a message dropped there
    would read as unpublished) and logging warnings and errors only."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        text = self.config.read_text().replace("log_type all\n", "log_type error\nlog_type warning\n")
        self.config.write_text(text + "max_queued_messages 0\n")


def wait_for_line(log: Path, pattern: re.Pattern[str], process: subprocess.Popen[bytes]) -> re.Match[str]:
    """The first match of `pattern` in what `process` writes to `log`, waited for."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if (found := pattern.search(log.read_text(errors="replace"))) is not None:
            return found
        if process.poll() is not None:
            raise RuntimeError(f"it exited with {process.returncode}: see {log}")
        time.sleep(0.02)
    raise RuntimeError(f"it did not say {pattern.pattern!r} within 30 s: see {log}")


def start_emulator(processes: Processes, folder: Path, driver: str, plan: Plan) -> str:
    """An emulator with an MgAgSn cell on a free port; the resource string lab.toml names."""
    log = folder / f"emulate-{driver}.log"
    args = [CYCLERD, "emulate", driver, "--port", "0", "--speed", f"{plan.speed:g}", "--seed", str(plan.seed)]
    found = wait_for_line(log, ANNOUNCED[driver], processes.spawn(args, log))
    return f"TCPIP::127.0.0.1::{found[1]}::SOCKET" if driver == "keithley2450" else found[1]


# -- the lab -------------------------------------------------------------------------------------


def write_lab(folder: Path, broker: Mosquitto, resources: dict[str, str], plan: Plan) -> Path:
    (folder / "mqtt-password").write_text(USERS["daemon"] + "\n")
    (folder / "mqtt-password").chmod(0o600)
    lines = [f'lab = "{LAB}"', 'database = "lab.db"', "", "[mqtt]", f'host = "{broker.host}"']
    lines += [f"port = {broker.port}", 'username = "daemon"', 'password_file = "mqtt-password"']
    for driver, resource in resources.items():
        lines += ["", "[[instruments]]", f'name = "{INSTRUMENTS[driver]}"', f'driver = "{driver}"']
        lines += [f'resource = "{resource}"', f"speed = {plan.speed:g}", "reconnect_s = 0.2"]
    for name, preset, seed, _ in SIMS[: plan.sims]:
        lines += ["", "[[channels]]", f'name = "{name}"', f'sim = "{preset}"', f"seed = {seed}"]
    for driver in resources:
        name = INSTRUMENTS[driver]
        lines += ["", "[[channels]]", f'name = "{name}"', f'instrument = "{name}"']
    config = folder / "lab.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def submit_jobs(config: Path, plan: Plan) -> int:
    """Queue every channel's jobs with `cyclerd submit --config`; how many."""
    folder = config.parent
    Store(folder / "lab.db").close()  # the lab's store, as serve creates it: submit never creates one
    jobs: list[tuple[str, str]] = []  # (channel, protocol file)
    for name, _, _, protocol in SIMS[: plan.sims]:
        text = re.sub(r"count: (100|250)\b", f"count: {plan.sim_cycles}", (LIBRARY / protocol).read_text())
        (folder / f"{name}.yaml").write_text(text)
        jobs += [(name, f"{name}.yaml")] * plan.sim_jobs
    text = INSTRUMENT_PROTOCOL.format(every_s=plan.every_s, cycles=plan.instrument_cycles())
    (folder / "instrument.yaml").write_text(text)
    jobs += [(INSTRUMENTS[driver], "instrument.yaml") for driver in plan.instruments]
    for channel, protocol in jobs:
        args = [CYCLERD, "submit", protocol, "--channel", channel, "--config", str(config)]
        done = subprocess.run(args, cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"submit {protocol} to {channel}: {done.stderr or done.stdout}")
    return len(jobs)


# -- the subscriber ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the subscriber saw: per run, (first seq, samples) of each data message."""

    received: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    messages: int = 0
    statuses: list[str] = field(default_factory=list)  # daemon/status, each time it came
    last_s: float = field(default_factory=time.monotonic)  # when the last message came

    def take(self, message: aiomqtt.Message) -> None:
        self.messages += 1
        self.last_s = time.monotonic()
        topic = str(message.topic)
        if topic.endswith("/data"):
            body = json.loads(bytes(message.payload))
            self.received.setdefault(int(body["run"]), []).append((int(body["seq"]), len(body["t"])))
        elif topic.endswith("/daemon/status"):
            self.statuses.append(bytes(message.payload).decode(errors="replace"))


async def subscribe(broker: Mosquitto, tally: Tally, subscribed: asyncio.Event) -> None:
    """Count every message of the lab, in a persistent session (should the connection break, the
    broker keeps what comes meanwhile). A message is counted as paho hands it over, not queued:
    aiomqtt's iterator drops its queue when the connection breaks."""

    class Counting(asyncio.Queue[aiomqtt.Message]):
        def put_nowait(self, item: aiomqtt.Message) -> None:
            tally.take(item)

    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 3600
    first = True
    while True:
        viewer = aiomqtt.Client(
            broker.host,
            broker.port,
            username="viewer",
            password=USERS["viewer"],
            identifier="chaos-viewer",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=first,
            properties=properties,
            queue_type=Counting,
        )
        try:
            async with viewer:
                first = False
                await viewer.subscribe(f"cyclerd/{LAB}/#", qos=1)
                subscribed.set()
                async for _ in viewer.messages:  # returns only by raising, on disconnection
                    pass
        except aiomqtt.MqttError:
            await asyncio.sleep(0.1)


# -- the kills -----------------------------------------------------------------------------------


@dataclass
class Start:
    number: int
    up_s: float  # from "serving" to the kill (the last start: to its exit)
    ended: str  # "killed", "exit 0", or what went wrong
    log: str


def serve(
    processes: Processes, config: Path, number: int, until_idle: bool
) -> tuple[subprocess.Popen[bytes], Path]:
    log = config.parent / f"daemon-{number:02d}.log"
    args = [CYCLERD, "serve", "--config", str(config)] + (["--until-idle"] if until_idle else [])
    return processes.spawn(args, log), log


async def kill_repeatedly(processes: Processes, config: Path, plan: Plan) -> list[Start]:
    starts = []
    for number, up_s in enumerate(plan.ups_s):
        daemon, log = serve(processes, config, number, until_idle=False)
        await asyncio.to_thread(wait_for_line, log, SERVING, daemon)
        await asyncio.sleep(up_s)
        ended = "killed" if daemon.poll() is None else f"exit {daemon.returncode} before its kill"
        await asyncio.to_thread(processes.kill, daemon)
        starts.append(Start(number, up_s, ended, log.name))
        print(f"  start {number + 1:2d}/{plan.kills}: {ended} after {up_s:.2f} s", flush=True)
    return starts


async def finish(processes: Processes, config: Path, number: int) -> Start:
    """The last start: `--until-idle` runs every job to its end, then flushes the bus."""
    began = time.monotonic()
    daemon, log = serve(processes, config, number, until_idle=True)
    code = await asyncio.to_thread(daemon.wait)
    return Start(number, time.monotonic() - began, f"exit {code}", log.name)


async def drained(tally: Tally, quiet_s: float) -> None:
    """Until the broker has sent nothing for `quiet_s`."""
    while time.monotonic() - tally.last_s < quiet_s:
        await asyncio.sleep(0.1)


# -- the figures ---------------------------------------------------------------------------------


@dataclass
class RunFigures:
    run: int
    channel: str
    state: str
    gaps: int
    stored: int
    lost: int
    dup: int
    unpublished: int
    unstored: int
    resent: int
    where: str = ""  # the seqs behind a figure that should be 0; how a run ended other than completed


def multiplicity(ranges: list[tuple[int, int]], size: int) -> np.ndarray:
    """How often each seq 0 .. size-1 is covered by the (first, last) ranges."""
    steps = np.zeros(size + 1, dtype=np.int64)
    if ranges:
        bounds = np.array(ranges, dtype=np.int64)
        np.add.at(steps, bounds[:, 0], 1)
        np.add.at(steps, bounds[:, 1] + 1, -1)
    return np.cumsum(steps)[:size]


def spans(mask: np.ndarray, limit: int = 4) -> str:
    """The first `limit` stretches of True in `mask`, as seq ranges."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    pairs = list(zip(edges[::2], edges[1::2] - 1, strict=True))
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in pairs[:limit])
    return text + (f" (+{len(pairs) - limit} more)" if len(pairs) > limit else "")


def audit(database: Path, tally: Tally) -> list[RunFigures]:
    """Per run: the stored seqs against themselves and against what the subscriber saw."""
    with Store(database) as store:
        runs = store.runs()
        blocks = store.read("SELECT run_id, first_seq, last_seq FROM sample_blocks")
        events = store.events()
    figures = []
    for run in runs:
        kept = [(int(b["first_seq"]), int(b["last_seq"])) for b in blocks if b["run_id"] == run.id]
        seen = [(first, first + n - 1) for first, n in tally.received.get(run.id, []) if n > 0]
        size = 1 + max((last for _, last in kept + seen), default=-1)
        stored, published = multiplicity(kept, size), multiplicity(seen, size)
        top = 1 + max((last for _, last in kept), default=-1)  # holes: below the highest stored seq
        masks = {
            "lost": (np.arange(size) < top) & (stored == 0),
            "unpublished": (stored > 0) & (published == 0),
            "unstored": (published > 0) & (stored == 0),
        }
        where = [f"{name} {spans(mask)}" for name, mask in masks.items() if mask.any()]
        if (stored > 1).any():
            where.append(f"dup {spans(stored > 1)}")
        told = [
            e["message"] for e in events if e["run_id"] == run.id and e["kind"] in ("gap", "fault", "state")
        ]
        if run.state != "completed" and told:
            where.append(f"{run.state}: {told[-1]}")
        figures.append(
            RunFigures(
                run=run.id,
                channel=run.channel,
                state=run.state,
                gaps=sum(e["run_id"] == run.id and e["kind"] == "gap" for e in events),
                stored=int((stored > 0).sum()),
                lost=int(masks["lost"].sum()),
                dup=int((stored - 1).clip(0).sum()),
                unpublished=int(masks["unpublished"].sum()),
                unstored=int(masks["unstored"].sum()),
                resent=int((published - 1).clip(0).sum()),
                where="; ".join(where),
            )
        )
    return figures


def integrity(database: Path) -> str:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return "; ".join(str(row[0]) for row in db.execute("PRAGMA integrity_check"))


def log_findings(folder: Path) -> list[str]:
    """Lines of the daemons' logs that say something failed, alike lines counted once each."""
    pattern = re.compile(r"Traceback|Error\b|error|did not|failed|cannot", re.IGNORECASE)
    found: dict[str, list[str]] = collections.defaultdict(list)
    for log in sorted(folder.glob("daemon-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            if pattern.search(line):
                said = re.sub(r"^\d{4}-\d\d-\d\d [\d:,]+ ", "", line).strip()
                found[said[:200]].append(log.stem.removeprefix("daemon-"))
    return [f"{len(where)}x {said} (starts {', '.join(sorted(set(where)))})" for said, where in found.items()]


# -- the instrument faults -----------------------------------------------------------------------


@dataclass
class FaultFigures:
    instrument: str
    fault: str
    injected: int
    struck: int
    handled: bool
    reaction_s: float  # the longest: instrument time from a fault to the output off
    state: str
    problems: list[str]


async def inject_faults(folder: Path, only: str | None) -> list[FaultFigures]:
    import test_instrument_faults as table

    figures = []
    for number, case in enumerate(table.CASES):
        if only is not None and only not in f"{case.instrument}: {case.name}":
            continue
        outcome = None
        try:
            outcome = await table.measure(case, folder / f"fault-{number:02d}.db")
            problems = table.handled(case, outcome)
        except (OSError, RuntimeError, TimeoutError) as exc:  # the case broke off: not handled
            problems = [f"{type(exc).__name__}: {exc}"]
        reactions = [] if outcome is None else outcome.reactions_s
        figures.append(
            FaultFigures(
                instrument=case.instrument,
                fault=case.name,
                injected=case.times,
                struck=len(reactions),
                handled=not problems,
                reaction_s=max(reactions, default=math.inf),
                state="-" if outcome is None else outcome.state.value,
                problems=problems,
            )
        )
        print(
            f"  {case.instrument}: {case.name}: " + ("handled" if not problems else "NOT handled"), flush=True
        )
    return figures


# -- the whole run -------------------------------------------------------------------------------


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
