"""`cyclerd doctor`: is this lab PC ready to serve? lab.toml, the store, the broker and every
instrument are checked concurrently with short timeouts, and each verdict says what to do.

Instruments are only asked who they are (no reset, no output change, no abort), and not even
that while a daemon holds them (a serve process here with the same config, or the daemon's
status on the broker): doctor must be safe to run beside a months-long run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import socket
import sqlite3
import ssl
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pyvisa
import serial
from pyvisa import errors as visa_errors

from cyclerd.config import Instrument, Lab, Mqtt, load_config
from cyclerd.drivers import methodscript_scripts as ms
from cyclerd.drivers.keithley2450 import SCPI
from cyclerd.drivers.methodscript import BAUDRATE
from cyclerd.drivers.methodscript_packages import device_error, family_of, firmware_version, what_is
from cyclerd.instruments import UnknownDriverError, guess_driver
from cyclerd.protocols import ProtocolError
from cyclerd.simulators import presets
from cyclerd.states import FINAL
from cyclerd.store import Store

T = TypeVar("T")
STATUS_WAIT_S = 0.5  # how long to wait for the daemon's retained status after subscribing
QUICK_CHECK_S = 15.0  # PRAGMA quick_check reads the whole file; a huge store is interrupted
AUTH_REFUSED = {4, 5, 134, 135}  # CONNACK: bad user name or password / not authorised (MQTT 3 and 5)


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, the verdict, and what to do when it is not ok."""

    name: str
    verdict: Verdict
    detail: str


def exit_code(checks: list[Check]) -> int:
    """0 when everything is ok or only warns, 1 when anything failed."""
    return 1 if any(c.verdict is Verdict.FAIL for c in checks) else 0


async def diagnose(config: Path, timeout_s: float = 2.0, ask_instruments: bool = True) -> list[Check]:
    """Every check for the lab configured in `config`, in report order."""
    loaded, lab = check_config(config)
    if lab is None:
        return [loaded]
    # Who holds the instruments, if anyone: a serve process here, or the daemon's status on the
    # broker. The instrument checks wait for the answer; they must not disturb a running daemon.
    holder: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    if pids := serve_pids(config):
        holder.set_result(f"cyclerd serve (pid {pids[0]}) runs with this config")
    elif lab.mqtt is None:
        holder.set_result(None)
    async with asyncio.TaskGroup() as group:
        database = group.create_task(_guarded("database", asyncio.to_thread(check_database, lab)))
        broker = None
        if lab.mqtt is not None:
            broker = group.create_task(_guarded("broker", check_broker(lab.mqtt, lab.lab, timeout_s, holder)))
        asked = [
            group.create_task(
                _guarded(f"instrument {i.name}", check_instrument(i, timeout_s, holder, ask_instruments))
            )
            for i in lab.instruments
        ]
    checks = [loaded, *check_channels(lab), *database.result()]
    checks += broker.result() if broker is not None else [Check("broker", Verdict.OK, "no [mqtt]: not used")]
    used = {c.instrument for c in lab.channels}
    for instrument, task in zip(lab.instruments, asked, strict=True):
        checks += task.result() if instrument.name in used else map(_unused, task.result())
    return checks


def _unused(check: Check) -> Check:
    verdict = Verdict.FAIL if check.verdict is Verdict.FAIL else Verdict.WARN
    return Check(
        check.name, verdict, f"{check.detail}; no channel uses it: add a [[channels]] entry, or remove it"
    )


async def _guarded(name: str, work: Coroutine[Any, Any, list[Check] | Check]) -> list[Check]:
    """A check that crashes is reported as failed, and the other checks go on."""
    try:
        found = await work
    except Exception as exc:  # noqa: BLE001 - a doctor reports its own failure as a verdict
        return [Check(name, Verdict.FAIL, f"doctor could not check this: {type(exc).__name__}: {exc}")]
    return found if isinstance(found, list) else [found]


