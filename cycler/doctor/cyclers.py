"""The doctor's cycler probe: the cycler answers, says who it is and how many channels it has, and
each lab channel's cycler channel exists and is free. Read-only: a survey opens its own connection
and asks status only, so a test running on any channel is left alone."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from cyclerd.daemon.config import Instrument
from cyclerd.doctor.instruments import in_daemon_thread
from cyclerd.doctor.verdict import Check, Verdict
from cyclerd.drivers.base import InstrumentFault
from cyclerd.drivers.cycler import ResourceError, host_and_port
from cyclerd.engine.instruments import cycler_driver


async def check_cycler(
    instrument: Instrument,
    channels: Mapping[str, int],
    timeout_s: float,
    holder: asyncio.Future[str | None],
    ask: bool = True,
) -> Check:
    """`channels`: the lab's channels on this cycler, each with its cycler channel."""
    name = f"instrument {instrument.name}"
    driver = cycler_driver(instrument.driver)
    try:
        host_and_port(instrument.resource, driver.DEFAULT_PORT)
    except ResourceError as exc:
        return Check(name, Verdict.FAIL, f"{exc} (the {instrument.driver} API port is {driver.DEFAULT_PORT})")
    if not ask:
        return Check(name, Verdict.WARN, "not asked (--no-instruments)")
    try:
        survey = await in_daemon_thread(
            lambda: driver.survey(instrument.resource, timeout_s), timeout_s + 1.0
        )
    except TimeoutError:
        detail = (
            f"{instrument.resource} hangs: no answer within {timeout_s + 1:g} s; is the API on? its port?"
        )
        return Check(name, Verdict.FAIL, detail)
    except (InstrumentFault, OSError) as exc:
        hint = f"is the {instrument.driver} software running with its API enabled on that PC and port?"
        return Check(name, Verdict.FAIL, f"cannot survey {instrument.resource}: {exc}; {hint}")
    said = f"{instrument.driver} at {instrument.resource}: {survey.identity}, {survey.channels} channels"
    missing = {lab: n for lab, n in channels.items() if n > survey.channels}
    if missing:
        named = ", ".join(f"{lab} (cycler channel {n})" for lab, n in sorted(missing.items()))
        fix = f"cycler_channel runs from 1 to {survey.channels}"
        return Check(name, Verdict.FAIL, f"{said}; no such channel for {named}: {fix}")
    busy = {lab: n for lab, n in channels.items() if n in survey.busy}
    if busy:
        named = ", ".join(f"{lab} (cycler channel {n})" for lab, n in sorted(busy.items()))
        if (daemon := await holder) is not None:
            return Check(name, Verdict.OK, f"{said}; running: {named} ({daemon})")
        detail = (
            f"{said}; a test runs on {named}: cyclerd will not start a job there until it ends"
            " (stop it in the vendor's software if it is a leftover)"
        )
        return Check(name, Verdict.WARN, detail)
    return Check(name, Verdict.OK, said)
