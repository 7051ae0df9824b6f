"""A Maccor cycler channel in MacNet's direct mode: cyclerd's software stepper sets the channel's
output step by step (`SteppedChannel`), and the cycler keeps its own safety limits meanwhile.

Each cyclerd channel has its own MacNet connection and worker thread. Opening a channel starts a
direct-mode test on it, at rest; closing resets the channel (test stopped, output off). Before an
output goes on, the channel's safety limits are set on the cycler from the step's safety window
(plus a margin, so that the runner's own check normally ends a step first and the cycler's is
the backstop when the host is late or gone). A channel the cycler stopped itself (a safety limit,
a suspension) fails the step with its status in Maccor's words.

CAPABILITIES: a Maccor Series 4000 channel is built to order; cyclerd assumes the common 5 A
channel, with four current ranges (150 µA, 5 mA, 150 mA, 5 A, the ranges pymacnet chooses from),
and a bipolar ±5 V voltage range, which half-cell labs order because Li plating takes the working
electrode below 0 V (the library's half-cell protocols go down to -0.5 V). A lab with other
channels changes `maccor_wire.CURRENT_RANGES_A` and `VOLTAGE_RANGE_V`.

Direct mode's current and voltage limit each other: in charge mode the channel drives at most
`Current` into the cell and holds `Voltage` once the cell reaches it (CC-CV); discharge mirrors
this. A constant-current step's clamp is the SourceMeasure's voltage limit (below zero when
discharging). A CV hold goes the one way the cell's voltage says when it starts, as a Maccor CV
step does. A rest is mode `R`; a JSON rest that MacNet does not act on (pymacnet notes versions
where it does not) is caught by reading the status back, and the channel is then reset instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from cyclerd.drivers import maccor_wire as mn
from cyclerd.drivers.base import (
    Capabilities,
    InstrumentDisconnected,
    InstrumentError,
    InstrumentFault,
    InstrumentGarbled,
    InstrumentTimeout,
    Reading,
)
from cyclerd.drivers.clock import Clock, RealClock
from cyclerd.drivers.cycler import CyclerSurvey, host_and_port
from cyclerd.drivers.stepper import SteppedChannel
from cyclerd.protocols.program import SafetyLimits

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_PORT = mn.DEFAULT_PORT
CAPABILITIES = Capabilities(
    kinds=frozenset({"rest", "cc", "plate", "strip", "cv", "cccv"}),
    current_max_A=mn.CURRENT_MAX_A,
    voltage_range_V=mn.VOLTAGE_RANGE_V,
)
TEST_PREFIX = "cyclerd"  # the name of every test cyclerd starts: how it knows its own
SAFETY_MARGIN_V = 0.05  # the cycler's voltage limits sit this far outside the protocol's window
SAFETY_MARGIN = 0.05  # ... and its current limit this fraction above the protocol's
DATA_RECORD_S = 60.0  # the cycler's own data file keeps a record this often (a backup of cyclerd's)
STATUS_BLOCK = 128  # channels per (4, 1) request, MacNet's most


class MaccorCycler:
    """Channel `cycler_channel` (from 1) of the cycler at `resource` in direct mode; a SourceMeasure
    that can reopen its link and tell when the cycler closed it."""

    def __init__(
        self, resource: str, cycler_channel: int, clock: Clock | None = None, timeout_s: float = 2.0
    ) -> None:
        host, port = host_and_port(resource, DEFAULT_PORT)
        if cycler_channel < 1:
            raise ValueError(f"cycler channels count from 1, not {cycler_channel}")
        self.resource, self.cycler_channel = resource, cycler_channel
        self.clock: Clock = clock or RealClock()
        # The step's safety window, kept before each step (KeepsSafety).
        self.safety = SafetyLimits()
        self.identity = ""
        self._chan = cycler_channel - 1  # MacNet counts from 0
        self._link = mn.MacNetLink(self.name, host, port, timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"maccor-{cycler_channel}")
        self._owned = False  # the channel is cyclerd's to stop: it was free, or held by a test of ours
        self._testing = False  # cyclerd's direct-mode test holds the channel
        self._limits_set: dict[str, float] | None = None
        self._last_command = -float("inf")  # time.monotonic() of the last output command
        self._voltage_V: float | None = None  # the last reading's: which way a CV hold goes

    @property
    def name(self) -> str:
        return f"Maccor channel {self.cycler_channel} at {self.resource}"

    @property
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    def keep_safety(self, limits: SafetyLimits) -> None:
        """The next step's safety window: set on the cycler before its output turns on."""
        self.safety = limits

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check the channel exists and is free, start a direct-mode test at rest."""
        await self._call(self._open)

    def _open(self) -> None:
        self._link.connect()
        self.identity, channels = mn.identify(self._link)
        if self.cycler_channel > channels:
            raise InstrumentFault(self.name, f"the cycler has channels 1 to {channels}")
        status = self._status()
        if status.stat in mn.HELD:
            test = self._test_name()
            if not test.startswith(TEST_PREFIX):
                named = f" {test!r}" if test else ""
                raise InstrumentFault(
                    self.name,
                    f"runs a test{named} that cyclerd did not start ({status.words}); stop it in MacTest"
                    " or give cyclerd another channel",
                )
            log.warning("%s: a test cyclerd left running (%s) is reset", self.name, status.words)
        elif status.stat not in mn.FREE:
            raise InstrumentFault(self.name, f"cannot take a test now: {status.words}")
        self._owned = True
        self._rest()

    async def reopen(self) -> None:
        """Reconnect after a dropped link. The cycler went on with the test meanwhile (a safety
        limit may have stopped it): the next reading tells."""
        await self._call(self._reopen)
        log.info("%s: reconnected", self.name, extra={"kind": "reconnect"})

    def _reopen(self) -> None:
        self._link.connect()
        mn.identify(self._link)
        status = self._status()
        self._testing, self._limits_set = status.stat in mn.HELD, None

    async def close(self) -> None:
        """Stop the channel's test (its output off), then release the link. A stop the link cannot
        carry is sent once more over a new link."""
        try:
            if self._owned:
                try:
                    await self._call(self._stop)
                except (InstrumentTimeout, InstrumentDisconnected, InstrumentGarbled):
                    await self.reopen()
                    await self._call(self._stop)
        finally:
            with contextlib.suppress(RuntimeError):  # the executor is already shut down
                await self._call(self._link.close)
            self._executor.shutdown(wait=False)

    def _stop(self) -> None:
        status = self._status()
        if status.stat in mn.HELD or status.stat == mn.COMPLETED:
            self._reset()

    # -- SourceMeasure -------------------------------------------------------------------

    async def source_current(self, current_A: float, voltage_limit_V: float) -> None:
        await self._call(self._source_current, current_A, voltage_limit_V)

    def _source_current(self, current_A: float, voltage_limit_V: float) -> None:
        if current_A == 0:
            self._rest()
        elif current_A > 0:
            self._drive(mn.CHARGE, current_A, voltage_limit_V)
        else:
            self._drive(mn.DISCHARGE, -current_A, -voltage_limit_V)

    async def source_voltage(self, voltage_V: float, current_limit_A: float) -> None:
        await self._call(self._source_voltage, voltage_V, current_limit_A)

    def _source_voltage(self, voltage_V: float, current_limit_A: float) -> None:
        present = self._voltage_V if self._voltage_V is not None else self._status().voltage_V
        mode = mn.CHARGE if voltage_V >= present else mn.DISCHARGE
        self._drive(mode, abs(current_limit_A), voltage_V)

    async def measure(self) -> Reading:
        reading: Reading = await self._call(self._measure)
        return reading

    def _measure(self) -> Reading:
        status = self._status()
        if self._testing and (status.tripped or status.stat not in mn.HELD):
            raise self._stopped(status)
        self._voltage_V = status.voltage_V
        # With no test on the channel (a rest that had to reset it) the cycler keeps no test time.
        t_s = status.test_time_s if self._testing else self.clock.now()
        return Reading(t_s, status.voltage_V, status.current_A)

    async def output_off(self) -> None:
        await self._call(self._output_off)

    def _output_off(self) -> None:
        """Rest, and make sure the channel rests: its status is read back (a rest MacNet did not
        act on leaves it charging), and a channel still driving the cell is reset."""
        if not self._owned or (not self._link.connected and not self._testing):
            return  # not ours, or closed: nothing of ours drives the cell
        if self._testing:
            with contextlib.suppress(InstrumentError):  # refused: the status says why
                self._command("set_output", **mn.output_fields(mn.REST, 0.0, 0.0))
        status = self._status()
        if not status.driving:
            return
        log.warning("%s: still %s after a rest; resetting the channel", self.name, status.words)
        self._reset()
        status = self._status()
        if status.driving:
            raise InstrumentError(self.name, status.stat, f"still {status.words} after a reset")

    def output_off_now(self) -> None:
        self._guarded(self._output_off)

    def read(self) -> Reading:
        reading: Reading = self._guarded(self._measure)
        return reading

    async def in_worker(self, work: Callable[[], T]) -> T:
        result: T = await self._call(work)
        return result

    def link_lost(self) -> bool:
        return self._link.peer_closed()

    # -- what the cycler is told (worker thread only) ------------------------------------

    def _drive(self, mode: str, current_A: float, voltage_V: float) -> None:
        """The output on: safety limits first, then the output, in the running test or a new one."""
        if not self._testing:
            self._free()
        self._set_limits()
        if self._testing:
            self._command("set_output", **mn.output_fields(mode, current_A, voltage_V))
        else:
            self._start(mode, current_A, voltage_V)

    def _rest(self) -> None:
        if self._testing:
            self._output_off()
            return
        self._free()
        self._set_limits()
        self._start(mn.REST, 0.0, 0.0)

    def _free(self) -> None:
        """Reset a test of ours that the cycler stopped (a safety limit) or that completed."""
        if self._status().stat not in (mn.AVAILABLE, mn.RESET):
            self._reset()

    def _start(self, mode: str, current_A: float, voltage_V: float) -> None:
        test = f"{TEST_PREFIX}-{self.cycler_channel:03d}-{int(time.time())}"  # unique, at most 25 chars
        self._command(
            "start_direct",
            TestName=test,
            DataTime=DATA_RECORD_S,
            DataV=0,
            DataI=0,
            **mn.output_fields(mode, current_A, voltage_V),
        )
        self._testing = True

    def _reset(self) -> None:
        self._command("reset")
        self._testing, self._limits_set = False, None

    def _set_limits(self) -> None:
        """The channel's own safety limits from the step's safety window; sent when they change."""
        safety = self.safety
        low, high = mn.VOLTAGE_RANGE_V
        current_A = (
            mn.CURRENT_MAX_A if safety.current_max_A is None else safety.current_max_A * (1 + SAFETY_MARGIN)
        )
        limits = {
            "VSafeMax": high if safety.voltage_max_V is None else safety.voltage_max_V + SAFETY_MARGIN_V,
            "VSafeMin": low if safety.voltage_min_V is None else safety.voltage_min_V - SAFETY_MARGIN_V,
            "ISafeChg": current_A,
            "ISafeDis": current_A,
            "PBatSafeChg": mn.POWER_MAX_W,
            "PBatSafeDis": mn.POWER_MAX_W,
        }
        if limits == self._limits_set:
            return
        kept = self._link.call("safety_limits", Chan=self._chan, **limits)
        try:
            differ = [key for key, value in limits.items() if abs(float(kept[key]) - value) > 1e-3]
        except (KeyError, TypeError, ValueError):
            raise InstrumentGarbled(self.name, f"unreadable safety limits {kept}") from None
        if differ:
            raise InstrumentError(
                self.name, -1, f"the cycler kept other safety limits: {', '.join(differ)} in {kept}"
            )
        self._limits_set = limits

    def _command(self, name: str, **params: Any) -> None:
        """An output command; MacNet wants 100 ms between them on a channel (in the cycler's time)."""
        wait = self.clock.wall_s(mn.COMMAND_GAP_S) - (time.monotonic() - self._last_command)
        if wait > 0:
            time.sleep(wait)
        result = self._link.call(name, Chan=self._chan, **params)
        self._last_command = time.monotonic()
        outcome = result.get("Result")
        if outcome == mn.OK:
            return
        status = self._status()
        if self._testing and status.tripped:
            raise self._stopped(status)
        raise InstrumentError(self.name, mn.result_code(outcome), f"{outcome} ({status.words})")

    def _status(self) -> mn.ChannelStatus:
        result = self._link.call("status", Chan=self._chan)
        try:
            return mn.ChannelStatus.read(result)
        except (KeyError, TypeError, ValueError):
            raise InstrumentGarbled(self.name, f"unreadable status {str(result)[:160]}") from None

    def _test_name(self) -> str:
        try:
            return str(self._link.call("test_info", Chan=self._chan).get("TestName", "")).strip()
        except InstrumentError:
            return ""  # a MacNet that cannot say: not cyclerd's, as far as anyone knows

    def _stopped(self, status: mn.ChannelStatus) -> InstrumentError:
        """The cycler stopped the test itself, or someone stopped it: in the cycler's words."""
        self._testing = status.stat in mn.HELD
        code = status.end if status.end != mn.NOT_ENDED else status.stat
        return InstrumentError(
            self.name,
            code,
            f"the cycler stopped the channel's test: {status.words}, at {status.voltage_V:.4f} V,"
            f" {status.current_A:.6g} A",
        )

    # -- plumbing ------------------------------------------------------------------------

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, function, *args)

    def _guarded(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except InstrumentFault:
            raise
        except OSError as exc:  # the link raises its own faults; anything else is the link too
            self._link.close()
            raise InstrumentDisconnected(self.name, f"link failed: {exc}") from None


@asynccontextmanager
async def open_cycler_channel(
    resource: str, cycler_channel: int, clock: Clock, poll_s: float
) -> AsyncIterator[SteppedChannel]:
    """Channel `cycler_channel` (from 1) of the Maccor at `resource` in direct mode; its test is
    stopped (output off) on the way out."""
    cycler = MaccorCycler(resource, cycler_channel, clock)
    try:
        await cycler.open()
        yield SteppedChannel(cycler, clock, poll_s, rest_between_steps=True)
    finally:
        await cycler.close()


def survey(resource: str, timeout_s: float) -> CyclerSurvey:
    """Blocking and read-only: the cycler's identity, channels, and the channels that run a test
    cyclerd did not start (one whose name (4, 6) cannot tell counts as not cyclerd's)."""
    host, port = host_and_port(resource, DEFAULT_PORT)
    link = mn.MacNetLink(f"Maccor at {resource}", host, port, timeout_s)
    link.connect()
    try:
        identity, channels = mn.identify(link)
        busy: set[int] = set()
        for first in range(0, channels, STATUS_BLOCK):
            count = min(STATUS_BLOCK, channels - first)
            result = link.call("statuses", Chan=first, Len=count)
            try:
                stats = [int(entry["Stat"]) for entry in result["Status"]][:count]
            except (KeyError, TypeError, ValueError):
                raise InstrumentGarbled(link.name, f"unreadable statuses {str(result)[:160]}") from None
            for offset, stat in enumerate(stats):
                if stat in mn.HELD and not _started_by_cyclerd(link, first + offset):
                    busy.add(first + offset + 1)
        return CyclerSurvey(identity, channels, frozenset(busy))
    finally:
        link.close()


def _started_by_cyclerd(link: mn.MacNetLink, chan: int) -> bool:
    try:
        return str(link.call("test_info", Chan=chan).get("TestName", "")).startswith(TEST_PREFIX)
    except InstrumentError:
        return False
