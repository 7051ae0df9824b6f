"""Alerts against real receivers: an aiosmtpd server (STARTTLS with a self-signed certificate the
test makes, AUTH LOGIN) and an http.server, each on a free loopback port; real runs on a
simulated cell; the watcher against a real store heartbeat and a real Mosquitto.

Waits are on what the servers received (queues filled by their threads), never on a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import functools
import json
import logging
import queue
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from linear_cell import LinearCell
from mosquitto import USERS, Mosquitto, free_port
from pydantic import ValidationError

from cyclerd.alerts.config import AlertsConfig, AlertsSetupError, Email, Webhook
from cyclerd.alerts.notifier import Alerts, Retry
from cyclerd.alerts.sink import AlertSink
from cyclerd.alerts.watch import Report, Seen, broker_status, store_status, watch
from cyclerd.bus.publisher import Bus
from cyclerd.daemon.config import Mqtt
from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import RunEvent, Sinks, StoreSink
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.store import heartbeat
from cyclerd.store.database import Store

WAIT_S = 10.0  # the most any test waits for a server to receive something
FAST = Retry(attempts=4, first_s=0.01, max_s=0.05)
SMTP_USER, SMTP_PASSWORD = "cyclerd@lab.example", "smtp-Pa55-never-logged"
TOKEN = "T000/B000/XXXXsecretXXXX"  # a webhook URL's path is its password

SAFETY = """
name: E1 safety
safety: {voltage_max: 3.05 V}
record: {every: 1 min}
steps:
  - cc: {current: 1 mA, until: {duration: 20 h}}
