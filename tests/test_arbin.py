"""The Arbin CTI codec, emulator and driver, each checked against pycti-arbin over real sockets: its
client against our emulator, our driver against its ArbinSpoofer, and our driver against our
emulator running protocols on several channels at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pyctiarbin import ChannelInterface, CyclerInterface
from pyctiarbin.arbinspoofer import ArbinSpoofer
from pyctiarbin.messages import Msg

from cyclerd.drivers import arbin_messages as cti
from cyclerd.drivers.arbin import (
    CAPABILITIES,
    FOLLOW_SCHEDULE,
    LIMIT_MARGIN_CURRENT,
    LIMIT_MARGIN_V,
    Arbin,
    open_cycler_channel,
    survey,
)
from cyclerd.drivers.base import InstrumentError, InstrumentFault, unmet_needs
from cyclerd.drivers.clock import AcceleratedClock
from cyclerd.drivers.cycler import ResourceError
from cyclerd.engine.cursor import Cursor
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import Columns, RunEvent, Sink, StepEnded
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.arbin_emulator import ArbinEmulator
from cyclerd.simulators.scpi_server import running

SPEED = 3600.0  # emulator and run clock: cell seconds per real second
POLL_S = 10.0  # cell seconds between readings
CYCLERD = str(Path(sys.executable).with_name("cyclerd"))

PLATE_TO_CUTOFF = """
name: plate to a cut-off, then rest
safety: {{voltage_min: -0.5 V, voltage_max: 3 V, current_max: 5 mA}}
record: {{every: 10 s}}
steps:
  - plate: {{current: {current_mA:g} mA, until: {{voltage_below: 0.1 V, duration: 2 h}}}}
  - rest: 10 min
"""


class Record(Sink):
    """What a run hands its sinks, kept for the test; `seen` is called with every batch."""

    def __init__(self, seen: Callable[[Columns], object] | None = None) -> None:
        self.seen = seen
        self.batches: list[Columns] = []
        self.ended: list[StepEnded] = []
        self.events: list[RunEvent] = []

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        self.batches.append(columns)
        if self.seen is not None:
            self.seen(columns)

    def step_ended(self, step: StepEnded, cursor: Cursor | None) -> None:
        self.ended.append(step)

    def event(self, event: RunEvent) -> None:
        self.events.append(event)

    def column(self, name: str, step: int) -> np.ndarray:
        return np.concatenate([b[name][b["step"] == step] for b in self.batches])


@pytest.fixture
def cycler() -> Iterator[tuple[ArbinEmulator, int]]:
    emulator = ArbinEmulator("mgagsn", 4, seed=1, speed=SPEED, schedules=("someone_elses.sdx",))
    with running(emulator) as port:
        yield emulator, port


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """pycti-arbin's .env; it loads it into os.environ, which monkeypatch restores afterwards."""
    for name in ("ARBIN_CTI_USERNAME", "ARBIN_CTI_PASSWORD"):
        monkeypatch.setenv(name, "unset")
    path = tmp_path / ".env"
    path.write_text("ARBIN_CTI_USERNAME='lab'\nARBIN_CTI_PASSWORD='secret'\n")
    return str(path)


# -- the codec, byte for byte against pycti-arbin's ---------------------------------------

THEIR_NAMES = {"channel_selection": "selection", "num_channels_to_start": "count"}
THEIR_NAMES |= {"mv_meta_code": "meta_code", "mv_data": "value"}
REQUESTS: list[tuple[cti.Message, Any, dict[str, Any]]] = [
    (cti.Login("lab", "secret"), Msg.Login.Client, {"username": "lab", "password": "secret"}),
    (cti.ChannelInfoRequest(5), Msg.ChannelInfo.Client, {"channel": 5, "channel_selection": 1}),
    (
        cti.AssignSchedule(2, FOLLOW_SCHEDULE),
        Msg.AssignSchedule.Client,
        {"channel": 2, "schedule": FOLLOW_SCHEDULE},
    ),
    (cti.StartSchedule(2, "cell 7"), Msg.StartSchedule.Client, {"channel": 2, "test_name": "cell 7"}),
    (cti.StopSchedule(2), Msg.StopSchedule.Client, {"channel": 2}),
    (
        cti.SetMetaVariable(2, 105, 2.5),
        Msg.SetMetaVariable.Client,
        {"channel": 2, "mv_meta_code": 105, "mv_data": 2.5},
    ),
]


