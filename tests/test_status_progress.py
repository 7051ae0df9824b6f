"""`cyclerd status` says where each live run stands and how long it still has to go.

Per run: the step's label, the cycle, the step time, the elapsed test time, the last voltage and
current, and the time left by the plan, read from the store; the same for a run served by the
daemon and a run in a terminal. The time left is exact for a protocol of durations only
(loops and every-blocks included), a bound where a step ends on a voltage, and "unknown" where
the plan cannot say. `status --watch` redraws the table every second until Ctrl-C, which ends
it with exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

import pytest
from test_cli_status import lab_with_a_job, run_in_a_terminal, until
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.cli.status_view import Estimates, Standing, left_text, standing
from cyclerd.engine.session import CellSpec, Controls, Session, SimulatedCell, prepare
from cyclerd.engine.sinks import Sink, StepEnded, StepStarted
from cyclerd.engine.time_left import TimeLeft
from cyclerd.protocols.plan import Span, plan
from cyclerd.protocols.program import Program
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.store.database import Store

runner = CliRunner()
CYCLERD = Path(sys.executable).with_name("cyclerd")

# Durations only: the plan knows the total to the second (the spectra's own time included).
DURATIONS = """\
name: durations only
cell: {area: 0.785 cm^2}
record: {every: 10 s}
steps:
  - rest: 2 min
  - repeat:
      label: cycling
      count: 3
      steps:
        - plate:
            label: plate with EIS
            current: 0.1 mA/cm^2
            until: {duration: 10 min}
            every:
              interval: 4 min
              at_start: true
              at_end: true
              steps:
                - rest: 30 s
                - eis:
                    frequency_start: 10 kHz
                    frequency_stop: 1 Hz
                    points_per_decade: 5
                    amplitude: 10 mV
                    dc_level: ocv
        - strip: {current: 0.1 mA/cm^2, until: {duration: 10 min}}
  - rest: 1 min
"""


def program_of(text: str, cell: CellSpec | None = None) -> TimeLeft:
    return TimeLeft(prepare(text, "p.yaml", cell or CellSpec()).program)


# -- the estimate ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cv", "cycling", "eis_after_cycling", "formation", "insitu_eis"])
def test_before_a_run_begins_the_time_left_is_the_plans_total(name: str) -> None:
    text = (files("cyclerd.protocols") / "library" / f"{name}.yaml").read_text()
    prepared = prepare(text, f"{name}.yaml", CellSpec.parse("0.785 cm^2", "1.5 mAh"))
    assert TimeLeft(prepared.program).at(None) == plan(prepared.program).total


def test_a_step_ended_by_a_voltage_is_bounded_by_its_backstop_and_an_open_ended_loop_is_unknown() -> None:
    voltage = program_of(
        "name: v\nsteps:\n  - rest: 1 h\n"
        "  - strip: {current: 1 mA, until: {voltage_above: 1 V, duration: 2 h}}\n"
    )
    assert voltage.total == Span(3600.0, 3 * 3600.0)
    assert left_text(voltage.total) == "1h00m–3h00m"
    backstop_only = program_of(
        "name: v\nsteps:\n  - strip: {current: 1 mA, until: {voltage_above: 1 V, duration: 2 h}}\n"
    )
    assert left_text(backstop_only.total) == "≤ 2h00m"
    cycles = (
        "  - repeat:\n      count: 5\n      until: {short_circuit: true}\n      steps:\n"
        "        - plate: {current: 1 mA, until: {duration: 1 h}}\n"
        "        - strip: {current: 1 mA, until: {duration: 1 h}}\n"
    )
    short = program_of(f"name: s\nsteps:\n  - rest: 1 h\n{cycles}")
    assert left_text(short.total) == "3h00m–11h00m"  # a short may end it after the first cycle
    capped = program_of(f"name: s\nsafety: {{duration_max: 8 h}}\nsteps:\n  - rest: 1 h\n{cycles}")
    assert left_text(capped.total) == "3h00m–8h00m"  # the safety duration ends the run
    open_ended = program_of("name: o\nsteps:\n  - cc: {current: 1 mA, until: {voltage_above: 4 V}}\n")
    assert left_text(open_ended.total) == "unknown"


class Probe(Sink):
    """Reads the run's standing from the store at every step's end, as `cyclerd status` would
    (the store has committed the step then), beside the step that has just ended."""

    def __init__(self, store: Store, run_id: int) -> None:
        self.store, self.run_id, self.estimates = store, run_id, Estimates()
        self.seen: list[tuple[Standing, StepStarted]] = []
        self.steps: dict[int, StepStarted] = {}

    def step_started(self, step: StepStarted, cursor: object) -> None:
        self.steps[step.number] = step

    def step_ended(self, step: StepEnded, cursor: object) -> None:
        run = self.store.run(self.run_id)
        self.seen.append((standing(self.store, run, self.estimates), self.steps[step.number]))


def probed_run(tmp_path: Path, text: str) -> tuple[float, list[tuple[Standing, StepStarted]]]:
    """Run `text` (durations only) on a simulated cell in virtual time, as the daemon would; its
    plan's exact total, and what `status` read at each step's end beside the step that ended."""
    prepared = prepare(text, "p.yaml", CellSpec())
    total = plan(prepared.program).total
    assert total.low == total.high  # durations only: known exactly
    assert total.high is not None
    probes: list[Probe] = []

    def views(run_id: int, program: Program) -> list[Sink]:
        probes.append(Probe(store, run_id))
        return probes

    with Store(tmp_path / "lab.db") as store:
        session = Session(store, "ch1", SimulatedCell("mgagsn", seed=1), Controls(), views=views)
        outcome = asyncio.run(session.start(prepared, prepared.cell_info(), {"path": "p.yaml"}))
        assert not isinstance(outcome, list)
        assert outcome[1].state.value == "completed"
    return total.high, probes[0].seen


# Loops in a loop, a step ended by its charge, an every-block without a closing run, a spectrum
# between cycles: each known to the second.
NESTED = """\
name: nested loops
cell: {area: 0.785 cm^2}
record: {every: 30 s}
steps:
  - repeat:
      label: outer
      count: 2
      steps:
        - rest: 1 min
        - repeat:
            label: inner
            count: 2
            steps:
              - plate: {current: 1 mA/cm^2, until: {charge: 0.1 mAh/cm^2}}
              - strip:
                  current: 1 mA/cm^2
                  until: {duration: 5 min}
                  every: {interval: 2 min, at_end: false, steps: [rest: 20 s]}
        - eis:
            {frequency_start: 1 kHz, frequency_stop: 1 Hz, points_per_decade: 3, amplitude: 10 mV,
             dc_level: ocv}
