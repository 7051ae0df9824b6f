"""No silent refusals. A job a channel cannot run is refused when it is submitted, with the
reason, wherever the lab's configuration says enough to tell (the CLI with the lab's lab.toml,
MQTT through the daemon); what only the instrument can tell is refused when the job comes up,
and then the reason is kept with the job, logged, published in the channel's state and listed
by `cyclerd queue`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
from mosquitto import Mosquitto
from test_bus import USERS, collecting

from cyclerd.bus.publisher import Bus
from cyclerd.daemon.config import load_config
from cyclerd.daemon.service import Daemon
from cyclerd.simulators.methodscript_emulator import MethodScriptEmulator
from cyclerd.store.database import Store

CYCLERD = str(Path(sys.executable).with_name("cyclerd"))
LIBRARY = files("cyclerd.protocols") / "library"
EIS = LIBRARY / "eis_after_cycling.yaml"  # impedance spectra: no SMU measures them
PLATING = LIBRARY / "plating_stripping.yaml"  # galvanostatic: no EmStat Pico sources a current
CV = LIBRARY / "cv.yaml"  # a sweep: the 2450 has none


def write_lab(folder: Path) -> Path:
    """A lab whose 2450 is not switched on: the check needs only the configuration."""
    config = folder / "lab.toml"
    config.write_text(
        f'lab = "refusing"\ndatabase = "{folder / "lab.db"}"\n\n'
        '[[instruments]]\nname = "smu"\ndriver = "keithley2450"\n'
        'resource = "TCPIP::127.0.0.1::1::SOCKET"\n\n'
        '[[channels]]\nname = "k1"\ninstrument = "smu"\n\n'
        '[[channels]]\nname = "s1"\nsim = "mgagsn"\n'
    )
    Store(folder / "lab.db").close()
    return config


def submit(config: Path, protocol: Path, channel: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CYCLERD, "submit", str(protocol), "--channel", channel, "--config", str(config)],
        capture_output=True,
        text=True,
    )


def queued(database: Path) -> list[tuple[str, str]]:
    with Store(database) as store:
        return [(job["channel"], job["name"]) for job in store.jobs.list()]


@pytest.mark.parametrize(
    ("protocol", "said"),
    [(EIS, "k1 cannot measure impedance spectra (EIS)"), (CV, "k1 cannot run sweep steps")],
    ids=["eis", "sweep"],
)
def test_the_cli_refuses_at_submit_what_the_channels_instrument_cannot_run(
    tmp_path: Path, protocol: Path, said: str
) -> None:
    config = write_lab(tmp_path)
    refused = submit(config, protocol, "k1")
    assert refused.returncode == 4, refused.stderr
    assert said in refused.stderr
    assert "nothing was queued" in refused.stderr
    assert queued(tmp_path / "lab.db") == []
    accepted = submit(config, protocol, "s1")  # a simulated cell can
    assert accepted.returncode == 0, accepted.stderr
    assert [channel for channel, _ in queued(tmp_path / "lab.db")] == ["s1"]


async def test_an_mqtt_submit_is_refused_with_the_reason_and_queues_nothing(tmp_path: Path) -> None:
    lab = load_config(write_lab(tmp_path))
    daemon = Daemon(lab)
    command = {"action": "submit", "protocol": EIS.read_text(), "name": "eis.yaml"}
    reply = await daemon.command("k1", json.dumps(command).encode())
    assert reply["ok"] is False
    assert "k1 cannot measure impedance spectra (EIS)" in reply["error"]
    accepted = await daemon.command("s1", json.dumps(command).encode())
    assert accepted["ok"] is True, accepted
    assert queued(lab.database) == [("s1", accepted["name"])]


async def test_a_job_the_instrument_refuses_when_it_comes_up_keeps_its_reason_everywhere(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """An EmStat Pico has no galvanostat; the configuration says only "methodscript", so the
    plating job is queued, and refused once the device says what it is."""
    pico = MethodScriptEmulator(preset="mgagsn", variant="espico", pty=False)
    await pico.start()
    config = tmp_path / "lab.toml"
    config.write_text(
        f'lab = "refusing"\ndatabase = "{tmp_path / "lab.db"}"\n\n'
        f'[[instruments]]\nname = "pico"\ndriver = "methodscript"\nresource = "socket://127.0.0.1:{pico.port}"\n\n'
        '[[channels]]\nname = "p1"\ninstrument = "pico"\n'
    )
    lab = load_config(config)
    Store(lab.database).close()
    submitted = submit(config, PLATING, "p1")
    assert submitted.returncode == 0, submitted.stderr
    caplog.set_level(logging.INFO, logger="cyclerd")
    try:
        with Store(lab.database) as store:
            bus = Bus(
                "refusing", broker.host, broker.port, username="daemon", password=USERS["daemon"], store=store
            )
            async with collecting(broker, "cyclerd/refusing/p1/state") as states, bus:
                await asyncio.wait_for(Daemon(lab, bus).run(until_idle=True), 30)
                async with asyncio.timeout(10):
                    while not any(b"refused" in bytes(m.payload) for m in states.messages):
                        await asyncio.sleep(0.02)
            (job,) = store.jobs.list()
    finally:
        await pico.stop()
    assert job["state"] == "refused"
    assert "p1 cannot run plate steps" in job["reason"]
    published = [json.loads(bytes(m.payload)) for m in states.messages]
    assert {"job": job["id"], "reason": job["reason"]} in [p.get("refused") for p in published]
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert refusals, "no log line says the job was refused"
    assert job["reason"] in refusals[0].getMessage()
    assert refusals[0].levelno == logging.WARNING
    listing = subprocess.run([CYCLERD, "queue", "--config", str(config)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert "refused: p1 cannot run plate steps" in " ".join(listing.stdout.split())
    with Store(lab.database) as store:
        assert store.runs() == []  # nothing touched the cell


def test_a_refusal_names_the_first_step_the_channel_cannot_run_and_an_interrupted_step() -> None:
    """A person reading "cannot measure impedance spectra" needs to know which step asks for them;
    a channel that runs each step to its end (a cycler's step file) refuses an every-block too."""
    from cyclerd.drivers.base import Capabilities, unmet_needs
    from cyclerd.protocols import loads
    from cyclerd.protocols.compiler import compile_protocol

    program = compile_protocol(loads((LIBRARY / "insitu_eis.yaml").read_text()))
    runs_to_the_end = Capabilities(
        kinds=frozenset({"rest", "cc", "plate", "strip", "cv", "cccv"}),
        current_max_A=1.0,
        voltage_range_V=(-5.0, 5.0),
        interrupts_steps=False,
    )
    problems = unmet_needs(program.needs(), runs_to_the_end, "n1")
    assert problems[0].startswith("n1 cannot measure impedance spectra (EIS): step 'in-situ EIS' (steps[")
    assert problems[1].startswith(
        "n1 runs each step to its end and cannot interrupt it for an every-block: step 'plate with EIS'"
    )
    interrupting = Capabilities(**{**runs_to_the_end.__dict__, "interrupts_steps": True})
    assert not any("every-block" in p for p in unmet_needs(program.needs(), interrupting, "n1"))