@pytest.mark.parametrize(("ours", "theirs", "values"), REQUESTS, ids=lambda x: type(x).__name__)
def test_requests_read_the_same_both_ways(ours: cti.Message, theirs: Any, values: dict[str, Any]) -> None:
    wire = cti.encode(ours)
    decoded = theirs.unpack(wire)
    assert {name: decoded[name] for name in values} == values
    assert decoded["msg_length"] == theirs.msg_length
    assert decoded["command_code"] == theirs.command_code
    assert cti.frame_size(wire[: cti.HEADER.size]) == len(wire)
    their_wire = bytes(theirs.pack(values))
    assert cti.frame_size(their_wire[: cti.HEADER.size]) == len(their_wire)  # longer than it says
    mine = cti.decode(type(ours), their_wire)
    assert {name: getattr(mine, THEIR_NAMES.get(name, name)) for name in values} == values


def test_replies_read_the_same_both_ways() -> None:
    login = Msg.Login.Server.unpack(
        cti.encode(cti.LoginFeedback(1, serial="SN7", nickname="Arbin 7", channels=16))
    )
    assert login["result"] == "success"
    assert (login["cycler_sn"], login["nick_name"], login["num_channels"]) == ("SN7", "Arbin 7", 16)
    status = cti.ChannelStatus(
        1, 3, cti.DISCHARGE, schedule=FOLLOW_SCHEDULE, test_time_s=12.5, voltage_V=0.25, current_A=-1e-3,
        discharge_Ah=2e-4,
    )  # fmt: skip
    theirs = Msg.ChannelInfo.Server.unpack(cti.encode(status))
    assert (theirs["channel"], theirs["status"], theirs["schedule"]) == (3, "Discharge", FOLLOW_SCHEDULE)
    assert theirs["test_time_s"] == 12.5
    assert theirs["current_a"] == pytest.approx(-1e-3)
    assert theirs["discharge_capacity_ah"] == pytest.approx(2e-4)
    assert theirs["msg_length"] == 1779
    for ours, them in [
        (cti.AssignScheduleFeedback(1, cti.ASSIGN_NOT_FOUND), Msg.AssignSchedule.Server),
        (cti.StartScheduleFeedback(1, cti.START_RUNNING), Msg.StartSchedule.Server),
        (cti.StopScheduleFeedback(1, cti.SUCCESS), Msg.StopSchedule.Server),
        (cti.SetMetaVariableFeedback(1, cti.SET_MV_NOT_RUNNING), Msg.SetMetaVariable.Server),
    ]:
        assert them.unpack(cti.encode(ours))["result"] == ours.words
    # pycti-arbin's test server sends its checksum past the length it declares: still readable
    their_login = bytes(Msg.Login.Server.pack({"num_channels": 4}))
    assert cti.frame_size(their_login) == len(their_login) - cti.STRAY_TAIL
    assert cti.decode(cti.LoginFeedback, their_login).channels == 4
    their_status = bytes(Msg.ChannelInfo.Server.pack({"channel": 2, "status": 22, "voltage_v": 3.5}))
    assert cti.decode(cti.ChannelStatus, their_status).running
    with pytest.raises(cti.CtiFormatError, match="no CTI header"):
        cti.decode(cti.ChannelStatus, b"\x00" + their_status)
    with pytest.raises(cti.CtiFormatError, match="expected a LoginFeedback"):
        cti.decode(cti.LoginFeedback, their_status)


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while len(data) < cti.HEADER.size or len(data) < cti.frame_size(data[: cti.HEADER.size]):
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


def test_the_emulator_skips_stray_bytes_and_closes_on_clients_that_did_not_log_in(
    cycler: tuple[ArbinEmulator, int],
) -> None:
    _, port = cycler
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"\x00\x01 not CTI \xdd" + cti.encode(cti.Login("lab", "secret")))
        assert cti.decode(cti.LoginFeedback, _reply(sock)).channels == 4
        sock.sendall(cti.encode(cti.ChannelInfoRequest(7)))  # no such channel
        assert cti.decode(cti.ChannelStatus, _reply(sock)).channels == 0
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(cti.encode(cti.ChannelInfoRequest(0)))
        assert _reply(sock) == b""  # shown the door