"""


@pytest.mark.parametrize("text", [DURATIONS, NESTED], ids=["every-blocks", "nested loops"])
def test_the_time_left_of_a_run_in_progress_is_exact_and_reaches_zero(tmp_path: Path, text: str) -> None:
    total, seen = probed_run(tmp_path, text)
    lefts, cycles_begun = [], 0
    for row, step in seen:
        cycles_begun = max(cycles_begun, step.cycle)
        assert row.step_label == step.label
        assert row.cycle == (step.cycle or cycles_begun or None)  # between cycles: the last begun
        assert row.elapsed_s is not None
        assert row.step_time_s == pytest.approx(row.elapsed_s - step.t_s)
        assert row.left is not None
        assert row.left.low == pytest.approx(row.left.high)  # exact, not a bound
        assert row.left.high + row.elapsed_s == pytest.approx(total)  # what is left + what passed
        lefts.append(row.left.high)
    assert lefts == sorted(lefts, reverse=True)  # it only goes down
    assert lefts[-1] == pytest.approx(0.0, abs=1e-6)  # and is nothing at the end


# Steps that end on a voltage before their backstop, a loop that may end on a short circuit and
# one that ends on its duration: the plan gives bounds, and what happened must lie within them.
BOUNDED = """\
name: voltages and durations
cell: {area: 0.785 cm^2}
record: {every: 1 min}
steps:
  - rest: 10 min
  - repeat:
      label: cycling
      count: 3
      until: {short_circuit: true}
      steps:
        - plate: {current: 1 mA/cm^2, until: {charge: 0.5 mAh/cm^2}}
        - strip: {current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 1 h}}
  - repeat:
      label: timed
      count: 10
      until: {duration: 1 h}
      steps:
        - plate: {current: 0.5 mA/cm^2, until: {duration: 10 min}}
        - strip: {current: 0.5 mA/cm^2, until: {voltage_above: 1 V, duration: 20 min}}
