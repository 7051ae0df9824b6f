"""The Maccor cycler over MacNet, on real sockets: pymacnet's own client against our emulator, our
driver against pymacnet's MaccorSpoofer, and our driver stepping protocols on our emulator.
Faults are in test_maccor_faults.py."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pymacnet  # type: ignore[import-untyped]
import pytest
from pymacnet.maccorspoofer.MaccorSpoofer import MaccorSpoofer  # type: ignore[import-untyped]

from cyclerd.drivers import maccor_wire as mn
from cyclerd.drivers.base import Batch, InstrumentFault, StepEnd, StepProgress, unmet_needs
from cyclerd.drivers.clock import AcceleratedClock
from cyclerd.drivers.cycler import ResourceError
from cyclerd.drivers.maccor import CAPABILITIES, MaccorCycler, open_cycler_channel, survey
from cyclerd.drivers.stepper import SteppedChannel
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.protocols.program import Loop
from cyclerd.simulators.maccor_emulator import MaccorEmulator, running

SPEED = 3600.0  # the emulator and the host's clock: real time x this
POLL_S = 30.0  # the stepper's poll interval, cycler time
AREA_CM2 = 0.785

PLATE_AND_REST = """
name: plate then rest
cell: {{area: 0.785 cm^2}}
safety: {{voltage_min: -0.5 V, voltage_max: 3 V, current_max: 4 mA/cm^2}}
record: {{every: 30 s}}
steps:
  - plate: {{current: {density} mA/cm^2, until: {{voltage_below: 0.3 V, duration: 2 h}}}}
  - rest: 10 min
