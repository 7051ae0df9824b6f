"""Arbin cyclers (MITS Pro) over CTI: one cyclerd channel drives one Arbin channel, software-stepped
through meta variables.

CTI cannot set a current. It logs in, reads channel status, assigns a schedule, starts and stops
a test, and sets a running test's meta variables. So the lab installs one schedule on the Arbin
PC, FOLLOW_SCHEDULE, once; cyclerd assigns it and starts the test once, then every step sets the
meta variables and every reading is a channel status (the software stepper, `SteppedChannel`,
checks end conditions and safety on each one).

What the schedule "cyclerd_follow.sdx" must do (build it in MITS Pro's schedule editor):
- One step, "follow". It sources what MV_UD1 says: 0 rest (open circuit); 1 current MV_UD2 (A)
  with the voltage clamped at ±MV_UD3 (V), a CCCV control whose CV level is the clamp; 2 voltage
  MV_UD2 (V) with the current clamped at ±MV_UD3 (A).
- It takes MV_UD1..MV_UD3 up only when MV_UD4, a command number, changes: a step limit
  "MV_UD4 <> its value at step start: go to step 1" restarts the step, so a half-written command
  (meta variables are set one at a time) is never sourced, and step time, charge and discharge
  capacity and energy count from zero for every cyclerd step.
- The channel's own safety: step limits end the test as unsafe when the voltage is above MV_UD5
  or below MV_UD6, or |current| above MV_UD7, and when a command other than rest comes while
  those are unset (MV_UD7 <= 0 or MV_UD5 <= MV_UD6). cyclerd sets them, a little beyond the
  protocol's safety limits, before each command that turns the output on.
- No other end: the test runs until cyclerd stops it (on the way out, after a rest command).

Credentials come from ARBIN_CTI_USERNAME and ARBIN_CTI_PASSWORD in the environment (the names
pycti-arbin's .env uses). All I/O of a channel runs in one worker thread, as for the 2450.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from cyclerd.drivers import arbin_messages as cti
from cyclerd.drivers.arbin_link import CtiLink, credentials
from cyclerd.drivers.base import (
    Capabilities,
    Channel,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentFault,
    InstrumentGarbled,
    InstrumentTimeout,
    Reading,
)
from cyclerd.drivers.clock import Clock
from cyclerd.drivers.cycler import CyclerSurvey, ResourceError, host_and_port
from cyclerd.drivers.stepper import SteppedChannel
from cyclerd.protocols.program import SafetyLimits

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_PORT = 9031  # MITS Pro's CTI port (pycti-arbin's documentation also names 7031)
FOLLOW_SCHEDULE = "cyclerd_follow.sdx"

# The follow schedule's meta variables (MV_UDn) and its modes.
MV_MODE, MV_SETPOINT, MV_CLAMP, MV_COMMAND, MV_VOLTAGE_MAX, MV_VOLTAGE_MIN, MV_CURRENT_MAX = range(1, 8)
MODE_REST, MODE_CURRENT, MODE_VOLTAGE = 0, 1, 2
COMMANDS = 1_000_000  # MV_UD4 counts 1..COMMANDS and wraps: exact in a 32-bit float

# An Arbin LBT-class channel: ±5 A, and the bipolar ±5 V voltage range, not 0-5 V, because a
# half-cell's plating drives the seed electrode below 0 V vs Li. A lab whose channels differ
# edits these numbers; runs are checked against them before the first step.
CAPABILITIES = Capabilities(
    kinds=frozenset({"rest", "cc", "plate", "strip", "cv", "cccv"}),
    current_max_A=5.0,
    voltage_range_V=(-5.0, 5.0),
)
# The channel's own limits sit this far beyond the protocol's, so the stepper's check (on the
# same reading) ends the step first and the Arbin's limit is the backstop when the host is away.
LIMIT_MARGIN_V = 0.05
LIMIT_MARGIN_CURRENT = 0.05  # fraction of the current limit

CLAMP_ENGAGED_V = 1e-3
TRANSIENT = (InstrumentTimeout, InstrumentDisconnected, InstrumentGarbled)


class Arbin:
    """One channel of an Arbin cycler over its own CTI connection; implements SourceMeasure."""

    def __init__(self, host: str, port: int, cycler_channel: int, timeout_s: float = 2.0) -> None:
        if cycler_channel < 1:
            raise ResourceError(f"Arbin channels are numbered from 1, not {cycler_channel}")
        self.cycler_channel = cycler_channel
        self.index = cycler_channel - 1  # CTI counts channels from 0
        self.safety = SafetyLimits()  # the running step's, kept before it (KeepsSafety)
        self.link = CtiLink(
            f"Arbin channel {cycler_channel} at {host}:{port}", host, port, timeout_s, credentials()
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"arbin-{cycler_channel}")
        self._test = False  # cyclerd's test runs on the channel, as far as cyclerd knows
        self._command = 0  # MV_UD4 as last written
        self._resync = False  # the channel's command number is not known (a test taken over)
        self._written: dict[int, float] = {}  # meta variables the channel holds, as cyclerd wrote them
        self._mode, self._clamp = MODE_REST, 0.0

    @property
    def name(self) -> str:
        return self.link.name

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def keep_safety(self, limits: SafetyLimits) -> None:
        """The next step's safety window: set on the cycler before its output turns on."""
        self.safety = limits

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Log in, check the channel exists and runs nobody else's test; a test of cyclerd's
        own left running (a host that crashed) is put to rest. The link is released on failure."""
        try:
            await self._call(self._open)
        except BaseException:
            await self._call(self.link.close)
            self._executor.shutdown(wait=False)
            raise

    def _open(self) -> None:
        self._connect()
        status = self._status()
        if status.running:
            self._adopt(status)
            self._rest()

    async def reopen(self) -> None:
        """A fresh link after a dropped one. An Arbin goes on running the test with the last
        command while its host is away, so the channel is put to rest at once."""
        await self._call(self._reopen)
        log.info("%s: reconnected; channel at rest", self.name, extra={"kind": "reconnect"})

    def _reopen(self) -> None:
        self.link.close()
        self._open()

    async def close(self) -> None:
        """Rest (through a new link if the old one failed), stop the test whatever happened,
        release the link."""
        try:
            try:
                await self.output_off()
            except TRANSIENT:
                await self.reopen()
            finally:
                await self._call(self._stop_test)
        finally:
            await self._call(self.link.close)
            self._executor.shutdown(wait=False)

    # -- SourceMeasure -------------------------------------------------------------------

    async def source_current(self, current_A: float, voltage_limit_V: float) -> None:
        await self._call(self._source, MODE_CURRENT if current_A else MODE_REST, current_A, voltage_limit_V)

    async def source_voltage(self, voltage_V: float, current_limit_A: float) -> None:
        await self._call(self._source, MODE_VOLTAGE, voltage_V, current_limit_A)

    async def measure(self) -> Reading:
        reading: Reading = await self._call(self._read)
        return reading

    async def output_off(self) -> None:
        await self._call(self._rest)

    async def in_worker(self, work: Callable[[], T]) -> T:
        result: T = await self._call(work)
        return result

    def read(self) -> Reading:
        return self._read()

    def output_off_now(self) -> None:
        self._rest()

    def link_lost(self) -> bool:
        return self.link.closed_by_peer()

    # -- the follow schedule (worker thread only) ----------------------------------------

    def _connect(self) -> None:
        feedback = self.link.connect()
        if not 1 <= self.cycler_channel <= feedback.channels:
            self.link.close()
            raise InstrumentFault(
                self.name, f"this Arbin has channels 1 to {feedback.channels}: check cycler_channel"
            )
        self._written = {}  # a fresh link: write everything once more

    def _status(self) -> cti.ChannelStatus:
        if not self.link.connected:
            self._connect()
        status = self.link.ask(cti.ChannelInfoRequest(self.index), cti.ChannelStatus)
        if status.channel != self.index:  # never another channel's readings as this one's
            raise InstrumentGarbled(self.name, f"asked for channel index {self.index}, got {status.channel}")
        return status

    def _read(self) -> Reading:
        status = self._status()
        if self._test and not status.running:
            self._test = False
            raise InstrumentError(self.name, status.status, _ended(status))
        if self._mode == MODE_CURRENT:
            engaged = abs(status.voltage_V) >= self._clamp - CLAMP_ENGAGED_V
        else:
            engaged = self._mode == MODE_VOLTAGE and abs(status.current_A) >= 0.999 * self._clamp
        return Reading(status.test_time_s, status.voltage_V, status.current_A, in_limit=engaged)

    def _source(self, mode: int, setpoint: float, clamp: float) -> None:
        """Limits first, then setpoint and clamp, then the mode; the command number last makes
        the schedule take them up. Values the channel already holds are not sent again: each
        round trip delays the step, and a reading can only follow the last one."""
        self._ensure_test()
        limits = zip((MV_VOLTAGE_MAX, MV_VOLTAGE_MIN, MV_CURRENT_MAX), self._channel_limits(), strict=True)
        for variable, value in limits:
            self._set(variable, value)
        if mode != MODE_REST:
            self._set(MV_SETPOINT, setpoint)
            self._set(MV_CLAMP, clamp)
        self._set(MV_MODE, mode)
        self._bump()
        self._mode, self._clamp = mode, clamp

    def _rest(self) -> None:
        """Mode 0: the channel rests at open circuit, always written afresh. A channel whose test
        is not running (never started, stopped, tripped) sources nothing already."""
        if not self._test:
            return
        if not self.link.connected:
            self._connect()
        request = cti.SetMetaVariable(self.index, cti.META_CODES[MV_MODE], MODE_REST)
        feedback = self.link.ask(request, cti.SetMetaVariableFeedback)
        if feedback.code == cti.SET_MV_NOT_RUNNING:
            return
        _check(self.name, feedback)
        self._written[MV_MODE] = self._mode = MODE_REST
        try:
            self._bump()
        except InstrumentError:
            if self._test:
                raise  # else the test ended this moment: nothing sources

    def _bump(self) -> None:
        """A new command number. A test cyclerd took over holds one cyclerd does not know, so
        then two are written, one of them new to it."""
        for _ in range(2 if self._resync else 1):
            self._command = self._command % COMMANDS + 1
            self._set(MV_COMMAND, self._command)
        self._resync = False

    def _set(self, variable: int, value: float) -> None:
        if self._written.get(variable) == value:
            return
        request = cti.SetMetaVariable(self.index, cti.META_CODES[variable], value)
        feedback = self.link.ask(request, cti.SetMetaVariableFeedback)
        if feedback.code == cti.SET_MV_NOT_RUNNING and self._test:
            self._test = False  # it ended since the last reading: say why, in the cycler's words
            status = self._status()
            raise InstrumentError(self.name, status.status, _ended(status))
        _check(self.name, feedback)
        self._written[variable] = value

    def _ensure_test(self) -> None:
        """cyclerd's test runs on the channel: started now if none runs. A test of cyclerd's that
        ended without cyclerd (the channel's safety, someone at MITS Pro) is an error (raised by
        the next reading or meta variable), not restarted behind the protocol's back."""
        if self._test:
            return
        status = self._status()
        if status.running:
            self._adopt(status)
            return
        assign = cti.AssignSchedule(self.index, FOLLOW_SCHEDULE)
        _check(self.name, self.link.ask(assign, cti.AssignScheduleFeedback))
        start = cti.StartSchedule(
            self.index, f"cyclerd {time.strftime('%Y%m%d-%H%M%S')} ch{self.cycler_channel}"
        )
        _check(self.name, self.link.ask(start, cti.StartScheduleFeedback))
        self._test, self._command, self._resync, self._written = True, 0, False, {}
        self._mode = MODE_REST

    def _adopt(self, status: cti.ChannelStatus) -> None:
        """A running test is cyclerd's to drive only if it runs the follow schedule."""
        if status.schedule.casefold() != FOLLOW_SCHEDULE.casefold():
            raise InstrumentFault(
                self.name,
                f"the channel runs a test cyclerd did not start ({status.test_name!r}, schedule"
                f" {status.schedule!r}); stop it in MITS Pro or choose another channel",
            )
        if not self._test:
            self._test, self._resync, self._written = True, True, {}

    def _stop_test(self) -> None:
        if not self._test:
            return
        if not self.link.connected:
            self._connect()
        _check(self.name, self.link.ask(cti.StopSchedule(self.index), cti.StopScheduleFeedback))
        self._test = False

    def _channel_limits(self) -> tuple[float, float, float]:
        """The channel's own limits for this step: the protocol's, a margin beyond; the channel's
        range where the protocol sets none."""
        safety, (low, high) = self.safety, CAPABILITIES.voltage_range_V
        high = safety.voltage_max_V if safety.voltage_max_V is not None else high
        low = safety.voltage_min_V if safety.voltage_min_V is not None else low
        current = safety.current_max_A if safety.current_max_A is not None else CAPABILITIES.current_max_A
        return high + LIMIT_MARGIN_V, low - LIMIT_MARGIN_V, current * (1 + LIMIT_MARGIN_CURRENT)

    # -- plumbing ------------------------------------------------------------------------

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)


