"""An Arbin cycler's CTI server (MITS Pro's console interface) on a `CyclerBank`: many clients at
once, each channel a simulated cell, cyclerd's follow schedule run as drivers/arbin.py describes.

Installed schedules are FOLLOW_SCHEDULE and whatever else the emulator is given (those run as
rest); any other name is "Schedule name not found". The follow test starts at rest; a change of
MV_UD4 adopts MV_UD1..MV_UD3 (mode, setpoint, clamp) and MV_UD5..MV_UD7 (the channel's limits)
and restarts the step. A limit crossed, `ChannelFaults.trip`, or a command without limits ends
the test: status Unsafe, the reason as its exit condition. The bank's `Faults` act on the
transport: late replies (`delay_s`), replies with a broken header and length (`garble_next`),
every client's connection closed (`drop_connection`). `switches` logs, in the cycler's time,
when each channel's output went on or off. Channel-info requests are answered for one channel.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from cyclerd.drivers import arbin_messages as cti
from cyclerd.drivers.arbin import (
    DEFAULT_PORT,
    FOLLOW_SCHEDULE,
    MODE_CURRENT,
    MODE_REST,
    MODE_VOLTAGE,
    MV_COMMAND,
)
from cyclerd.simulators.cycler_bank import BankChannel, ChannelLimits, CyclerBank
from cyclerd.simulators.scpi_server import Faults, running
from cyclerd.simulators.smu_output import Drive
from cyclerd.simulators.tcp_clients import Clients

__all__ = ["DEFAULT_PORT", "ArbinEmulator", "running", "serve"]
log = logging.getLogger(__name__)

STOPPED_BY_HOST = "Stopped by CTI"
Switch = tuple[float, int, bool]  # (cycler time, channel from 1, output on)


@dataclass
class Test:
    """What MITS Pro knows of one channel's test; times are the cycler's clock."""

    schedule: str = ""  # assigned
    name: str = ""
    running: bool = False
    unsafe: bool = False
    exit_condition: str = ""
    mv: list[float] = field(default_factory=lambda: [0.0] * 16)  # MV_UD1..MV_UD16
    command: float = 0.0  # MV_UD4 when the step last restarted
    mode: int = MODE_REST
    started_s: float = 0.0
    ended_s: float | None = None
    step_started_s: float = 0.0
    charge0_As: float = 0.0  # the bank's step counters when the step restarted
    energy0_J: float = 0.0


class FollowChannel:
    """One channel as MITS Pro runs it: the assigned schedule, its test, the cell on the bank."""

    def __init__(self, bank: BankChannel, installed: frozenset[str], switches: list[Switch]) -> None:
        self.bank, self.installed, self.switches = bank, installed, switches
        self.test = Test()
        self._on = False

    def now(self) -> float:
        return self.bank.clock.now()

    def assign(self, schedule: str) -> int:
        self._follow()
        if self.test.running:
            return cti.ASSIGN_RUNNING
        if not schedule.strip():
            return cti.ASSIGN_EMPTY_NAME
        if schedule.casefold() not in self.installed:
            return cti.ASSIGN_NOT_FOUND
        self.test.schedule = schedule
        return cti.SUCCESS

    def start(self, name: str) -> int:
        self._follow()
        if self.test.running:
            return cti.START_RUNNING
        if not self.test.schedule:
            return cti.START_NO_SCHEDULE
        if not name.strip():
            return cti.START_NO_NAME
        self.bank.rest()
        self.test = Test(schedule=self.test.schedule, name=name, running=True, started_s=self.now())
        self._restart_step()
        return cti.SUCCESS

    def stop(self) -> int:
        self._follow()
        if self.test.running:
            self.bank.rest()
            self._end(STOPPED_BY_HOST, unsafe=False)
        return cti.SUCCESS

    def set_meta_variable(self, request: cti.SetMetaVariable) -> int:
        number = cti.MV_OF_META_CODE.get(request.meta_code)
        if number is None:
            return cti.SET_MV_NO_CODE
        if request.mv_type != 1 or request.value_type != 1:
            return cti.SET_MV_FAILED
        self._follow()
        if not self.test.running:
            return cti.SET_MV_NOT_RUNNING
        self.test.mv[number - 1] = request.value
        follows = self.test.schedule.casefold() == FOLLOW_SCHEDULE.casefold()
        if number == MV_COMMAND and request.value != self.test.command and follows:
            self._adopt()
        return cti.SUCCESS

    def status(self, index: int) -> cti.ChannelStatus:
        voltage, current = self.bank.reading()
        self._follow()
        test = self.test
        until = self.now() if test.running else test.ended_s if test.ended_s is not None else test.started_s
        charge_As = self.bank.charge_As - test.charge0_As
        energy_J = self.bank.energy_J - test.energy0_J
        if test.running:
            code = cti.REST if test.mode == MODE_REST else cti.CHARGE if current >= 0 else cti.DISCHARGE
        else:
            code = cti.UNSAFE if test.unsafe else cti.IDLE
        return cti.ChannelStatus(
            channels=1,
            channel=index,
            status=code,
            schedule=test.schedule,
            test_name=test.name,
            exit_condition=test.exit_condition,
            step_and_cycle="Step 1, Cycle 1" if test.name else "",
            test_time_s=until - test.started_s,
            step_time_s=until - test.step_started_s if test.name else 0.0,
            voltage_V=voltage,
            current_A=current,
            power_W=voltage * current,
            charge_Ah=max(charge_As, 0.0) / 3600,
            discharge_Ah=max(-charge_As, 0.0) / 3600,
            charge_Wh=max(energy_J, 0.0) / 3600,
            discharge_Wh=max(-energy_J, 0.0) / 3600,
        )

    def _adopt(self) -> None:
        """MV_UD4 changed: the step restarts with the command the meta variables now hold."""
        mode, setpoint, clamp, command, voltage_max, voltage_min, current_max = self.test.mv[:7]
        self.test.command = command
        if mode == MODE_REST:
            self.bank.rest()
        elif mode in (MODE_CURRENT, MODE_VOLTAGE):
            if current_max <= 0 or voltage_max <= voltage_min:
                self._trip("safety limits not set (MV_UD5 to MV_UD7)")
                return
            if clamp <= 0:
                self._trip("no clamp set (MV_UD3)")
                return
            self.bank.limits = ChannelLimits(voltage_max, voltage_min, current_max)
            self.bank.start(Drive(mode == MODE_CURRENT, setpoint, clamp))
        else:
            self._trip(f"MV_UD1 = {mode:g} is no mode (0 rest, 1 current, 2 voltage)")
            return
        self.test.mode = int(mode)
        self._restart_step()

    def _follow(self) -> None:
        """The channel's own safety may have turned the output off since it was last looked at."""
        test = self.test
        if test.running and test.mode != MODE_REST and not self.bank.on and self.bank.tripped is not None:
            self._end(self.bank.tripped, unsafe=True)
        self._note()

    def _trip(self, reason: str) -> None:
        self.bank.rest()
        self._end(reason, unsafe=True)

    def _end(self, why: str, unsafe: bool) -> None:
        self.test.running, self.test.unsafe, self.test.exit_condition = False, unsafe, why[:100]
        self.test.ended_s, self.test.mode = self.now(), MODE_REST
        self._note()

    def _restart_step(self) -> None:
        self.test.step_started_s = self.now()
        self.test.charge0_As, self.test.energy0_J = self.bank.charge_As, self.bank.energy_J
        self._note()

    def _note(self) -> None:
        if self.bank.on != self._on:
            self._on = self.bank.on
            self.switches.append((self.now(), self.bank.number, self._on))


