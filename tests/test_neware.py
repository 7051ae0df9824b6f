"""The Neware driver and the emulated BTS over real sockets: aurora-neware (with aurora-unicycler's
step files) against the emulator, the emulator's records, the driver's steps, the survey, and the
CLI emulator (faults: test_neware_faults).

The emulator runs at SPEED x real time: a step of minutes takes milliseconds of wall time.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aurora_neware import NewareAPI
from test_neware_steps import to_unicycler

from cyclerd.drivers import neware_wire as wire
from cyclerd.drivers.base import (
    INTERRUPT,
    SAFETY,
    Batch,
    InstrumentFault,
    StepEnd,
    StepProgress,
)
from cyclerd.drivers.clock import AcceleratedClock
from cyclerd.drivers.neware import CAPABILITIES, NewareChannel, open_cycler_channel, survey
from cyclerd.drivers.neware_steps import NewareStep, StepFile, StepType, program_step_file, to_xml
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.protocols.program import (
    CurrentCommand,
    CurrentVoltageCommand,
    EndConditions,
    ImpedanceSpec,
    RecordRule,
    RestCommand,
    SafetyLimits,
    StepCommand,
    SweepCommand,
    SweepSpec,
)
from cyclerd.simulators import neware_runner
from cyclerd.simulators.cycler_bank import BankChannel
from cyclerd.simulators.neware_emulator import NewareEmulator
from cyclerd.simulators.presets import make_cell
from cyclerd.simulators.scpi_server import running

SPEED = 3600.0
SEED = 7
I_A = 7.85e-4  # 1 mA/cm^2 on the 0.785 cm^2 pellet of the presets
LIMITS = SafetyLimits(voltage_min_V=-0.5, voltage_max_V=3.0, current_max_A=2 * I_A)
STEP: dict[str, Any] = {"index": 1, "label": "", "source": "steps[0]", "record": RecordRule(every_s=10.0)}
SMALL = """
name: small E1
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.5 V, voltage_max: 3 V, current_max: 2 mA/cm^2}
record: {every: 60 s}
steps:
  - rest: 10 min
  - plate: {current: 1 mA/cm^2, until: {duration: 20 min}}
  - strip: {current: 1 mA/cm^2, until: {voltage_above: 1.0 V, duration: 2 h}}
"""


@pytest.fixture
async def emulator() -> AsyncIterator[NewareEmulator]:
    device = NewareEmulator("mgagsn", channels=4, seed=SEED, speed=SPEED)
    await device.start()
    yield device
    await device.stop()


def channel(device: NewareEmulator, number: int, timeout_s: float = 2.0) -> NewareChannel:
    return NewareChannel("127.0.0.1", device.port, number, AcceleratedClock(SPEED), 1.0, timeout_s=timeout_s)


def opened(device: NewareEmulator, number: int) -> AbstractAsyncContextManager[NewareChannel]:
    """Cycler channel `number` as the daemon opens it."""
    return open_cycler_channel(f"tcp://127.0.0.1:{device.port}", number, AcceleratedClock(SPEED), 1.0)


def plate(end: EndConditions, current_A: float = -I_A) -> CurrentCommand:
    return CurrentCommand(**STEP, kind="plate", current_A=current_A, end=end)


def rest(duration_s: float) -> RestCommand:
    return RestCommand(**STEP, end=EndConditions(duration_s=duration_s))


async def run(
    where: NewareChannel, command: StepCommand, start: StepProgress | None = None
) -> tuple[Batch, StepEnd]:
    """The step's samples, joined, and its end."""
    start = start or StepProgress()
    batches: list[Batch] = []
    async for item in where.run(command, start, LIMITS):
        if isinstance(item, StepEnd):
            return joined(batches), item
        batches.append(item)
    raise AssertionError("no StepEnd")


def joined(batches: list[Batch]) -> Batch:
    columns = [
        np.concatenate([getattr(b, name) for b in batches])
        for name in ("t_s", "voltage_V", "current_A", "charge_As", "energy_J")
    ]
    return Batch(*columns)


# -- aurora-neware against the emulator -------------------------------------------------------------


