"""The daemon's first slice: lab.toml, one task per channel, queued jobs run to completion."""

from __future__ import annotations

from pathlib import Path

import pytest
from protocol_texts import E1_TWO_CYCLES
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.daemon.config import load_config
from cyclerd.protocols import ProtocolError
from cyclerd.store.database import Store

cli = CliRunner()
LAB = """\
lab = "test-lab"
database = "lab.db"

[[instruments]]
name = "gone"
driver = "keithley2450"
resource = "TCPIP::127.0.0.1::1::SOCKET"
reconnect_s = 0.2
give_up_s = 0.5

[[channels]]
name = "ch1"
sim = "mgagsn"
seed = 1

[[channels]]
name = "ch2"
sim = "mg"
seed = 2

[[channels]]
name = "ch3"
instrument = "gone"
"""


def test_serve_runs_every_queued_job_and_a_dead_instrument_spares_the_others(tmp_path: Path) -> None:
    (tmp_path / "lab.toml").write_text(LAB)
    protocol = tmp_path / "e1.yaml"
    protocol.write_text(E1_TWO_CYCLES)
    db = str(tmp_path / "lab.db")
    Store(db).close()  # the lab's store, as serve creates it: submit never creates one
    for channel in ("ch1", "ch1", "ch2", "ch3"):
        assert cli.invoke(app, ["submit", str(protocol), "--channel", channel, "--db", db]).exit_code == 0
    served = cli.invoke(app, ["serve", "--config", str(tmp_path / "lab.toml"), "--until-idle"])
    assert served.exit_code == 0, served.output
    store = Store(db)
    jobs = {job["id"]: job for job in store.jobs.list()}
    assert [jobs[i]["state"] for i in (1, 2, 3)] == ["done", "done", "done"]
    assert jobs[4]["state"] == "failed"  # nothing listens on port 1: that channel's job fails alone
    runs = store.runs()
    assert sorted(r.channel for r in runs) == ["ch1", "ch1", "ch2"]
    assert all(r.state == "completed" for r in runs)
    assert all(len(store.cycles(r.id)["cycle"]) == 2 for r in runs)
    failed = [e["message"] for e in store.events() if e["kind"] == "job"]
    assert len(failed) == 1
    assert "job 4 on ch3 failed" in failed[0]


def test_config_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(LAB.replace('sim = "mg"', 'sim = "mg"\nsed = 2'))
    with pytest.raises(ProtocolError) as err:
        load_config(path)
    assert f"{path}:19:1: channels.1.sed: unknown key 'sed'" in str(err.value)
    path.write_text(LAB.replace('instrument = "gone"', 'instrument = "gonne"'))
    with pytest.raises(ProtocolError, match="unknown instrument 'gonne'; did you mean 'gone'"):
        load_config(path)
    path.write_text(LAB.replace('sim = "mg"', 'sim = "mg"\ninstrument = "gone"'))
    with pytest.raises(ProtocolError, match="needs exactly one of 'instrument' or 'sim'"):
        load_config(path)


def test_credentials_come_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    path = tmp_path / "lab.toml"
    path.write_text(LAB + f'\n[mqtt]\nusername = "daemon"\npassword_file = "{secret}"\n')
    assert (lab := load_config(path)).mqtt is not None
    assert lab.mqtt.password() == "s3cret"
    assert lab.database == tmp_path / "lab.db"  # relative to the config file
    monkeypatch.setenv("LAB_MQTT_PASSWORD", "from-env")
    path.write_text(LAB + '\n[mqtt]\npassword_env = "LAB_MQTT_PASSWORD"\n')
    lab = load_config(path)
    assert lab.mqtt is not None
    assert lab.mqtt.password() == "from-env"


async def test_an_instrument_that_comes_back_is_reconnected_and_the_job_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The SMU is off when the daemon starts: the channel retries with backoff (the others are
    not held up) and runs its job once the instrument answers."""
    import asyncio

    from mosquitto import free_port

    from cyclerd.daemon.config import Lab
    from cyclerd.daemon.service import Daemon
    from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
    from cyclerd.simulators.presets import make_cell
    from cyclerd.simulators.scpi_server import running

    port = free_port()
    speed = 3600.0
    lab = Lab.model_validate(
        {
            "lab": "lab",
            "database": tmp_path / "lab.db",
            "speed": speed,
            "instruments": [
                {
                    "name": "smu",
                    "driver": "keithley2450",
                    "resource": f"TCPIP::127.0.0.1::{port}::SOCKET",
                    "poll_s": 10.0,
                    "reconnect_s": 0.1,
                    "reconnect_max_s": 0.4,
                }
            ],
            "channels": [{"name": "k", "instrument": "smu"}, {"name": "s", "sim": "mgagsn"}],
        }
    )
    store = Store(lab.database)
    for channel in ("k", "s"):
        store.jobs.submit(channel, "E1", E1_TWO_CYCLES, "e1.yaml", {})
    daemon = asyncio.create_task(Daemon(lab).run(until_idle=True))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if any("cannot reach smu" in e["message"] for e in store.events()):
            break
    assert any("cannot reach smu" in e["message"] for e in store.events())
    for _ in range(200):  # meanwhile the simulated channel finishes its job
        if store.jobs.list()[1]["state"] == "done":
            break
        await asyncio.sleep(0.05)
    assert store.jobs.list()[1]["state"] == "done"
    assert store.jobs.list()[0]["state"] == "running"
    with running(Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=speed, port=port)):
        await asyncio.wait_for(daemon, 60)
    assert [job["state"] for job in store.jobs.list()] == ["done", "done"]
    (smu_run,) = [r for r in store.runs() if r.channel == "k"]
    assert smu_run.state == "completed"
    assert len(store.cycles(smu_run.id)["cycle"]) == 2
    assert any("smu reached after" in e["message"] for e in store.events())
    said = [r.getMessage() for r in caplog.records if "cannot reach smu" in r.getMessage()]
    assert said[0].startswith("k: cannot reach smu")  # the channel named once, as in the event
    store.close()


def test_the_service_log_tells_each_runs_story(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What an operator reads first (journalctl): each run's state changes, by channel and run."""
    import asyncio
    import logging

    from cyclerd.daemon.config import Lab
    from cyclerd.daemon.service import Daemon

    lab = Lab.model_validate(
        {"lab": "lab", "database": tmp_path / "lab.db", "channels": [{"name": "ch1", "sim": "mgagsn"}]}
    )
    with Store(lab.database) as store:
        store.jobs.submit("ch1", "E1", E1_TWO_CYCLES, "e1.yaml", {})
    with caplog.at_level(logging.INFO, logger="cyclerd.daemon.service"):
        asyncio.run(Daemon(lab).run(until_idle=True))
    lines = [r.getMessage() for r in caplog.records if r.name == "cyclerd.daemon.service"]
    assert lines[0] == "job 1 on ch1 taken: E1 (e1.yaml)"
    assert lines[1] == "ch1, run 1: run started"
    assert lines[-1] == "ch1, run 1: run completed"
