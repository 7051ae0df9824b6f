"""The chaos run's lab (bench/chaos.py): the broker, the emulators and the daemons it starts, kills
and ends itself, the lab.toml they share and the jobs queued to it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' broker
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
