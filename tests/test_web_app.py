"""The dashboard served by a real daemon on a real socket: live feed, control, who may do what,
bad input. (In a browser: tests/test_web_browser.py.)"""

from __future__ import annotations

import asyncio
import json
import math
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from mosquitto import free_port

from cyclerd.daemon.config import Lab, Web, load_config
from cyclerd.daemon.service import Daemon
from cyclerd.protocols import ProtocolError, load
from cyclerd.protocols.errors import Problem
from cyclerd.store.database import Store
from cyclerd.web import app
from cyclerd.web.roster import Roster
from cyclerd.web.serve import serve_store
from cyclerd.web.users import Role, Users, add_user, remove_user

LIBRARY = files("cyclerd.protocols") / "library"
E1 = (LIBRARY / "plating_stripping.yaml").read_text()
PASSWORDS = {"alice": "alice-pass-1", "victor": "victor-pass-1", "carol": "carol-pass-1"}


@dataclass
class Served:
    lab: Lab
    url: str
    store: Store

    def run_of(self, channel: str) -> int:
        runs = [r for r in self.store.runs() if r.channel == channel]
        return runs[-1].id


def make_lab(tmp_path: Path, anonymous: bool = False, port: int | None = None) -> Lab:
    users = tmp_path / "users.toml"
    if not users.exists():
        add_user(users, "alice", Role.OPERATOR, PASSWORDS["alice"])
        add_user(users, "victor", Role.VIEWER, PASSWORDS["victor"])
    return Lab.model_validate(
        {
            "lab": "weblab",
            "database": tmp_path / "lab.db",
            "sim_speed": 20000.0,
            "web": {"port": port or free_port(), "users": users, "anonymous": anonymous},
            "channels": [
                {"name": "ch1", "sim": "mgagsn", "cell": {"cell": "A1"}},
                {"name": "ch2", "sim": "sn"},
            ],
        }
    )


@asynccontextmanager
async def serving(lab: Lab, jobs: tuple[str, ...] = ("ch1", "ch2")) -> AsyncIterator[Served]:
    store = Store(lab.database)
    for channel in jobs:
        store.jobs.submit(channel, "E1", E1, "e1.yaml", {"cell": f"cell-{channel}"})
    daemon = Daemon(lab)
    task = asyncio.create_task(daemon.run())
    assert lab.web is not None
    url = f"http://127.0.0.1:{lab.web.port}"
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(200):
                try:
                    async with client.get(f"{url}/login") as answer:
                        if answer.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        while len([r for r in store.runs() if r.state == "running"]) < len(jobs):
            await asyncio.sleep(0.05)
        yield Served(lab, url, store)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()


async def logged_in(served: Served, user: str) -> tuple[aiohttp.ClientSession, str]:
    """A client with `user`'s session, and the page's CSRF token."""
    client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    answer = await client.post(
        f"{served.url}/login",
        json={"user": user, "password": PASSWORDS[user]},
        headers={"Origin": served.url},
    )
    assert answer.status == 200, await answer.text()
    return client, (await boot(client, f"{served.url}/"))["csrf"]


async def read_of_store(lab: Lab, path: str) -> Any:
    """GET `path` from the lab's store served read-only (`cyclerd web --db`), as JSON."""
    assert lab.web is not None
    settings = lab.web.model_copy(update={"anonymous": True})
    runner, dashboard = await serve_store(lab.database, settings, Roster(Users()))
    url = f"http://127.0.0.1:{lab.web.port}{path}"
    try:
        async with aiohttp.ClientSession() as client, client.get(url) as answer:
            return await answer.json()
    finally:
        await app.stop(runner, dashboard)


