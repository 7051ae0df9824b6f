"""The doctor's instrument probes: who answers at each address (model, serial number, firmware),
asked with read-only queries only, in a daemon thread so that a hung link cannot hold doctor up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pyvisa
import serial
from pyvisa import errors as visa_errors

from cyclerd.daemon.config import Instrument
from cyclerd.doctor.verdict import Check, Verdict, current_user
from cyclerd.drivers import methodscript_scripts as ms
from cyclerd.drivers.keithley2450 import SCPI
from cyclerd.drivers.methodscript import BAUDRATE
from cyclerd.drivers.methodscript_packages import device_error, family_of, firmware_version, what_is
from cyclerd.engine.instruments import UnknownDriverError, guess_driver

T = TypeVar("T")


async def check_instrument(
    instrument: Instrument, timeout_s: float, holder: asyncio.Future[str | None], ask: bool = True
) -> Check:
    """Who answers at the instrument's address: model, serial number and firmware, or why not."""
    name = f"instrument {instrument.name}"
    try:
        kind = f"a {guess_driver(instrument.resource)} address"
    except UnknownDriverError:
        kind = "no address cyclerd knows"
    if kind != f"a {instrument.driver} address":
        examples = "keithley2450: TCPIP::host::5025::SOCKET or USB0::...::INSTR; methodscript: /dev/..."
        detail = f"resource {instrument.resource!r} is {kind}, but driver = {instrument.driver!r}"
        return Check(name, Verdict.FAIL, f"{detail}: fix one of them ({examples})")
    if not ask:
        return Check(name, Verdict.WARN, "not asked (--no-instruments)")
    if (busy := await holder) is not None:
        detail = (
            f"not asked: {busy} and owns it, and asking could disturb a run;"
            " stop it (systemctl stop cyclerd) to check, or read journalctl -u cyclerd"
        )
        return Check(name, Verdict.WARN, detail)
    probe = _ask_keithley if instrument.driver == "keithley2450" else _ask_methodscript
    try:
        identity = await in_daemon_thread(lambda: probe(instrument.resource, timeout_s), timeout_s + 1.0)
    except ProbeFailed as exc:
        return Check(name, Verdict.FAIL, str(exc))
    except TimeoutError:
        detail = f"{instrument.resource} hangs: no answer within {timeout_s + 1:g} s; is it on? its address?"
        return Check(name, Verdict.FAIL, detail)
    return Check(name, Verdict.OK, f"{instrument.driver} at {instrument.resource}: {identity}")


async def in_daemon_thread(work: Callable[[], T], timeout_s: float) -> T:
    """Blocking I/O in a daemon thread: a hung link delays doctor by `timeout_s`, never its exit
    (the default executor's threads are joined when the event loop closes)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def deliver(setter: Callable[[Any], object], value: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(lambda: None if done.done() else setter(value))

    def target() -> None:
        try:
            result = work()
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting task, which decides
            deliver(done.set_exception, exc)
        else:
            deliver(done.set_result, result)

    threading.Thread(target=target, name="doctor probe", daemon=True).start()
    async with asyncio.timeout(timeout_s):
        return await done


class ProbeFailed(Exception):
    """An instrument did not identify itself; the message says what happened and what to do."""


def _ask_keithley(resource: str, timeout_s: float) -> str:
    """`*IDN?` and `*LANG?` only: nothing that changes the instrument's state."""
    ms_ = int(timeout_s * 1000)
    try:
        manager = pyvisa.ResourceManager("@py")
        session: Any = manager.open_resource(
            resource, read_termination="\n", write_termination="\n", timeout=ms_, open_timeout=ms_
        )
    except Exception as exc:  # noqa: BLE001 - pyvisa-py raises plain Exception for a DNS failure
        hint = ": check the resource string"
        if "PyUSB" in str(exc):
            hint = "; USB-TMC needs it in cyclerd's venv: pip install pyusb (and libusb-1.0-0)"
        elif resource.upper().startswith("USB"):
            hint = "; is it plugged in, and may this user open it (udev rule, docs/deployment.md)?"
        raise ProbeFailed(f"cannot open {resource}: {exc}{hint}") from None
    try:
        identity = str(session.query(SCPI["identify"])).strip()
        if "MODEL 2450" not in identity:
            raise ProbeFailed(
                f"a different device answers at {resource}: {identity[:60]!r}; check the address"
            )
        language = str(session.query(SCPI["language"])).strip()
    except visa_errors.VisaIOError as exc:
        if exc.error_code == pyvisa.constants.StatusCode.error_timeout:
            raise ProbeFailed(f"no reply to *IDN? within {timeout_s:g} s at {resource}: is it on?") from None
        raise ProbeFailed(f"the link to {resource} failed: {exc.description}") from None
    except ConnectionRefusedError:
        hint = "is the instrument on, with its LAN raw socket (port 5025) enabled?"
        raise ProbeFailed(f"connection refused at {resource}: {hint}") from None
    except (OSError, ValueError) as exc:  # ValueError: bytes that are not text
        raise ProbeFailed(f"the link to {resource} failed: {exc}") from None
    finally:
        with contextlib.suppress(visa_errors.Error, OSError):
            session.close()
    if language != "SCPI":
        fix = "MENU > System > Settings > Command Set > SCPI, then power-cycle it"
        raise ProbeFailed(f"the 2450 at {resource} speaks {language}, not SCPI: {fix}")
    maker, model, number, firmware = (*identity.split(","), "", "", "")[:4]
    return f"{maker.strip().title()} {model.strip()}, serial {number.strip()}, firmware {firmware.strip()}"


