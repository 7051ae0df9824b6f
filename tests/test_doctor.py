"""`cyclerd doctor` against real parts: a real Mosquitto with a password file, the instrument
emulators on real sockets and a pty, real SQLite stores; and the systemd unit that runs `serve`.
"""

from __future__ import annotations

import asyncio
import configparser
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import typer
from mosquitto import USERS, Mosquitto, free_port
from protocol_texts import E1_TWO_CYCLES
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.doctor.diagnose import Check, Verdict, diagnose
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.methodscript_emulator import MethodScriptEmulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

cli = CliRunner()
CYCLERD = Path(sys.executable).with_name("cyclerd")
UNIT = Path(__file__).parents[1] / "docs" / "cyclerd.service"
TIMEOUT_S = 1.0
HOUR_OF_PLATING = """\
name: one hour of plating
cell: {area: 0.785 cm^2}
steps:
  - plate: {current: 0.1 mA/cm^2, until: {duration: 1 h}}
"""


@pytest.fixture
def smu() -> Iterator[tuple[Keithley2450Emulator, str]]:
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1), serial="04400001")
    with running(device) as port:
        yield device, f"TCPIP::127.0.0.1::{port}::SOCKET"


@pytest.fixture
def potentiostat() -> Iterator[MethodScriptEmulator]:
    with MethodScriptEmulator(preset="mgagsn", speed=None, serial_number="ES4HR24B0042").threaded() as device:
        yield device


@pytest.fixture
def lab(tmp_path: Path, broker: Mosquitto, smu: tuple[Keithley2450Emulator, str], potentiostat: Any) -> Lab:
    return Lab(tmp_path, broker, smu[1], potentiostat.pty_path)


class Lab:
    """A lab folder: lab.toml, a password file and a store holding one finished and one running run."""

    def __init__(self, folder: Path, broker: Mosquitto, smu: str, potentiostat: str) -> None:
        self.folder, self.broker = folder, broker
        self.config = folder / "lab.toml"
        self.password_file = folder / "mqtt-password"
        self.password_file.write_text(USERS["daemon"] + "\n")
        self.password_file.chmod(0o640)
        self.database = folder / "data" / "lab.db"
        protocol = folder / "e1.yaml"
        protocol.write_text(E1_TWO_CYCLES)
        ran = cli.invoke(
            app, ["run", str(protocol), "--sim", "mgagsn", "--seed", "1", "--db", str(self.database)]
        )
        assert ran.exit_code == 0, ran.output
        with Store(self.database) as store:  # as a crash leaves it: serve will take it up
            run_id = store.create_run("E1 on the bench", "ch1", E1_TWO_CYCLES, {}, {"channel": "ch1"})
            store.set_state(run_id, "running")
        self.write(port=broker.port, smu=smu, potentiostat=potentiostat)

    def write(self, *, port: int, smu: str, potentiostat: str, mqtt_extra: str = "") -> None:
        self.config.write_text(
            f"""\
lab = "bench"
database = "data/lab.db"

[mqtt]
host = "127.0.0.1"
port = {port}
username = "daemon"
password_file = "{self.password_file}"
{mqtt_extra}
[[instruments]]
name = "smu1"
driver = "keithley2450"
resource = "{smu}"

[[instruments]]
name = "es4"
driver = "methodscript"
resource = "{potentiostat}"

[[channels]]
name = "ch1"
instrument = "smu1"

[[channels]]
name = "ch2"
instrument = "es4"

[[channels]]
name = "sim1"
sim = "mgagsn"
"""
        )

    def diagnose(self, **options: Any) -> dict[str, Check]:
        checks = asyncio.run(diagnose(self.config, TIMEOUT_S, **options))
        assert len({c.name for c in checks}) == len(checks), checks
        return {c.name: c for c in checks}


def verdicts(checks: dict[str, Check]) -> dict[str, Verdict]:
    return {name: c.verdict for name, c in checks.items()}


# -- the checks -------------------------------------------------------------------------------