def _user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def serve_pids(config: Path) -> list[int]:
    """The `cyclerd serve` processes on this PC started with `config` (Linux: read from /proc).

    Needed besides the broker's word: serve may run without a bus, and two channels must never
    talk to one instrument, so doctor keeps its hands off instruments a daemon here holds.
    """
    wanted, found = config.resolve(), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone already, or another user's process we may not look into
            continue
        if not any(a.endswith("cyclerd") for a in argv[:2]) or "serve" not in argv[1:3]:
            continue
        given = [v for k, v in itertools.pairwise(argv) if k == "--config"]
        given += [a.removeprefix("--config=") for a in argv if a.startswith("--config=")]
        if any((cwd / g).resolve() == wanted for g in given):
            found.append(int(entry.name))
    return found


# -- the configuration ------------------------------------------------------------------------


def check_config(path: Path) -> tuple[Check, Lab | None]:
    """lab.toml loads and validates; problems are shown as load_config gives them (file:line)."""
    try:
        lab = load_config(path)
    except ProtocolError as exc:
        return Check("config", Verdict.FAIL, f"{exc}\nfix these lines, then run doctor again"), None
    except FileNotFoundError:
        return Check("config", Verdict.FAIL, f"no file {path}: copy docs/lab.toml there and edit it"), None
    except PermissionError:
        fix = f"chgrp cyclerd {path} && chmod 640 {path}"
        return Check("config", Verdict.FAIL, f"user {_user()} may not read {path}: {fix}"), None
    except (OSError, UnicodeDecodeError) as exc:
        return Check("config", Verdict.FAIL, f"cannot read {path}: {exc}"), None
    counts = f"{len(lab.channels)} channel(s), {len(lab.instruments)} instrument(s)"
    return Check("config", Verdict.OK, f"{path}: lab {lab.lab!r}, {counts}"), lab


def check_channels(lab: Lab) -> list[Check]:
    """Each channel has one cell position: a known simulated cell, or an instrument of its own."""
    instruments = {i.name: i for i in lab.instruments}
    users: dict[str, list[str]] = {}
    for channel in lab.channels:
        if channel.instrument is not None:
            users.setdefault(channel.instrument, []).append(channel.name)
    checks = []
    for channel in lab.channels:
        name = f"channel {channel.name}"
        if channel.sim is not None:
            if channel.sim in presets.names():
                checks.append(Check(name, Verdict.OK, f"simulated {channel.sim} cell, seed {channel.seed}"))
            else:
                known = ", ".join(presets.names())
                checks.append(
                    Check(name, Verdict.FAIL, f"no simulated cell {channel.sim!r}; choose one of {known}")
                )
            continue
        assert channel.instrument is not None  # config validation: exactly one of sim/instrument
        instrument = instruments[channel.instrument]  # and the instrument exists
        others = [c for c in users[channel.instrument] if c != channel.name]
        if others:
            detail = (
                f"shares instrument {instrument.name} with {', '.join(others)}: a {instrument.driver} is one"
                " cell position, and two channels would fight over it; give each channel its own instrument"
            )
            checks.append(Check(name, Verdict.FAIL, detail))
        else:
            where = f"on instrument {instrument.name} ({instrument.driver} at {instrument.resource})"
            checks.append(Check(name, Verdict.OK, where))
    return checks


# -- the store --------------------------------------------------------------------------------


