"""Keeping the bus's broker connection up, whatever happens inside it.

A lost broker is retried with backoff (a warning); anything else that fails while connected (a
bug, a failing store) is an error in the log, and the connection is given up and made again.
Leaving the broker that way is a clean disconnect, so its last will is not published: the
daemon's status is set "offline" first, and "online" again by the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiomqtt

from cyclerd.bus.sender import QOS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Broker:
    """Where and as whom the bus connects, and the status topic its last will is on."""

    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    tls_context: ssl.SSLContext | None
    identifier: str
    status_topic: str
    timeout_s: float
    in_flight: int

    def client(self) -> aiomqtt.Client:
        # A fresh client per connection: no half-sent QoS 1 message from the previous session
        # is resent behind the replay's back (that would be a duplicate).
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self.status_topic, "offline", qos=QOS, retain=True),
            clean_start=True,
            tls_context=self.tls_context,
            timeout=self.timeout_s,
            max_inflight_messages=self.in_flight,
        )
        # Many publishes awaiting their PUBACK is the sender's design, not a sign of trouble
        # (aiomqtt warns from 10 on).
        client.pending_calls_threshold = self.in_flight + 16
        return client

    async def say(self, client: aiomqtt.Client, status: str) -> None:
        """Publish the daemon's status (retained); a broker that is gone is not waited for."""
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            async with asyncio.timeout(self.timeout_s):
                await client.publish(self.status_topic, status, qos=QOS, retain=True)


async def keep_connected(
    broker: Broker,
    serve: Callable[[aiomqtt.Client], Awaitable[None]],
    backoff_s: tuple[float, float],
    gone: Callable[[], None],
) -> None:
    """Connect and `serve` the connection (it returns only by raising), again and again, until
    cancelled; `gone` is called each time a connection ends or could not be made."""
    delay = backoff_s[0]
    while True:
        try:
            async with broker.client() as client:
                delay = backoff_s[0]
                log.info("bus connected to %s:%d as %s", broker.host, broker.port, broker.username)
                try:
                    await serve(client)
                except Exception as error:
                    if unexpected(error):
                        await broker.say(client, "offline")
                    raise
        except* (aiomqtt.MqttError, OSError) as group:
            log.warning(
                "bus: broker %s:%d unavailable (%s); retrying in %.1f s",
                broker.host,
                broker.port,
                group.exceptions[0],
                delay,
            )
        except* Exception as group:  # a bug or a failing store: never the end of the bus
            log.error(
                "bus failed (%r); starting it again in %.1f s", group.exceptions[0], delay, exc_info=group
            )
        finally:
            gone()
        await asyncio.sleep(delay)
        delay = min(2 * delay, backoff_s[1])


def unexpected(error: BaseException) -> bool:
    """Whether `error` (a task group's, as a rule) holds more than a lost connection."""
    if isinstance(error, BaseExceptionGroup):
        return error.split((aiomqtt.MqttError, OSError))[1] is not None
    return not isinstance(error, (aiomqtt.MqttError, OSError))