def test_a_good_lab_passes_every_check_and_the_instruments_are_left_as_they_were(
    lab: Lab, smu: tuple[Keithley2450Emulator, str], potentiostat: MethodScriptEmulator
) -> None:
    device, _ = smu
    device.s.output = True  # a run is sourcing current: asking who it is must not switch it off
    started = time.monotonic()
    result = cli.invoke(app, ["doctor", "--config", str(lab.config), "--timeout", str(TIMEOUT_S)])
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 5.0
    assert "0 FAIL" in result.output
    assert "0 warn" in result.output
    checks = lab.diagnose()
    assert set(verdicts(checks).values()) == {Verdict.OK}, checks
    assert list(checks) == [
        "config",
        *(f"channel {c}" for c in ("ch1", "ch2", "sim1")),
        "database",
        "runs to take up",
        "mqtt password",
        "broker",
        "broker login",
        "instrument smu1",
        "instrument es4",
        "dashboard",
    ]
    assert "MODEL 2450, serial 04400001, firmware 1.7.12b" in checks["instrument smu1"].detail
    es4 = checks["instrument es4"].detail
    assert "EmStat4 HR, serial ES4HR24B0042" in es4
    assert potentiostat.firmware in es4
    assert "2 run(s), WAL, quick_check ok" in checks["database"].detail
    assert "1 unfinished (1 running): at start serve resumes them" in checks["runs to take up"].detail
    assert "login as 'daemon' accepted" in checks["broker login"].detail
    assert device.s.output


def test_a_wrong_mqtt_password_fails_naming_the_login(lab: Lab) -> None:
    lab.password_file.write_text("not-the-password\n")
    result = cli.invoke(app, ["doctor", "--config", str(lab.config), "--timeout", str(TIMEOUT_S)])
    assert result.exit_code == 1
    login = lab.diagnose()["broker login"]
    assert login.verdict is Verdict.FAIL
    assert "the broker refused the username/password" in login.detail
    assert f"check password_file {lab.password_file}" in login.detail


def test_a_broker_port_with_nothing_listening_fails_and_the_rest_still_runs(
    lab: Lab, smu: tuple[Keithley2450Emulator, str], potentiostat: MethodScriptEmulator
) -> None:
    closed = free_port()
    lab.write(port=closed, smu=smu[1], potentiostat=str(potentiostat.pty_path))
    checks = lab.diagnose()
    assert checks["broker"].verdict is Verdict.FAIL
    assert f"nothing listens on 127.0.0.1:{closed}: is mosquitto running?" in checks["broker"].detail
    assert "systemctl status mosquitto" in checks["broker"].detail
    assert checks["broker login"].verdict is Verdict.WARN
    assert checks["instrument smu1"].verdict is checks["instrument es4"].verdict is Verdict.OK


def test_a_dead_instrument_fails_while_the_others_show_ok(
    lab: Lab, potentiostat: MethodScriptEmulator
) -> None:
    dead = f"TCPIP::127.0.0.1::{free_port()}::SOCKET"
    lab.write(port=lab.broker.port, smu=dead, potentiostat=str(potentiostat.pty_path))
    result = cli.invoke(app, ["doctor", "--config", str(lab.config), "--timeout", str(TIMEOUT_S)])
    assert result.exit_code == 1
    checks = lab.diagnose()
    assert checks["instrument smu1"].verdict is Verdict.FAIL
    assert f"connection refused at {dead}" in checks["instrument smu1"].detail
    failed = {name for name, verdict in verdicts(checks).items() if verdict is not Verdict.OK}
    assert failed == {"instrument smu1"}


def test_a_wrong_device_is_named_and_a_hung_one_times_out_quickly(
    lab: Lab, potentiostat: MethodScriptEmulator
) -> None:
    other = f"TCPIP::127.0.0.1::{potentiostat.port}::SOCKET"  # a potentiostat where the SMU should be
    lab.write(port=lab.broker.port, smu=other, potentiostat=str(potentiostat.pty_path))
    smu1 = lab.diagnose()["instrument smu1"]
    assert smu1.verdict is Verdict.FAIL
    assert f"a different device answers at {other}" in smu1.detail
    potentiostat.set_delay(math.inf)  # now it never answers
    started = time.monotonic()
    es4 = lab.diagnose()["instrument es4"]
    assert time.monotonic() - started < 3 * TIMEOUT_S + 1.0
    assert es4.verdict is Verdict.FAIL
    assert "no reply to the 't' query" in es4.detail


def test_a_missing_serial_device_is_named_with_where_to_look(lab: Lab, smu: tuple[Any, str]) -> None:
    lab.write(port=lab.broker.port, smu=smu[1], potentiostat="/dev/ttyUSB97")
    es4 = lab.diagnose(ask_instruments=True)["instrument es4"]
    assert es4.verdict is Verdict.FAIL
    assert "no device /dev/ttyUSB97" in es4.detail
    assert "/dev/serial/by-id/" in es4.detail


