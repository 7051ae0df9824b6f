"""Answering a command over MQTT 5: the reply goes to the asker's response topic, carrying the
asker's correlation data, so a client with several commands in flight can tell the replies apart.

The daemon publishes with its own rights (`readwrite cyclerd/#`), so it must not publish where
an asker points it: a response topic outside this lab's reply space,
`cyclerd/<lab>/reply/<user>[/...]`, could make it overwrite a channel's retained state, the
daemon's status, data or another lab's commands. Such a command is refused and not carried out.
MQTT does not tell the daemon who asked; the broker's ACL lets each user read only its own
`cyclerd/<lab>/reply/<user>/#`, so a reply reaches no one but whoever may read there.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cyclerd.bus.sender import QOS

log = logging.getLogger(__name__)

# A command handler: (channel, payload) -> the reply's JSON object.
CommandHandler = Callable[[str, bytes], Awaitable[Mapping[str, Any]]]

MAX_TOPIC_BYTES = 65_535  # MQTT's limit for a topic name


def reply_space(lab: str) -> str:
    """Where this lab's replies go: `<reply space>/<user>/<anything>`."""
    return f"cyclerd/{lab}/reply"


def refusal(topic: str, lab: str) -> str | None:
    """Why the daemon will not reply on response topic `topic`; None when it may."""
    space = reply_space(lab)
    example = f"e.g. {space}/<your user>/1"
    levels = topic.split("/")
    if any("+" in level or "#" in level for level in levels):
        return f"response topic {topic!r} has a wildcard (+ or #): a reply needs one topic, {example}"
    if "\0" in topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        return f"response topic {topic[:80]!r} is not a valid MQTT topic: use one like {example}"
    if levels[:3] != space.split("/") or len(levels) < 4 or not levels[3]:
        return f"response topic {topic!r} is outside this lab's reply space: use {example}"
    return None


def refusal_topic(topic: str, lab: str) -> str | None:
    """Where a refusal of response topic `topic` can go: its levels before the first wildcard,
    when they lie in the reply space (a client that gave its subscription,
    `cyclerd/<lab>/reply/<user>/#`, gets it on `cyclerd/<lab>/reply/<user>`); else nowhere."""
    levels = topic.split("/")
    wild = next((k for k, level in enumerate(levels) if "+" in level or "#" in level), None)
    if wild is None:
        return None
    literal = "/".join(levels[:wild])
    return literal if refusal(literal, lab) is None else None


async def answer(
    client: aiomqtt.Client, message: aiomqtt.Message, handler: CommandHandler | None, lab: str
) -> None:
    """Run the command in `message` (on cyclerd/<lab>/<channel>/cmd) and send the reply.

    A command whose response topic the daemon will not publish on is not carried out: its asker
    would never learn the outcome. A command without a response topic is carried out (fire and
    forget, e.g. `mosquitto_pub`) and its reply only logged.
    """
    channel = str(message.topic).split("/")[2]
    asked = message.properties
    topic = getattr(asked, "ResponseTopic", None)
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    correlation = getattr(asked, "CorrelationData", None)
    if correlation is not None:
        properties.CorrelationData = correlation
    properties.ContentType = "application/json"
    if topic:
        problem = refusal(topic, lab)
        if problem is not None:
            log.warning("command on %s refused: %s", message.topic, problem)
            elsewhere = refusal_topic(topic, lab)
            if elsewhere is not None:
                await _send(client, elsewhere, {"ok": False, "error": problem}, properties)
            return
    reply = await _carry_out(handler, channel, message)
    if not topic:
        log.info("command on %s without a response topic: %s", message.topic, reply)
        return
    await _send(client, topic, reply, properties)


async def _carry_out(
    handler: CommandHandler | None, channel: str, message: aiomqtt.Message
) -> dict[str, Any]:
    if handler is None:
        return {"ok": False, "error": "no daemon answers commands on this bus yet"}
    payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
    try:
        return dict(await handler(channel, payload))
    except Exception as error:  # a handler's bug must not go unanswered, nor end the bus
        log.exception("command on %s failed", message.topic)
        return {"ok": False, "error": f"the daemon failed to carry the command out: {error}"}


async def _send(client: aiomqtt.Client, topic: str, reply: Mapping[str, Any], properties: Properties) -> None:
    with contextlib.suppress(aiomqtt.MqttError):  # the connection went: the asker asks again
        await client.publish(topic, json.dumps(reply), qos=QOS, properties=properties)
