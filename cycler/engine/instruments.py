"""Opening a real (or emulated) instrument as a Channel, by driver name and resource string."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from cyclerd.drivers.base import Channel
from cyclerd.drivers.clock import Clock
from cyclerd.drivers.cycler import CYCLERS, CyclerDriver
from cyclerd.drivers.keithley2450 import Keithley2450
from cyclerd.drivers.stepper import SteppedChannel

DRIVERS = ("keithley2450", "methodscript", *CYCLERS)


class UnknownDriverError(ValueError):
    pass


def guess_driver(resource: str) -> str:
    """VISA resource strings mean the SCPI SMU; device paths and socket:// URLs mean MethodSCRIPT;
    tcp:// is a cycler, but which one only lab.toml's `driver` says."""
    if resource.upper().startswith(("TCPIP", "USB", "GPIB", "ASRL")):
        return "keithley2450"
    if resource.startswith(("/dev/", "socket://", "COM", "rfc2217://")):
        return "methodscript"
    if resource.lower().startswith("tcp://"):
        return "cycler"
    raise UnknownDriverError(f"cannot tell the driver from {resource!r}; add --driver {' or '.join(DRIVERS)}")


def cycler_driver(driver: str) -> CyclerDriver:
    """The driver module of cycler `driver` (one of CYCLERS), imported when first needed."""
    if driver not in CYCLERS:
        raise UnknownDriverError(f"no cycler driver {driver!r}; cyclers: {', '.join(CYCLERS)}")
    return cast(CyclerDriver, importlib.import_module(f"cyclerd.drivers.{driver}"))


@asynccontextmanager
async def open_channel(
    driver: str, resource: str, clock: Clock, poll_interval_s: float = 1.0, cycler_channel: int | None = None
) -> AsyncIterator[Channel]:
    """The instrument as a connected, identified channel; closed (output off) on the way out.
    `cycler_channel`: which channel (from 1) of a cycler."""
    if driver in CYCLERS:
        if cycler_channel is None:
            raise UnknownDriverError(f"a {driver} cycler needs the cycler channel to drive (from 1)")
        async with cycler_driver(driver).open_cycler_channel(
            resource, cycler_channel, clock, poll_interval_s
        ) as channel:
            yield channel
    elif driver == "keithley2450":
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
