"""`cyclerd watch`: a second process that tells the lab when the daemon has gone away.

A daemon cannot report its own death, so another process watches for it, in one of two ways:

- the broker (lab.toml has [mqtt]): the daemon's retained status `cyclerd/<lab>/daemon/status`
  is "online" while it is connected; "offline" when it stops, and the broker's last will says
  "offline" when the connection dies without a goodbye (a crash, a kill, a power cut, a cable).
  Run the watcher on another machine than the lab PC: then a PC that is down is seen too, and
  a broker that cannot be reached (on that PC, say) counts as the daemon not being seen.
- the store's heartbeat (no [mqtt]): on the lab PC itself; it sees a crash, a kill, or systemd
  giving up on restarts, but not a PC that is down (the watcher is down with it).

Offline is reported once it has lasted `offline_after_s`, so a restart (systemd's, after 10 s;
an upgrade) is no alarm; the return after a report is reported too. The daemon itself adds the
third part when it starts after a crash (Alerts.after_restart).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from cyclerd.alerts.config import AlertsConfig, AlertsSetupError
from cyclerd.alerts.message import when
from cyclerd.alerts.notifier import Alerts
from cyclerd.daemon.config import Lab, Mqtt
from cyclerd.store import heartbeat
from cyclerd.store.database import Store, StoreInUse

log = logging.getLogger(__name__)

BACKOFF_S = (1.0, 60.0)  # reconnecting to the broker: first wait, longest wait
OFFLINE_ON_BROKER = (
    "its status on the broker is offline: it stopped, or the broker's last will says its connection"
    " died (a crash, a kill, its PC or network down)"
)


@dataclass(frozen=True)
class Seen:
    """What a source saw of the daemon: online or not, since when (if known), and how it knows."""

    online: bool
    since_unix: float | None
    why: str


Report = Callable[[Seen], None]
Source = Callable[[Report], Coroutine[None, None, None]]


async def watch(source: Source, alerts: Alerts, offline_after_s: float) -> None:
    """Run `source` and alert on what it reports, until cancelled."""
    seen: asyncio.Queue[Seen] = asyncio.Queue()
    async with asyncio.TaskGroup() as group:
        group.create_task(source(seen.put_nowait), name="watch source")
        await _judge(seen, alerts, offline_after_s)


async def _judge(seen: asyncio.Queue[Seen], alerts: Alerts, offline_after_s: float) -> None:
    """Offline for `offline_after_s` without a word of it being online: report; online after a
    report: report the return. Repeated statuses change nothing (the first offline one counts)."""
    loop = asyncio.get_running_loop()
    pending: Seen | None = None  # offline, not reported yet
    reported: Seen | None = None  # offline, reported
    deadline: float | None = None
    while True:
        wait = None if deadline is None else max(0.0, deadline - loop.time())
        try:
            async with asyncio.timeout(wait):
                status = await seen.get()
        except TimeoutError:
            assert pending is not None
            log.warning("the daemon of lab %s is offline (%s): alerting", alerts.lab, pending.why)
            alerts.daemon_offline(pending.since_unix, pending.why)
            reported, pending, deadline = pending, None, None
            continue
        if status.online:
            if reported is not None:
                log.info("the daemon of lab %s is back (%s)", alerts.lab, status.why)
                alerts.daemon_back(reported.since_unix, status.why)
            pending = reported = None
            deadline = None
        elif pending is None and reported is None:
            log.info("the daemon of lab %s looks offline (%s)", alerts.lab, status.why)
            pending = status
            deadline = loop.time() + offline_after_s


async def broker_status(
    lab: str, mqtt: Mqtt, report: Report, backoff_s: tuple[float, float] = BACKOFF_S
) -> None:
    """Report the daemon's retained status on the broker, and a broker that cannot be reached."""
    topic = f"cyclerd/{lab}/daemon/status"
    tls = ssl.create_default_context(cafile=mqtt.ca_file) if mqtt.tls else None
    where = f"{mqtt.host}:{mqtt.port}"
    password = mqtt.password()  # read once: a file that is missing is an error now, not in a loop
    delay = backoff_s[0]
    while True:
        client = aiomqtt.Client(
            mqtt.host,
            mqtt.port,
            username=mqtt.username,
            password=password,
            identifier=f"cyclerd-{lab}-watch-{socket.gethostname()}-{os.getpid()}",
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_context=tls,
            clean_start=True,
            timeout=10.0,
        )
        try:
            async with client:
                await client.subscribe(topic, qos=1)
                delay = backoff_s[0]
                async for message in client.messages:
                    payload = message.payload
                    text = (
                        payload.decode("utf-8", "replace")
                        if isinstance(payload, bytes | bytearray)
                        else str(payload)
                    )
                    if text == "online":
                        report(Seen(True, None, "its status on the broker is online"))
                    elif text == "offline":
                        # A retained status was set before the watcher looked: since when is unknown.
                        since = None if message.retain else time.time()
                        report(Seen(False, since, OFFLINE_ON_BROKER))
        except aiomqtt.MqttError as exc:
            log.warning(
                "watch: the broker at %s cannot be reached (%s); trying again in %g s", where, exc, delay
            )
            why = f"the broker at {where} cannot be reached ({exc}), so the daemon cannot be seen"
            report(Seen(False, time.time(), why))
        await asyncio.sleep(delay)
        delay = min(2 * delay, backoff_s[1])


async def store_status(database: Path, report: Report, interval_s: float = heartbeat.BEAT_S) -> None:
    """Report the daemon's heartbeat in the store (on the lab PC), every `interval_s`."""
    while not database.exists():  # the daemon creates it; the watcher must not
        report(Seen(False, None, f"there is no store at {database} yet"))
        await asyncio.sleep(interval_s)
    with Store(database) as store:
        while True:
            try:
                beat = heartbeat.last(store)
            except (sqlite3.Error, StoreInUse) as exc:
                log.warning("watch: the heartbeat in %s cannot be read (%s)", database, exc)
            else:
                report(_of_heartbeat(beat, database))
            await asyncio.sleep(interval_s)


def _of_heartbeat(beat: heartbeat.Heartbeat | None, database: Path) -> Seen:
    if beat is None:
        return Seen(False, None, f"no daemon has served {database} yet")
    if beat.alive():
        return Seen(True, None, f"its heartbeat in {database} is fresh")
    if beat.stopped_unix is not None:
        return Seen(False, beat.stopped_unix, f"it stopped at {when(beat.stopped_unix)}")
    return Seen(
        False, beat.beat_unix, f"its heartbeat stopped at {when(beat.beat_unix)}: it crashed or was killed"
    )


async def watch_lab(lab: Lab, config: AlertsConfig | None) -> None:
    """`cyclerd watch --config lab.toml`: the broker when lab.toml has [mqtt], else the store."""
    if config is None:
        raise AlertsSetupError("lab.toml has no [alerts] table: add one with an e-mail or a webhook to tell")
    alerts = Alerts.from_config(config, lab=lab.lab, database=lab.database)
    source: Source = (
        functools.partial(broker_status, lab.lab, lab.mqtt)
        if lab.mqtt is not None
        else functools.partial(store_status, lab.database)
    )
    async with alerts:
        await watch(source, alerts, config.offline_after_s)
