"""The doctor's checks of the broker: the password the daemon will use, TCP, TLS and an MQTT 5
login, which also reads the daemon's retained status (online: it holds the instruments).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import stat

import aiomqtt

from cyclerd.daemon.config import Mqtt
from cyclerd.doctor.verdict import Check, Verdict, current_user

STATUS_WAIT_S = 0.5  # how long to wait for the daemon's retained status after subscribing
AUTH_REFUSED = {4, 5, 134, 135}  # CONNACK: bad user name or password / not authorised (MQTT 3 and 5)


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
            return Check(
                "mqtt password", Verdict.FAIL, f"user {current_user()} may not read {path}: {fix}"
            ), None
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
    who = "anonymous MQTT 5 login" if mqtt.username is None else f"MQTT 5 login as {mqtt.username!r}"
    return Check("broker login", Verdict.OK, f"{who} accepted; daemon: {seen}"), status


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