def _ask_methodscript(url: str, timeout_s: float) -> str:
    """The online queries t, v and i only: no abort, no script, so a running step is left alone."""
    if url.startswith("/") and not os.path.exists(url):
        hint = "is it plugged in and on? `ls -l /dev/serial/by-id/` lists names that survive replugging"
        raise ProbeFailed(f"no device {url}: {hint}")
    if url.startswith("/") and not os.access(url, os.R_OK | os.W_OK):
        raise ProbeFailed(f"user {current_user()} may not open {url}: add it to the dialout group")
    try:
        port = serial.serial_for_url(url, baudrate=BAUDRATE, timeout=timeout_s, write_timeout=timeout_s)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise ProbeFailed(f"cannot open {url}: {exc}") from None
    deadline = time.monotonic() + timeout_s
    try:
        port.write((ms.FLUSH + ms.FIRMWARE_QUERY).encode("ascii"))
        reply = [_reply(port, "t", deadline, url)]
        while not reply[-1].endswith("*") and (line := _line(port, deadline)) is not None:
            reply.append(line)
        answers = []
        for query in (ms.METHODSCRIPT_VERSION_QUERY, ms.SERIAL_NUMBER_QUERY):
            port.write(query.encode("ascii"))
            answer = _reply(port, query[0], deadline, url)
            answers.append("unknown" if device_error(answer) else answer[1:].strip())
    except (serial.SerialException, OSError) as exc:
        raise ProbeFailed(f"the link to {url} failed: {exc}") from None
    finally:
        port.close()
    firmware = firmware_version(reply)
    if (family := family_of(firmware)) is None:
        raise ProbeFailed(
            f"the device at {url} is {what_is(firmware)} (firmware {firmware!r}): check the port"
        )
    return f"{family.name}, serial {answers[1]}, firmware {firmware}, MethodSCRIPT {answers[0]}"


def _line(port: Any, deadline: float) -> str | None:
    """The next whole line before `deadline`, or None."""
    if (left := deadline - time.monotonic()) <= 0:
        return None
    port.timeout = left
    raw = port.readline()
    return raw.decode("ascii", "replace").rstrip("\r\n") if raw.endswith(b"\n") else None


def _reply(port: Any, letter: str, deadline: float, url: str) -> str:
    """The answer to the online command `letter`, skipping whatever else the device sends."""
    other = None
    while (line := _line(port, deadline)) is not None:
        if line.startswith(letter) and (error := device_error(line)) is not None and letter == "t":
            why = f"it refused the firmware query ({error.text})"
            raise ProbeFailed(f"the device at {url} is busy, {why}: is a script (the daemon?) running on it?")
        if line.startswith(letter):
            return line
        other = other or line
    if other is not None:
        raise ProbeFailed(f"something else answers at {url} ({other[:40]!r}): not a MethodSCRIPT device?")
    raise ProbeFailed(f"no reply to the {letter!r} query in time at {url}: is it on, is this its port?")
