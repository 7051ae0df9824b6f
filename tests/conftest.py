"""Shared fixtures: a real Mosquitto per test (password file and ACL, see mosquitto.py).

Hypothesis runs the same examples on every `make test` (CI included), so a red build is
reproducible and never depends on the day's random draw. To hunt for new counterexamples,
run `pytest --hypothesis-profile=explore` (random examples, more of them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from mosquitto import Mosquitto

from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=1000, derandomize=False)
settings.load_profile("ci")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker of the test's own, its files in a folder of their own."""
    folder = tmp_path / "broker"
    folder.mkdir()
    mosquitto = Mosquitto(folder)
    mosquitto.start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def smu() -> Iterator[tuple[Keithley2450Emulator, str]]:
    """An emulated Keithley 2450 in real time on a free port, and its VISA resource."""
    device = Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=1.0)
    with running(device) as port:
        yield device, f"TCPIP::127.0.0.1::{port}::SOCKET"