def _check(name: str, feedback: cti.Feedback) -> None:
    if feedback.code != cti.SUCCESS:
        raise InstrumentError(name, feedback.code, feedback.words)


def _ended(status: cti.ChannelStatus) -> str:
    why = f": {status.exit_condition}" if status.exit_condition else ""
    return f"the test ended, status {status.words}{why}"


@asynccontextmanager
async def open_cycler_channel(
    resource: str, cycler_channel: int, clock: Clock, poll_s: float
) -> AsyncIterator[Channel]:
    host, port = host_and_port(resource, DEFAULT_PORT)
    arbin = Arbin(host, port, cycler_channel)
    await arbin.open()
    try:
        yield SteppedChannel(arbin, clock, poll_s, rest_between_steps=True)
    finally:
        await arbin.close()


def survey(resource: str, timeout_s: float) -> CyclerSurvey:
    """Log in and read every channel's status; busy: running a schedule other than cyclerd's."""
    host, port = host_and_port(resource, DEFAULT_PORT)
    link = CtiLink(f"Arbin at {host}:{port}", host, port, timeout_s, credentials())
    try:
        login = link.connect()
        busy = set()
        for index in range(login.channels):
            status = link.ask(cti.ChannelInfoRequest(index), cti.ChannelStatus)
            if status.running and status.schedule.casefold() != FOLLOW_SCHEDULE.casefold():
                busy.add(index + 1)
    finally:
        link.close()
    return CyclerSurvey(link.identity, login.channels, frozenset(busy))