"""


@pytest.fixture
def cycler() -> Iterator[tuple[MaccorEmulator, str]]:
    """An emulated Maccor with 4 channels of MgAgSn half-cells, and its resource."""
    emulator = MaccorEmulator("mgagsn", 4, seed=1, speed=SPEED)
    with running(emulator) as port:
        yield emulator, f"tcp://127.0.0.1:{port}"


def until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Wait for `condition` (the emulator runs in real time x SPEED in its own thread)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.005)


def pymacnet_config(emulator: MaccorEmulator, channel: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server_ip": "127.0.0.1",
        "json_msg_port": emulator.port,
        "bin_msg_port": emulator.binary_port,
        "msg_buffer_size_bytes": 4096,
        "channel": channel,
        "test_name": None,
        "test_procedure": "unused",
        "c_rate_ah": 1,
        "v_max_safety_limit_v": 3.0,
        "v_min_safety_limit_v": -0.5,
        "i_max_safety_limit_a": 0.01,
        "i_min_safety_limit_a": 0.01,
        "power_safety_limit_chg_w": 1,
        "power_safety_limit_dsg_w": 1,
        "v_max_v": 2.0,
        "v_min_v": -0.3,
        "data_record_time_s": 10,
        "data_record_voltage_delta_vbys": 0,
        "data_record_current_delta_abys": 0,
    }
    return config | overrides


def macnet(port: int, name: str, **params: Any) -> dict[str, Any]:
    """One MacNet request on a connection of its own."""
    link = mn.MacNetLink("test client", "127.0.0.1", port, 2.0)
    link.connect()
    try:
        return link.call(name, **params)
    finally:
        link.close()


async def run_steps(channel: SteppedChannel, text: str) -> list[tuple[list[Batch], StepEnd]]:
    """Each step of `text` on `channel`: its batches and its end."""
    program = compile_protocol(loads(text))
    steps = []
    for command in program.body:
        assert not isinstance(command, Loop)
        batches: list[Batch] = []
        async for item in channel.run(command, StepProgress(), program.safety):
            if isinstance(item, Batch):
                batches.append(item)
            else:
                steps.append((batches, item))
    return steps


# -- pymacnet's client on our emulator ---------------------------------------------------------


def test_pymacnet_reads_the_cyclers_identity_and_statuses(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, _ = cycler
    client = pymacnet.CyclerInterface(pymacnet_config(emulator, 1))
    assert client.get_num_channels() == 4
    assert client.read_system_info()["APIVersion"] == 1
    assert client.read_general_info()["SystemID"] == "cyclerd emulator"
    status = client.read_channel_status(3)
    assert status["Chan"] == 3  # pymacnet counts from 1, the wire from 0
    assert pymacnet.messages.status_dictionary[status["Stat"]] == "Available"
    assert status["Voltage"] == pytest.approx(emulator.bank.channel(3).reading()[0], abs=0.005)
    assert [entry["Stat"] for entry in client.read_all_channel_statuses()] == [0, 0, 0, 0]


def test_pymacnet_drives_a_channel_and_reads_the_cell_follow(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, _ = cycler
    cell = emulator.bank.channel(2)
    client = pymacnet.ChannelInterface(pymacnet_config(emulator, 2))
    assert client.start_test_with_direct_control()
    status = client.read_channel_status()
    assert pymacnet.messages.status_dictionary[status["Stat"]] == "Active"
    assert cell.limits.voltage_max_V == 3.0
    assert cell.limits.voltage_min_V == -0.5
    ocv = status["Voltage"]

    # A charge at 2 mA with the voltage held at 2 V: constant current, then the hold (CC-CV).
    assert client.set_direct_mode_output(2e-3, voltage_v=2.0)
    until(lambda: client.read_channel_status()["Voltage"] > ocv + 0.2)
    until(lambda: client.read_channel_status()["Current"] < 1e-3)  # the hold tapers the current
    status = client.read_channel_status()
    assert status["Voltage"] == pytest.approx(2.0, abs=0.005)
    assert status["RF1"] == mn.CHARGING
    assert status["Voltage"] == pytest.approx(cell.reading()[0], abs=0.005)

    # A discharge at 1 mA (down to pymacnet's v_min_v): the cell's voltage falls.
    assert client.set_direct_mode_output(-1e-3)
    before = client.read_channel_status()["Voltage"]
    until(lambda: client.read_channel_status()["Voltage"] < before - 0.05)
    status = client.read_channel_status()
    assert status["RF1"] == mn.DISCHARGING
    assert status["Current"] == pytest.approx(1e-3)
    assert cell.reading()[1] == pytest.approx(-1e-3)
    assert client.read_aux() == [25.0]
    assert client.set_channel_variable(var_num=3, var_value=1.5)

    assert client.reset_channel()
    assert pymacnet.messages.status_dictionary[client.read_channel_status()["Stat"]] == "Available"
    assert not cell.on
    assert not any(emulator.bank.channel(n).on for n in (1, 3, 4))


def test_pymacnet_starts_a_procedure_which_rests_the_cell(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, _ = cycler
    client = pymacnet.ChannelInterface(pymacnet_config(emulator, 4, test_name="formation-17"))
    assert client.start_test_with_procedure()
    assert client.read_channel_status()["Stat"] == mn.ACTIVE
    assert client.read_channel_status()["RF1"] == mn.RESTING
    info = macnet(emulator.port, "test_info", Chan=3)
    assert (info["TestName"], info["ProcName"]) == ("formation-17", "unused")
    assert client.set_direct_mode_output(1e-3) is False  # not a direct-mode test
    assert not emulator.bank.channel(4).on


# -- our driver on pymacnet's spoofer ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_driver_speaks_to_pymacnets_spoofer() -> None:
    port = free_port()
    spoofer = MaccorSpoofer(
        {"server_ip": "127.0.0.1", "json_port": port, "tcp_port": free_port(), "num_channels": 8}
    )
    spoofer.start()
    try:
        cycler = MaccorCycler(f"tcp://127.0.0.1:{port}", 1, timeout_s=2.0)
        for _ in range(100):  # the spoofer's server thread binds its port soon after start()
            try:
                await cycler.open()
                break
            except InstrumentFault:
                await asyncio.sleep(0.02)
        assert "Win10" in cycler.identity  # the spoofer's canned system id
        await cycler.source_current(-1e-3, 3.5)  # safety limits, then the output: both answered OK
        spoofer.update_channel_status(
            0, {"Stat": 2, "RF1": 2, "Current": 1e-3, "Voltage": 3.71, "TestTime": 12.5}
        )
        reading = await cycler.measure()
        assert (reading.t_s, reading.voltage_V, reading.current_A) == (12.5, 3.71, -1e-3)
        await cycler.source_voltage(4.1, 5e-3)
        spoofer.update_channel_status(0, {"Stat": 0, "RF1": 0, "Current": 0})
        await cycler.close()
    finally:
        spoofer.stop()


# -- our driver on our emulator ----------------------------------------------------------------


async def test_a_cc_step_to_a_cutoff_and_a_rest_follow_the_cell(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, resource = cycler
    cell = emulator.bank.channel(1)
    async with open_cycler_channel(resource, 1, AcceleratedClock(SPEED), POLL_S) as channel:
        assert isinstance(channel, SteppedChannel)
        assert emulator.channels[0].test_name.startswith("cyclerd-001-")
        (plate, plate_end), (rest, rest_end) = await run_steps(channel, PLATE_AND_REST.format(density=1))
        assert cell.limits.voltage_min_V == pytest.approx(-0.55)  # the window, 50 mV wider
        assert cell.limits.voltage_max_V == pytest.approx(3.05)
        assert cell.limits.current_max_A == pytest.approx(4 * 0.785e-3 * 1.05)
        assert plate_end.reason == "voltage_below"
        current = [i for batch in plate for i in batch.current_A]
        assert current == pytest.approx([-AREA_CM2 * 1e-3] * len(current))
        assert plate[-1].voltage_V[-1] < 0.3
        assert plate_end.progress.charge_As == pytest.approx(
            -AREA_CM2 * 1e-3 * plate_end.progress.t_s, rel=0.05
        )
        assert rest_end.reason == "duration"
        assert 600 <= rest_end.progress.t_s <= 600 + 2 * POLL_S
        assert all(i == 0 for batch in rest for i in batch.current_A)
        assert rest[-1].voltage_V[-1] == pytest.approx(cell.reading()[0], abs=0.003)  # the cell rests
        assert emulator.channels[0].summary() == {"RF1": mn.RESTING, "RF2": mn.NOT_ENDED, "Stat": mn.ACTIVE}
    assert not cell.on
    assert emulator.channels[0].stat == mn.AVAILABLE  # the test was stopped on the way out


async def test_two_channels_at_once_do_not_interfere(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, resource = cycler
    clock = AcceleratedClock(SPEED)

    async def on(number: int, density: float) -> list[tuple[list[Batch], StepEnd]]:
        async with open_cycler_channel(resource, number, clock, POLL_S) as channel:
            return await run_steps(channel, PLATE_AND_REST.format(density=density))

    one, three = await asyncio.gather(on(1, 1.0), on(3, 2.0))
    for steps, density in ((one, 1.0), (three, 2.0)):
        (plate, plate_end), (_, rest_end) = steps
        assert (plate_end.reason, rest_end.reason) == ("voltage_below", "duration")
        current = [i for batch in plate for i in batch.current_A]
        assert current == pytest.approx([-AREA_CM2 * 1e-3 * density] * len(current))
    # Twice the current reaches the cut-off in about half the time.
    assert three[0][1].progress.t_s < 0.75 * one[0][1].progress.t_s
    assert emulator.channels[1].step == 0
    assert not emulator.bank.channel(2).on
    assert all(channel.stat == mn.AVAILABLE for channel in emulator.channels)


async def test_a_cv_hold_goes_the_way_the_cells_voltage_says(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, resource = cycler
    hold = """