# -- pycti-arbin's client against our emulator ---------------------------------------------


def test_pycti_drives_a_channel_of_the_emulator(cycler: tuple[ArbinEmulator, int], env_file: str) -> None:
    emulator, port = cycler
    config = {"ip_address": "127.0.0.1", "port": port, "timeout_s": 2}
    whole = CyclerInterface(config, env_file)
    assert whole.get_num_channels() == 4
    idle = whole.read_channel_status(2)
    assert idle["status"] == "Idle"
    assert idle["current_a"] == 0.0
    assert idle["voltage_v"] > 1.0

    channel = ChannelInterface(
        {**config, "channel": 2, "test_name": "pycti", "schedule_name": FOLLOW_SCHEDULE}, env_file
    )
    assert channel.start_test()  # assigns, then starts
    assert channel.read_channel_status()["status"] == "Rest"
    for number, value in [(5, 3.0), (6, -0.5), (7, 0.01), (2, -2e-3), (3, 3.0), (1, 1), (4, 1)]:
        assert channel.set_meta_variable(number, value)
    first = channel.read_channel_status()
    assert first["status"] == "Discharge"
    assert first["current_a"] == pytest.approx(-2e-3)
    assert emulator.bank.channel(2).on
    assert not emulator.bank.channel(1).on
    time.sleep(0.05)  # 3 min of cell time: the plated cell's voltage falls
    later = channel.read_channel_status()
    assert later["voltage_v"] < first["voltage_v"] - 0.01
    assert later["discharge_capacity_ah"] == pytest.approx(2e-3 * later["step_time_s"] / 3600, rel=0.05)
    assert channel.set_meta_variable(1, 0)
    assert channel.set_meta_variable(4, 2)
    assert channel.read_channel_status()["current_a"] == 0.0
    assert not emulator.bank.channel(2).on
    assert channel.stop_test()
    assert channel.read_channel_status()["status"] == "Idle"
    assert not channel.set_meta_variable(1, 1)  # "Channel is not running"
    stranger = ChannelInterface(
        {**config, "channel": 2, "test_name": "x", "schedule_name": "nope.sdx"}, env_file
    )
    assert not stranger.assign_schedule()  # "Schedule name not found"


def test_pycti_talks_to_cyclerd_emulate_in_its_own_process(env_file: str) -> None:
    args = [CYCLERD, "emulate", "arbin", "--channels", "8", "--port", "0", "--speed", "3600"]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    try:
        assert process.stderr is not None
        lines = iter(process.stderr.readline, "")
        found = next(filter(None, (re.search(r"on 127\.0\.0\.1:(\d+)", line) for line in lines)), None)
        assert found, "the emulator did not say where it listens"
        cycler = CyclerInterface({"ip_address": "127.0.0.1", "port": int(found[1])}, env_file)
        assert cycler.get_num_channels() == 8
        assert cycler.read_channel_status(8)["status"] == "Idle"
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(10)


# -- our driver against pycti-arbin's ArbinSpoofer -----------------------------------------


def test_the_driver_against_pyctis_spoofer() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    spoofer = ArbinSpoofer({"ip": "127.0.0.1", "port": port, "num_channels": 4})
    spoofer.start()
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            time.sleep(0.01)
        resource = f"tcp://127.0.0.1:{port}"
        assert survey(resource, 1.0).channels == 4

        async def drive() -> None:
            arbin = Arbin("127.0.0.1", port, 3, timeout_s=1.0)
            await arbin.open()  # login, status: idle
            await arbin.source_current(0.5, 4.2)  # assign, start, set meta variables: all "success"
            # The spoofer answers what it is told: now that channel runs cyclerd's schedule.
            readings = {"status": cti.CHARGE, "schedule": FOLLOW_SCHEDULE, "voltage_v": 3.7, "current_a": 0.5}
            spoofer.update_channel_status(2, {**readings, "test_time_s": 12.0})
            reading = await arbin.measure()
            assert (reading.t_s, reading.current_A) == (12.0, 0.5)
            assert reading.voltage_V == pytest.approx(3.7)
            await arbin.close()  # rest, stop

        asyncio.run(drive())
        spoofer.update_channel_status(1, {"status": 22, "schedule": "theirs.sdx"})
        assert survey(resource, 1.0).busy == {2}
    finally:
        spoofer.stop()


