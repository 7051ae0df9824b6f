"""An emulated Neware cycler behind its BTS 8.0 API (`cyclerd emulate neware`): N channels of a
`CyclerBank`, each running the step files clients start on it (ours, aurora-unicycler's), with
the data, status and logs the BTS keeps; several clients at once, as on a BTS PC.

Wire choices where the captures say nothing: the channels are device 1 of type 27, eight a unit
(sub-device 1, 2, ...); a start names the step file by its path on this machine, as aurora-neware
sends it; a test's data stays for the last TESTS_KEPT tests of a channel; a stop answers "false"
on a channel with nothing running, and the download replies keep the BTS's "donwload" spelling.
Faults: the bank's (`faults`: late replies, broken XML, the link dropped for every client) and
each channel's (`bank.channel(n).faults.trip`: the channel stops in "protect").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cyclerd.drivers import neware_wire as wire
from cyclerd.drivers.neware import CAPABILITIES
from cyclerd.drivers.neware_stepfile import StepFile, StepFileError, StepType, parse_step_file
from cyclerd.simulators.cycler_bank import BankChannel, CyclerBank
from cyclerd.simulators.neware_runner import CCCV, CV, Record, TestRun
from cyclerd.simulators.scpi_server import Faults, running
from cyclerd.simulators.tcp_clients import Clients

__all__ = ["DEFAULT_PORT", "NewareEmulator", "running", "serve"]
log = logging.getLogger(__name__)

DEFAULT_PORT = 502
DEVTYPE, DEVID, PER_UNIT = 27, 1, 8
SERVER_VERSION = "8.0.0.478 (cyclerd emulator)"
CLIENT_VERSION = "BTS Client 8.0.0.478 (cyclerd emulator)"
TESTS_KEPT = 16


@dataclass
class Slot:
    """One channel: its address on the wire, its cell and output stage, and its tests."""

    address: wire.Address
    bank: BankChannel
    tests: dict[int, TestRun] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @property
    def test(self) -> TestRun | None:
        """The latest test, running or over."""
        return next(reversed(self.tests.values()), None)

    @property
    def status(self) -> str:
        return wire.FINISH if self.test is None else self.test.status


class NewareEmulator:
    """The BTS API server over a bank of `channels` simulated cells, on 127.0.0.1:`port`."""

    def __init__(
        self, preset: str = "mgagsn", channels: int = 8, seed: int = 0, speed: float = 1.0, port: int = 0
    ) -> None:
        self.bank = CyclerBank(preset, channels, seed, speed)
        self.faults: Faults = self.bank.faults
        self.slots = [
            Slot(
                wire.Address("127.0.0.1", DEVTYPE, DEVID, 1 + n // PER_UNIT, 1 + n % PER_UNIT),
                self.bank.channel(n + 1),
            )
            for n in range(channels)
        ]
        self.port = port
        self.origin = dt.datetime.now()  # the wall date of emulator time 0, for the records' atime
        self._next_test = 1
        self._clients = Clients(self.faults)
        self.commands: dict[str, Callable[[ET.Element], bytes]] = {
            "connect": lambda _: wire.reply("connect", "<result>ok</result>"),
            "getdevinfo": self._getdevinfo,
            "getchlstatus": lambda root: self._each(root, "status", lambda slot: slot.status, reservepause=1),
            "inquire": self._inquire,
            "inquiredf": self._inquiredf,
            "start": self._start,
            "stop": self._stop,
            "download": self._download,
            "downloadlog": self._downloadlog,
            "clearflag": lambda root: self._each(root, "clearflag", lambda slot: "ok"),
            "light": lambda root: self._each(root, "light", lambda slot: "ok"),
        }

    # -- serving -----------------------------------------------------------------------------------

    async def start(self) -> int:
        self.port = await self._clients.listen(self._serve, self.port)
        return self.port

    async def stop(self) -> None:
        runs = [slot.task for slot in self.slots if slot.task is not None]
        for task in runs:
            task.cancel()
        if runs:
            await asyncio.wait(runs, timeout=2.0)
        await self._clients.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frames = wire.Frames()
        while data := await reader.read(65536):
            for message in frames.feed(data):
                if not await self._clients.reply(writer, self.handle(message), broken):
                    return

    def handle(self, message: str) -> bytes:
        """One request -> its framed reply."""
        try:
            root = wire.parse(message)
            command = wire.command_of(root)
        except wire.WireError as exc:
            return wire.reply("error", wire.element("result", {}, f"unreadable request: {exc}"))
        handler = self.commands.get(command)
        if handler is None:
            return wire.reply(command, wire.element("result", {}, f"unknown command {command}"))
        try:
            return handler(root)
        except wire.WireError as exc:
            return wire.reply(command, wire.element("result", {}, f"bad request: {exc}"))

    # -- commands -----------------------------------------------------------------------------------

    def _slot(self, attributes: dict[str, str]) -> Slot | None:
        return next((slot for slot in self.slots if slot.address.matches(attributes)), None)

    def _each(self, root: ET.Element, tag: str, answer: Callable[[Slot], str], **extra: object) -> bytes:
        """A listed command: one reply element per channel asked about ("false" for no channel)."""
        items = []
        for attributes, _ in wire.rows(root, tag=tag):
            slot = self._slot(attributes)
            where = {k: attributes.get(k, "") for k in ("ip", "devtype", "devid", "subdevid", "chlid")}
            items.append(wire.element(tag, where | extra, "false" if slot is None else answer(slot)))
        return wire.reply(wire.command_of(root), wire.listing(items))

    def _getdevinfo(self, root: ET.Element) -> bytes:
        server = wire.element(
            "server", {"ip": "127.0.0.1", "port": 3306, "version": SERVER_VERSION, "devCount": 1}
        )
        channels = [
            wire.element("channel", {**_where(slot.address), "Channelid": slot.address.chlid}, "true")
            for slot in self.slots
        ]
        return wire.reply(
            "getdevinfo",
            wire.element("client", {"version": CLIENT_VERSION}),
            f'<serverip count="1">{server}</serverip>',
            wire.listing(channels, "middle"),
        )

    def _inquire(self, root: ET.Element) -> bytes:
        items = []
        for attributes, _ in wire.rows(root, tag="inquire"):
            slot = self._slot(attributes)
            if slot is not None:
                items.append(wire.element("inquire", self._live(slot)))
        return wire.reply("inquire", wire.listing(items))

    def _live(self, slot: Slot) -> dict[str, object]:
        """What inquire says of a channel: its latest test's state and the latest point."""
        a, test = slot.address, slot.test
        values: dict[str, object] = {"dev": f"{a.devtype}-{a.devid}-{a.subdevid}-{a.chlid}-0", "cycle_id": 1}
        if test is not None and test.status == wire.WORKING:
            step_s, v, i = test.last
            capacity_As, energy_J = test.counted
            values.update(cycle_id=test.cycle, step_id=test.number, step_type=test.step.word)
        else:
            v, i = slot.bank.reading()
            step_s, capacity_As, energy_J = 0.0, 0.0, 0.0
            values.update(step_type="--")
        total_s = (
            0.0 if test is None or test.status != wire.WORKING else self.bank.clock.now() - test.started_s
        )
        values.update(
            workstatus=slot.status,
            barcode="" if test is None else test.barcode,
            current=i,
            voltage=v,
            capacity=capacity_As / 3600,
            energy=energy_J / 3600,
            totaltime=total_s,
            relativetime=step_s,
            open_or_close=0,
            log_code=0 if test is None or test.status == wire.FINISH else test.log_code,
        )
        return values

    def _inquiredf(self, root: ET.Element) -> bytes:
        items = []
        for attributes, _ in wire.rows(root, tag="chl"):
            slot = self._slot(attributes)
            if slot is None:
                continue
            test = slot.test
            where = {**_unit(slot.address), "testid": 0 if test is None else test.test_id}
            count = 0 if test is None else len(test.records)
            items.append(
                wire.element("chl", {**where, "count": count}, str(slot.status != wire.WORKING).lower())
            )
        return wire.reply("inquiredf", wire.listing(items))

    def _start(self, root: ET.Element) -> bytes:
        return self._each(root, "start", lambda slot: "ok" if self._begin(slot, root) else "false")

    def _begin(self, slot: Slot, root: ET.Element) -> bool:
        """Start the step file the request names for `slot`; False (and why, in the log) if not."""
        asked = (row for row in wire.rows(root, tag="start") if slot.address.matches(row[0]))
        attributes, path = next(asked, ({}, ""))
        if slot.status == wire.WORKING:
            log.warning("channel %s: start refused: a test is running", slot.address.key)
            return False
        try:
            file = parse_step_file(Path(path).read_text(encoding="utf-8"))
        except (OSError, StepFileError) as exc:
            log.warning("channel %s: start refused: %s", slot.address.key, exc)
            return False
        if (why := problem(file)) is not None:
            log.warning("channel %s: start refused: %s", slot.address.key, why)
            return False
        test = TestRun(
            slot.bank, file, self._next_test, attributes.get("barcode", ""), CAPABILITIES.current_max_A
        )
        self._next_test += 1
        slot.tests[test.test_id] = test
        while len(slot.tests) > TESTS_KEPT:
            del slot.tests[next(iter(slot.tests))]
        slot.task = asyncio.get_running_loop().create_task(test.run())
        return True

    def _stop(self, root: ET.Element) -> bytes:
        def stop(slot: Slot) -> str:
            test = slot.test
            if test is None or test.status != wire.WORKING:
                return "false"
            if slot.task is not None:
                slot.task.cancel()
            test.stop()
            return "ok"

        return self._each(root, "stop", stop)

    def _asked(self, root: ET.Element) -> tuple[Slot | None, TestRun | None, dict[str, str]]:
        node = root.find("download")
        if node is None:
            raise wire.WireError("no <download> element")
        slot = self._slot(dict(node.attrib))
        if slot is None:
            return None, None, dict(node.attrib)
        wanted = int(wire.number(node.attrib, "testid"))
        test = slot.test if wanted == 0 else slot.tests.get(wanted)
        return slot, test, dict(node.attrib)

    def _download(self, root: ET.Element) -> bytes:
        _, test, asked = self._asked(root)
        start, count = int(wire.number(asked, "startpos")), int(wire.number(asked, "count"))
        chosen = [] if test is None else test.records[max(start, 1) - 1 : max(start, 1) - 1 + count]
        head = {**asked, "testid": 0 if test is None else test.test_id}
        rows = [self._data(max(start, 1) + k, record) for k, record in enumerate(chosen)]
        return wire.reply("donwload", wire.element("download", head), wire.listing(rows))

    def _data(self, seqid: int, r: Record) -> str:
        when = (self.origin + dt.timedelta(seconds=r.t_s)).strftime("%Y-%m-%d %H:%M:%S")
        return wire.element(
            "data",
            {
                "seqid": seqid,
                "stepid": r.step,
                "cycleid": r.cycle,
                "steptype": r.word,
                "testtime": round(r.step_s * 1000, 1),
                "atime": when,
                "volt": r.voltage_V,
                "curr": r.current_A,
                "cap": r.capacity_As / 3600,
                "eng": r.energy_J / 3600,
            },
        )

    def _downloadlog(self, root: ET.Element) -> bytes:
        _, test, asked = self._asked(root)
        entries = [] if test is None else test.log
        rows = [
            wire.element(
                "data",
                {
                    "seqid": seq,
                    "log_code": code,
                    "atime": (self.origin + dt.timedelta(seconds=t)).isoformat(" ", "seconds"),
                },
            )
            for seq, code, t in entries
        ]
        head = {**asked, "testid": 0 if test is None else test.test_id, "log_lever": 0}
        return wire.reply("donwloadlog", wire.element("download", head), wire.listing(rows))