def test_aurora_neware_runs_unicyclers_step_file_and_ours_on_the_emulated_cell(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "unicycler.xml", tmp_path / "cyclerd.xml"
    program = compile_protocol(loads(SMALL))
    theirs.write_text(to_unicycler(program)[0].to_neware_xml(sample_name="uc-cell"), encoding="utf-8")
    ours.write_text(to_xml(program_step_file(program).file), encoding="utf-8")
    device = NewareEmulator("mgagsn", channels=3, seed=SEED, speed=SPEED)
    with running(device) as port:
        api = NewareAPI("127.0.0.1", port)
        api.connect()
        try:
            assert list(api.channel_map) == ["1-1-1", "1-1-2", "1-1-3"]
            units = {(c["devtype"], c["devid"], c["subdevid"]) for c in api.channel_map.values()}
            assert units == {(27, 1, 1)}
            started = api.start(["1-1-1", "1-1-2"], ["uc-cell", "cyclerd-cell"], [theirs, ours])
            assert [s["start"] for s in started] == ["ok", "ok"]
            busy = {"1-1-1": "working", "1-1-2": "working", "1-1-3": "finish"}
            assert {k: v["status"] for k, v in api.getchlstatus().items()} == busy
            assert {k: v["workstatus"] for k, v in api.inquire().items()} == busy
            deadline = time.monotonic() + 10.0
            while any(api.inquire(p)[p]["workstatus"] == "working" for p in ("1-1-1", "1-1-2")):
                assert time.monotonic() < deadline, "the tests did not finish"
                time.sleep(0.05)
            data = {p: api.download(p, 0) for p in ("1-1-1", "1-1-2")}
            assert api.inquiredf("1-1-1")["1-1-1"]["count"] == len(data["1-1-1"]["seqid"])
            logged = [row["log_code"] for row in api.downloadlog("1-1-2")]
            assert logged == [wire.TEST_STARTED, wire.TEST_FINISHED]
            began = {n: device.slots[n - 1].test.started_s for n in (1, 2)}  # type: ignore[union-attr]
        finally:
            api.disconnect()
    for number, pipeline in ((1, "1-1-1"), (2, "1-1-2")):
        records = data[pipeline]
        assert records["seqid"] == list(range(1, len(records["seqid"]) + 1))
        kinds = [k for n, k in enumerate(records["steptype"]) if n == 0 or k != records["steptype"][n - 1]]
        assert kinds == ["rest", "dc", "cc"]
        follows_the_cell(records, seed=SEED + number - 1, idle_s=began[number])


def follows_the_cell(records: dict[str, list[float]], seed: int, idle_s: float) -> None:
    """The downloaded voltages are the preset cell's under the downloaded currents: a twin of the
    emulator's cell, taken through the same steps, says the same within its noise (1 mV)."""
    twin = make_cell("mgagsn", seed=seed)
    twin.advance_at_current(0.0, idle_s)
    step = np.array(records["stepid"])
    for number in (1, 2, 3):
        mine = step == number
        t = np.array(records["testtime"])[mine] / 1000.0
        current = float(np.array(records["curr"])[mine][-1])
        voltage = np.array(records["volt"])[mine]
        assert np.abs(twin.voltage_at_current(current, np.maximum(t, 1e-9)) - voltage).max() < 5e-3
        assert np.allclose(np.array(records["curr"])[mine], current)
        twin.advance_at_current(current, float(t[-1]))
    strip = step == 3
    assert np.array(records["volt"])[strip][-1] == pytest.approx(1.0, abs=2e-3)  # its cut-off
    assert np.array(records["cap"])[step == 2][-1] == pytest.approx(I_A * 1200 / 3600, rel=1e-6)  # Ah


# -- the emulator's records --------------------------------------------------------------------------


class LoadedClock(AcceleratedClock):
    """The clock of an emulator on a loaded machine: every look at it finds it `lag_s` later (a
    tick's work, or another process holding the CPU, between two looks)."""

    def __init__(self, lag_s: float) -> None:
        super().__init__(1.0)
        self.lag_s, self.t_s = lag_s, 0.0

    def now(self) -> float:
        self.t_s += self.lag_s
        return self.t_s


def test_the_bts_records_every_interval_however_late_its_runner_looks() -> None:
    """Regression: the runner let the channel's reading move the cell on past its last sample, so
    a runner that woke late lost the records of that stretch (a silent hole in the data)."""
    cell = BankChannel(1, make_cell("mgagsn", seed=SEED), LoadedClock(lag_s=30.0))
    strip = NewareStep(StepType.CC_CHARGE, current_A=I_A, time_s=1200.0)
    file = StepFile((strip, NewareStep(StepType.END)), record=RecordRule(every_s=10.0))
    test = neware_runner.TestRun(cell, file, 1, "cyclerd", CAPABILITIES.current_max_A)
    while test.tick() is not None:
        pass
    assert test.status == wire.FINISH
    t = np.array([r.step_s for r in test.records])
    assert t[-1] == pytest.approx(1200.0)
    assert np.diff(t).max() <= 10.0 + 1e-9, f"holes at {t[:-1][np.diff(t) > 10.0 + 1e-9]} s"
    assert test.records[-1].capacity_As == pytest.approx(I_A * 1200.0, rel=1e-9)


# -- the driver --------------------------------------------------------------------------------------


async def test_a_plating_step_to_its_cut_off_then_a_rest(emulator: NewareEmulator) -> None:
    async with opened(emulator, 1) as ch:
        assert ch.name.endswith("channel 1 (1-1-1)")
        cc, cc_end = await run(ch, plate(EndConditions(voltage_below_V=0.3, duration_s=3600.0)))
        bts = emulator.slots[0].test
        assert bts is not None
        at_rest, rest_end = await run(ch, rest(600.0))
    assert cc_end.reason == "voltage_below"
    assert cc.voltage_V[-1] == pytest.approx(0.3, abs=2e-3)
    assert (cc.voltage_V[:-1] > 0.3).all()
    assert np.allclose(cc.current_A, -I_A)
    assert np.allclose(cc.charge_As, -I_A * cc.t_s, rtol=1e-6, atol=1e-12)  # the BTS's capacity, signed
    assert np.allclose(np.diff(cc.t_s)[:-1], 10.0)  # every 10 s, and the cut-off between two
    # The batches are what the BTS recorded, value for value.
    assert np.allclose(cc.voltage_V, [r.voltage_V for r in bts.records], rtol=1e-9)
    assert np.allclose(cc.t_s, [r.step_s for r in bts.records], atol=1e-3)
    assert cc_end.progress == StepProgress(cc.t_s[-1], cc.charge_As[-1], cc.energy_J[-1])
    assert rest_end.reason == "duration"
    assert rest_end.progress.t_s == pytest.approx(600.0, abs=1e-3)
    assert (at_rest.current_A == 0).all()
    assert at_rest.voltage_V[0] > cc.voltage_V[-1]  # the plating overpotential is gone at rest
    assert emulator.slots[0].status == wire.FINISH  # the rest's file ran to its end step


async def test_the_files_protection_stops_the_test_at_the_first_point_beyond_it(
    emulator: NewareEmulator,
) -> None:
    tight = SafetyLimits(voltage_min_V=0.2, voltage_max_V=3.0, current_max_A=2 * I_A)
    async with opened(emulator, 1) as ch:
        items = [
            item async for item in ch.run(plate(EndConditions(voltage_below_V=0.0)), StepProgress(), tight)
        ]
    end = items[-1]
    assert isinstance(end, StepEnd)
    assert (end.reason, end.detail) == (
        SAFETY,
        "the cycler stopped the step: protect, voltage lower limit protection",
    )
    assert emulator.slots[0].status == wire.PROTECT
    test = emulator.slots[0].test
    assert test is not None
    assert re.fullmatch(r"voltage 0\.1\d+ V below the safety limit 0\.2 V", test.why)
    assert emulator.bank.channel(1).on is False  # the output is off


async def test_two_channels_run_their_own_steps_at_once(emulator: NewareEmulator) -> None:
    one, two = channel(emulator, 1), channel(emulator, 2)
    await one.open()
    await two.open()
    try:
        (a, a_end), (b, b_end) = await asyncio.gather(
            run(one, plate(EndConditions(voltage_below_V=0.3, duration_s=3600.0))),
            run(two, plate(EndConditions(duration_s=300.0), current_A=-2 * I_A)),
        )
    finally:
        await one.close()
        await two.close()
    assert (a_end.reason, b_end.reason) == ("voltage_below", "duration")
    assert np.allclose(a.current_A, -I_A)
    assert np.allclose(b.current_A, -2 * I_A)
    assert b.charge_As[-1] == pytest.approx(-2 * I_A * 300.0)


async def test_a_cccv_step_holds_its_voltage_until_the_current_floor(emulator: NewareEmulator) -> None:
    floor = EndConditions(current_below_A=I_A / 20, duration_s=7200.0)
    strip = CurrentVoltageCommand(**STEP, current_A=I_A, voltage_V=0.5, end=floor)
    async with opened(emulator, 2) as ch:
        await run(ch, plate(EndConditions(duration_s=600.0)))  # Li to strip
        samples, end = await run(ch, strip)
    assert end.reason == "current_below"
    held = samples.voltage_V >= 0.5 - 1e-6
    assert held.any()
    assert np.allclose(samples.current_A[~held], I_A)  # constant current until the voltage...
    assert np.allclose(samples.voltage_V[held], 0.5)  # ... then held there
    # The first sample below the floor ends it; the cell's current noise is ~8 % at this level.
    assert 0.7 * I_A / 20 < samples.current_A[-1] <= I_A / 20
    assert (samples.current_A[held][:-1] > I_A / 20).all()
    assert (np.diff(samples.current_A[held]) < 0).mean() > 0.8  # the current tapers


async def test_a_step_paused_and_taken_up_again_runs_what_was_left_of_it(emulator: NewareEmulator) -> None:
    command = plate(EndConditions(charge_As=0.5))
    async with opened(emulator, 3) as ch:
        paused = [item async for item in ch.run(command, StepProgress(), LIMITS, pause_at_s=400.0)][-1]
        assert isinstance(paused, StepEnd)
        samples, end = await run(ch, command, paused.progress)
    assert paused.reason == INTERRUPT
    assert paused.progress.t_s == pytest.approx(400.0, abs=1e-3)
    assert paused.progress.charge_As == pytest.approx(-I_A * 400.0, rel=1e-6)
    assert end.reason == "charge"
    assert samples.t_s[0] == pytest.approx(400.0, abs=1e-3)
    assert end.progress.charge_As == pytest.approx(-0.5, rel=1e-6)
    assert end.progress.t_s == pytest.approx(0.5 / I_A, abs=0.01)


async def test_ends_a_step_file_cannot_say_are_watched_on_the_records(emulator: NewareEmulator) -> None:
    async with opened(emulator, 1) as ch:
        _, end = await run(ch, plate(EndConditions(dvdt_below_V_per_s=1e-5, duration_s=7200.0)))
        assert emulator.slots[0].status == wire.STOP  # the host stopped the BTS's test
    assert end.reason == "dvdt_below"
    assert 60.0 <= end.progress.t_s < 7200.0


async def test_eis_and_sweeps_are_not_neware_steps(emulator: NewareEmulator) -> None:
    assert not {"eis", "sweep"} & CAPABILITIES.kinds
    sweep = SweepCommand(**STEP, end=EndConditions(), spec=SweepSpec(1.0, (0.0, 1.0), 1e-3, 1))
    async with opened(emulator, 1) as ch:
        with pytest.raises(NotImplementedError, match="sweep"):
            await run(ch, sweep)
        with pytest.raises(NotImplementedError, match="impedance"):
            await ch.impedance(ImpedanceSpec(1e5, 1.0, 10, 0.01, False, None))


# -- taking a channel, surveying the cycler ------------------------------------------------------------


async def ask(device: NewareEmulator, request: bytes) -> list[wire.Row]:
    reader, writer = await asyncio.open_connection("127.0.0.1", device.port)
    try:
        writer.write(request)
        frames = wire.Frames()
        while not (messages := frames.feed(await reader.read(65536))):
            pass
        return wire.rows(wire.parse(messages[0]))
    finally:
        writer.close()


async def start_elsewhere(device: NewareEmulator, number: int, barcode: str, folder: Path) -> None:
    """Another client starts a long rest on channel `number`."""
    file = folder / f"rest{number}.xml"
    program = compile_protocol(loads(SMALL.replace("rest: 10 min", "rest: 100 h")))
    file.write_text(to_xml(program_step_file(program).file), encoding="utf-8")
    request = wire.start_request(device.slots[number - 1].address, str(file), barcode, str(folder))
    assert (await ask(device, request))[0][1] == "ok"


async def test_the_survey_and_taking_a_channel_tell_cyclerds_tests_from_others(
    emulator: NewareEmulator, tmp_path: Path
) -> None:
    await start_elsewhere(emulator, 3, "someone's cell", tmp_path)
    await start_elsewhere(emulator, 4, "cyclerd-step3", tmp_path)  # ours, left running
    found = await asyncio.to_thread(survey, f"tcp://127.0.0.1:{emulator.port}", 2.0)
    assert (found.channels, found.busy) == (4, frozenset({3}))
    assert found.identity.startswith("Neware BTS, server 8.0")
    with pytest.raises(InstrumentFault, match="that cyclerd did not start"):
        await channel(emulator, 3).open()
    assert emulator.slots[2].status == wire.WORKING  # left alone
    mine = channel(emulator, 4)
    await mine.open()  # a test cyclerd left running is stopped
    assert emulator.slots[3].status == wire.STOP
    await mine.close()
    with pytest.raises(InstrumentFault, match="channels 1 to 4"):
        await channel(emulator, 5).open()


# -- the CLI's emulator ------------------------------------------------------------------------------------


def test_cyclerd_emulate_neware_answers_aurora_neware() -> None:
    cyclerd = str(Path(sys.executable).with_name("cyclerd"))
    args = [cyclerd, "emulate", "neware", "--channels", "8", "--port", "0", "--speed", "3600"]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, process.kill)
    watchdog.start()
    try:
        assert process.stderr is not None
        lines = iter(process.stderr.readline, "")
        found = next(
            filter(None, (re.search(r"listening on 127\.0\.0\.1:(\d+)", line) for line in lines)), None
        )
        assert found, "the emulator did not say where it listens"
        with NewareAPI("127.0.0.1", int(found[1])) as api:
            assert len(api.channel_map) == 8
            assert {s["workstatus"] for s in api.inquire().values()} == {"finish"}
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(10)
