"""Small things an operator trips over: `show` printing Python's None, `run` without `--cell`,
the message for `--sim` with `--instrument`, doctor's "login as None" and doctor leaving alone an
instrument the running daemon does not use.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from mosquitto import USERS, Mosquitto
from protocol_texts import E1_TWO_CYCLES
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.doctor.diagnose import Verdict, diagnose
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

runner = CliRunner()


def test_show_leaves_out_what_a_run_does_not_have(tmp_path: Path) -> None:
    """A daemon's run on a simulated channel has no instrument: `show` said 'instrument None'."""
    config = tmp_path / "lab.toml"
    config.write_text('lab = "bench"\ndatabase = "lab.db"\n[[channels]]\nname = "ch1"\nsim = "mgagsn"\n')
    (tmp_path / "e1.yaml").write_text(E1_TWO_CYCLES)
    Store(tmp_path / "lab.db").close()
    args = [
        "submit",
        str(tmp_path / "e1.yaml"),
        "--channel",
        "ch1",
        "--cell",
        "MgAgSn-07",
        "--config",
        str(config),
    ]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["serve", "--config", str(config), "--until-idle"]).exit_code == 0
    shown = runner.invoke(app, ["show", "1", "--config", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "None" not in shown.output
    assert "cell MgAgSn-07, channel ch1, job 1" in shown.output
    assert "sim mgagsn" in shown.output


def test_run_takes_the_cells_id_like_submit(tmp_path: Path) -> None:
    protocol = tmp_path / "e1.yaml"
    protocol.write_text(E1_TWO_CYCLES)
    db = str(tmp_path / "lab.db")
    ran = runner.invoke(app, ["run", str(protocol), "--sim", "mgagsn", "--cell", "MgAgSn-07", "--db", db])
    assert ran.exit_code == 0, ran.output
    with Store(db) as store:
        assert store.run(1).cell["cell"] == "MgAgSn-07"
    assert "MgAgSn-07" in runner.invoke(app, ["runs", "--db", db]).output
    assert "cell MgAgSn-07" in runner.invoke(app, ["show", "1", "--db", db]).output


def test_sim_and_instrument_together_are_refused_as_two_cells(tmp_path: Path) -> None:
    protocol = tmp_path / "e1.yaml"
    protocol.write_text(E1_TWO_CYCLES)
    args = ["run", str(protocol), "--sim", "mgagsn", "--instrument", "TCPIP::127.0.0.1::1::SOCKET"]
    both = runner.invoke(app, [*args, "--db", str(tmp_path / "lab.db")])
    assert both.exit_code == 2
    assert "give --sim PRESET or --instrument RESOURCE, not both" in both.output
    neither = runner.invoke(app, ["run", str(protocol), "--db", str(tmp_path / "lab.db")])
    assert neither.exit_code == 2
    assert "say what to run on: --sim PRESET or --instrument RESOURCE" in neither.output
    assert not (tmp_path / "lab.db").exists()


def test_a_real_instrument_is_not_run_accelerated_from_the_command_line(tmp_path: Path) -> None:
    protocol = tmp_path / "e1.yaml"
    protocol.write_text(E1_TWO_CYCLES)
    args = ["run", str(protocol), "--instrument", "TCPIP::192.168.1.20::5025::SOCKET", "--speed", "3600"]
    refused = runner.invoke(app, [*args, "--db", str(tmp_path / "lab.db")])
    assert refused.exit_code == 2
    assert "--speed 3600 is for an emulator on this PC" in refused.output


@pytest.fixture
def anonymous_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that lets anyone in without a name (a lab's bench broker often does)."""
    folder = tmp_path / "broker"
    folder.mkdir()
    broker = Mosquitto(folder)
    broker.config.write_text(
        broker.config.read_text().replace("allow_anonymous false", "allow_anonymous true")
    )
    broker.start()
    yield broker
    broker.stop()


def test_doctor_says_anonymous_for_a_login_without_a_name(
    tmp_path: Path, anonymous_broker: Mosquitto
) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(
        f'lab = "bench"\ndatabase = "lab.db"\n[mqtt]\nhost = "127.0.0.1"\nport = {anonymous_broker.port}\n'
        '[[channels]]\nname = "sim1"\nsim = "mgagsn"\n'
    )
    login = {c.name: c for c in asyncio.run(diagnose(config, 1.0))}["broker login"]
    assert login.verdict is Verdict.OK, login
    assert "None" not in login.detail
    assert login.detail.startswith("anonymous MQTT 5 login accepted")


@pytest.fixture
def two_smus() -> Iterator[tuple[str, str]]:
    with (
        running(Keithley2450Emulator(make_cell("mgagsn", seed=1), serial="04400001")) as used,
        running(Keithley2450Emulator(make_cell("mgagsn", seed=2), serial="04400002")) as spare,
    ):
        yield f"TCPIP::127.0.0.1::{used}::SOCKET", f"TCPIP::127.0.0.1::{spare}::SOCKET"


def test_doctor_asks_an_instrument_the_running_daemon_does_not_use(
    tmp_path: Path, broker: Mosquitto, two_smus: tuple[str, str]
) -> None:
    used, spare = two_smus
    password = tmp_path / "mqtt-password"
    password.write_text(USERS["daemon"] + "\n")
    password.chmod(0o640)
    config = tmp_path / "lab.toml"
    config.write_text(
        f'lab = "bench"\ndatabase = "lab.db"\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'username = "daemon"\npassword_file = "{password}"\n'
        f'[[instruments]]\nname = "smu1"\ndriver = "keithley2450"\nresource = "{used}"\n'
        f'[[instruments]]\nname = "spare"\ndriver = "keithley2450"\nresource = "{spare}"\n'
        '[[channels]]\nname = "ch1"\ninstrument = "smu1"\n'
    )

    async def announce() -> None:  # what the daemon's bus leaves on the broker (retained)
        async with aiomqtt.Client(
            broker.host, broker.port, username="daemon", password=USERS["daemon"]
        ) as client:
            await client.publish("cyclerd/bench/daemon/status", "online", qos=1, retain=True)

    asyncio.run(announce())
    checks = {c.name: c for c in asyncio.run(diagnose(config, 1.0))}
    assert "not asked: the daemon is online" in checks["instrument smu1"].detail  # the daemon's: left alone
    assert checks["instrument spare"].verdict is Verdict.WARN  # unused, so a warning, but asked:
    assert "MODEL 2450, serial 04400002" in checks["instrument spare"].detail
    assert "no channel uses it" in checks["instrument spare"].detail


def test_an_emulator_on_a_taken_port_says_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["emulate", "keithley2450", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert "cannot serve the keithley2450 emulator" in result.output
    assert "address already in use" in result.output