async def boot(client: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with client.get(url) as answer:
        text = await answer.text()
    found = re.search(r'<script id="boot" type="application/json">(.*?)</script>', text)
    assert found is not None, text
    data: dict[str, Any] = json.loads(found.group(1))
    return data | {"status": answer.status}


async def test_the_live_feed_shows_each_channel_moving_within_a_second(tmp_path: Path) -> None:
    async with serving(make_lab(tmp_path)) as served:
        client, _ = await logged_in(served, "victor")
        async with client, client.ws_connect(f"{served.url}/api/live") as socket:
            seen: dict[str, list[dict[str, Any]]] = {"ch1": [], "ch2": []}
            samples: dict[str, int] = {"ch1": 0, "ch2": 0}
            start = time.monotonic()
            first = json.loads((await socket.receive(timeout=5)).data)  # each message: a list of updates
            assert first[0] == {"type": "hello", "lab": "weblab"}
            while time.monotonic() - start < 5 and not all(
                len({s.get("cycle") for s in seen[c]}) >= 2 and samples[c] for c in seen
            ):
                for message in json.loads((await socket.receive(timeout=5)).data):
                    if message["type"] == "state":
                        seen[message["channel"]].append(message["state"])
                    elif message["type"] == "samples":
                        samples[message["channel"]] += len(message["t"])
                        assert len(message["t"]) == len(message["voltage"]) == len(message["current"])
            for channel, states in seen.items():
                cycles = [s["cycle"] for s in states if "cycle" in s]
                assert len(set(cycles)) >= 2, f"{channel}: the cycle never moved in 5 s: {cycles}"
                assert len({s.get("voltage") for s in states}) >= 2, channel
                assert samples[channel] > 0
                assert {s["run"] for s in states} == {served.run_of(channel)}


async def test_an_operator_stops_a_run_and_the_event_names_them(tmp_path: Path) -> None:
    async with serving(make_lab(tmp_path)) as served:
        run = served.run_of("ch1")
        client, csrf = await logged_in(served, "alice")
        async with client:
            async with client.get(f"{served.url}/api/runs/{run}") as answer:
                assert (await answer.json())["actions"] == ["pause", "stop"]
            headers = {"Origin": served.url, "X-CSRF-Token": csrf}
            async with client.post(f"{served.url}/api/runs/{run}/stop", json={}, headers=headers) as answer:
                assert answer.status == 200, await answer.text()
                assert (await answer.json())["ok"] is True
        while served.store.run(run).state != "stopped":
            await asyncio.sleep(0.05)
        said = [e for e in served.store.events(run) if e["kind"] == "state"]
        assert said[-2]["message"] == "stop requested by alice"
        assert said[-2]["data"]["by"] == "alice"
        assert served.store.run(served.run_of("ch2")).state == "running"  # the other channel goes on


async def test_a_submitted_protocol_is_checked_like_validate_then_queued_naming_the_user(
    tmp_path: Path,
) -> None:
    async with serving(make_lab(tmp_path), jobs=("ch1",)) as served:
        client, csrf = await logged_in(served, "alice")
        headers = {"Origin": served.url, "X-CSRF-Token": csrf}
        broken = E1.replace("count: 250", "cuont: 250")
        body = {"channel": "ch2", "name": "mine.yaml", "text": broken, "cell": {"cell": "B7"}}
        async with client:
            async with client.post(f"{served.url}/api/protocols/check", json=body, headers=headers) as answer:
                checked = await answer.json()
            path = tmp_path / "mine.yaml"
            path.write_text(broken)
            with pytest.raises(ProtocolError) as validate:
                load(path)
            assert checked["ok"] is False
            assert checked["errors"] == str(validate.value).replace(str(path), "mine.yaml")
            assert re.search(
                r"mine\.yaml:\d+:\d+: unknown key 'cuont'; did you mean 'count'", checked["errors"]
            )
            good = body | {"text": E1.replace("count: 250", "count: 2")}
            async with client.post(f"{served.url}/api/protocols/check", json=good, headers=headers) as answer:
                plan = await answer.json()
            assert plan["ok"] is True, plan
            assert plan["name"].startswith("E1 Li plating")
            assert plan["name"] in plan["plan"]
            async with client.post(
                f"{served.url}/api/protocols/submit", json=good, headers=headers
            ) as answer:
                submitted = await answer.json()
        assert submitted["ok"] is True
        job = next(j for j in served.store.jobs.list() if j["id"] == submitted["job"])
        assert (job["channel"], job["source"], job["cell"]) == ("ch2", "mine.yaml", {"cell": "B7"})
        assert any(
            e["message"].startswith(f"job {submitted['job']} on ch2") and e["data"].get("by") == "alice"
            for e in served.store.events()
        )


async def test_who_may_do_what(tmp_path: Path) -> None:
    async with serving(make_lab(tmp_path, anonymous=True), jobs=("ch1",)) as served:
        run = served.run_of("ch1")
        stop = f"{served.url}/api/runs/{run}/stop"
        async with aiohttp.ClientSession() as anonymous:
            page = await boot(anonymous, f"{served.url}/")
            assert (page["user"], page["can_control"], page["csrf"]) == (None, False, None)
            async with anonymous.get(f"{served.url}/api/runs/{run}") as answer:
                assert (await answer.json())["actions"] == []
            async with anonymous.post(stop, json={}, headers={"Origin": served.url}) as answer:
                assert answer.status == 403
                assert "log in" in (await answer.json())["error"]
        viewer, csrf = await logged_in(served, "victor")
        async with (
            viewer,
            viewer.post(stop, json={}, headers={"Origin": served.url, "X-CSRF-Token": csrf}) as answer,
        ):
            assert answer.status == 403
            assert "only an operator" in (await answer.json())["error"]
        operator, csrf = await logged_in(served, "alice")
        async with operator:
            foreign = {"Origin": "http://evil.example", "X-CSRF-Token": csrf}
            async with operator.post(stop, json={}, headers=foreign) as answer:
                assert answer.status == 403
            async with operator.post(stop, json={}, headers={"Origin": served.url}) as answer:
                assert answer.status == 403
                assert "CSRF" in (await answer.json())["error"]
            async with operator.post(stop, json={}) as answer:  # neither Origin nor Referer
                assert answer.status == 403
        assert served.store.run(run).state == "running"  # nothing above reached the run


async def test_the_users_file_counts_as_it_is_now_not_as_it_was_at_start(tmp_path: Path) -> None:
    lab = make_lab(tmp_path, anonymous=True)
    assert lab.web is not None
    users = lab.web.users
    async with serving(lab, jobs=("ch1",)) as served:
        stop = f"{served.url}/api/runs/{served.run_of('ch1')}/stop"
        alice, alice_csrf = await logged_in(served, "alice")
        victor, _ = await logged_in(served, "victor")
        add_user(users, "carol", Role.OPERATOR, PASSWORDS["carol"])
        carol, _ = await logged_in(served, "carol")  # added while the daemon runs: no restart
        async with alice, victor, carol:
            remove_user(users, "alice")
            headers = {"Origin": served.url, "X-CSRF-Token": alice_csrf}
            async with alice.post(stop, json={}, headers=headers) as answer:
                assert answer.status == 403
                assert "log in" in (await answer.json())["error"]
            assert (await boot(alice, f"{served.url}/"))["user"] is None
            assert served.store.run(served.run_of("ch1")).state == "running"

            add_user(users, "victor", Role.OPERATOR, PASSWORDS["victor"])  # a new role: log in again
            assert (await boot(victor, f"{served.url}/"))["user"] is None
            victor_again, _ = await logged_in(served, "victor")
            async with victor_again:
                assert (await boot(victor_again, f"{served.url}/"))["can_control"] is True

            users.write_text(users.read_text() + "[users.dave\n")  # an edit that breaks the file
            assert (await boot(carol, f"{served.url}/"))["user"] is None
            async with carol.post(
                f"{served.url}/login",
                json={"user": "carol", "password": PASSWORDS["carol"]},
                headers={"Origin": served.url},
            ) as answer:
                assert answer.status == 401
                assert "users file does not read" in (await answer.json())["error"]


async def test_a_removed_users_open_live_feed_is_closed(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)  # no anonymous viewing: without a session nobody may look
    assert lab.web is not None
    async with serving(lab, jobs=("ch1",)) as served:
        victor, _ = await logged_in(served, "victor")
        async with victor, victor.ws_connect(f"{served.url}/api/live") as feed:
            assert (await feed.receive(timeout=5.0)).type is aiohttp.WSMsgType.TEXT
            remove_user(lab.web.users, "victor")
            while (message := await feed.receive(timeout=5.0)).type is aiohttp.WSMsgType.TEXT:
                pass  # what was on its way already
            assert message.type is aiohttp.WSMsgType.CLOSE
            assert (message.data, message.extra) == (4001, "logged out: log in again")


async def test_without_anonymous_viewing_a_visitor_is_sent_to_log_in(tmp_path: Path) -> None:
    async with serving(make_lab(tmp_path), jobs=("ch1",)) as served, aiohttp.ClientSession() as visitor:
        async with visitor.get(f"{served.url}/", allow_redirects=False) as answer:
            assert answer.status == 302
            assert answer.headers["Location"] == "/login"
        async with visitor.get(f"{served.url}/api/lab") as answer:
            assert answer.status == 401
        assert (await boot(visitor, f"{served.url}/login"))["live"] is False  # no feed to knock on
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:  # refused before the upgrade
            await visitor.ws_connect(f"{served.url}/api/live")
        assert refused.value.status == 401


async def test_bad_requests_get_sentences_not_tracebacks(tmp_path: Path) -> None:
    async with serving(make_lab(tmp_path), jobs=("ch1",)) as served:
        client, csrf = await logged_in(served, "alice")
        headers = {"Origin": served.url, "X-CSRF-Token": csrf}
        async with client:
            page = await boot(client, f"{served.url}/runs/4242")
            assert (page["status"], page["page"]) == (404, "notfound")
            assert "no run 4242" in page["message"]
            async with client.get(f"{served.url}/api/runs/4242/series") as answer:
                assert answer.status == 404
                assert "no run 4242" in (await answer.json())["error"]
            async with client.get(f"{served.url}/api/runs/1/series?t0=5&t1=4") as answer:
                assert answer.status == 400
            async with client.get(f"{served.url}/api/runs/1/series?t0=soon") as answer:
                assert answer.status == 400
                assert "not a number" in (await answer.json())["error"]
            huge = {"channel": "ch2", "name": "huge.yaml", "text": "#" * (3 * 1024 * 1024), "cell": {}}
            async with client.post(f"{served.url}/api/protocols/check", json=huge, headers=headers) as answer:
                assert answer.status == 413
                assert "up to 1024 kB" in (await answer.json())["error"]
            just_over = huge | {"text": "#" * (1024 * 1024 + 10)}
            async with client.post(
                f"{served.url}/api/protocols/check", json=just_over, headers=headers
            ) as answer:
                assert answer.status == 413
            nowhere = {"channel": "ch9", "name": "x.yaml", "text": E1, "cell": {}}
            async with client.post(
                f"{served.url}/api/protocols/submit", json=nowhere, headers=headers
            ) as answer:
                assert answer.status == 400
                assert "no channel 'ch9'" in (await answer.json())["error"]
        assert [j["channel"] for j in served.store.jobs.list()] == ["ch1"]  # nothing was queued


async def test_wrong_passwords_are_refused_then_the_name_is_locked_out(tmp_path: Path) -> None:
    async with serving(make_lab(tmp_path), jobs=()) as served, aiohttp.ClientSession() as client:
        answers = []
        for _ in range(6):
            async with client.post(
                f"{served.url}/login",
                json={"user": "alice", "password": "guess"},
                headers={"Origin": served.url},
            ) as answer:
                answers.append((answer.status, (await answer.json())["error"]))
        assert answers[0] == (401, "wrong user name or password")
        assert answers[-1][0] == 401
        assert "too many failed logins" in answers[-1][1]
        right = {"user": "alice", "password": PASSWORDS["alice"]}
        async with client.post(f"{served.url}/login", json=right, headers={"Origin": served.url}) as answer:
            assert answer.status == 401  # locked out, even with the right password, for a while
        async with client.post(
            f"{served.url}/login", json=right, headers={"Origin": "http://evil.example"}
        ) as answer:
            assert answer.status == 403


async def test_https_with_the_configured_certificate_and_a_secure_cookie(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
            ),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    plain = make_lab(tmp_path)
    assert plain.web is not None
    lab = plain.model_copy(update={"web": plain.web.model_copy(update={"tls_cert": cert, "tls_key": key})})
    store = Store(lab.database)
    task = asyncio.create_task(Daemon(lab).run())
    url = f"https://127.0.0.1:{plain.web.port}"
    import ssl

    trust = ssl.create_default_context(cafile=str(cert))
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as client:
            for _ in range(200):
                try:
                    answer = await client.post(
                        f"{url}/login",
                        json={"user": "alice", "password": PASSWORDS["alice"]},
                        headers={"Origin": url},
                    )
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            assert answer.status == 200
            cookie = answer.headers["Set-Cookie"]
            assert "Secure" in cookie
            assert "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        store.close()


async def test_a_store_is_served_read_only_by_cyclerd_web(tmp_path: Path) -> None:
    lab = make_lab(tmp_path)
    async with serving(lab, jobs=("ch1",)) as served:
        run = served.run_of("ch1")
        while not len(served.store.cycles(run)["cycle"]):
            await asyncio.sleep(0.05)
    port = free_port()
    runner, dashboard = await serve_store(lab.database, Web(port=port, anonymous=True), Roster(Users()))
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{url}/api/lab") as answer:
                tiles = (await answer.json())["channels"]
            assert [t["name"] for t in tiles] == ["ch1"]
            async with client.get(f"{url}/api/runs/{run}/series?points=100") as answer:
                series = await answer.json()
            assert 0 < len(series["t"]) <= 2 * 100 + 2
            page = await boot(client, f"{url}/runs/{run}")
            assert (page["live"], page["can_control"]) == (False, False)
            async with client.post(f"{url}/api/runs/{run}/stop", json={}, headers={"Origin": url}) as answer:
                assert answer.status == 403
            async with client.get(f"{url}/api/live") as answer:
                assert answer.status == 404
    finally:
        await app.stop(runner, dashboard)


def test_web_settings_are_checked_at_their_line(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(
        'lab = "l"\n\n[web]\nport = 8080\ntls_cert = "c.pem"\n\n[[channels]]\nname = "a"\nsim = "mgagsn"\n'
    )
    with pytest.raises(ProtocolError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert isinstance(problem, Problem)
    assert problem.line == 3
    assert "tls_cert and tls_key go together" in problem.message


def test_doctor_says_what_keeps_the_dashboard_from_starting(tmp_path: Path) -> None:
    from cyclerd.doctor.dashboard import check_dashboard
    from cyclerd.doctor.verdict import Verdict

    lab = make_lab(tmp_path)
    assert lab.web is not None
    verdicts = {c.name: c for c in check_dashboard(lab.web, daemon_running=False)}
    assert verdicts["dashboard users"].verdict is Verdict.OK
    assert "1 operator(s)" in verdicts["dashboard users"].detail
    assert verdicts["dashboard port"].verdict is Verdict.OK
    bad = tmp_path / "bad.toml"
    bad.write_text('[users.bob]\nrole = "admin"\npassword = "x"\n')
    exposed = lab.web.model_copy(update={"users": bad, "bind": "0.0.0.0"})
    verdicts = {c.name: c for c in check_dashboard(exposed, daemon_running=False)}
    assert verdicts["dashboard users"].verdict is Verdict.FAIL
    assert "'admin'" in verdicts["dashboard users"].detail
    assert verdicts["dashboard tls"].verdict is Verdict.WARN
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = lab.web.model_copy(update={"port": taken.getsockname()[1]})
        (port,) = [c for c in check_dashboard(busy, daemon_running=False) if c.name == "dashboard port"]
    assert port.verdict is Verdict.FAIL
    assert "run without its dashboard" in port.detail


async def test_a_dashboard_that_cannot_listen_leaves_the_channels_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        lab = make_lab(tmp_path, port=taken.getsockname()[1]).model_copy(update={"sim_speed": None})
        with Store(lab.database) as store:
            store.jobs.submit("ch1", "E1", E1.replace("count: 250", "count: 2"), "e1.yaml", {})
        await asyncio.wait_for(Daemon(lab).run(until_idle=True), 60)
    with Store(lab.database) as store:
        assert [job["state"] for job in store.jobs.list()] == ["done"]
        assert store.runs()[0].state == "completed"
    said = [r.getMessage() for r in caplog.records if "dashboard" in r.getMessage()]
    assert any("cannot listen" in line and "the channels run without it" in line for line in said)


async def test_a_visitor_sent_to_log_in_comes_back_to_the_whole_address(tmp_path: Path) -> None:
    async with serving(make_lab(tmp_path), jobs=()) as served, aiohttp.ClientSession() as visitor:
        wanted = "/history?channel=ch1&state=completed"
        async with visitor.get(f"{served.url}{wanted}", allow_redirects=False) as answer:
            assert answer.status == 302
            login = yarl.URL(answer.headers["Location"])
        assert login.path == "/login"
        assert login.query["next"] == wanted
        async with visitor.get(f"{served.url}/static/main.js") as answer:
            assert answer.content_type in ("text/javascript", "application/javascript")


async def test_the_cycles_shown_are_the_reports_figures(tmp_path: Path) -> None:
    from cyclerd.analysis.cycles import coulombic_efficiencies, cumulative_ce
    from cyclerd.analysis.plot_data import load_run

    lab = make_lab(tmp_path).model_copy(update={"sim_speed": None})
    with Store(lab.database) as store:
        store.jobs.submit("ch1", "E1", E1.replace("count: 250", "count: 6"), "e1.yaml", {})
    await asyncio.wait_for(Daemon(lab).run(until_idle=True), 60)
    with Store(lab.database) as store:
        run = store.runs()[0].id
        cycles = load_run(store, run).cycles
    shown = await read_of_store(lab, f"/api/runs/{run}/cycles")
    assert shown["cycle"] == [c.cycle for c in cycles] == [1, 2, 3, 4, 5, 6]
    assert (shown["forward_label"], shown["reverse_label"]) == ("plated", "stripped")
    assert shown["ce_percent"] == pytest.approx(100 * coulombic_efficiencies(cycles))
    assert shown["cumulative_ce_percent"] == pytest.approx(100 * cumulative_ce(cycles))
    assert shown["reverse_mAh"] == pytest.approx([c.reverse_As / 3.6 for c in cycles])


async def test_the_spectrum_panel_shows_the_reports_fits(tmp_path: Path) -> None:
    from cyclerd.analysis.eis_trends import spectrum_trends

    lab = make_lab(tmp_path).model_copy(update={"sim_speed": None})
    lab = lab.model_copy(update={"channels": [lab.channels[0].model_copy(update={"sim": "mgagsn-pvdf"})]})
    with Store(lab.database) as store:
        text = (LIBRARY / "insitu_eis.yaml").read_text()
        store.jobs.submit("ch1", "E5", text, "insitu_eis.yaml", {})
    await asyncio.wait_for(Daemon(lab).run(until_idle=True), 120)
    with Store(lab.database) as store:
        run = store.runs()[0].id
        report = spectrum_trends(store, run)
        last = store.spectra(run)[-1]
    shown = await read_of_store(lab, f"/api/runs/{run}/spectrum")
    assert 2 <= len(report.t_s) <= 24  # every spectrum is in the trend
    assert shown["trend"]["t_s"] == pytest.approx(list(report.t_s))
    fitted = shown["trend"]["resistances_ohm"]
    assert fitted["R_b"] == pytest.approx(list(report.R_b_ohm))
    assert fitted["R_CT"] == pytest.approx(list(report.R_CT_ohm))
    sei = [math.nan if v is None else v for v in fitted["R_SEI"]]
    assert sei == pytest.approx(list(report.R_SEI_ohm), nan_ok=True)
    latest = shown["latest"]
    assert latest["sequence"] == last["sequence"]
    assert latest["z_real_ohm"] == pytest.approx(list(last["impedance_ohm"].real))
    assert latest["fit"]["circuit"] == report.circuit[-1]