name: hold
cell: {{area: 0.785 cm^2}}
record: {{every: 30 s}}
steps:
  - cv: {{voltage: {volts} V, current_limit: 2 mA, until: {{duration: 10 min}}}}
"""
    async with open_cycler_channel(resource, 2, AcceleratedClock(SPEED), POLL_S) as channel:
        for volts, sign in ((1.8, 1.0), (1.2, -1.0)):  # the OCV is about 1.5 V
            ((batches, end),) = await run_steps(channel, hold.format(volts=volts))
            assert end.reason == "duration"
            assert batches[-1].voltage_V[-1] == pytest.approx(volts, abs=0.002)
            currents = np.concatenate([batch.current_A for batch in batches])
            assert np.all(np.abs(currents) <= 2e-3)
            assert np.all(sign * currents[1:] >= 0)  # charging up to, or discharging down to, the hold
            assert emulator.channels[1].mode == mn.REST  # the step is over: the channel rests


def test_survey_names_the_channels_that_run_someone_elses_test(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, resource = cycler
    pymacnet.ChannelInterface(
        pymacnet_config(emulator, 2, test_name="someone's")
    ).start_test_with_direct_control()

    async def check() -> None:
        async with open_cycler_channel(resource, 1, AcceleratedClock(SPEED), POLL_S):
            found = survey(resource, timeout_s=1.0)
            assert found.channels == 4
            assert found.busy == {2}
            assert found.identity.startswith("Maccor cyclerd emulator")
            with pytest.raises(InstrumentFault, match="that cyclerd did not start"):
                async with open_cycler_channel(resource, 2, AcceleratedClock(SPEED), POLL_S):
                    pass

    asyncio.run(check())
    assert emulator.channels[1].stat == mn.ACTIVE  # refused, and left alone
    assert emulator.channels[1].test_name == "someone's"


async def test_a_test_cyclerd_left_running_is_taken_over(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, resource = cycler
    left = {"Current": 1e-3, "Voltage": 3.0, "Power": 10, "Resistance": 0, "CurrentRange": 2, "ChMode": "C"}
    macnet(emulator.port, "start_direct", Chan=0, TestName="cyclerd-001-1700000000", **left)
    assert emulator.bank.channel(1).on  # a crashed host's test still charges the cell
    async with open_cycler_channel(resource, 1, AcceleratedClock(SPEED), POLL_S):
        assert not emulator.bank.channel(1).on  # reset, restarted at rest
        assert emulator.channels[0].test_name != "cyclerd-001-1700000000"


async def test_resources_channels_and_capabilities_are_checked(cycler: tuple[MaccorEmulator, str]) -> None:
    _, resource = cycler
    with pytest.raises(ResourceError):
        MaccorCycler("192.168.1.30:57570", 1)
    with pytest.raises(InstrumentFault, match="channels 1 to 4"):
        async with open_cycler_channel(resource, 5, AcceleratedClock(SPEED), POLL_S):
            pass
    library = importlib.resources.files("cyclerd.protocols") / "library"
    for name in ("plating_stripping.yaml", "formation.yaml", "cycling.yaml"):
        program = compile_protocol(loads((library / name).read_text(encoding="utf-8"), name))
        assert unmet_needs(program.needs(), CAPABILITIES, "a Maccor channel") == [], name


def test_requests_are_framed_by_their_json_and_bad_ones_answered(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, _ = cycler
    pretty = json.dumps(
        {"jsonrpc": "2.0", "method": "MacNet", "params": {"FClass": 4, "FNum": 7, "Chan": 1}, "id": 7},
        indent=4,
    )
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=2.0) as link:
        reader = link.makefile("rb")
        link.sendall(pretty[:20].encode())  # as pymacnet sends it, with no terminator, in two parts
        link.sendall(pretty[20:].encode())
        reply = json.loads(reader.readline())
        assert (reply["id"], reply["result"]["Chan"], reply["result"]["Stat"]) == (7, 1, mn.AVAILABLE)
        link.sendall(b"hello\r\n")
        assert json.loads(reader.readline())["error"]["code"] == mn.PARSE_ERROR
        link.sendall(json.dumps({"method": "MacNet", "params": {"FClass": 9, "FNum": 9}, "id": 8}).encode())
        assert json.loads(reader.readline())["error"]["code"] == mn.NO_SUCH_METHOD
        link.sendall(
            json.dumps({"method": "MacNet", "params": {"FClass": 4, "FNum": 7, "Chan": 4}, "id": 9}).encode()
        )
        assert json.loads(reader.readline())["error"]["code"] == mn.INVALID_PARAMS
        tricky = {"FClass": 6, "FNum": 9, "Chan": 0, "VarNum": 2, "Value": 1, "Note": 'a } " { in a string'}
        link.sendall(json.dumps({"method": "MacNet", "params": tricky, "id": 10}).encode())
        assert json.loads(reader.readline())["result"]["Result"] == mn.OK
    assert emulator.channels[0].variables == {2: 1.0}


def test_the_binary_port_rests_a_direct_mode_channel(cycler: tuple[MaccorEmulator, str]) -> None:
    emulator, _ = cycler
    charge = {"Current": 1e-3, "Voltage": 3.0, "Power": 10, "Resistance": 0, "CurrentRange": 2, "ChMode": "C"}
    macnet(emulator.port, "start_direct", Chan=1, TestName="Random", **charge)
    assert emulator.bank.channel(2).on
    header = struct.pack("<HHHH", 6, 8, 1, 18)  # FClass, FNum, Chan (from 0), the length of what follows
    with socket.create_connection(("127.0.0.1", emulator.binary_port), timeout=2.0) as link:
        link.sendall(header + struct.pack("<ffffBB", 0.0, 0.0, 0.0, 0.0, 4, ord("R")))
        assert link.recv(64) == struct.pack("<HHHH", 6, 8, 1, 1) + bytes([0])  # 0: OK
    assert not emulator.bank.channel(2).on
    assert emulator.channels[1].summary()["RF1"] == mn.RESTING


async def test_output_commands_keep_macnets_100_ms_apart() -> None:
    emulator = MaccorEmulator("mgagsn", 1, speed=1.0)  # real time: 100 ms is 100 ms
    with running(emulator) as port:
        charge = {"Current": 1e-4, "Voltage": 3.0, "Power": 10, "Resistance": 0, "CurrentRange": 2}
        link = mn.MacNetLink("test client", "127.0.0.1", port, 2.0)
        link.connect()
        assert link.call("start_direct", Chan=0, TestName="Random", ChMode="C", **charge)["Result"] == mn.OK
        too_fast = link.call("set_output", Chan=0, ChMode="D", **charge)["Result"]
        assert too_fast == mn.DIRECT_RESULTS[mn.TOO_FAST]
        assert link.call("reset", Chan=0)["Result"] == mn.OK
        link.close()
        cycler = MaccorCycler(f"tcp://127.0.0.1:{port}", 1)  # the real clock: it waits the 100 ms
        await cycler.open()
        await cycler.source_current(1e-4, 3.0)
        await cycler.source_current(-1e-4, 3.0)
        assert emulator.bank.channel(1).reading()[1] == pytest.approx(-1e-4)
        await cycler.close()


def test_cyclerd_emulate_maccor_answers_pymacnet() -> None:
    cyclerd = str(Path(sys.executable).with_name("cyclerd"))
    command = [cyclerd, "emulate", "maccor", "--channels", "8", "--port", "0", "--speed", "3600"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"127\.0\.0\.1:(\d+) \(JSON-RPC\), binary port (\d+)", line)
        assert found, line
        config = {
            "server_ip": "127.0.0.1",
            "json_msg_port": int(found[1]),
            "bin_msg_port": int(found[2]),
            "msg_buffer_size_bytes": 4096,
        }
        client = pymacnet.CyclerInterface(config)
        assert client.get_num_channels() == 8
        assert len(client.read_all_channel_statuses()) == 8
        assert client.read_channel_status(8)["Stat"] == mn.AVAILABLE
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
