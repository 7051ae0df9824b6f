"""What a multi-channel battery cycler's driver offers cyclerd (Maccor, Neware, Arbin).

A cycler is one instrument with many channels, reached over TCP on the vendor's PC. Each cyclerd
channel opens its own connection and drives one cycler channel, so channels start, fault and
reconnect independently. Cycler channels are numbered from 1 in the order the vendor's software
lists them; each driver maps that number to its wire's own (a 0-based index, a device-unit-channel
triple).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from cyclerd.drivers.base import Capabilities, Channel
from cyclerd.drivers.clock import Clock

CYCLERS = ("maccor", "neware", "arbin")  # each a module of cyclerd.drivers
RESOURCE_EXAMPLE = "tcp://192.168.1.30:57570"


@dataclass(frozen=True)
class CyclerSurvey:
    """What `cyclerd doctor` learns from a cycler without disturbing it."""

    identity: str  # maker, model, serial and firmware where the cycler tells them
    channels: int
    busy: frozenset[int]  # cycler channels (from 1) running a test cyclerd did not start


class CyclerDriver(Protocol):
    """A cycler driver module: `cyclerd.drivers.maccor`, `.neware`, `.arbin`."""

    CAPABILITIES: Capabilities
    DEFAULT_PORT: int

    def open_cycler_channel(
        self, resource: str, cycler_channel: int, clock: Clock, poll_s: float
    ) -> AbstractAsyncContextManager[Channel]:
        """Cycler channel `cycler_channel` (from 1) at `resource` as a connected cyclerd channel,
        its cell made safe (channel stopped, at rest) on the way out."""
        ...

    def survey(self, resource: str, timeout_s: float) -> CyclerSurvey:
        """Blocking, read-only: identity, channel count and which channels are busy."""
        ...


class ResourceError(ValueError):
    """A cycler resource string that is not `tcp://host:port`."""


def host_and_port(resource: str, default_port: int) -> tuple[str, int]:
    """`tcp://host:port` (port optional) as (host, port)."""
    parts = urlsplit(resource)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme.lower() != "tcp" or not parts.hostname or port == -1 or parts.path not in ("", "/"):
        raise ResourceError(
            f"a cycler's resource is tcp://host:port (e.g. {RESOURCE_EXAMPLE}), not {resource!r}"
        )
    return parts.hostname, port or default_port