def check_database(lab: Lab, quick_check_s: float = QUICK_CHECK_S) -> list[Check]:
    """The folder is writable, the file opens as a Store in WAL mode and passes quick_check."""
    path, user = lab.database, _user()
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        fix = f"install -d -o cyclerd -g cyclerd {folder}, or fix `database` in the config"
        return [Check("database", Verdict.FAIL, f"{folder} {what}: {fix}")]
    if not os.access(folder, os.W_OK | os.X_OK):
        why = f"SQLite creates {path.name}-wal and -shm next to the database"
        return [
            Check(
                "database",
                Verdict.FAIL,
                f"user {user} cannot write in {folder} ({why}): chown cyclerd {folder}",
            )
        ]
    if not path.exists():
        detail = (
            f"no database at {path} yet: serve creates it at its first start (expected on a new install;"
            " otherwise check `database` in the config)"
        )
        return [Check("database", Verdict.WARN, detail)]
    files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    locked = [str(p) for p in files if not os.access(p, os.W_OK)]
    if locked:
        return [
            Check(
                "database", Verdict.FAIL, f"user {user} cannot write {', '.join(locked)}: chown cyclerd them"
            )
        ]
    try:
        with Store(path) as store:
            runs = store.runs()
        mode, problems = _inspect(path, quick_check_s)
    except sqlite3.DatabaseError as exc:
        fix = f"stop the daemon, move it aside (mv {path} {path}.broken) and restore the last backup"
        return [Check("database", Verdict.FAIL, f"{path} does not open as a cyclerd store ({exc}): {fix}")]
    if mode != "wal":
        detail = (
            f"{path} is in {mode} journal mode, not WAL: is it on a network share? keep it on a local disk"
        )
        return [Check("database", Verdict.FAIL, detail)]
    if problems is None:
        detail = f"PRAGMA quick_check did not finish in {quick_check_s:g} s; run it when the lab is idle"
        return [Check("database", Verdict.WARN, detail), _unfinished(lab, runs)]
    if problems != ["ok"]:
        found = "; ".join(problems[:3])
        fix = f"stop the daemon, copy the file, and recover it (sqlite3 {path} .recover)"
        return [Check("database", Verdict.FAIL, f"{path} is damaged ({found}): {fix}")]
    size = f"{path.stat().st_size / 1e6:.1f} MB"
    rights = (
        " (checked as root, who may write anything: run doctor as the service user)"
        if os.geteuid() == 0
        else ""
    )
    detail = f"{path}: {size}, {len(runs)} run(s), WAL, quick_check ok, writable by {user}{rights}"
    return [Check("database", Verdict.OK, detail), _unfinished(lab, runs)]