# -- our driver against our emulator -------------------------------------------------------


def test_two_channels_run_cc_to_a_cutoff_and_rest_side_by_side(cycler: tuple[ArbinEmulator, int]) -> None:
    emulator, port = cycler
    resource = f"tcp://127.0.0.1:{port}"

    async def run(channel: int, current_mA: float) -> tuple[RunState, Record, Any]:
        text = PLATE_TO_CUTOFF.format(current_mA=current_mA)
        clock = AcceleratedClock(SPEED)
        program = compile_protocol(loads(text))
        async with open_cycler_channel(resource, channel, clock, POLL_S) as arbin:
            assert unmet_needs(program.needs(), arbin.capabilities, "arbin") == []
            record = Record()
            result = await Runner(program, arbin, clock, record).run()
            limits = emulator.bank.channel(channel).limits  # as the step set them
        return result.state, record, limits

    async def both() -> list[tuple[RunState, Record, Any]]:
        return list(await asyncio.gather(run(1, 1.0), run(3, 2.0)))

    for (state, record, limits), channel, current_A in zip(
        asyncio.run(both()), (1, 3), (1e-3, 2e-3), strict=True
    ):
        assert state is RunState.COMPLETED
        assert [(s.number, s.reason) for s in record.ended] == [(1, "voltage_below"), (2, "duration")]
        plating = record.column("current", 1)
        assert np.allclose(plating, -current_A, rtol=1e-5)  # each channel its own current
        assert record.column("voltage", 1)[-1] < 0.1 < record.column("voltage", 1)[0]
        assert np.all(record.column("current", 2) == 0.0)
        # the protocol's safety limits, a margin beyond, became the channel's own
        assert limits.voltage_max_V == pytest.approx(3 + LIMIT_MARGIN_V)
        assert limits.voltage_min_V == pytest.approx(-0.5 - LIMIT_MARGIN_V)
        assert limits.current_max_A == pytest.approx(5e-3 * (1 + LIMIT_MARGIN_CURRENT))
        test = emulator.channels[channel - 1].test
        assert (test.running, test.exit_condition, test.schedule) == (
            False,
            "Stopped by CTI",
            FOLLOW_SCHEDULE,
        )
        assert [on for _, number, on in emulator.switches if number == channel] == [True, False]
    assert not any(number in (2, 4) for _, number, _ in emulator.switches)  # untouched channels


def test_survey_names_busy_channels_and_a_busy_channel_is_refused(
    cycler: tuple[ArbinEmulator, int], env_file: str
) -> None:
    emulator, port = cycler
    resource = f"tcp://127.0.0.1:{port}"
    theirs = {"ip_address": "127.0.0.1", "port": port, "channel": 4, "test_name": "theirs"}
    assert ChannelInterface({**theirs, "schedule_name": "someone_elses.sdx"}, env_file).start_test()
    found = survey(resource, 1.0)
    assert (found.channels, found.busy) == (4, {4})
    assert "EMU-ARBIN-0001" in found.identity

    async def refused() -> None:
        clock = AcceleratedClock(SPEED)
        with pytest.raises(InstrumentFault, match=r"runs a test cyclerd did not start.*someone_elses"):
            async with open_cycler_channel(resource, 4, clock, POLL_S):
                pass
        with pytest.raises(InstrumentFault, match="channels 1 to 4"):
            async with open_cycler_channel(resource, 5, clock, POLL_S):
                pass

    asyncio.run(refused())
    assert emulator.channels[3].test.running  # their test goes on
    with pytest.raises(ResourceError):
        survey(f"http://127.0.0.1:{port}", 1.0)


def test_a_refused_login_says_which_variables_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARBIN_CTI_USERNAME", "lab")
    monkeypatch.setenv("ARBIN_CTI_PASSWORD", "wrong")
    emulator = ArbinEmulator("mgagsn", 2, speed=SPEED, credentials=("lab", "secret"))
    with running(emulator) as port, pytest.raises(InstrumentError, match=r"login fail.*ARBIN_CTI_PASSWORD"):
        survey(f"tcp://127.0.0.1:{port}", 1.0)


def test_capabilities_are_an_lbt_channel_with_a_bipolar_range() -> None:
    assert CAPABILITIES.current_max_A == 5.0
    assert CAPABILITIES.voltage_range_V == (-5.0, 5.0)
