"""One daemon per lab. A second `cyclerd serve` for a lab that one already serves (the same
database, or another database with the same lab name on the same broker) refuses to start,
naming the first one's process and host, and the first keeps every channel running and its
status "online" throughout: the two never take the broker's connection from each other.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest
from mosquitto import Mosquitto
from test_bus import collecting

from cyclerd.store.database import Store

CYCLERD = str(Path(sys.executable).with_name("cyclerd"))
# E1 on two simulated cells, long enough to run through the whole test (in virtual time).
LONG_E1 = (
    (files("cyclerd.protocols") / "library" / "plating_stripping.yaml")
    .read_text()
    .replace("count: 250", "count: 20000")
    .replace("duration_max: 600 h", "duration_max: 50000 h")
)
LAB = "twice"


def config(folder: Path, broker: Mosquitto, database: str) -> Path:
    (folder / "password").write_text("daemon-secret\n")
    path = folder / f"{database}.toml"
    path.write_text(
        f'lab = "{LAB}"\ndatabase = "{database}"\n\n'
        '[[channels]]\nname = "ch1"\nsim = "mgagsn"\nseed = 1\n\n'
        '[[channels]]\nname = "ch2"\nsim = "mgagsn"\nseed = 2\n\n'
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nusername = "daemon"\n'
        f'password_file = "{folder / "password"}"\n'
    )
    with Store(folder / database) as store:
        for channel in ("ch1", "ch2"):
            store.jobs.submit(channel, "E1", LONG_E1, "e1.yaml", {})
    return path


def serve(path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [CYCLERD, "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def first(tmp_path: Path, broker: Mosquitto) -> Iterator[subprocess.Popen[str]]:
    """The lab's daemon, serving both channels of lab.db."""
    daemon = serve(config(tmp_path, broker, "lab.db"))
    yield daemon
    daemon.send_signal(signal.SIGTERM)
    try:
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def recorded(database: Path) -> dict[str, int]:
    """The last sample stored per channel."""
    with Store(database) as store:
        rows = store.read(
            "SELECT channel, MAX(last_seq) AS seq FROM sample_blocks JOIN runs ON runs.id = run_id"
            " GROUP BY channel"
        )
    return {str(r["channel"]): int(r["seq"]) for r in rows}


async def both_running(database: Path, daemon: subprocess.Popen[str]) -> dict[str, int]:
    deadline = time.monotonic() + 20
    while len(seen := recorded(database)) < 2:
        assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
        assert time.monotonic() < deadline, "the first daemon never ran both channels"
        await asyncio.sleep(0.05)
    return seen


async def refused(second: subprocess.Popen[str]) -> str:
    """The second daemon's last words; it must end by itself within seconds."""
    deadline = time.monotonic() + 15
    while second.poll() is None:
        if time.monotonic() > deadline:
            second.kill()
            second.wait()
            pytest.fail("the second daemon started and ran instead of refusing")
        await asyncio.sleep(0.05)
    assert second.returncode != 0
    return second.stderr.read() if second.stderr else ""


@pytest.mark.parametrize("database", ["lab.db", "elsewhere.db"])
async def test_a_second_daemon_of_the_lab_refuses_and_the_first_keeps_every_channel_running(
    tmp_path: Path, broker: Mosquitto, first: subprocess.Popen[str], database: str
) -> None:
    """lab.db: the same store (refused by the database lock). elsewhere.db: another store of the
    same lab on the same broker (refused by the broker's holder message)."""
    async with collecting(broker, f"cyclerd/{LAB}/daemon/status") as status:
        before = await both_running(tmp_path / "lab.db", first)
        while not status.messages or bytes(status.messages[-1].payload) != b"online":
            await asyncio.sleep(0.05)
        second = serve(
            config(tmp_path, broker, database) if database != "lab.db" else tmp_path / "lab.db.toml"
        )
        said = await refused(second)
        assert f"pid {first.pid} on host {socket.gethostname()}" in said, said
        assert second.returncode == 4, said  # refused, in one message
        assert "Traceback" not in said
        await asyncio.sleep(1.0)  # what the second daemon did to the first would show by now
        after = recorded(tmp_path / "lab.db")
        assert first.poll() is None
        assert all(after[channel] > before[channel] for channel in ("ch1", "ch2")), (before, after)
        assert [bytes(m.payload) for m in status.messages] == [b"online"]  # never knocked off
    if database != "lab.db":
        with Store(tmp_path / database) as store:
            assert store.runs() == []  # the refused daemon touched no cell