def problem(file: StepFile) -> str | None:
    """Why the emulated BTS will not start `file` (None: it will)."""
    for number, step in enumerate(file.steps, start=1):
        if step.kind in CV | CCCV and step.voltage_V is None:
            return f"step {number}: a constant-voltage step without its voltage (Volt)"
        if step.kind not in CV | {StepType.REST, StepType.CYCLE, StepType.END} and not step.current_A:
            return f"step {number}: a constant-current step without its current (Curr)"
        ends = (step.time_s, step.stop_voltage_V, step.stop_current_A, step.capacity_As)
        if step.kind not in {StepType.CYCLE, StepType.END} and all(x is None for x in ends):
            return f"step {number}: a {step.word} step that never ends (no limit)"
    return None


def _unit(a: wire.Address) -> dict[str, object]:
    return {"devtype": a.devtype, "devid": a.devid, "subdevid": a.subdevid, "chlid": a.chlid}


def _where(a: wire.Address) -> dict[str, object]:
    return {"ip": a.ip, "devtype": a.devtype, "devid": a.devid, "subdevid": a.subdevid}


def broken(answer: bytes) -> bytes:
    """The reply cut off halfway, its terminator kept: a message that is not well-formed XML."""
    body = answer[: -len(wire.TERMINATOR)]
    return body[: len(body) // 2] + wire.TERMINATOR.encode()


async def serve(preset: str, port: int | None, speed: float, seed: int, channels: int) -> None:
    """Serve until cancelled (`cyclerd emulate neware`); port None: the BTS API's own, 502."""
    emulator = NewareEmulator(preset, channels, seed, speed, DEFAULT_PORT if port is None else port)
    bound = await emulator.start()
    log.info(
        "Neware BTS API emulator: %d channels of %s cells at %gx real time, listening on 127.0.0.1:%d",
        channels,
        preset,
        speed,
        bound,
    )
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await emulator.stop()
