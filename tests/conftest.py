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