"""


def test_where_the_plan_gives_bounds_what_the_run_took_lies_within_them(tmp_path: Path) -> None:
    prepared = prepare(BOUNDED, "p.yaml", CellSpec())
    probe: list[Probe] = []

    def views(run_id: int, program: Program) -> list[Sink]:
        probe.append(Probe(store, run_id))
        return probe

    with Store(tmp_path / "lab.db") as store:
        session = Session(store, "ch1", SimulatedCell("mgagsn", seed=1), Controls(), views=views)
        asyncio.run(session.start(prepared, prepared.cell_info(), {"path": "p.yaml"}))
        ended = [e for e in store.steps(1) if e["end_reason"] == "voltage_above"]
    assert ended  # the strips did end on their voltage, before their backstop
    seen = probe[0].seen
    end = seen[-1][0].elapsed_s
    assert end is not None
    for row, _ in seen:
        assert row.left is not None
        assert row.elapsed_s is not None
        took = end - row.elapsed_s
        assert row.left.low <= took + 1e-6
        assert row.left.high is not None
        assert took <= row.left.high + 1e-6
    assert seen[0][0].left is not None
    assert seen[0][0].left.low < seen[0][0].left.high  # a range, not a figure


def test_a_run_in_progress_shows_its_step_cycle_and_last_readings(tmp_path: Path) -> None:
    _, seen = probed_run(tmp_path, DURATIONS)
    # The rest; 3 cycles of (4 blocks of rest and spectrum: at the start, at 4 and 8 min, at the
    # end; the plate; the strip); the last rest.
    assert len(seen) == 1 + 3 * (4 * 2 + 1 + 1) + 1
    labels = [row.step_label for row, _ in seen]
    # The plate's own end, after its closing block: the plate again, not the block's spectrum.
    assert labels[:11] == ["rest", *["rest", "eis"] * 4, "plate with EIS", "strip"]
    assert labels[-2:] == ["strip", "rest"]
    assert [row.cycle for row, _ in seen] == [None, *[1] * 10, *[2] * 10, *[3] * 10, 3]
    for row, _ in seen:
        assert row.state == "running"
        assert row.voltage_V is not None
        assert row.current_A is not None


def test_a_run_not_begun_shows_its_whole_plan_and_one_that_cannot_be_compiled_shows_unknown(
    tmp_path: Path,
) -> None:
    db = tmp_path / "lab.db"
    with Store(db) as store:
        waiting = store.create_run("durations only", "ch1", DURATIONS, {}, {"path": "p.yaml"})
        broken = store.create_run("old", "ch2", "steps: [", {}, {})
        estimates = Estimates()
        first = estimates.of(store, store.run(waiting))
        assert first is not None
        assert estimates.of(store, store.run(waiting)) is first  # compiled once, kept for the run
        assert estimates.of(store, store.run(broken)) is None
    text = status("--db", str(db))
    rows = {row["run"]: row for row in rows_of_any(text)}
    assert rows["1"]["rest"].split() == ["–", "–", "–", "–", "–", "–", left_text(first.total)]
    assert rows["2"]["rest"].split()[-1] == "unknown"
    assert "Traceback" not in text


# -- the command ----------------------------------------------------------------------------

ROW = re.compile(
    r"^\s*(?P<run>\d+)\s+(?P<channel>\S+)\s+(?P<step>.+?)\s+(?P<cycle>\S+)"
    r"\s+(?P<step_time>\S+)\s+(?P<elapsed>\S+)\s+(?P<V>-?[\d.]+ V)\s+(?P<I>-?[\d.]+ \S?A)\s+(?P<left>.+?)\s*$"
)


def seconds(clock: str) -> int:
    """'12m05s' -> 725: the table's durations read back."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", clock))


def rows_of(output: str) -> list[dict[str, str]]:
    return [m.groupdict() for line in output.splitlines() if (m := ROW.match(line))]


def rows_of_any(output: str) -> list[dict[str, str]]:
    """The table's rows, with what follows the run and channel as one text: for runs with
    nothing recorded yet, whose cells are mostly `–`."""
    rows = (
        re.match(r"^\s*(?P<run>\d+)\s+(?P<channel>\S+)\s+(?P<rest>.*)$", line) for line in output.splitlines()
    )
    return [m.groupdict() for m in rows if m]


def status(*args: str) -> str:
    result = runner.invoke(app, ["status", *args])
    assert result.exit_code == 0, result.output
    return result.output


