"""The daemon's log as an operator reads it: one line per decision, with run and channel as fields.

`cyclerd serve` runs as a real process; its stderr is read as the journal would get it, in the
human text format (the default) and as JSON (`--log-format json`) for journald and log shippers.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from watch import OnBatch

from cyclerd.daemon.logs import JournalPriority, JsonFormatter, RunFields
from cyclerd.drivers.clock import VirtualClock
from cyclerd.drivers.keithley2450 import Keithley2450
from cyclerd.drivers.stepper import SteppedChannel
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import Columns, LogSink, Sinks, StoreSink, milestone
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

CYCLERD = str(Path(sys.executable).with_name("cyclerd"))
LAB = """\
lab = "logs"
database = "lab.db"

[[channels]]
name = "ch1"
sim = "mgagsn"
seed = 1

[[channels]]
name = "ch2"
sim = "mg"
seed = 2
"""
# Labelled steps, a loop of two cycles, and an every-block (a rest and a spectrum) that runs
# every 5 min of plating and when plating ends: 0.25 mAh/cm^2 at 1 mA/cm^2 is 15 min.
PROTOCOL = """\
name: logged decisions
cell: {area: 0.785 cm^2}
record: {every: 1 min}
steps:
  - rest: {label: settle, until: {duration: 10 min}}
  - repeat:
      label: cycles
      count: 2
      steps:
        - plate:
            label: plate with EIS
            current: 1 mA/cm^2
            until: {charge: 0.25 mAh/cm^2}
            every:
              interval: 5 min
              at_end: true
              steps:
                - rest: 30 s
                - eis: {label: in-situ EIS, frequency_start: 100 kHz, frequency_stop: 1 Hz,
                        points_per_decade: 5, amplitude: 10 mV, dc_level: ocv}
        - strip: {label: strip, current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 2 h}}
"""
E1 = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()

# What the JSON log of PROTOCOL says at INFO, in order: (kind, message after "ch1, run 1: ").
DECISIONS = [
    ("state", "run started"),
    ("step", "step 1 (settle) started"),
    ("step", "step 2 (plate with EIS) started in cycle 1"),
    ("every", "every-block of step 2 (plate with EIS) taken at 300 s of step time"),
    ("every", "every-block of step 2 (plate with EIS) taken at 600 s of step time"),
    ("every", "every-block of step 2 (plate with EIS) taken as the step ended"),
    ("step", "step 9 (strip) started in cycle 1"),
    ("cycle", "cycle 1 done: coulombic efficiency"),
    ("cycle", "cycle 2 done: coulombic efficiency"),
    ("state", "run completed"),
]


def _record(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        pytest.fail(f"not one JSON object: {line!r}")
    assert isinstance(record, dict), line
    return record


def _lab(folder: Path, protocol: str, *options: str) -> Path:
    (folder / "lab.toml").write_text(LAB)
    (folder / "protocol.yaml").write_text(protocol)
    Store(folder / "lab.db").close()  # the lab's store, as serve creates it: submit never creates one
    submitted = subprocess.run(
        [
            CYCLERD,
            "submit",
            str(folder / "protocol.yaml"),
            "--channel",
            "ch1",
            "--db",
            str(folder / "lab.db"),
            *options,
        ],
        capture_output=True,
        text=True,
    )
    assert submitted.returncode == 0, submitted.stderr
    return folder / "lab.toml"


def _serve_until_idle(config: Path, *options: str) -> list[str]:
    done = subprocess.run(
        [CYCLERD, "serve", "--config", str(config), "--until-idle", *options],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()


def test_the_json_log_tells_each_decision_in_order_with_run_and_channel(tmp_path: Path) -> None:
    lines = _serve_until_idle(_lab(tmp_path, PROTOCOL, "--cell", "A7"), "--log-format", "json")
    records = [_record(line) for line in lines]  # every line on stderr is one object
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
        offset = datetime.fromisoformat(record["time"]).utcoffset()
        assert offset is not None
        assert offset.total_seconds() == 0
    (taken,) = [r for r in records if r.get("kind") == "job"]
    assert taken["message"].startswith("job 1 on ch1 taken")
    assert (taken["job"], taken["channel"], taken["cell"]) == (1, "ch1", "A7")
    prefix = "ch1, run 1, cell A7: "
    run = [r for r in records if r["message"].startswith(prefix)]  # the run's own lines
    assert all((r["run"], r["channel"], r["cell"]) == (1, "ch1", "A7") for r in run)
    assert records.index(taken) < records.index(run[0])
    assert [
        (r["kind"], r["message"].removeprefix(prefix)[: len(m)])
        for r, (_, m) in zip(run, DECISIONS, strict=True)
    ] == DECISIONS
    assert [r["label"] for r in run if r["kind"] == "step"] == ["settle", "plate with EIS", "strip"]
    assert [r["step_time"] for r in run if r["kind"] == "every"] == pytest.approx([300, 600, 900])
    # The loop's second pass is told by its cycle only: its steps and every-blocks are DEBUG.
    assert not any(r["kind"] in ("step", "every") and r.get("cycle") == 2 for r in run)
    # Then each channel, the idle one too, is said to be safe as the daemon ends.
    shutdown = [r for r in records if r.get("kind") == "shutdown"]
    assert [r["channel"] for r in shutdown] == ["ch1", "ch2"]
    assert records.index(shutdown[0]) > records.index(run[-1])


def test_the_text_log_is_the_default_and_says_the_same_for_people(tmp_path: Path) -> None:
    lines = _serve_until_idle(_lab(tmp_path, PROTOCOL))
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    said = [re.fullmatch(rf"{stamp} cyclerd\.daemon\.service: ch1, run 1: (.*)", line) for line in lines]
    messages = [m.group(1) for m in said if m is not None]
    assert [(m[: len(d)]) for m, (_, d) in zip(messages, DECISIONS, strict=True)] == [d for _, d in DECISIONS]
    assert not any(line.startswith("{") for line in lines)
    assert any(
        re.fullmatch(rf"{stamp} cyclerd\.daemon\.process: ch2: stopped with its cell safe .*", line)
        for line in lines
    )


@contextmanager
def _reading(stream: io.TextIOBase) -> Iterator[queue.Queue[str]]:
    """The lines of `stream` as they come, in a queue a test can wait on with a timeout."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    yield lines
    reader.join(10)