def test_a_corrupt_database_file_fails(lab: Lab) -> None:
    lab.database.write_bytes(b"these are not the pages of an SQLite file\n" * 200)
    for name in ("lab.db-wal", "lab.db-shm"):
        (lab.database.parent / name).unlink(missing_ok=True)
    result = cli.invoke(app, ["doctor", "--config", str(lab.config), "--timeout", str(TIMEOUT_S)])
    assert result.exit_code == 1
    database = lab.diagnose()["database"]
    assert database.verdict is Verdict.FAIL
    assert "does not open as a cyclerd store (file is not a database)" in database.detail
    assert f"mv {lab.database} {lab.database}.broken" in database.detail


def test_a_missing_database_folder_fails_and_a_missing_file_only_warns(lab: Lab) -> None:
    shutil.rmtree(lab.database.parent)
    database = lab.diagnose()["database"]
    assert database.verdict is Verdict.FAIL
    assert f"{lab.database.parent} does not exist" in database.detail
    lab.database.parent.mkdir()
    database = lab.diagnose()["database"]
    assert database.verdict is Verdict.WARN
    assert "serve creates it" in database.detail
    assert not lab.database.exists()  # doctor created nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anything: the rights cannot be tested")
def test_an_unwritable_database_fails(lab: Lab) -> None:
    lab.database.chmod(0o444)
    try:
        database = lab.diagnose()["database"]
    finally:
        lab.database.chmod(0o644)
    assert database.verdict is Verdict.FAIL
    assert "cannot write" in database.detail


def test_a_world_readable_password_file_warns(lab: Lab) -> None:
    lab.password_file.chmod(0o644)
    result = cli.invoke(app, ["doctor", "--config", str(lab.config), "--timeout", str(TIMEOUT_S)])
    assert result.exit_code == 0  # a warning, not a failure
    password = lab.diagnose()["mqtt password"]
    assert password.verdict is Verdict.WARN
    assert "readable by every user (mode 0644)" in password.detail
    assert f"chmod o-r {lab.password_file}" in password.detail


def test_tls_against_a_plain_listener_fails_the_handshake(
    lab: Lab, smu: tuple[Any, str], potentiostat: MethodScriptEmulator
) -> None:
    lab.write(
        port=lab.broker.port, smu=smu[1], potentiostat=str(potentiostat.pty_path), mqtt_extra="tls = true\n"
    )
    checks = lab.diagnose()
    assert checks["broker tls"].verdict is Verdict.FAIL
    assert "TLS handshake with" in checks["broker tls"].detail
    assert checks["broker login"].verdict is Verdict.WARN


def test_instruments_are_not_asked_while_the_daemon_is_online(
    lab: Lab, smu: tuple[Keithley2450Emulator, str]
) -> None:
    async def announce() -> None:  # what the daemon's bus leaves on the broker (retained)
        async with aiomqtt.Client(
            lab.broker.host, lab.broker.port, username="daemon", password=USERS["daemon"]
        ) as client:
            await client.publish("cyclerd/bench/daemon/status", "online", qos=1, retain=True)

    asyncio.run(announce())
    device, _ = smu
    device.faults.drop_connection()  # nobody connected yet: a probe would connect anew
    checks = lab.diagnose()
    assert "daemon: online" in checks["broker login"].detail
    for name in ("instrument smu1", "instrument es4"):
        assert checks[name].verdict is Verdict.WARN
        assert "not asked: the daemon is online" in checks[name].detail
    assert lab.diagnose(ask_instruments=False)["instrument smu1"].detail == "not asked (--no-instruments)"


def test_config_errors_fail_with_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text('lab = "bench"\n\n[[channels]]\nname = "ch1"\nsim = "mgagsn"\nsed = 1\n')
    result = cli.invoke(app, ["doctor", "--config", str(config)])
    assert result.exit_code == 1
    (check,) = asyncio.run(diagnose(config))
    assert check.verdict is Verdict.FAIL
    assert f"{config}:6:1: channels.0.sed: unknown key 'sed'" in check.detail
    (missing,) = asyncio.run(diagnose(tmp_path / "nowhere.toml"))
    assert missing.verdict is Verdict.FAIL
    assert "copy docs/lab.toml there" in missing.detail