@dataclass
class Session:
    logged_in: bool = False


class ArbinEmulator:
    """The cycler: its channels on a bank, its CTI server on 127.0.0.1."""

    def __init__(
        self,
        preset: str,
        channels: int,
        seed: int = 0,
        speed: float = 1.0,
        port: int = 0,
        *,
        schedules: tuple[str, ...] = (FOLLOW_SCHEDULE,),
        credentials: tuple[str, str] | None = None,  # None: any user name and password will do
        serial: str = "EMU-ARBIN-0001",
    ) -> None:
        self.bank = CyclerBank(preset, channels, seed, speed)
        self.faults: Faults = self.bank.faults
        self.switches: list[Switch] = []
        installed = frozenset(name.casefold() for name in (FOLLOW_SCHEDULE, *schedules))
        self.channels = [FollowChannel(channel, installed, self.switches) for channel in self.bank.channels]
        self.credentials = credentials
        self.identity = cti.LoginFeedback(
            cti.LOGIN_OK,
            serial=serial,
            nickname=f"cyclerd emulator ({preset})",
            location="127.0.0.1",
            version=1,
            channels=channels,
        )
        self.port = port
        self._clients = Clients(self.faults)

    async def start(self) -> int:
        """Listen on 127.0.0.1 (port 0: a free one); returns the port."""
        self.port = await self._clients.listen(self._serve, self.port)
        return self.port

    async def stop(self) -> None:
        await self._clients.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session()
        while (frame := await _next_frame(reader)) is not None:
            reply = self._answer(frame, session)
            if reply is None:
                if not session.logged_in:
                    return  # a client that has not logged in is shown the door
                continue
            if not await self._clients.reply(writer, reply, _garbled):
                return

    def _answer(self, frame: bytes, session: Session) -> bytes | None:
        """The reply to one request; None for none."""
        try:
            command = cti.command_of(frame)
            if command == cti.Login.COMMAND:
                return self._login(cti.decode(cti.Login, frame), session)
            if not session.logged_in:
                log.warning("a CTI request before login: closing the connection")
                return None
            return self._request(command, frame)
        except cti.CtiFormatError as exc:
            log.warning("unreadable CTI request: %s", exc)
            return None

    def _login(self, request: cti.Login, session: Session) -> bytes:
        wanted = self.credentials
        session.logged_in = wanted is None or (request.username, request.password) == wanted
        result = cti.LOGIN_OK if session.logged_in else cti.LOGIN_FAILED
        return cti.encode(self.identity if session.logged_in else cti.LoginFeedback(result))

    def _request(self, command: int, frame: bytes) -> bytes | None:
        match command:
            case cti.ChannelInfoRequest.COMMAND:
                info = cti.decode(cti.ChannelInfoRequest, frame)
                channel = self._channel(info.channel)
                if channel is None:
                    return cti.encode(cti.ChannelStatus(0, info.channel, cti.IDLE))
                return cti.encode(channel.status(info.channel))
            case cti.AssignSchedule.COMMAND:
                assign = cti.decode(cti.AssignSchedule, frame)
                channel = self._channel(assign.channel)
                code = cti.ASSIGN_NO_CHANNEL if channel is None else channel.assign(assign.schedule)
                return cti.encode(cti.AssignScheduleFeedback(assign.channel, code))
            case cti.StartSchedule.COMMAND:
                start = cti.decode(cti.StartSchedule, frame)
                channel = self._channel(start.channel)
                code = cti.START_NO_CHANNEL if channel is None else channel.start(start.test_name)
                return cti.encode(cti.StartScheduleFeedback(start.channel, code))
            case cti.StopSchedule.COMMAND:
                stop = cti.decode(cti.StopSchedule, frame)
                channel = self._channel(stop.channel)
                code = cti.STOP_NO_CHANNEL if channel is None else channel.stop()
                return cti.encode(cti.StopScheduleFeedback(stop.channel, code))
            case cti.SetMetaVariable.COMMAND:
                mv = cti.decode(cti.SetMetaVariable, frame)
                channel = self._channel(mv.channel)
                code = cti.SET_MV_FAILED if channel is None else channel.set_meta_variable(mv)
                return cti.encode(cti.SetMetaVariableFeedback(mv.channel, code))
        log.warning("CTI command 0x%08X is not emulated: no reply", command)
        return None

    def _channel(self, index: int) -> FollowChannel | None:
        return self.channels[index] if 0 <= index < len(self.channels) else None


