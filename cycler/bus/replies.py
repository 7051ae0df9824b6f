"""Answering a command over MQTT 5: the reply goes to the asker's response topic, carrying the
asker's correlation data, so a client with several commands in flight can tell the replies apart.
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


async def answer(client: aiomqtt.Client, message: aiomqtt.Message, handler: CommandHandler | None) -> None:
    """Run the command in `message` (on cyclerd/<lab>/<channel>/cmd) and send the reply."""
    channel = str(message.topic).split("/")[2]
    payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
    if handler is None:
        reply: dict[str, Any] = {"ok": False, "error": "no daemon answers commands on this bus yet"}
    else:
        reply = dict(await handler(channel, payload))
    asked = message.properties
    topic = getattr(asked, "ResponseTopic", None)
    if not topic:
        log.info("command on %s without a response topic: %s", message.topic, reply)
        return
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    correlation = getattr(asked, "CorrelationData", None)
    if correlation is not None:
        properties.CorrelationData = correlation
    properties.ContentType = "application/json"
    with contextlib.suppress(aiomqtt.MqttError):  # the connection went: the asker asks again
        await client.publish(topic, json.dumps(reply), qos=QOS, properties=properties)