def test_two_channels_on_one_instrument_and_an_unknown_cell_fail(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(
        'lab = "bench"\n'
        '[[instruments]]\nname = "smu1"\ndriver = "keithley2450"\nresource = "TCPIP::127.0.0.1::1::SOCKET"\n'
        '[[instruments]]\nname = "spare"\ndriver = "methodscript"\nresource = "/dev/ttyACM9"\n'
        '[[instruments]]\nname = "odd"\ndriver = "keithley2450"\nresource = "/dev/ttyUSB3"\n'
        '[[channels]]\nname = "a"\ninstrument = "smu1"\n'
        '[[channels]]\nname = "b"\ninstrument = "smu1"\n'
        '[[channels]]\nname = "c"\nsim = "unobtainium"\n'
    )
    checks = {c.name: c for c in asyncio.run(diagnose(config, TIMEOUT_S, ask_instruments=False))}
    assert checks["channel a"].verdict is checks["channel b"].verdict is Verdict.FAIL
    assert "shares instrument smu1 with b" in checks["channel a"].detail
    assert checks["channel c"].verdict is Verdict.FAIL
    assert "no simulated cell 'unobtainium'" in checks["channel c"].detail
    assert checks["instrument spare"].verdict is Verdict.WARN
    assert "no channel uses it" in checks["instrument spare"].detail
    assert checks["instrument odd"].verdict is Verdict.FAIL
    assert (
        "'/dev/ttyUSB3' is a methodscript address, but driver = 'keithley2450'"
        in checks["instrument odd"].detail
    )
    assert checks["broker"].verdict is Verdict.OK  # no [mqtt]: nothing to check
    assert "database" in checks


def test_beside_a_running_serve_doctor_leaves_the_instruments_alone_and_sigint_makes_them_safe(
    lab: Lab, smu: tuple[Keithley2450Emulator, str]
) -> None:
    device, _ = smu
    protocol = lab.folder / "plate.yaml"
    protocol.write_text(HOUR_OF_PLATING)
    submitted = cli.invoke(app, ["submit", str(protocol), "--channel", "ch1", "--db", str(lab.database)])
    assert submitted.exit_code == 0, submitted.output
    serve = subprocess.Popen(
        [CYCLERD, "serve", "--config", "lab.toml"],
        cwd=lab.folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20.0
        while not device.s.output and time.monotonic() < deadline:
            time.sleep(0.05)
        assert device.s.output, "serve never started plating"
        smu1 = lab.diagnose()["instrument smu1"]
        assert smu1.verdict is Verdict.WARN
        assert f"not asked: cyclerd serve (pid {serve.pid}) runs with this config" in smu1.detail
        assert device.s.output  # still plating: doctor did not touch it
        # What `systemctl stop` does with the unit: its KillSignal, then TimeoutStopSec to finish.
        service = _unit()["Service"]
        serve.send_signal(signal.Signals[service["KillSignal"]])
        assert serve.wait(timeout=float(service["TimeoutStopSec"].removesuffix("s"))) == 0
        assert not device.s.output  # the channel was made safe on the way out
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


# -- the systemd unit -------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_starts_serve_as_a_dedicated_user_and_stops_it_with_sigint() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"  # serve sends READY=1, then WATCHDOG=1 (tests/test_daemon_stop.py)
    assert service["User"] == "cyclerd"
    assert "dialout" in service["SupplementaryGroups"].split()
    assert service["Restart"] == "on-failure"
    assert float(service["RestartSec"].removesuffix("s")) > 0
    # SIGINT: asyncio.run cancels serve, and the channels' finally blocks switch the outputs off
    # (see the test with a running serve below).
    assert service["KillSignal"] == "SIGINT"
    assert float(service["TimeoutStopSec"].removesuffix("s")) >= 30
    assert service["ProtectSystem"] == "strict"
    assert "/var/lib/cyclerd" in service["ReadWritePaths"]
    assert service["NoNewPrivileges"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service.get("PrivateDevices", "no") == "no"  # it would hide /dev/ttyUSB* and USB-TMC
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


def test_the_units_execstart_is_a_command_line_serve_accepts() -> None:
    argv = shlex.split(_unit()["Service"]["ExecStart"])
    assert argv[0] == "/opt/cyclerd/.venv/bin/cyclerd"
    command = typer.main.get_command(app)
    serve = command.get_command(command.make_context("cyclerd", argv[1:2]), argv[1])  # type: ignore[attr-defined]
    assert argv[1] == "serve"
    assert serve is not None
    parsed = serve.make_context("serve", argv[2:])
    assert parsed.params["config"] == Path("/etc/cyclerd/lab.toml")
    assert "--config" in cli.invoke(app, ["serve", "--help"]).output


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this venv's cyclerd for the check.
    here = Path(__file__).parents[1] / ".venv" / "bin" / "cyclerd"
    copy = tmp_path / "cyclerd.service"
    copy.write_text(UNIT.read_text().replace("/opt/cyclerd/.venv/bin/cyclerd", str(here)))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in done.stderr.splitlines() if str(copy) in line or "cyclerd.service" in line]
    assert done.returncode == 0
    assert not problems, done.stderr
