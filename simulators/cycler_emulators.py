"""The emulated cyclers (`cyclerd emulate maccor|neware|arbin`), found by the cycler's name.

Each is a module `cyclerd.simulators.<cycler>_emulator`: many channels on one TCP server, each
channel with its own simulated cell, all on one clock, with the same runtime faults as the
single-channel emulators.
"""

from __future__ import annotations

import importlib
from typing import Protocol, cast

from cyclerd.drivers.cycler import CYCLERS


class CyclerEmulatorModule(Protocol):
    DEFAULT_PORT: int

    async def serve(self, preset: str, port: int | None, speed: float, seed: int, channels: int) -> None:
        """Serve until cancelled: `channels` channels, each a `preset` cell (seeds seed, seed+1, ...),
        on 127.0.0.1:`port` (None: the cycler's own port; 0: any free one), at `speed` times real
        time (more than 0: a cycler's channels run side by side on one clock, which the
        clients' queries cannot advance as a single SMU's readings do)."""
        ...


def cycler_emulator(cycler: str) -> CyclerEmulatorModule:
    if cycler not in CYCLERS:
        raise ValueError(f"no emulated cycler {cycler!r}; cyclers: {', '.join(CYCLERS)}")
    return cast(CyclerEmulatorModule, importlib.import_module(f"cyclerd.simulators.{cycler}_emulator"))
