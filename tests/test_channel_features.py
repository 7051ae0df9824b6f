"""Optional channel features are small Protocols: each channel class has exactly the ones it claims."""

from __future__ import annotations

import pytest

from cyclerd.drivers.base import Named, Reconnectable, Snapshotting
from cyclerd.drivers.clock import VirtualClock
from cyclerd.drivers.keithley2450 import Keithley2450
from cyclerd.drivers.methodscript import MethodScriptChannel
from cyclerd.drivers.stepper import SteppedChannel
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.simulators.presets import make_cell

FEATURES = (Named, Reconnectable, Snapshotting)


def _channels() -> dict[str, object]:
    """One of each channel class, made without opening anything."""
    return {
        "simulated": SimulatedChannel(make_cell("mgagsn", seed=1), VirtualClock(), name="sim-1"),
        "stepped": SteppedChannel(Keithley2450("TCPIP::127.0.0.1::5025::SOCKET"), VirtualClock()),
        "methodscript": MethodScriptChannel("socket://127.0.0.1:1", name="emstat-1"),
    }


@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        ("simulated", {Named, Snapshotting}),
        ("stepped", {Named, Reconnectable}),
        ("methodscript", {Named, Reconnectable}),
    ],
)
def test_each_channel_has_the_features_it_claims(channel: str, expected: set[type]) -> None:
    subject = _channels()[channel]
    has = {feature for feature in FEATURES if isinstance(subject, feature)}
    assert has == expected


def test_names_are_for_people() -> None:
    channels = _channels()
    named = {key: c.name for key, c in channels.items() if isinstance(c, Named)}
    assert named == {
        "simulated": "sim-1",
        "stepped": "Keithley 2450 at TCPIP::127.0.0.1::5025::SOCKET",
        "methodscript": "emstat-1",
    }


def test_a_simulated_channel_snapshot_restores_into_a_fresh_channel() -> None:
    channel = SimulatedChannel(make_cell("mgagsn", seed=1), VirtualClock())
    assert isinstance(channel, Snapshotting)
    state = channel.snapshot()
    assert state is not None
    fresh = SimulatedChannel(make_cell("mgagsn", seed=1), VirtualClock())
    fresh.restore(state)
    assert fresh.snapshot() == state


def test_the_stepper_reopens_only_an_instrument_that_can() -> None:
    from cyclerd.drivers.base import Reopenable

    assert isinstance(Keithley2450("TCPIP::127.0.0.1::5025::SOCKET"), Reopenable)
    assert not isinstance(object(), Reopenable)