def _garbled(reply: bytes) -> bytes:
    return bytes(b ^ 0xFF for b in reply[:12]) + reply[12:]  # its magic and length broken


async def _next_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next message, bytes before its header skipped; None at the end of the stream."""
    head, skipped = b"", 0
    try:
        while True:
            head += await reader.readexactly(cti.HEADER.size - len(head))
            at = head.find(cti.MAGIC_BYTES)
            if at == 0:
                try:
                    size = cti.frame_size(head)
                    break
                except cti.CtiFormatError:
                    at = -1  # a header with a broken length: look further
            keep = head[at:] if at > 0 else head[-(len(cti.MAGIC_BYTES) - 1) :]
            skipped, head = skipped + len(head) - len(keep), keep
        if skipped > cti.STRAY_TAIL:
            log.info("skipped %d bytes that were no CTI message", skipped)
        return head + await reader.readexactly(size - cti.HEADER.size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def serve(preset: str, port: int | None, speed: float, seed: int, channels: int) -> None:
    """`cyclerd emulate arbin`: serve until cancelled."""
    emulator = ArbinEmulator(preset, channels, seed, speed, DEFAULT_PORT if port is None else port)
    bound = await emulator.start()
    log.info(
        "Arbin CTI emulator: %d channel(s) of %s cells on 127.0.0.1:%d at %g x real time",
        channels,
        preset,
        bound,
        speed,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
