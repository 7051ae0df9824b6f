"""lab.toml as an operator writes it: an emulated instrument may run accelerated under `serve`
(`speed` on its [[instruments]] entry), a real one may not; and mistakes are reported like a
protocol's: file:line:column, the keys allowed there, and a did-you-mean.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.daemon.config import load_config
from cyclerd.protocols import ProtocolError
from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running
from cyclerd.store.database import Store

runner = CliRunner()
CYCLERD = Path(sys.executable).with_name("cyclerd")
AN_HOUR = """\
name: an hour of plating
cell: {area: 0.785 cm^2}
record: {every: 5 min}
steps:
  - plate: {current: 0.1 mA/cm^2, until: {duration: 1 h}}
"""


def lab(resource: str, instrument_extra: str = "", top: str = "") -> str:
    return f"""\
lab = "bench"
database = "lab.db"
{top}
[[instruments]]
name = "smu1"
driver = "keithley2450"
resource = "{resource}"
poll_s = 60
{instrument_extra}
[[channels]]
name = "ch1"
instrument = "smu1"

[[channels]]
name = "sim1"
sim = "mgagsn"
"""


def test_an_emulated_instrument_runs_accelerated_under_serve(tmp_path: Path) -> None:
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=3600)
    with running(device) as port:
        config = tmp_path / "lab.toml"
        config.write_text(lab(f"TCPIP::127.0.0.1::{port}::SOCKET", "speed = 3600\n"))
        (tmp_path / "plate.yaml").write_text(AN_HOUR)
        Store(tmp_path / "lab.db").close()
        queued = runner.invoke(
            app, ["submit", str(tmp_path / "plate.yaml"), "--channel", "ch1", "--config", str(config)]
        )
        assert queued.exit_code == 0, queued.output
        started = time.monotonic()
        served = subprocess.run(
            [CYCLERD, "serve", "--config", str(config), "--until-idle"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        took_s = time.monotonic() - started
    assert served.returncode == 0, served.stderr
    assert took_s < 30  # an hour of test time on an emulator 3600 times faster than real time
    with Store(tmp_path / "lab.db") as store:
        (run,) = store.runs()
        assert run.state == "completed"
        # At 3600x, each 0.1 s the loaded host is late to read the end is 6 min of test time.
        assert float(store.samples(run.id)["t"][-1]) == pytest.approx(3600, rel=0.1)


@pytest.mark.parametrize(
    ("resource", "where"),
    [("TCPIP::192.168.1.20::5025::SOCKET", "instruments.0.speed"), ("/dev/ttyUSB0", "instruments.0.speed")],
)
def test_a_real_instrument_may_not_run_accelerated(tmp_path: Path, resource: str, where: str) -> None:
    config = tmp_path / "lab.toml"
    driver_line = 'driver = "methodscript"' if resource.startswith("/dev") else 'driver = "keithley2450"'
    config.write_text(lab(resource, "speed = 360\n").replace('driver = "keithley2450"', driver_line))
    with pytest.raises(ProtocolError) as err:
        load_config(config)
    assert f"{config}:9:1: {where}: speed 360 for instrument 'smu1' at {resource}" in str(err.value)
    assert "only an emulator on this PC" in str(err.value)
    config.write_text(lab(resource, top="speed = 360").replace('driver = "keithley2450"', driver_line))
    with pytest.raises(ProtocolError, match=f"{config}:3:1: speed: speed 360 for instrument 'smu1'"):
        load_config(config)


def test_an_instruments_own_speed_overrides_the_labs(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(lab("TCPIP::127.0.0.1::5025::SOCKET", "speed = 60\n", top="speed = 3600"))
    loaded = load_config(config)
    assert [loaded.speed_of(i) for i in loaded.instruments] == [60.0]


def test_config_errors_list_the_allowed_keys_and_guess_the_meant_one(tmp_path: Path) -> None:
    config = tmp_path / "lab.toml"
    config.write_text(lab("TCPIP::127.0.0.1::5025::SOCKET", "sped = 360\n"))
    result = runner.invoke(app, ["serve", "--config", str(config), "--until-idle"])
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert f"{config}:9:1: instruments.0.sped: unknown key 'sped'; did you mean 'speed'?" in said
    assert "allowed in [[instruments]]: name, driver, resource, poll_s, reconnect_s" in said
    config.write_text(lab("TCPIP::127.0.0.1::5025::SOCKET").replace('"keithley2450"', '"keithly2450"'))
    with pytest.raises(ProtocolError) as err:
        load_config(config)
    assert (
        f"{config}:6:1: instruments.0.driver: 'driver' is 'keithly2450'; write one of keithley2450,"
        " methodscript, maccor, neware, arbin; did you mean 'keithley2450'?" in str(err.value)
    )
    config.write_text(lab("TCPIP::127.0.0.1::5025::SOCKET", top="datbase = 'x'"))
    with pytest.raises(
        ProtocolError, match="did you mean 'database'\\? allowed at the top level: lab, database"
    ):
        load_config(config)
    config.write_text(lab("x").replace('instrument = "smu1"', 'instrument = "smu2"'))
    with pytest.raises(ProtocolError, match=f"{config}:12:1: channels.0.instrument: .* did you mean 'smu1'"):
        load_config(config)
    config.write_text(lab("x").replace('name = "sim1"', 'name = "ch1"'))
    with pytest.raises(ProtocolError, match=f"{config}:15:1: channels.1.name: a second channel named 'ch1'"):
        load_config(config)
    config.write_text('lab = "bench"\n[[channels]]\nname "ch1"\n')
    with pytest.raises(ProtocolError, match=f"{config}:3:6: TOML: Expected '=' after a key"):
        load_config(config)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "no lab configuration at {path}"),
        ("folder", "{path} is a folder; give the lab.toml file in it"),
        (b'lab = "b\xe9nch"\n', "{path}:1:9: not UTF-8 text (byte 0xe9); save the file as UTF-8"),
        (
            b"x = " + b"[" * 3000 + b"]" * 3000,
            "{path}:1:1: TOML: nested too deeply to be a lab configuration",
        ),
        (b"x = " + b"{a = " * 3000 + b"1" + b"}" * 3000, "nested too deeply to be a lab configuration"),
    ],
    ids=["missing", "folder", "not UTF-8", "deep arrays", "deep tables"],
)
@pytest.mark.parametrize("command", ["serve", "status", "doctor"])
def test_a_config_that_cannot_be_read_is_a_message(
    tmp_path: Path, content: bytes | str | None, said: str, command: str
) -> None:
    path = tmp_path / "lab.toml"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    result = runner.invoke(app, [command, "--config", str(path)])
    assert result.exit_code in (1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if command != "doctor":  # doctor words its own verdicts (see test_doctor.py)
        assert said.format(path=path) in " ".join(result.output.split())


def test_a_database_named_relative_to_lab_toml_is_absolute_in_what_the_daemon_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An alert's "run `cyclerd show 1 --db lab.db`" is read in another folder: the path it
    names must be the store's wherever it is read."""
    (tmp_path / "lab.toml").write_text(
        'lab = "rel"\ndatabase = "lab.db"\n\n[[channels]]\nname = "c"\nsim = "mg"\n'
    )
    monkeypatch.chdir(tmp_path)
    assert load_config(Path("lab.toml")).database == tmp_path / "lab.db"
