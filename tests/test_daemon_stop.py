"""`cyclerd serve` as systemd runs it: READY=1 and the watchdog's WATCHDOG=1 over $NOTIFY_SOCKET,
and a stop (SIGTERM) that ends within seconds with every cell safe and the runs resumable, even
when it lands while a run is being taken up, and even when something in the process hangs.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path

import pytest
from mosquitto import USERS, Mosquitto

from cyclerd.store.database import Store

CYCLERD = str(Path(sys.executable).with_name("cyclerd"))
E1 = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
# Long enough in virtual time that the run is still going whenever the test stops the daemon.
LONG_E1 = E1.replace("count: 250", "count: 20000").replace("duration_max: 600 h", "duration_max: 50000 h")


def lab(folder: Path, broker: Mosquitto | None = None) -> Path:
    config = folder / "lab.toml"
    text = 'lab = "stops"\ndatabase = "lab.db"\n\n[[channels]]\nname = "ch1"\nsim = "mgagsn"\n'
    if broker is not None:
        (folder / "password").write_text(USERS["daemon"])
        text += (
            f'\n[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nusername = "daemon"\n'
            f'password_file = "{folder / "password"}"\n'
        )
    config.write_text(text)
    with Store(folder / "lab.db") as store:
        store.jobs.submit("ch1", "E1", LONG_E1, "e1.yaml", {})
    return config


def count(database: Path, query: str) -> int:
    with sqlite3.connect(database, timeout=10) as db:
        try:
            return int(db.execute(query).fetchone()[0] or 0)
        except sqlite3.OperationalError:  # no such table yet
            return 0


def wait_for(
    condition: Callable[[], bool], timeout_s: float, what: str, process: subprocess.Popen[str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"serve ended: {process.stderr.read() if process.stderr else ''}"
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def stop_within(process: subprocess.Popen[str], timeout_s: float) -> tuple[int, str]:
    """SIGTERM, and the exit code and the log once it ended (a hang fails the test)."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"serve did not end within {timeout_s:g} s of SIGTERM")
    return code, process.stderr.read() if process.stderr else ""


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """Where systemd would listen: an abstract datagram socket, as $NOTIFY_SOCKET names it."""
    name = f"@cyclerd-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name[1:])
    listener.settimeout(10.0)
    yield listener, name
    listener.close()


def test_serve_tells_systemd_it_is_ready_pings_the_watchdog_and_says_it_is_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    listener, address = notify_socket
    environment = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"}
    serve = subprocess.Popen(
        [CYCLERD, "serve", "--config", str(lab(tmp_path))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        heard: list[str] = []
        while heard.count("WATCHDOG=1") < 3:  # every 0.1 s, half the watchdog's interval
            heard += listener.recv(4096).decode().split("\n")
        assert "READY=1" in heard
        assert heard.index("READY=1") < heard.index("WATCHDOG=1")
        assert f"MAINPID={serve.pid}" in heard
        code, said = stop_within(serve, 15)
        while "STOPPING=1" not in heard:
            heard += listener.recv(4096).decode().split("\n")
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert code == 0, said


def test_sigterm_while_a_run_is_taken_up_ends_within_seconds_and_the_run_stays_resumable(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A run recorded without a bus, then three restarts with one, each stopped by SIGTERM the
    moment it has taken the run up, while the bus sends the broker the run so far from the store
    (a daemon used to hang there for ever, the bus never finishing its cancellation)."""
    database = tmp_path / "lab.db"
    first = subprocess.Popen(
        [CYCLERD, "serve", "--config", str(lab(tmp_path))], stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: count(database, "SELECT MAX(last_seq) FROM sample_blocks") > 100_000, 20, "a run", first)
    assert stop_within(first, 30)[0] == 0
    config = lab(tmp_path, broker)  # from now on with the bus (and a second job, queued behind)
    for restart in range(1, 4):
        serve = subprocess.Popen(
            [CYCLERD, "serve", "--config", str(config)], stderr=subprocess.PIPE, text=True
        )
        taken_up = "SELECT COUNT(*) FROM events WHERE kind = 'gap' AND run_id = 1"
        wait_for(lambda: count(database, taken_up) == restart, 20, "the run taken up", serve)  # noqa: B023
        started = time.monotonic()
        code, said = stop_within(serve, 20)
        assert code == 0, said
        assert time.monotonic() - started < 10, said
        with Store(database) as store:
            assert store.run(1).state == "running"  # resumable, not failed
            assert [e["kind"] for e in store.events(1)].count("interrupted") == restart + 1


HANGING_BUS = """\
import asyncio, sys
from cyclerd.bus.publisher import Bus
from cyclerd.cli.main import main
try:
    from cyclerd.daemon import process
    process.BUS_CLOSE_S = 1.0
except ImportError:  # a cyclerd from before the deadlines: it hangs
    pass

async def close_for_ever(self):
    while True:  # ignores every cancellation, as the bus's watcher once did
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass

Bus.close = close_for_ever
sys.argv = ["cyclerd", "serve", "--config", sys.argv[1]]
main()
"""


def test_a_bus_that_never_closes_does_not_keep_the_process_and_the_cell_is_safe_first(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """A fault injected into the process: the bus never finishes closing. The cells are made safe
    first; the process exits by itself shortly after the bus's deadline, saying so."""
    config, database = lab(tmp_path, broker), tmp_path / "lab.db"
    (tmp_path / "hanging_bus.py").write_text(HANGING_BUS)
    serve = subprocess.Popen(
        [sys.executable, str(tmp_path / "hanging_bus.py"), str(config)], stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: count(database, "SELECT MAX(last_seq) FROM sample_blocks") > 20_000, 20, "a run", serve)
    started = time.monotonic()
    code, said = stop_within(serve, 20)
    assert time.monotonic() - started < 8, said
    assert code == 70, said  # a stop that had to leave something hanging is a bug to look into
    assert "closing the bus did not finish within 1 s" in said
    assert "exiting now" in said
    with Store(database) as store:
        assert store.run(1).state == "running"
        assert "interrupted" in [e["kind"] for e in store.events(1)]  # its cell was made safe
