"""`cyclerd status` and `stop` tell the truth about who serves a run: the daemon's heartbeat in
the store says whether it is there, so after a crash a run is "taken up when the daemon starts",
not "running", and a stop is not promised within a second when nobody can act on it.

A real `cyclerd serve` in its own process runs a real-time emulated Keithley 2450; it is killed
with SIGKILL as a crash would, and started again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.store.database import Store

runner = CliRunner()
CYCLERD = Path(sys.executable).with_name("cyclerd")
PLATING = """\
name: an hour of plating
cell: {area: 0.785 cm^2}
record: {every: 1 s}
steps:
  - plate: {current: 0.1 mA/cm^2, until: {duration: 1 h}}
"""


def lab_toml(resource: str) -> str:
    return f"""\
lab = "bench"
database = "lab.db"
resume = "resume"

[[instruments]]
name = "smu1"
driver = "keithley2450"
resource = "{resource}"

[[channels]]
name = "ch1"
instrument = "smu1"
"""


def until(condition: Callable[[], bool], log: Path | None = None, timeout_s: float = 60.0) -> None:
    """Wait for `condition`; on a timeout, say what the process logging to `log` said."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out; {log}: {log.read_text() if log else ''}"
        time.sleep(0.05)


def cli(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def lab_with_a_job(folder: Path, resource: str) -> Path:
    """lab.toml of one channel on the 2450 at `resource`, its store, and an hour of plating queued
    as job 1; the lab.toml's path."""
    config = folder / "lab.toml"
    config.write_text(lab_toml(resource))
    (folder / "plating.yaml").write_text(PLATING)
    Store(folder / "lab.db").close()
    assert "queued as job 1" in cli(
        "submit", str(folder / "plating.yaml"), "--channel", "ch1", "--config", str(config)
    )
    return config


def run_in_a_terminal(folder: Path, resource: str, stderr: int | TextIO) -> subprocess.Popen[str]:
    """`cyclerd run` of an hour of plating on the 2450 at `resource`, into folder/lab.db."""
    (folder / "plating.yaml").write_text(PLATING)
    return subprocess.Popen(
        [
            CYCLERD,
            "run",
            str(folder / "plating.yaml"),
            "--instrument",
            resource,
            "--db",
            str(folder / "lab.db"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def test_after_the_daemon_is_gone_status_and_stop_say_so_and_the_stop_holds_at_restart(
    tmp_path: Path, smu: tuple[Keithley2450Emulator, str]
) -> None:
    device, resource = smu
    config = lab_with_a_job(tmp_path, resource)
    serve = subprocess.Popen([CYCLERD, "serve", "--config", str(config)], stderr=subprocess.PIPE)
    try:
        until(
            lambda: (
                device.s.output
                and "run 1 an hour of plating on ch1: running" in cli("status", "--config", str(config))
            )
        )
        seen = cli("status", "--config", str(config))
        assert f"daemon running: pid {serve.pid}" in seen
        with Store(tmp_path / "lab.db") as store:  # with a checkpoint, a restart could resume it
            until(lambda: store.checkpoint_unix(1) is not None)
        serve.send_signal(signal.SIGKILL)  # a crash: no clean exit, the cell left as it was
        serve.wait(10)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert device.s.output  # nothing switched it off: the daemon died mid-step

    seen = cli("status", "--config", str(config))
    assert "daemon not running since" in seen
    assert "last heard of" in seen
    assert "run 1 an hour of plating on ch1: running when the daemon stopped;" in seen
    assert "it will be taken up when the daemon starts (resumed from its checkpoint)" in seen
    assert not seen.endswith(": running")

    asked = cli("stop", "1", "--config", str(config))
    assert "within a second" not in asked
    assert "daemon not running since" in asked
    assert "run 1 will be stopped safely, not resumed, when it starts" in asked
    assert "a stop was asked for: it will be stopped safely" in cli("status", "--config", str(config))

    restarted = subprocess.run(
        [CYCLERD, "serve", "--config", str(config), "--until-idle"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert restarted.returncode == 0, restarted.stderr
    assert not device.s.output  # made safe at the restart, never switched on again
    with Store(tmp_path / "lab.db") as store:
        assert store.run(1).state == "stopped"
        gaps = [e["message"] for e in store.events(1) if e["kind"] == "gap"]
        assert gaps == ["stopped safely after a restart: a stop had been asked for"]
    seen = cli("status", "--config", str(config))
    assert "daemon not running since" in seen
    assert "(stopped " in seen  # a clean exit this time
    assert "no run in progress" in seen


def test_a_store_no_daemon_has_served_says_so(tmp_path: Path) -> None:
    Store(tmp_path / "lab.db").close()
    (tmp_path / "plating.yaml").write_text(PLATING)
    queued = cli(
        "submit", str(tmp_path / "plating.yaml"), "--channel", "ch1", "--db", str(tmp_path / "lab.db")
    )
    assert "daemon not running: no daemon has served this store yet: the job starts when it does" in queued
    seen = cli("status", "--db", str(tmp_path / "lab.db"))
    assert "daemon not running: no daemon has served this store yet" in seen
    assert "1 job(s) queued; they start when the daemon does" in seen


def test_a_run_in_a_terminal_is_served_while_its_process_lives_and_stops_on_request(
    tmp_path: Path, smu: tuple[Keithley2450Emulator, str]
) -> None:
    device, resource = smu
    db = tmp_path / "lab.db"
    terminal = run_in_a_terminal(tmp_path, resource, subprocess.PIPE)
    try:
        until(
            lambda: db.exists() and device.s.output and "in `cyclerd run`" in cli("status", "--db", str(db))
        )
        seen = cli("status", "--db", str(db))
        assert f"on keithley2450:{resource}: running in `cyclerd run` (pid {terminal.pid}" in seen
        asked = cli("stop", "1", "--db", str(db))
        assert f"its `cyclerd run` (pid {terminal.pid}" in asked
        assert "acts within a second" in asked
        assert terminal.wait(10) == 6  # stopped on request: docs/cli.md
    finally:
        if terminal.poll() is None:
            terminal.kill()
            terminal.wait()
    assert not device.s.output
    assert terminal.stderr is not None
    assert "run 1 stopped: stopped on request" in terminal.stderr.read()
    assert "no run in progress" in cli("status", "--db", str(db))


def test_a_run_whose_terminal_died_is_not_reported_running(
    tmp_path: Path, smu: tuple[Keithley2450Emulator, str]
) -> None:
    device, resource = smu
    db = tmp_path / "lab.db"
    terminal = run_in_a_terminal(tmp_path, resource, subprocess.DEVNULL)
    try:
        until(
            lambda: db.exists() and device.s.output and "in `cyclerd run`" in cli("status", "--db", str(db))
        )
        terminal.send_signal(signal.SIGKILL)
        terminal.wait(10)
    finally:
        if terminal.poll() is None:
            terminal.kill()
            terminal.wait()
    seen = cli("status", "--db", str(db))
    assert "running when last recorded, but the `cyclerd run` that ran it is gone since" in seen
    assert "nothing will take the run up" in seen
    refused = runner.invoke(app, ["stop", "1", "--db", str(db)])
    assert refused.exit_code == 2
    assert "started by a `cyclerd run` that is gone since" in refused.output
    assert "check the cell by hand" in refused.output


def test_with_the_lab_known_status_names_the_channels_with_nothing_to_do(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(
        f'lab = "two"\ndatabase = "{tmp_path / "lab.db"}"\n\n'
        '[[channels]]\nname = "ch1"\nsim = "mg"\n\n[[channels]]\nname = "ch2"\nsim = "ag"\n'
    )
    Store(tmp_path / "lab.db").close()
    assert "idle: ch1, ch2" in cli("status", "--config", str(config))
