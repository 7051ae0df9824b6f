"""The alerts the daemon sends, and the worker that delivers them without ever holding it up.

Raising an alert is synchronous and only enqueues: a channel's task (or a sink hook inside a
run) never waits for a mail server. Each receiver has a queue and a worker task of its own,
so a receiver that is down delays only its own alerts; a delivery runs in a thread (smtplib and
urllib block), from a pool of the notifier's own so a hung server cannot take the threads the
daemon's event loop uses. A failed delivery is logged and tried again with backoff, a bounded
number of times; then it is logged as given up, and the next alert goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclerd.alerts.config import TOPICS, AlertsConfig, Topic
from cyclerd.alerts.mail import EmailReceiver
from cyclerd.alerts.message import Alert, back_alert, ending_of, offline_alert, run_alert
from cyclerd.alerts.receiver import DeliveryError, Receiver
from cyclerd.alerts.webhook import WebhookReceiver
from cyclerd.engine.states import RunState
from cyclerd.store.heartbeat import Heartbeat

log = logging.getLogger(__name__)

QUEUE_SIZE = 200  # alerts waiting for one receiver; beyond that new ones are dropped (and logged)
CLOSE_WAIT_S = 5.0  # how long closing waits for alerts still queued, e.g. the last run's


@dataclass(frozen=True)
class Retry:
    attempts: int = 6
    first_s: float = 10.0
    max_s: float = 300.0

    def waits(self) -> Iterable[float]:
        """The waits between `attempts` tries: first_s, doubling, at most max_s."""
        wait = self.first_s
        for _ in range(self.attempts - 1):
            yield min(wait, self.max_s)
            wait *= 2


class Alerts:
    """Tells the lab's receivers about runs that end badly and a daemon that went away.

    Build it with `from_config`, start it inside the event loop (`async with alerts:`, or
    `start()` ... `await close()`), and raise alerts with `run_ended`, `daemon_offline`,
    `daemon_back` or `after_restart`: each returns at once. Without receivers (no [alerts]
    table) it accepts every call and sends nothing.
    """

    def __init__(
        self,
        receivers: Sequence[Receiver],
        *,
        lab: str,
        database: Path | None = None,
        on: Iterable[Topic] = TOPICS,
        retry: Retry = Retry(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lab = lab
        self.database = database
        self.on = frozenset(on)
        self.retry = retry
        self.clock = clock
        self.receivers = tuple(receivers)
        self._queues = [asyncio.Queue[Alert](QUEUE_SIZE) for _ in self.receivers]
        self._workers: list[asyncio.Task[None]] = []
        self._threads: ThreadPoolExecutor | None = None

    @classmethod
    def from_config(cls, config: AlertsConfig | None, *, lab: str, database: Path | None = None) -> Alerts:
        """The receivers `config` names, their secrets read now; AlertsSetupError when one cannot be."""
        if config is None:
            return cls((), lab=lab, database=database)
        receivers: list[Receiver] = []
        if config.email is not None:
            receivers.append(EmailReceiver(config.email))
        receivers += [WebhookReceiver(hook) for hook in config.webhooks]
        retry = Retry(config.attempts, config.retry_s, config.retry_max_s)
        return cls(receivers, lab=lab, database=database, on=config.on, retry=retry)

    # -- raising alerts: each returns at once -------------------------------------------

    def notify(self, alert: Alert) -> None:
        """Queue `alert` for every receiver (unless its topic is not wanted); never waits."""
        if alert.topic not in self.on:
            return
        for receiver, queue in zip(self.receivers, self._queues, strict=True):
            try:
                queue.put_nowait(alert)
            except asyncio.QueueFull:
                log.error(
                    "alert %r dropped for %s: %d alerts wait already",
                    alert.subject,
                    receiver.name,
                    queue.qsize(),
                )

    def run_ended(
        self,
        run_id: int,
        channel: str,
        state: RunState,
        reason: str,
        *,
        name: str = "",
        cell: Mapping[str, Any] | None = None,
        at_unix: float | None = None,
    ) -> None:
        """Run `run_id` reached its final `state` for `reason`; a completed run raises nothing."""
        topic = ending_of(state, reason)
        if topic is not None:
            self._run(topic, run_id, channel, reason, name, cell, at_unix)

    def short_detected(
        self,
        run_id: int,
        channel: str,
        reason: str,
        *,
        name: str = "",
        cell: Mapping[str, Any] | None = None,
        at_unix: float | None = None,
    ) -> None:
        """The run's short-circuit check fired (the run's loop ends; the run itself may go on)."""
        self._run("short", run_id, channel, reason, name, cell, at_unix)

    def _run(
        self,
        topic: Topic,
        run_id: int,
        channel: str,
        reason: str,
        name: str,
        cell: Mapping[str, Any] | None,
        at_unix: float | None,
    ) -> None:
        at = self.clock() if at_unix is None else at_unix
        self.notify(
            run_alert(
                self.lab, topic, run_id, channel, reason, at, name=name, cell=cell, database=self.database
            )
        )

    def daemon_offline(self, since_unix: float | None, why: str) -> None:
        """The daemon went away (seen by `cyclerd watch`)."""
        self.notify(offline_alert(self.lab, since_unix, why, self.clock()))

    def daemon_back(self, since_unix: float | None, why: str) -> None:
        """The daemon is running again after it was reported offline, or after a crash."""
        self.notify(back_alert(self.lab, since_unix, why, self.clock()))

    def after_restart(self, previous: Heartbeat | None) -> None:
        """The daemon starts; `previous` is the store's daemon heartbeat before its first beat.
        A previous daemon that did not stop cleanly crashed, was killed or lost its PC: say how
        long the lab was without it. A clean stop (an upgrade, a reboot) raises nothing."""
        if previous is None or previous.stopped_unix is not None:
            return
        why = "it did not stop cleanly (a crash, a kill, a power cut or a reboot) and has been started again"
        self.daemon_back(previous.beat_unix, why)

    # -- delivering ----------------------------------------------------------------------

    def start(self) -> None:
        """One worker per receiver, in the running event loop; alerts raised before are kept."""
        if self._workers or not self.receivers:
            return
        self._threads = ThreadPoolExecutor(len(self.receivers), thread_name_prefix="alerts")
        self._workers = [
            asyncio.get_running_loop().create_task(self._deliver(r, q), name=f"alerts {r.name}")
            for r, q in zip(self.receivers, self._queues, strict=True)
        ]

    async def drain(self) -> None:
        """Wait until every alert raised so far was delivered or given up."""
        await asyncio.gather(*(queue.join() for queue in self._queues))

    async def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Give queued alerts up to `wait_s` to go out, then stop (what is left is logged)."""
        if self._workers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self.drain()
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        self._workers = []
        for receiver, queue in zip(self.receivers, self._queues, strict=True):
            if queue.qsize():
                log.error(
                    "%d alert(s) for %s not delivered: the daemon is stopping", queue.qsize(), receiver.name
                )
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    async def __aenter__(self) -> Alerts:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _deliver(self, receiver: Receiver, queue: asyncio.Queue[Alert]) -> None:
        while True:
            alert = await queue.get()
            try:
                await self._send(receiver, alert)
            except Exception:  # a bug in a receiver must not end its worker: the next alert goes out
                log.exception("alert %r for %s failed unexpectedly", alert.subject, receiver.name)
            finally:
                queue.task_done()

    async def _send(self, receiver: Receiver, alert: Alert) -> None:
        loop = asyncio.get_running_loop()
        waits = iter(self.retry.waits())
        for attempt in range(1, self.retry.attempts + 1):
            try:
                await loop.run_in_executor(self._threads, receiver.send, alert)
            except DeliveryError as exc:
                wait = next(waits, None)
                if not exc.retry or wait is None:
                    tried = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                    log.error(
                        "alert %r not delivered to %s: %s; given up after %s",
                        alert.subject,
                        receiver.name,
                        exc,
                        tried,
                    )
                    return
                if exc.after_s is not None:
                    wait = min(max(wait, exc.after_s), self.retry.max_s)
                log.warning(
                    "alert %r not delivered to %s: %s; attempt %d of %d, next in %g s",
                    alert.subject,
                    receiver.name,
                    exc,
                    attempt,
                    self.retry.attempts,
                    wait,
                )
                await asyncio.sleep(wait)
            else:
                if attempt > 1:
                    log.info("alert %r delivered to %s at attempt %d", alert.subject, receiver.name, attempt)
                return