def test_sigterm_logs_the_run_interrupted_and_each_channel_made_safe(tmp_path: Path) -> None:
    long_e1 = E1.replace("count: 250", "count: 20000").replace("duration_max: 600 h", "duration_max: 50000 h")
    config = _lab(tmp_path, long_e1)
    serve = subprocess.Popen(
        [CYCLERD, "serve", "--config", str(config), "--log-format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    records: list[dict[str, Any]] = []
    try:
        assert serve.stderr is not None
        with _reading(serve.stderr) as lines:  # type: ignore[arg-type]
            deadline = time.monotonic() + 60
            while not any(r.get("kind") == "cycle" for r in records):
                assert time.monotonic() < deadline, records
                records.append(_record(lines.get(timeout=60)))
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(30) == 0
        while not lines.empty():
            records.append(_record(lines.get()))
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    kinds = [(r.get("kind"), r.get("channel"), r.get("run")) for r in records]
    interrupted = kinds.index(("interrupted", "ch1", 1))
    assert kinds[interrupted + 1 :].count(("shutdown", "ch1", None)) == 1
    assert ("shutdown", "ch2", None) in kinds[interrupted + 1 :]
    assert "cell made safe" in records[interrupted]["message"]


def test_a_250_cycle_run_logs_its_first_cycle_and_milestones_only() -> None:
    """A fast simulated cell runs E1's 250 cycles in seconds: the journal gets a few dozen lines."""
    program = compile_protocol(loads(E1))
    clock = VirtualClock()
    channel = SimulatedChannel(make_cell("mgagsn", seed=1, area_m2=program.area_m2), clock, name="ch1")
    heard = _Heard()
    log = logging.getLogger("cyclerd.test.volume")
    log.addHandler(heard)
    log.setLevel(logging.DEBUG)
    try:
        result = asyncio.run(Runner(program, channel, clock, LogSink(log, "ch1", 7, cell="A7")).run())
    finally:
        log.removeHandler(heard)
    assert result.state is RunState.COMPLETED
    assert len(result.cycles) == 250
    info = [r for r in heard.records if r.levelno >= logging.INFO]
    assert len(info) < 30, [r.getMessage() for r in info]
    assert [r.cycle for r in info if r.kind == "cycle"] == [*range(1, 11), *range(20, 101, 10), 200]
    assert [r.label for r in info if r.kind == "step"] == ["rest", "plate", "strip"]
    assert info[0].getMessage() == "ch1, run 7, cell A7: run started"
    assert all((r.run, r.channel, r.cell) == (7, "ch1", "A7") for r in heard.records)
    # DEBUG still has every step's start, for whoever turns it on.
    assert sum(r.kind == "step" for r in heard.records) == 1 + 2 * 250
    assert [c for c in range(1, 1001) if milestone(c)][-3:] == [800, 900, 1000]


class _Heard(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[Any] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_reconnect_is_logged_with_the_run_it_happened_in_beside_the_fault_and_the_gap(
    tmp_path: Path,
) -> None:
    """A dropped link to a 2450 mid-step: the driver's reconnect (given the run's fields though
    the driver knows no run), the fault in the instrument's words, the step resumed."""
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1), virtual_step_s=10.0)
    text = "name: rest\nrecord: {every: 10 s}\nsteps:\n  - rest: {label: hold, until: {duration: 1 h}}\n"
    journal = io.StringIO()
    handler = logging.StreamHandler(journal)
    handler.addFilter(RunFields())
    handler.setFormatter(JsonFormatter())
    cyclerd = logging.getLogger("cyclerd")
    level = cyclerd.level
    cyclerd.addHandler(handler)
    cyclerd.setLevel(logging.INFO)

    async def run(resource: str) -> RunState:
        clock = VirtualClock()
        smu = Keithley2450(resource, timeout_s=0.5)
        await smu.open()
        store = Store(tmp_path / "drop.db")
        run_id = store.create_run("rest", "k", text, {}, {})

        dropped: list[float] = []

        def once(columns: Columns) -> None:
            if not dropped and float(np.max(columns["t"])) > 1200:
                dropped.append(float(np.max(columns["t"])))
                device.faults.drop_connection()

        sinks = Sinks(
            [
                StoreSink(store, run_id),
                LogSink(logging.getLogger("cyclerd.test.faults"), "k", run_id),
                OnBatch(once),
            ]
        )
        result = await Runner(
            compile_protocol(loads(text)), SteppedChannel(smu, clock, 10.0), clock, sinks
        ).run()
        logging.getLogger("cyclerd.test.faults").info("the run is over")
        await smu.close()
        store.close()
        return result.state

    try:
        with running(device) as port:
            state = asyncio.run(run(f"TCPIP::127.0.0.1::{port}::SOCKET"))
    finally:
        cyclerd.removeHandler(handler)
        cyclerd.setLevel(level)
    assert state is RunState.COMPLETED
    records = [json.loads(line) for line in journal.getvalue().splitlines()]
    told = [(r["logger"], r.get("kind"), r.get("run"), r.get("channel")) for r in records]
    fault = told.index(("cyclerd.test.faults", "fault", 1, "k"))
    reconnect = told.index(("cyclerd.drivers.keithley2450", "reconnect", 1, "k"))
    gap = told.index(("cyclerd.test.faults", "gap", 1, "k"))
    # The cell could not be switched off over the dead link: the driver reconnects at once, and
    # the fault's line then says how the cell was made safe.
    assert reconnect < fault < gap
    assert "cell made safe after reconnecting" in records[fault]["message"]
    assert records[fault]["level"] == "WARNING"
    assert "link failed" in records[fault]["message"]  # the instrument's (here: its link's) words
    assert "resumed after a fault" in records[gap]["message"]
    # Once the run is over, what its task logs is no longer the run's.
    assert records[-1]["message"] == "the run is over"
    assert "run" not in records[-1]


def test_under_systemd_each_line_starts_with_its_priority_for_journald(tmp_path: Path) -> None:
    """$JOURNAL_STREAM names stderr's device and inode when stderr is the journal: each line then
    starts with its syslog priority, which journald keeps (`journalctl -p warning`)."""
    (tmp_path / "lab.toml").write_text(LAB)
    Store(tmp_path / "lab.db").close()
    read, write = os.pipe()
    stream = os.fstat(write)
    environment = {**os.environ, "JOURNAL_STREAM": f"{stream.st_dev}:{stream.st_ino}"}
    command = [
        CYCLERD,
        "serve",
        "--config",
        str(tmp_path / "lab.toml"),
        "--until-idle",
        "--log-format",
        "json",
    ]
    with os.fdopen(read) as journal:
        try:
            done = subprocess.run(
                command, stdout=subprocess.DEVNULL, stderr=write, env=environment, timeout=60
            )
        finally:
            os.close(write)
        lines = journal.read().splitlines()
    assert done.returncode == 0, lines
    assert lines
    assert all(line.startswith("<6>{") for line in lines), lines
    assert [_record(line[3:])["channel"] for line in lines] == ["ch1", "ch2"]  # the shutdown lines
    warning = logging.LogRecord("cyclerd.x", logging.WARNING, __file__, 1, "low", None, None)
    assert JournalPriority(JsonFormatter()).format(warning).startswith("<4>{")


def test_json_lines_stay_one_line_of_valid_json_whatever_they_hold() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("cyclerd.x", logging.ERROR, __file__, 1, "two\nlines: %s", ("ok",), None)
    record.__dict__.update(run=3, coulombic_efficiency=float("nan"), where=Path("/tmp"), time="not mine")
    try:
        raise ValueError("inside")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "\n" not in line
    parsed = json.loads(line, parse_constant=lambda word: pytest.fail(f"{word} is not JSON"))
    assert parsed["message"] == "two\nlines: ok"
    assert (parsed["run"], parsed["coulombic_efficiency"], parsed["where"]) == (3, None, "/tmp")
    assert parsed["time"].endswith("Z")
    assert (parsed["level"], parsed["logger"]) == ("ERROR", "cyclerd.x")
    assert "ValueError: inside" in parsed["exception"]