"""
CELL = {"cell": "E1-03", "seed": "MgAgSn", "binder": "Elastane", "area_m2": 7.85e-5}


async def received(inbox: queue.Queue[Any]) -> Any:
    """The next thing a server received (its threads put it there)."""
    return await asyncio.to_thread(inbox.get, timeout=WAIT_S)


# -- the receivers: an SMTP server and a web server on free loopback ports ----------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl), which the client trusts as its CA."""
    if shutil.which("openssl") is None:
        pytest.skip("the STARTTLS tests make their certificate with `openssl`, which is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    request = ("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1")
    subprocess.run(
        [
            "openssl",
            *request,
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@dataclass
class Inbox:
    """What the SMTP server took: each message with whether it came over TLS after a login."""

    password: bytes = SMTP_PASSWORD.encode()
    messages: queue.Queue[tuple[EmailMessage, list[str], bool]] = field(default_factory=queue.Queue)
    logins: list[tuple[str, bytes, bool]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.put((parsed, list(envelope.rcpt_tos), bool(session.authenticated and session.ssl)))
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((mechanism, data.login, session.ssl is not None))
        ok = data.login == SMTP_USER.encode() and data.password == self.password
        return AuthResult(success=ok, handled=False)  # unhandled: the server answers 535 itself


@dataclass
class SmtpServer:
    host: str
    port: int
    ca_file: Path
    inbox: Inbox

    def config(self, **changes: Any) -> Email:
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "username": SMTP_USER,
            "password_env": "TEST_SMTP_PASSWORD",
            "sender": SMTP_USER,
            "to": ["lab@lab.example", "pi@lab.example"],
            "ca_file": self.ca_file,
            "timeout_s": 5.0,
        }
        return Email(**(values | changes))


@pytest.fixture
def smtp(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """aiosmtpd requiring STARTTLS before AUTH, offering AUTH LOGIN only (so smtplib uses LOGIN)."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context,
        require_starttls=True,
        authenticator=inbox.authenticate,
        auth_require_tls=True,
        auth_exclude_mechanism=["PLAIN"],
    )
    controller.start()
    monkeypatch.setenv("TEST_SMTP_PASSWORD", SMTP_PASSWORD)
    yield SmtpServer("127.0.0.1", controller.port, cert, inbox)
    controller.stop()


@dataclass
class Post:
    path: str
    content_type: str
    body: dict[str, Any]
    status: int


class WebServer:
    """An http.server answering POSTs with `statuses` in turn (then 200); `hold` cleared makes
    each request wait until it is set again (a receiver that hangs)."""

    def __init__(self) -> None:
        self.posts: queue.Queue[Post] = queue.Queue()
        self.statuses: list[int] = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        web = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                web.entered.set()
                web.hold.wait(4 * WAIT_S)
                status = web.statuses.pop(0) if web.statuses else 200
                web.posts.put(Post(self.path, self.headers["Content-Type"], body, status))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str = f"/services/{TOKEN}") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def web() -> Iterator[WebServer]:
    server = WebServer()
    server.thread.start()
    yield server
    server.hold.set()
    server.server.shutdown()
    server.server.server_close()


def hook(url: str, **changes: Any) -> Webhook:
    return Webhook.model_validate({"url": url, "timeout_s": 5.0} | changes)


@contextlib.asynccontextmanager
async def alerts_to(*configs: Email | Webhook, retry: Retry = FAST, **kwargs: Any) -> AsyncIterator[Alerts]:
    emails = [c for c in configs if isinstance(c, Email)]
    hooks = [c for c in configs if isinstance(c, Webhook)]
    config = AlertsConfig(email=emails[0] if emails else None, webhooks=hooks, **kwargs)
    alerts = Alerts.from_config(config, lab="oh-lab", database=Path("/var/lib/cyclerd/lab.db"))
    alerts.retry = retry
    async with alerts:
        yield alerts


async def safety_run(tmp_path: Path, alerts: Alerts) -> tuple[int, RunState]:
    """A real run on a simulated cell that a safety limit stops, with the alerts as a view."""
    program = compile_protocol(loads(SAFETY))
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run(program.name, "ch1", SAFETY, CELL, {})
    clock = VirtualClock()
    channel = SimulatedChannel(LinearCell(), clock, resolution_s=1.0)
    sinks = Sinks([StoreSink(store, run_id), AlertSink(alerts, store, "ch1", run_id)])
    result = await Runner(program, channel, clock, sinks).run()
    return run_id, result.state


# -- what the alerts say, by e-mail and by webhook ------------------------------------------


async def test_a_safety_stop_is_mailed_over_starttls_and_posted_saying_run_cell_why_and_what_to_do(
    tmp_path: Path, smtp: SmtpServer, web: WebServer
) -> None:
    async with alerts_to(smtp.config(), hook(web.url())) as alerts:
        run_id, state = await safety_run(tmp_path, alerts)
        assert state is RunState.STOPPED
        mail, recipients, secured = await received(smtp.inbox.messages)
        post = await received(web.posts)

    assert secured  # the message came over STARTTLS after a successful login
    assert [(m, login, tls) for m, login, tls in smtp.inbox.logins] == [("LOGIN", SMTP_USER.encode(), True)]
    assert recipients == ["lab@lab.example", "pi@lab.example"]
    subject = str(mail["Subject"])
    assert (
        subject
        == f"[cyclerd oh-lab] run {run_id} on ch1, cell E1-03 (MgAgSn, Elastane) stopped by a safety limit"
    )
    body = mail.get_content().replace("\r\n", "\n")
    assert f"Run {run_id} (E1 safety) on channel ch1 of lab oh-lab." in body
    assert "What happened: safety: voltage" in body  # the runner's own reason, limit and value
    assert "When: " in body
    assert " UTC" in body
    assert "seed = MgAgSn" in body
    assert f"The cell is off. Look at the cell before anything else, then run `cyclerd show {run_id}" in body
    assert "--db /var/lib/cyclerd/lab.db" in body
    # Slack's (and Mattermost's) incoming webhooks take exactly this: one "text".
    assert post.path == f"/services/{TOKEN}"
    assert post.content_type.startswith("application/json")
    assert list(post.body) == ["text"]
    assert post.body["text"] == f"{subject}\n\n{body.rstrip()}"


async def test_the_teams_format_is_an_adaptive_card_and_the_json_format_carries_every_fact(
    web: WebServer,
) -> None:
    async with alerts_to(
        hook(web.url("/teams"), format="teams"), hook(web.url("/json"), format="json")
    ) as alerts:
        alerts.run_ended(
            7, "ch2", RunState.STOPPED, "instrument fault: no answer", name="E8", cell={"cell": "F2"}
        )
        posts = {post.path: post.body for post in [await received(web.posts), await received(web.posts)]}

    card = posts["/teams"]
    assert card["type"] == "message"
    (attachment,) = card["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    blocks = attachment["content"]["body"]
    assert attachment["content"]["type"] == "AdaptiveCard"
    assert blocks[0]["text"] == "[cyclerd oh-lab] run 7 on ch2, cell F2 stopped by an instrument fault"
    assert "What happened: instrument fault: no answer" in [b["text"] for b in blocks]
    facts = posts["/json"]["alert"]
    assert facts | {"at": None, "at_unix": None} == {
        "lab": "oh-lab",
        "topic": "fault",
        "run": 7,
        "name": "E8",
        "channel": "ch2",
        "cell": {"cell": "F2"},
        "reason": "instrument fault: no answer",
        "at": None,
        "at_unix": None,
    }
    assert posts["/json"]["text"].startswith(posts["/json"]["subject"])


async def test_a_completed_run_raises_nothing_a_short_one_alert_and_unwanted_topics_none(
    tmp_path: Path, web: WebServer
) -> None:
    store = Store(tmp_path / "runs.db")
    async with alerts_to(hook(web.url()), on=["short", "safety"]) as alerts:
        for run_id, ending in ((1, RunState.COMPLETED), (2, RunState.STOPPED), (3, RunState.COMPLETED)):
            store.create_run("E8", "ch1", "name: x\n", {"cell": f"C{run_id}"}, {})
            sink = AlertSink(alerts, store, "ch1", run_id)
            if run_id == 3:
                sink.event(RunEvent(10.0, "short_circuit", "short circuit detected in cycle 41: noise", {}))
            reason = "stopped on request" if ending is RunState.STOPPED else "run completed"
            sink.event(RunEvent(20.0, "state", reason, {"state": ending.value}))
        await alerts.drain()
    post = web.posts.get_nowait()
    assert post.body["text"].startswith("[cyclerd oh-lab] run 3 on ch1, cell C3 shows a short circuit")
    assert "What happened: short circuit detected in cycle 41: noise" in post.body["text"]
    assert web.posts.empty()  # neither the completed run 1 nor the stop of run 2 (not in `on`)


async def test_an_alert_that_cannot_be_raised_never_fails_the_run(
    tmp_path: Path, web: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run("E8", "ch1", "name: x\n", {}, {})
    async with alerts_to(hook(web.url())) as alerts:
        sink = AlertSink(alerts, store, "ch1", run_id)
        store.close()  # reading the run's cell now fails
        sink.event(RunEvent(20.0, "state", "safety: voltage 5 V above 4.3 V", {"state": "stopped"}))
    assert f"ch1, run {run_id}: no alert raised for state" in caplog.text
    assert web.posts.empty()


# -- a receiver that fails never holds anything up -----------------------------------------


async def test_a_hung_webhook_neither_holds_up_the_run_nor_the_mail_and_delivers_once_it_answers(
    tmp_path: Path, smtp: SmtpServer, web: WebServer
) -> None:
    web.hold.clear()  # the webhook takes the request and does not answer
    patient = hook(web.url(), timeout_s=3 * WAIT_S)  # nor does its client give up while the test waits
    async with alerts_to(patient, smtp.config()) as alerts:
        run_id, state = await safety_run(tmp_path, alerts)
        alerts.run_ended(99, "ch2", RunState.FAILED, "run failed: RuntimeError: boom")
        # The run ended, and both alerts were raised, before the webhook answered the first one:
        assert web.posts.empty()
        assert state is RunState.STOPPED
        first, _, _ = await received(smtp.inbox.messages)
        second, _, _ = await received(smtp.inbox.messages)
        assert await asyncio.to_thread(web.entered.wait, WAIT_S)
        assert web.posts.empty()  # the e-mails went out past the hung webhook
        web.hold.set()
        posts = [await received(web.posts), await received(web.posts)]
    assert [str(m["Subject"]).split(" on ")[0] for m in (first, second)] == [
        f"[cyclerd oh-lab] run {run_id}",
        "[cyclerd oh-lab] run 99",
    ]
    assert [p.body["text"].split(" on ")[0] for p in posts] == [
        f"[cyclerd oh-lab] run {run_id}",
        "[cyclerd oh-lab] run 99",
    ]


async def test_a_webhook_answering_500_is_retried_with_backoff_until_it_takes_the_alert(
    web: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    web.statuses = [500, 503]
    with caplog.at_level(logging.INFO, logger="cyclerd.alerts"):
        async with alerts_to(hook(web.url())) as alerts:
            alerts.run_ended(4, "ch1", RunState.STOPPED, "safety: voltage 5 V above 4.3 V")
            await alerts.drain()
    assert [web.posts.get_nowait().status for _ in range(3)] == [500, 503, 200]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "webhook 127.0.0.1:" in warnings[0]
    assert "HTTP 500" in warnings[0]
    assert "attempt 1 of 4" in warnings[0]
    assert "attempt 2 of 4, next in 0.02 s" in warnings[1]  # the wait doubles
    assert "delivered to webhook 127.0.0.1" in caplog.text
    assert "at attempt 3" in caplog.text


async def test_retries_are_bounded_then_given_up_and_the_next_alert_still_goes_out(
    web: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    web.statuses = [500] * 4
    async with alerts_to(hook(web.url())) as alerts:
        alerts.run_ended(1, "ch1", RunState.STOPPED, "stopped on request")
        alerts.run_ended(2, "ch1", RunState.STOPPED, "stopped on request")
        await alerts.drain()
    posts = [web.posts.get_nowait() for _ in range(5)]
    assert [(p.body["text"].split(" on ")[0][-5:], p.status) for p in posts] == [
        ("run 1", 500),
        ("run 1", 500),
        ("run 1", 500),
        ("run 1", 500),
        ("run 2", 200),
    ]
    (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "run 1" in error
    assert "HTTP 500" in error
    assert "given up after 4 attempts" in error


async def test_a_webhook_that_refuses_the_payload_is_not_retried(
    web: WebServer, caplog: pytest.LogCaptureFixture
) -> None:
    web.statuses = [400]
    async with alerts_to(hook(web.url())) as alerts:
        alerts.daemon_offline(None, "a test")
        await alerts.drain()
    assert web.posts.get_nowait().status == 400
    assert web.posts.empty()
    assert "HTTP 400" in caplog.text
    assert "given up after 1 attempt" in caplog.text


async def test_a_refused_connection_is_retried_and_logged_without_the_urls_secret_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("TEST_WEBHOOK", f"http://127.0.0.1:{port}/services/{TOKEN}")
    config = AlertsConfig(webhooks=[Webhook(url_env="TEST_WEBHOOK")], attempts=3, retry_s=0.01)
    async with Alerts.from_config(config, lab="oh-lab") as alerts:
        alerts.run_ended(5, "ch1", RunState.STOPPED, "instrument fault: gone")
        await alerts.drain()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert all(f"webhook 127.0.0.1:{port}" in m and "cannot connect" in m for m in messages)
    assert "given up after 3 attempts" in messages[-1]
    assert TOKEN not in caplog.text
    assert "secret" not in caplog.text
    assert TOKEN not in repr(config)
    assert TOKEN not in repr(alerts.receivers)


async def test_a_wrong_smtp_password_is_logged_and_retried_and_the_password_is_never_logged(
    smtp: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    smtp.inbox.password = b"the server expects another one"
    async with alerts_to(smtp.config(), retry=Retry(attempts=2, first_s=0.01)) as alerts:
        alerts.run_ended(6, "ch3", RunState.STOPPED, "safety: current above 20 mA")
        await alerts.drain()
    assert len(smtp.inbox.logins) == 2
    assert smtp.inbox.messages.empty()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("cyclerd")]
    assert len(messages) == 2
    assert all(f"refused the login as '{SMTP_USER}'" in m and "535" in m for m in messages)
    assert f"e-mail via 127.0.0.1:{smtp.port}" in messages[0]
    assert SMTP_PASSWORD not in caplog.text


async def test_an_smtp_server_whose_certificate_does_not_verify_is_given_no_password(
    smtp: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = smtp.config(ca_file=None)  # the system's CAs: the self-signed certificate is not among them
    async with alerts_to(config, retry=Retry(attempts=1)) as alerts:
        alerts.daemon_offline(None, "a test")
        await alerts.drain()
    assert smtp.inbox.messages.empty()
    assert smtp.inbox.logins == []
    assert "certificate does not verify" in caplog.text


# -- configuration ------------------------------------------------------------------------


def test_secrets_come_from_the_environment_and_a_missing_one_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = {
        "email": {
            "host": "smtp.lab.example",
            "username": "u",
            "password_env": "CYC_SMTP",
            "sender": "a@b",
            "to": ["c@d"],
        },
        "webhooks": [{"url_env": "CYC_HOOK", "format": "teams"}],
    }
    config = AlertsConfig.model_validate(table)
    monkeypatch.delenv("CYC_SMTP", raising=False)
    with pytest.raises(AlertsSetupError, match=r"password_env: \$CYC_SMTP is not set"):
        Alerts.from_config(config, lab="oh-lab")
    monkeypatch.setenv("CYC_SMTP", "pw")
    monkeypatch.setenv("CYC_HOOK", "ftp://example.org/x")
    with pytest.raises(AlertsSetupError, match="starts with https://") as refused:
        Alerts.from_config(config, lab="oh-lab")
    assert "example.org" not in str(refused.value)
    monkeypatch.setenv("CYC_HOOK", f"https://prod.logic.azure.com/workflows/{TOKEN}")
    alerts = Alerts.from_config(config, lab="oh-lab")
    assert [r.name for r in alerts.receivers] == [
        "e-mail via smtp.lab.example:587",
        "webhook prod.logic.azure.com",
    ]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {
                "email": {
                    "host": "h",
                    "username": "u",
                    "password_env": "P",
                    "security": "none",
                    "sender": "a",
                    "to": ["b"],
                }
            },
            "in clear",
        ),
        ({"email": {"host": "h", "password_env": "P", "sender": "a", "to": ["b"]}}, "no username"),
        ({"email": {"host": "h", "sender": "a", "to": []}}, "at least 1 item"),
        ({"webhooks": [{"url": "https://h/x", "url_env": "X"}]}, "exactly one of url, url_file or url_env"),
        ({"webhooks": [{"url": "hooks.slack.com/services/x"}]}, "starts with https://"),
        ({"on": ["safety", "fire"]}, "'safety', 'fault', 'short', 'stopped', 'failed' or 'offline'"),
        ({"webhook": [{"url": "https://h/x"}]}, "Extra inputs are not permitted"),
    ],
)
def test_a_wrong_alerts_table_says_what_is_wrong(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AlertsConfig.model_validate(table)


def test_relative_secret_files_are_taken_beside_lab_toml(tmp_path: Path) -> None:
    (tmp_path / "hook-url").write_text(f"https://hooks.slack.com/services/{TOKEN}\n")
    config = AlertsConfig.model_validate({"webhooks": [{"url_file": "hook-url"}]}).beside(tmp_path)
    (receiver,) = Alerts.from_config(config, lab="oh-lab").receivers
    assert receiver.name == "webhook hooks.slack.com"


# -- the daemon going away ------------------------------------------------------------------


async def test_a_daemon_started_after_a_crash_says_since_when_the_lab_was_without_it(
    tmp_path: Path, web: WebServer
) -> None:
    store = Store(tmp_path / "lab.db")
    async with alerts_to(hook(web.url())) as alerts:
        heartbeat.beat(store, started_unix=time.time() - 60)
        alerts.after_restart(heartbeat.last(store))  # no clean stop recorded: it crashed
        heartbeat.stopped(store)
        alerts.after_restart(heartbeat.last(store))  # stopped cleanly: nothing to say
        alerts.after_restart(None)  # never ran on this store
        await alerts.drain()
    text = web.posts.get_nowait().body["text"]
    assert text.startswith("[cyclerd oh-lab] the daemon is running again")
    assert "offline since" in text
    assert "did not stop cleanly" in text
    assert web.posts.empty()


async def test_the_watcher_reports_a_stopped_heartbeat_and_the_daemons_return(
    tmp_path: Path, web: WebServer
) -> None:
    store = Store(tmp_path / "lab.db")
    heartbeat.beat(store, time.time())
    async with alerts_to(hook(web.url())) as alerts:
        source = functools.partial(store_status, store.path, interval_s=0.02)
        watcher = asyncio.create_task(watch(source, alerts, offline_after_s=0.0))
        heartbeat.stopped(store)
        offline = (await received(web.posts)).body["text"]
        heartbeat.beat(store, time.time())
        back = (await received(web.posts)).body["text"]
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert offline.startswith("[cyclerd oh-lab] the daemon is offline since ")
    assert "it stopped at" in offline
    assert "check the cells" in offline
    assert back.startswith("[cyclerd oh-lab] the daemon is running again")


async def test_an_absence_shorter_than_offline_after_s_is_no_alarm(web: WebServer) -> None:
    told = asyncio.Event()

    async def source(report: Any) -> None:
        report(Seen(True, None, "up"))
        report(Seen(False, 1.0, "a restart"))
        report(Seen(True, None, "up again"))  # back within offline_after_s: nothing to say
        report(Seen(False, 2.0, "gone for good"))
        told.set()
        await asyncio.Event().wait()

    async with alerts_to(hook(web.url())) as alerts:
        watcher = asyncio.create_task(watch(source, alerts, offline_after_s=0.2))
        await told.wait()
        text = (await received(web.posts)).body["text"]
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await alerts.drain()
    assert "gone for good" in text
    assert "a restart" not in text
    assert web.posts.empty()


async def test_the_watcher_sees_the_daemons_status_on_the_broker_go_offline_and_come_back(
    broker: Mosquitto, web: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VIEWER_PASSWORD", USERS["viewer"])
    mqtt = Mqtt(host=broker.host, port=broker.port, username="viewer", password_env="TEST_VIEWER_PASSWORD")

    def daemon_bus() -> Bus:
        return Bus(
            "oh-lab", broker.host, broker.port, username="daemon", password=USERS["daemon"], encoder=False
        )

    seen: asyncio.Queue[Seen] = asyncio.Queue()

    async def source(report: Report) -> None:
        def both(status: Seen) -> None:
            report(status)
            seen.put_nowait(status)

        await broker_status("oh-lab", mqtt, both, backoff_s=(0.05, 0.2))

    async def online() -> None:
        while not (await seen.get()).online:
            pass

    async with alerts_to(hook(web.url())) as alerts:
        bus = daemon_bus()
        bus.start()
        watcher = asyncio.create_task(watch(source, alerts, offline_after_s=0.0))
        await online()  # the watcher saw the daemon's status "online"
        await bus.close()  # the daemon stops: its status turns "offline"
        offline = (await received(web.posts)).body["text"]
        bus = daemon_bus()
        bus.start()
        back = (await received(web.posts)).body["text"]
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await bus.close()
    assert offline.startswith("[cyclerd oh-lab] the daemon is offline since ")
    assert "its status on the broker is offline" in offline
    assert back.startswith("[cyclerd oh-lab] the daemon is running again")


async def test_a_broker_the_watcher_cannot_reach_counts_as_the_daemon_not_seen(
    web: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # no broker there: as if it ran on the lab PC, and the PC were down
    mqtt = Mqtt(host="127.0.0.1", port=port)
    async with alerts_to(hook(web.url())) as alerts:
        source = functools.partial(broker_status, "oh-lab", mqtt, backoff_s=(0.05, 0.2))
        watcher = asyncio.create_task(watch(source, alerts, offline_after_s=0.0))
        text = (await received(web.posts)).body["text"]
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    assert text.startswith("[cyclerd oh-lab] the daemon is offline since ")
    assert f"the broker at 127.0.0.1:{port} cannot be reached" in text
    assert "so the daemon cannot be seen" in text