def _inspect(path: Path, quick_check_s: float) -> tuple[str, list[str] | None]:
    """The journal mode and quick_check's findings (None: interrupted after `quick_check_s`)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        mode = str(db.execute("PRAGMA journal_mode").fetchone()[0])
        timer = threading.Timer(quick_check_s, db.interrupt)
        timer.start()
        try:
            return mode, [str(row[0]) for row in db.execute("PRAGMA quick_check")]
        except sqlite3.OperationalError as exc:
            if "interrupt" in str(exc):
                return mode, None
            raise
        finally:
            timer.cancel()


def _unfinished(lab: Lab, runs: list[Any]) -> Check:
    """The runs a (re)start of serve takes up, and what it will do with them."""
    left = [r for r in runs if r.state not in FINAL]
    if not left:
        return Check("runs to take up", Verdict.OK, "none: every stored run is finished")
    states = ", ".join(f"{n} {state}" for state, n in sorted(Counter(r.state for r in left).items()))
    action = "resumes them from their checkpoints" if lab.resume == "resume" else "stops them safely"
    detail = f"{len(left)} unfinished ({states}): at start serve {action} (resume = {lab.resume!r})"
    channels = {c.name for c in lab.channels}
    orphans = [f"run {r.id} on {r.channel!r}" for r in left if r.channel not in channels]
    if orphans:
        detail += (
            f"; {', '.join(orphans)}: no such channel in the config, never taken up; add the channel back"
        )
        return Check("runs to take up", Verdict.WARN, detail)
    return Check("runs to take up", Verdict.OK, detail)


# -- the broker -------------------------------------------------------------------------------


def check_password(mqtt: Mqtt) -> tuple[Check | None, str | None]:
    """The password the daemon will use, and whether its file is kept private."""
    if mqtt.password_file is not None:
        path = mqtt.password_file
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            password = mqtt.password()
        except FileNotFoundError:
            fix = f"write the daemon's password into it (install -m 640 -g cyclerd /dev/null {path}; edit)"
            return Check("mqtt password", Verdict.FAIL, f"password_file {path} does not exist: {fix}"), None
        except PermissionError:
            fix = f"chgrp cyclerd {path} && chmod 640 {path}"
            return Check("mqtt password", Verdict.FAIL, f"user {_user()} may not read {path}: {fix}"), None
        if not password:
            return Check("mqtt password", Verdict.FAIL, f"password_file {path} is empty"), None
        if mode & stat.S_IROTH:
            detail = (
                f"{path} is readable by every user (mode {mode:04o}): chmod o-r {path} (0640 root:cyclerd)"
            )
            return Check("mqtt password", Verdict.WARN, detail), password
        return Check("mqtt password", Verdict.OK, f"{path}: mode {mode:04o}, not world-readable"), password
    if mqtt.password_env is not None:
        if (value := os.environ.get(mqtt.password_env)) is None:
            detail = f"${mqtt.password_env} is not set here: export it to test the login (as the unit's"
            detail += " EnvironmentFile gives it to the service)"
            return Check("mqtt password", Verdict.FAIL, detail), None
        return Check("mqtt password", Verdict.OK, f"from ${mqtt.password_env}"), value
    return None, None


async def check_broker(
    mqtt: Mqtt, lab: str, timeout_s: float, holder: asyncio.Future[str | None]
) -> list[Check]:
    """Password file, TCP, TLS and an MQTT 5 login as the daemon; resolves `holder` (unless
    already known) with why the instruments are busy: the daemon's retained status is online."""
    status: str | None = None
    try:
        password_check, password = check_password(mqtt)
        checks = [c for c in (password_check,) if c is not None]
        checks.append(await _reach(mqtt, timeout_s))
        context = None
        if checks[-1].verdict is Verdict.OK and mqtt.tls:
            context, handshake = await _handshake(mqtt, timeout_s)
            checks.append(handshake)
        if checks[-1].verdict is not Verdict.OK:
            return [*checks, Check("broker login", Verdict.WARN, "not tried: the broker cannot be reached")]
        if password_check is not None and password is None:
            return [
                *checks,
                Check("broker login", Verdict.WARN, "not tried: no password (see mqtt password)"),
            ]
        login, status = await _login(mqtt, lab, password, context, timeout_s)
        return [*checks, login]
    finally:
        if not holder.done():
            holder.set_result(
                "the daemon is online (its status on the broker)" if status == "online" else None
            )


async def _reach(mqtt: Mqtt, timeout_s: float) -> Check:
    where = f"{mqtt.host}:{mqtt.port}"
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(mqtt.host, mqtt.port)
        writer.close()
    except ConnectionRefusedError:
        detail = f"nothing listens on {where}: is mosquitto running? systemctl status mosquitto"
        return Check("broker", Verdict.FAIL, detail)
    except TimeoutError:
        detail = (
            f"no answer from {where} within {timeout_s:g} s: wrong host, or a firewall drops port {mqtt.port}"
        )
        return Check("broker", Verdict.FAIL, detail)
    except socket.gaierror as exc:
        return Check(
            "broker", Verdict.FAIL, f"cannot resolve {mqtt.host!r} ({exc.strerror}): fix [mqtt] host"
        )
    except OSError as exc:
        return Check("broker", Verdict.FAIL, f"cannot reach {where}: {exc.strerror or exc}")
    return Check("broker", Verdict.OK, f"{where} accepts connections")