def assert_plating(row: dict[str, str]) -> None:
    """A row of the hour of plating: its step, and a time left that is the hour less what passed."""
    assert (row["run"], row["step"], row["cycle"]) == ("1", "plate", "–")
    assert seconds(row["step_time"]) == seconds(row["elapsed"]) > 0
    assert row["V"].endswith(" V")
    number, unit = row["I"].split()
    assert unit == "µA"
    assert float(number) == pytest.approx(-78.5, rel=0.01)  # 0.1 mA/cm² on 0.785 cm², plating
    assert abs(seconds(row["left"]) + seconds(row["elapsed"]) - 3600) <= 1  # each rounded to the second


def test_a_run_in_a_terminal_shows_its_step_readings_and_time_left(
    tmp_path: Path, smu: tuple[Keithley2450Emulator, str]
) -> None:
    device, resource = smu
    db = tmp_path / "lab.db"
    log = tmp_path / "run.log"
    with log.open("w") as stderr:
        terminal = run_in_a_terminal(tmp_path, resource, stderr)
    try:
        until(
            lambda: db.exists() and any(seconds(r["elapsed"]) >= 2 for r in rows_of(status("--db", str(db)))),
            log,
        )
        seen = status("--db", str(db))
        (row,) = rows_of(seen)
        assert "running in `cyclerd run`" in " ".join(seen.split())
    finally:
        terminal.send_signal(signal.SIGINT)  # Ctrl-C: the cell made safe, the run ends
        terminal.wait(60)  # a guard: on a loaded machine the exit can take seconds
    assert row["channel"].startswith("keithley2450")
    assert_plating(row)
    assert not device.s.output


class Terminal:
    """A command on a pseudo-terminal of `columns` columns, its screen output read as it comes."""

    def __init__(self, args: list[str], columns: int) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
        env = {**os.environ, "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color"}
        for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
            env.pop(name, None)
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
        os.close(slave)
        self.output = b""

    def read(self, timeout_s: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if ready:
            with contextlib.suppress(OSError):  # the command has ended and closed its side
                self.output += os.read(self.master, 65536)

    def read_until(self, condition: Callable[[str], bool], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition(self.text()):
            assert time.monotonic() < deadline, f"timed out; the screen showed:\n{self.text()}"
            self.read(0.1)

    def text(self) -> str:
        """What was written, without the escape sequences that move the cursor and colour."""
        plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", self.output.decode(errors="replace"))
        return plain.replace("\r", "")

    def close(self) -> int:
        deadline = time.monotonic() + 10
        while self.process.poll() is None and time.monotonic() < deadline:
            self.read(0.1)  # a full pseudo-terminal would block the command's last frame
        code = self.process.wait(30)
        os.close(self.master)
        return code


def test_status_watch_redraws_a_daemons_run_on_100_columns_until_ctrl_c(
    tmp_path: Path, smu: tuple[Keithley2450Emulator, str]
) -> None:
    _, resource = smu
    config = lab_with_a_job(tmp_path, resource)
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        serve = subprocess.Popen([CYCLERD, "serve", "--config", str(config)], stderr=stderr)
    watch: Terminal | None = None
    try:
        until(lambda: any(seconds(r["elapsed"]) >= 1 for r in rows_of(status("--config", str(config)))), log)
        assert_plating(rows_of(status("--config", str(config)))[0])  # served by the daemon alike

        watch = Terminal([str(CYCLERD), "status", "--watch", "--config", str(config)], columns=100)
        # Frames follow each other: wait until the elapsed time has moved on between two of them.
        watch.read_until(lambda text: len({r["elapsed"] for r in rows_of(text)}) >= 2)
        watch.process.send_signal(signal.SIGINT)
        code = watch.close()
        text = watch.text()
    finally:
        if watch is not None and watch.process.poll() is None:
            watch.process.kill()
            watch.close()
        serve.terminate()
        serve.wait(30)
    assert code == 0, text
    frames = rows_of(text)
    for row in frames:
        assert_plating(row)
    elapsed = [seconds(r["elapsed"]) for r in frames]
    lefts = [seconds(r["left"]) for r in frames]
    assert elapsed == sorted(elapsed)
    assert lefts == sorted(lefts, reverse=True)
    assert lefts[-1] < lefts[0]
    assert "daemon running: pid" in text
    assert "Traceback" not in text
    assert max(len(line) for line in text.splitlines()) <= 100
