"""Opening a real (or emulated) instrument as a Channel, by driver name and resource string."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cyclerd.drivers.base import Channel
from cyclerd.drivers.clock import Clock
from cyclerd.drivers.keithley2450 import Keithley2450
from cyclerd.drivers.stepper import SteppedChannel

DRIVERS = ("keithley2450", "methodscript")


class UnknownDriverError(ValueError):
    pass


def guess_driver(resource: str) -> str:
    """VISA resource strings mean the SCPI SMU; device paths and socket:// URLs mean MethodSCRIPT."""
    if resource.upper().startswith(("TCPIP", "USB", "GPIB", "ASRL")):
        return "keithley2450"
    if resource.startswith(("/dev/", "socket://", "COM", "rfc2217://")):
        return "methodscript"
    raise UnknownDriverError(f"cannot tell the driver from {resource!r}; add --driver {' or '.join(DRIVERS)}")


@asynccontextmanager
async def open_channel(
    driver: str, resource: str, clock: Clock, poll_interval_s: float = 1.0
) -> AsyncIterator[Channel]:
    """The instrument as a connected, identified channel; closed (output off) on the way out."""
    if driver == "keithley2450":
        smu = Keithley2450(resource)
        await smu.open()
        try:
            yield SteppedChannel(smu, clock, poll_interval_s)
        finally:
            await smu.close()
    elif driver == "methodscript":
        from cyclerd.drivers.methodscript import open_methodscript

        async with open_methodscript(resource, clock) as channel:
            yield channel
    else:
        raise UnknownDriverError(f"no driver {driver!r}; drivers: {', '.join(DRIVERS)}")
