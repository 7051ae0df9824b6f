"""One daemon per lab: a lock on the database, and a claim on the lab's topics at the broker.

Two `cyclerd serve` on one database would drive the same cells twice; two on one lab (even with
different databases, on different PCs) would take the broker's connection from each other over
and over under the daemon's one client id. So serve refuses to start when another holds either,
naming that daemon's process and host.

The database lock is an exclusive `flock` on `<database>.lock` beside the database: the system
lets it go when the process ends however it ends, so a crash leaves no stale lock behind. The
file says who holds it. On the broker, the lab's daemon keeps a retained `daemon/holder` message
(pid, host, since when) beside its retained `daemon/status`; a start that finds the status
"online" and the holder alive refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import ssl
import time
from typing import Any

import aiomqtt

from cyclerd.daemon.config import Lab

log = logging.getLogger(__name__)

CLAIM_TIMEOUT_S = 5.0


class LabInUse(Exception):
    """Another daemon serves this lab (database or broker); the message names it."""


def holder_record(lab: Lab) -> dict[str, Any]:
    """Who this process is, as the lock file and the broker's holder message say it."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since_unix": time.time(),
        "lab": lab.lab,
        "database": str(lab.database),
    }


def _described(holder: dict[str, Any]) -> str:
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    since = holder.get("since_unix")
    when = (
        ""
        if not isinstance(since, int | float)
        else time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since))
    )
    return f"pid {pid} on host {host}{when}"


class DatabaseLock:
    """An exclusive lock on `database`, held from `acquire` until `release` (or the process ends)."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.path = lab.database.with_name(lab.database.name + ".lock")
        self._fd: int | None = None
        self._own_file = True  # the lock file, not the database: it may be written

    def acquire(self) -> None:
        """Raises LabInUse naming the holder when another process has it.

        A folder that cannot take the lock file (read-only, full) gets the lock on the database
        file itself: still one daemon, only without its name in the refusal.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            self._own_file = True
        except OSError as exc:
            log.warning("cannot create %s (%s): locking the database file itself", self.path, exc)
            fd = os.open(self.lab.database, os.O_RDONLY | os.O_CLOEXEC)
            self._own_file = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd) if self._own_file else {}
            os.close(fd)
            raise LabInUse(
                f"another cyclerd serve ({_described(holder) if holder else 'pid and host unknown'}) is"
                f" serving {self.lab.database}: stop it first (systemctl stop cyclerd), or give this one"
                " another database"
            ) from None
        except OSError:
            os.close(fd)
            raise
        if self._own_file:
            with contextlib.suppress(OSError):  # who holds it is for the refusal's message only
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(holder_record(self.lab)).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            if self._own_file:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing lets the lock go
            self._fd = None

    def __enter__(self) -> DatabaseLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return _parse(os.pread(fd, 4096, 0))
    except OSError:
        return {}


async def claim_lab(lab: Lab, tls: ssl.SSLContext | None) -> None:
    """Refuse (LabInUse) when the broker says another live daemon serves `lab`; else say that
    this process does (retained `cyclerd/<lab>/daemon/holder`).

    Read under a client id of its own (the daemon's would take the other daemon's connection
    over). A broker that cannot be reached is not waited for: the bus connects when it can, and
    the database lock still keeps two daemons of this PC apart.
    """
    mqtt = lab.mqtt
    assert mqtt is not None
    status_topic, holder_topic = f"cyclerd/{lab.lab}/daemon/status", f"cyclerd/{lab.lab}/daemon/holder"
    echo_topic = f"cyclerd/{lab.lab}/daemon/claim/{socket.gethostname()}-{os.getpid()}"
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=mqtt.password(),
        identifier=f"cyclerd-{lab.lab}-claim-{os.getpid()}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls,
        timeout=CLAIM_TIMEOUT_S,
        clean_start=True,
    )
    seen: dict[str, bytes] = {}
    try:
        async with asyncio.timeout(CLAIM_TIMEOUT_S), client:
            for topic in (status_topic, holder_topic, echo_topic):
                await client.subscribe(topic, qos=1)
            # Retained messages come right after each subscription: once this one is back, the
            # broker has handed over all it holds.
            await client.publish(echo_topic, b"", qos=1)
            async for message in client.messages:
                topic = str(message.topic)
                if topic == echo_topic:
                    break
                payload = message.payload
                seen[topic] = payload if isinstance(payload, bytes) else str(payload).encode()
            holder = _parse(seen.get(holder_topic, b""))
            if seen.get(status_topic) == b"online" and _alive(holder):
                raise LabInUse(
                    f"the broker {mqtt.host}:{mqtt.port} says lab {lab.lab} is served by another daemon"
                    f" ({_described(holder) if holder else 'pid and host unknown'}, database"
                    f" {holder.get('database', '?')}): stop it first, or give this lab another name"
                )
            record = json.dumps(holder_record(lab))
            await client.publish(holder_topic, record, qos=1, retain=True)
    except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
        log.warning(
            "could not check at the broker %s:%d that no other daemon serves lab %s (%s);"
            " the database lock still holds",
            mqtt.host,
            mqtt.port,
            lab.lab,
            exc or "timeout",
        )


def _parse(payload: bytes) -> dict[str, Any]:
    try:
        found = json.loads(payload or b"{}")
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the daemon the holder message names may still run: on this PC its process must
    (a crash leaves the status "online" until the broker's keep-alive runs out); on another PC,
    the broker's word is taken."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    if holder["pid"] == os.getpid():
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
