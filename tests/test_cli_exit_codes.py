"""`cyclerd run` exits with a code that says how the run ended (docs/cli.md): a run a safety
limit stopped, or an instrument fault, no longer exits 0 like a completed one.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyclerd.cli.exit_codes import ExitCode
from cyclerd.cli.main import app
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

runner = CliRunner()
CYCLERD = Path(sys.executable).with_name("cyclerd")
DOCS = Path(__file__).parents[1] / "docs" / "cli.md"
PAST_A_LIMIT = """\
name: plating past a safety limit
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.01 V}
record: {every: 1 min}
steps:
  - plate: {current: 1 mA/cm^2, until: {duration: 1 h}}
"""
TWO_HOURS = """\
name: two hours of plating
cell: {area: 0.785 cm^2}
record: {every: 1 min}
steps:
  - plate: {current: 0.1 mA/cm^2, until: {duration: 2 h}}
"""


@pytest.fixture
def smu() -> Iterator[tuple[Keithley2450Emulator, str]]:
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=3600)
    with running(device) as port:
        yield device, f"TCPIP::127.0.0.1::{port}::SOCKET"


def test_every_exit_code_is_documented() -> None:
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", DOCS.read_text(), re.MULTILINE)}
    assert documented == {int(code) for code in ExitCode}


def test_a_completed_run_exits_0_and_one_a_safety_limit_stopped_exits_5(tmp_path: Path) -> None:
    protocol = tmp_path / "limit.yaml"
    protocol.write_text(PAST_A_LIMIT)
    stopped = runner.invoke(app, ["run", str(protocol), "--sim", "mgagsn", "--db", str(tmp_path / "lab.db")])
    assert stopped.exit_code == ExitCode.SAFETY_STOP == 5, stopped.output
    assert "run 1 stopped: safety: voltage" in stopped.output
    assert "stored as run 1" in stopped.output  # the data is kept, the summary shown
    protocol.write_text(PAST_A_LIMIT.replace("-0.01 V", "-0.5 V"))
    completed = runner.invoke(
        app, ["run", str(protocol), "--sim", "mgagsn", "--db", str(tmp_path / "lab.db")]
    )
    assert completed.exit_code == 0, completed.output


def test_an_instrument_fault_mid_run_exits_3(tmp_path: Path, smu: tuple[Keithley2450Emulator, str]) -> None:
    device, resource = smu
    protocol = tmp_path / "plate.yaml"
    protocol.write_text(TWO_HOURS)

    def break_it_once_plating() -> None:
        deadline = time.monotonic() + 10.0
        while not device.s.output and time.monotonic() < deadline:
            time.sleep(0.005)
        device.faults.error_next = (-310, "System error")  # not transient: the run stops

    breaker = threading.Thread(target=break_it_once_plating)
    breaker.start()
    args = ["run", str(protocol), "--instrument", resource, "--speed", "3600", "--poll", "60"]
    result = runner.invoke(app, [*args, "--db", str(tmp_path / "lab.db")])
    breaker.join()
    assert result.exit_code == ExitCode.INSTRUMENT_FAULT == 3, result.output
    assert "run 1 stopped: instrument fault:" in result.output
    assert "instrument error -310: System error" in result.output
    assert not device.s.output


def test_an_unreachable_instrument_exits_3_and_a_refused_protocol_4(tmp_path: Path) -> None:
    protocol = tmp_path / "plate.yaml"
    protocol.write_text(TWO_HOURS)
    db = str(tmp_path / "lab.db")
    gone = runner.invoke(
        app, ["run", str(protocol), "--instrument", "TCPIP::127.0.0.1::1::SOCKET", "--db", db]
    )
    assert gone.exit_code == ExitCode.INSTRUMENT_FAULT, gone.output
    insitu = files("cyclerd.protocols") / "library" / "insitu_eis.yaml"
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1))
    with running(device) as port:
        resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
        refused = runner.invoke(app, ["run", str(insitu), "--instrument", resource, "--db", db])
    assert refused.exit_code == ExitCode.REFUSED == 4, refused.output
    assert "cannot measure impedance spectra (EIS)" in refused.output


def test_bad_input_exits_2_and_a_protocol_with_errors_1(tmp_path: Path) -> None:
    protocol = tmp_path / "plate.yaml"
    protocol.write_text(TWO_HOURS)
    db = str(tmp_path / "lab.db")
    assert runner.invoke(app, ["run", str(protocol), "--sim", "nope", "--db", db]).exit_code == 2
    assert runner.invoke(app, ["run", str(protocol), "--db", db]).exit_code == 2
    protocol.write_text("name: x\nsteps:\n  - rest: 600\n")
    assert runner.invoke(app, ["run", str(protocol), "--sim", "mgagsn", "--db", db]).exit_code == 1


def test_ctrl_c_makes_the_cell_safe_and_exits_130(tmp_path: Path) -> None:
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=1.0)
    protocol = tmp_path / "plate.yaml"
    protocol.write_text(TWO_HOURS)
    db = tmp_path / "lab.db"
    with running(device) as port:
        resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
        terminal = subprocess.Popen(
            [CYCLERD, "run", str(protocol), "--instrument", resource, "--db", str(db)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 15.0
            while not device.s.output and time.monotonic() < deadline:
                time.sleep(0.02)
            assert device.s.output, "the run never started plating"
            terminal.send_signal(signal.SIGINT)
            assert terminal.wait(10) == ExitCode.INTERRUPTED == 130
        finally:
            if terminal.poll() is None:
                terminal.kill()
                terminal.wait()
        assert not device.s.output
    assert terminal.stderr is not None
    said = terminal.stderr.read()
    assert "interrupted: the cell was made safe; run 1 is recorded as failed" in said
    assert "Traceback" not in said
    with Store(db) as store:
        assert store.run(1).state == "failed"


def test_a_failure_nobody_foresaw_is_one_line_with_code_70(tmp_path: Path) -> None:
    """A store whose tables are not cyclerd's (an old or hand-made file) fails deep inside a
    query; the operator gets one line and the exit code of a bug, the developer the traceback."""
    odd = tmp_path / "odd.db"
    with sqlite3.connect(odd) as db:
        db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, note TEXT)")
        db.execute("INSERT INTO runs (note) VALUES ('made by hand')")
    env = {k: v for k, v in os.environ.items() if k != "CYCLERD_DEBUG"}
    done = subprocess.run(
        [CYCLERD, "runs", "--db", str(odd)], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == ExitCode.INTERNAL_ERROR == 70, done.stderr
    assert "cyclerd: internal error (OperationalError: " in done.stderr
    assert "CYCLERD_DEBUG=1" in done.stderr
    assert "Traceback" not in done.stderr
    debug = subprocess.run(
        [CYCLERD, "runs", "--db", str(odd)], capture_output=True, text=True, env={**env, "CYCLERD_DEBUG": "1"}
    )
    assert "Traceback" in debug.stderr
