"""`cyclerd doctor` on a lab with cyclers: each cycler answers with its identity and channel count,
a lab channel beyond the cycler's channels fails, and one whose channel runs somebody else's test
warns, all without disturbing the cycler (read-only surveys)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pymacnet  # type: ignore[import-untyped]
import pytest
from test_maccor import pymacnet_config

from cyclerd.doctor.diagnose import diagnose
from cyclerd.doctor.verdict import Verdict
from cyclerd.drivers import maccor_wire as mn
from cyclerd.simulators.arbin_emulator import ArbinEmulator
from cyclerd.simulators.maccor_emulator import MaccorEmulator
from cyclerd.simulators.neware_emulator import NewareEmulator
from cyclerd.simulators.scpi_server import running


def write_lab(folder: Path, driver: str, port: int, cycler_channels: list[int]) -> Path:
    channels = "".join(
        f'\n[[channels]]\nname = "c{n}"\ninstrument = "cyc"\ncycler_channel = {n}\n' for n in cycler_channels
    )
    config = folder / "lab.toml"
    config.write_text(
        f'lab = "doc"\ndatabase = "lab.db"\n\n[[instruments]]\nname = "cyc"\ndriver = "{driver}"\n'
        f'resource = "tcp://127.0.0.1:{port}"\n{channels}'
    )
    return config


@pytest.mark.parametrize(
    ("driver", "emulator"),
    [("maccor", MaccorEmulator), ("neware", NewareEmulator), ("arbin", ArbinEmulator)],
)
def test_doctor_names_each_cyclers_identity_and_channels(tmp_path: Path, driver: str, emulator: Any) -> None:
    with running(emulator("mgagsn", 4, 1, 3600.0)) as port:
        checks = {c.name: c for c in asyncio.run(diagnose(write_lab(tmp_path, driver, port, [1, 4]), 2.0))}
        found = checks["instrument cyc"]
        assert found.verdict is Verdict.OK, found.detail
        assert f"{driver} at tcp://127.0.0.1:{port}: " in found.detail
        assert found.detail.endswith("4 channels")
        for n in (1, 4):  # many lab channels share the cycler, each on a channel of its own
            on = checks[f"channel c{n}"]
            assert on.verdict is Verdict.OK, on.detail
            assert on.detail.startswith(f"on channel {n} of cycler cyc ({driver} at tcp://127.0.0.1:")

        checks = {c.name: c for c in asyncio.run(diagnose(write_lab(tmp_path, driver, port, [2, 5]), 2.0))}
        beyond = checks["instrument cyc"]
        assert beyond.verdict is Verdict.FAIL
        assert "no such channel for c5 (cycler channel 5): cycler_channel runs from 1 to 4" in beyond.detail


def test_doctor_warns_of_a_lab_channel_whose_cycler_channel_runs_someone_elses_test(tmp_path: Path) -> None:
    emulator = MaccorEmulator("mgagsn", 4, 1, 3600.0)
    with running(emulator) as port:
        others = pymacnet_config(emulator, 3, test_name="formation-17")
        assert pymacnet.ChannelInterface(others).start_test_with_direct_control()
        checks = {c.name: c for c in asyncio.run(diagnose(write_lab(tmp_path, "maccor", port, [1, 3]), 2.0))}
        busy = checks["instrument cyc"]
        assert busy.verdict is Verdict.WARN
        assert "a test runs on c3 (cycler channel 3): cyclerd will not start a job there" in busy.detail
        assert emulator.channels[2].test_name == "formation-17"  # its test left running
        assert emulator.channels[2].stat != mn.AVAILABLE


def test_doctor_fails_a_cycler_with_nothing_listening(tmp_path: Path) -> None:
    from mosquitto import free_port

    checks = {c.name: c for c in asyncio.run(diagnose(write_lab(tmp_path, "neware", free_port(), [1]), 1.0))}
    dead = checks["instrument cyc"]
    assert dead.verdict is Verdict.FAIL
    assert "is the neware software running with its API enabled" in dead.detail