async def _handshake(mqtt: Mqtt, timeout_s: float) -> tuple[ssl.SSLContext | None, Check]:
    where = f"{mqtt.host}:{mqtt.port}"
    try:
        context = ssl.create_default_context(cafile=None if mqtt.ca_file is None else str(mqtt.ca_file))
    except (OSError, ssl.SSLError) as exc:
        detail = f"ca_file {mqtt.ca_file} cannot be used ({exc}): point it at the PEM file of the broker's CA"
        return None, Check("broker tls", Verdict.FAIL, detail)
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(mqtt.host, mqtt.port, ssl=context)
        version = writer.get_extra_info("ssl_object").version()
        writer.close()
    except ssl.SSLCertVerificationError as exc:
        detail = f"the broker's certificate does not verify ({exc.verify_message}): check ca_file, and that"
        return None, Check("broker tls", Verdict.FAIL, f"{detail} [mqtt] host is the name in the certificate")
    except ssl.SSLError as exc:
        detail = f"TLS handshake with {where} failed ({exc.reason}): is {mqtt.port} the broker's TLS listener"
        return None, Check("broker tls", Verdict.FAIL, f"{detail} (often 8883), or should tls be false?")
    except (TimeoutError, OSError) as exc:
        detail = (
            f"TLS handshake with {where} did not complete ({str(exc) or 'timeout'}): is tls = true right?"
        )
        return None, Check("broker tls", Verdict.FAIL, detail)
    return context, Check("broker tls", Verdict.OK, f"{version} handshake ok, certificate verified")


async def _login(
    mqtt: Mqtt, lab: str, password: str | None, context: ssl.SSLContext | None, timeout_s: float
) -> tuple[Check, str | None]:
    """CONNECT as the daemon (under a client id of its own: the daemon's would be taken over)."""
    where = f"{mqtt.host}:{mqtt.port}"
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=password,
        identifier=f"cyclerd-{lab}-doctor-{os.getpid()}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=context,
        timeout=timeout_s,
        clean_start=True,
    )
    try:
        async with asyncio.timeout(timeout_s + STATUS_WAIT_S), client:
            await client.subscribe(f"cyclerd/{lab}/daemon/status", qos=1)
            status = await _retained(client)
    except aiomqtt.MqttCodeError as exc:
        code = getattr(exc.rc, "value", exc.rc)
        if code in AUTH_REFUSED:
            source = (
                f"password_file {mqtt.password_file}"
                if mqtt.password_file is not None
                else f"${mqtt.password_env}"
                if mqtt.password_env is not None
                else "the config (no password set)"
            )
            fix = f"mosquitto_passwd <its password file> {mqtt.username}, then systemctl reload mosquitto"
            detail = (
                f"the broker refused the username/password ({exc}): check {source} and username, or {fix}"
            )
            return Check("broker login", Verdict.FAIL, detail), None
        return Check(
            "broker login", Verdict.FAIL, f"the broker at {where} refused the connection: {exc}"
        ), None
    except (aiomqtt.MqttError, TimeoutError) as exc:
        why = str(exc) or "timeout"
        detail = f"no MQTT 5 CONNACK from {where} within {timeout_s:g} s ({why}): is it a broker?"
        return Check("broker login", Verdict.FAIL, detail), None
    seen = status or "unknown (no retained status)"
    return Check(
        "broker login", Verdict.OK, f"MQTT 5 login as {mqtt.username!r} accepted; daemon: {seen}"
    ), status


async def _retained(client: aiomqtt.Client) -> str | None:
    """The retained daemon status, if the broker has one (it arrives right after subscribing)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STATUS_WAIT_S):
            async for message in client.messages:
                payload = message.payload
                return (
                    payload.decode("utf-8", "replace")
                    if isinstance(payload, bytes | bytearray)
                    else str(payload)
                )
    return None


# -- instruments ------------------------------------------------------------------------------


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
        identity = await _in_thread(lambda: probe(instrument.resource, timeout_s), timeout_s + 1.0)
    except ProbeFailed as exc:
        return Check(name, Verdict.FAIL, str(exc))
    except TimeoutError:
        detail = f"{instrument.resource} hangs: no answer within {timeout_s + 1:g} s; is it on? its address?"
        return Check(name, Verdict.FAIL, detail)
    return Check(name, Verdict.OK, f"{instrument.driver} at {instrument.resource}: {identity}")


async def _in_thread(work: Callable[[], T], timeout_s: float) -> T:
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
        raise ProbeFailed(f"user {_user()} may not open {url}: add it to the dialout group")
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
