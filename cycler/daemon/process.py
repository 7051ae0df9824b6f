"""The daemon as a process: one per lab, told to systemd, stopped in a bounded time.

Starting: the database lock and the claim on the broker (cyclerd.daemon.lock); READY=1 and the
watchdog's keep-alive (cyclerd.daemon.systemd); the store, waited for while it cannot be opened
(a full disk), a signal ending the wait; then the bus and the daemon.

Stopping, on SIGTERM or SIGINT, in this order and each with its deadline: every channel makes
its cell safe and keeps its run resumable (CELLS_SAFE_S); then the bus says "offline" and
closes (BUS_CLOSE_S). Whatever still hangs after that — a task that never finishes cancelling,
a thread stuck in a driver's call — does not keep the process: EXIT_S after the signal it exits
anyway (the cells are safe by then, or beyond its reach), before systemd's TimeoutStopSec would
kill it without a word in the journal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from cyclerd.bus.publisher import Bus
from cyclerd.daemon.config import Lab
from cyclerd.daemon.lock import DatabaseLock, claim_lab
from cyclerd.daemon.systemd import Notifier
from cyclerd.store.database import Store

log = logging.getLogger(__name__)

CELLS_SAFE_S = 30.0  # every channel makes its cell safe: an instrument's safe state may be retried
BUS_CLOSE_S = 10.0  # the bus says "offline" (the broker's own timeout) and stops
EXIT_S = 45.0  # after the signal, the process ends whatever still hangs (the unit stops it at 60 s)
LEFT_S = 2.0  # when a step above ran out of time: what remains (asyncio's own cleanup) gets this
FLUSH_S = 10.0  # at the end of --until-idle: for the broker to take what the store holds
HUNG_EXIT_CODE = 70  # as the CLI's INTERNAL_ERROR (docs/cli.md): a stop that hangs is a bug
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Serving(Protocol):
    async def run(self, until_idle: bool = False) -> None: ...


Daemon = Callable[[Lab, Bus | None], Serving]
OpenStore = Callable[[Path], Coroutine[Any, Any, Store]]


class HardExit:
    """Ends the process `after_s` from now, unless it ends by itself first (a daemon thread)."""

    def __init__(self, after_s: float) -> None:
        self._timer: threading.Timer | None = None
        self.within(after_s)

    def within(self, after_s: float) -> None:
        """Exit `after_s` from now instead."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(after_s, self._exit)
        self._timer.daemon = True
        self._timer.start()

    @staticmethod
    def _exit() -> None:
        log.critical("the daemon did not finish stopping in time: exiting now, leaving what still hangs")
        os._exit(HUNG_EXIT_CODE)


async def serve_until_stopped(lab: Lab, daemon: Daemon, open_store: OpenStore, until_idle: bool) -> None:
    """Hold the lab, then serve it with `daemon(lab, bus)` until a signal or, if asked, idle.

    `open_store` waits for a store that cannot be opened yet (a full disk); READY=1 goes to
    systemd before that wait, which may last hours, and a signal ends it.
    """
    tls = None
    if lab.mqtt is not None and lab.mqtt.tls:
        tls = ssl.create_default_context(cafile=lab.mqtt.ca_file)
    with DatabaseLock(lab):
        if lab.mqtt is not None:
            await claim_lab(lab, tls)
        await _serve(lab, daemon, open_store, until_idle, tls)


async def _serve(
    lab: Lab, daemon: Daemon, open_store: OpenStore, until_idle: bool, tls: ssl.SSLContext | None
) -> None:
    loop = asyncio.get_running_loop()
    notifier = Notifier.from_environment()
    asked = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if asked.is_set():
            log.warning("%s again: already stopping (cells first, then the bus)", sig.name)
            return
        log.info("%s: stopping; every cell is made safe, and runs resume at the next start", sig.name)
        asked.set()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    alive = asyncio.create_task(notifier.keep_alive(), name="watchdog")
    signalled = asyncio.create_task(asked.wait(), name="signals")
    notifier.ready(f"serving lab {lab.lab}: {len(lab.channels)} channel(s), store {lab.database}")
    bus: Bus | None = None
    serving: asyncio.Task[None] | None = None
    deadline: HardExit | None = None
    clean = True
    try:
        opening = asyncio.create_task(open_store(lab.database), name="store")
        await asyncio.wait({opening, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not opening.done():
            opening.cancel()
            return
        opening.result().close()
        bus = _bus(lab, tls)
        serving = asyncio.create_task(daemon(lab, bus).run(until_idle), name="daemon")
        await asyncio.wait({serving, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if asked.is_set():
            notifier.stopping("making every cell safe")
            deadline = HardExit(EXIT_S)
        else:
            serving.result()  # the daemon's own failure goes to the journal, and systemd restarts it
            _say_cells_safe(lab, {}, True, "no job left, --until-idle")
            if bus is not None and not await bus.flush(FLUSH_S):
                log.warning("the broker did not take every sample before exiting; the store has them")
    finally:
        signalled.cancel()
        if serving is not None and not serving.done():
            channels = _channel_tasks(lab)
            serving.cancel()
            clean = await _within(serving, CELLS_SAFE_S, "making every cell safe")
            _say_cells_safe(lab, channels, clean, "the daemon was asked to stop")
        if bus is not None:
            notifier.status("closing the bus")
            clean = await _within(bus.close(), BUS_CLOSE_S, "closing the bus") and clean
        alive.cancel()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
        notifier.close()
        if not clean:  # asyncio would wait for what hangs, for ever
            (deadline or HardExit(LEFT_S)).within(LEFT_S)


def _channel_tasks(lab: Lab) -> dict[str, asyncio.Task[Any]]:
    """The channels' tasks by channel name, as the daemon names them (`channel <name>`)."""
    names = {f"channel {channel.name}": channel.name for channel in lab.channels}
    return {names[task.get_name()]: task for task in asyncio.all_tasks() if task.get_name() in names}


def _say_cells_safe(lab: Lab, tasks: dict[str, asyncio.Task[Any]], finished: bool, why: str) -> None:
    """One line per channel as the daemon stops: its task ended, and with it the run that made
    its cell safe (a run that could not confirm it logged a fault saying so); or its task still
    hangs, and its cell may be driven. A channel whose task is not in `tasks` is judged by the
    daemon as a whole (`finished`)."""
    for channel in lab.channels:
        fields = {"channel": channel.name, "kind": "shutdown"}
        task = tasks.get(channel.name)
        if task.done() if task is not None else finished:
            log.info("%s: stopped with its cell safe (%s)", channel.name, why, extra=fields)
        else:
            log.error(
                "%s: still not stopped after %g s: its cell may still be driven; check the instrument",
                channel.name,
                CELLS_SAFE_S,
                extra=fields,
            )


def _bus(lab: Lab, tls: ssl.SSLContext | None) -> Bus | None:
    if lab.mqtt is None:
        return None
    mqtt = lab.mqtt
    bus = Bus(
        lab.lab,
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=mqtt.password(),
        tls_context=tls,
        store=Store(lab.database),
    )
    bus.start()
    return bus


async def _within(work: Awaitable[None], timeout_s: float, what: str) -> bool:
    """Wait up to `timeout_s` for `work` (never cancelling it further); whether it finished."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.error("%s did not finish within %g s: leaving it", what, timeout_s)
        return False
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("%s failed: %r", what, error, exc_info=error)
    return True
