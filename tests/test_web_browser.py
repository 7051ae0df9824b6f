"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a real daemon
process with four simulated channels paced at 20 000 simulated seconds per second.

Screenshots of the pages are kept in build/test-artifacts/dashboard/ (or $CYCLERD_ARTIFACTS) for
people to look at: labels, units, legibility.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from mosquitto import free_port
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import sync_playwright

from cyclerd.store.database import Store
from cyclerd.web.users import Role, add_user, remove_user

pytestmark = pytest.mark.slow  # a daemon process and a browser: ~30 s of wall time in all

CYCLERD = str(Path(sys.executable).parent / "cyclerd")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
E1 = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
ALICE = ("alice", "alice-pass-1")
ARTIFACTS = Path(os.environ.get("CYCLERD_ARTIFACTS", Path(__file__).parents[1] / "build" / "test-artifacts"))


@dataclass
class Lab:
    url: str
    database: Path
    folder: Path

    def api(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}") as answer:  # anonymous viewing is on
            return json.load(answer)

    def run_of(self, channel: str) -> int:
        runs = self.api(f"/api/runs?channel={channel}")["runs"]
        return int(runs[0]["id"])


@contextmanager
def serving(folder: Path, channels: int, anonymous: bool) -> Iterator[Lab]:
    """A `cyclerd serve` process of `channels` simulated channels, each running E1, until the
    block ends; ready once the dashboard answers and every run is running."""
    port = free_port()
    add_user(folder / "users.toml", ALICE[0], Role.OPERATOR, ALICE[1])
    listed = "".join(
        f'[[channels]]\nname = "ch{i}"\nsim = "mgagsn"\nseed = {i}\n\n' for i in range(1, channels + 1)
    )
    (folder / "lab.toml").write_text(
        'lab = "browser-lab"\ndatabase = "lab.db"\nsim_speed = 20000\n\n'
        f'[web]\nport = {port}\nusers = "users.toml"\nanonymous = {str(anonymous).lower()}\n\n{listed}'
    )
    with Store(folder / "lab.db") as store:
        for i in range(1, channels + 1):
            store.jobs.submit(f"ch{i}", "E1", E1, "plating_stripping.yaml", {"cell": f"MgAgSn-{i}"})
    log = (folder / "serve.log").open("w")
    daemon = subprocess.Popen(
        [CYCLERD, "serve", "--config", str(folder / "lab.toml")],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    served = Lab(f"http://127.0.0.1:{port}", folder / "lab.db", folder)
    try:
        deadline = time.monotonic() + 30
        while not _ready(served, channels):
            assert daemon.poll() is None, (folder / "serve.log").read_text()
            assert time.monotonic() < deadline, (folder / "serve.log").read_text()
            time.sleep(0.1)
        yield served
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        log.close()


def _ready(served: Lab, channels: int) -> bool:
    try:
        with urllib.request.urlopen(f"{served.url}/login"):
            pass
    except (urllib.error.URLError, ConnectionError):
        return False
    with Store(served.database) as store:
        return sum(run.state == "running" for run in store.runs()) == channels


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with serving(tmp_path_factory.mktemp("weblab"), channels=4, anonymous=True) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        message = (
            "CHROMIUM IS NOT INSTALLED: the dashboard was NOT checked in a browser. "
            "Install it with `make chromium` (Debian package `chromium`); CI does."
        )
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    yield opened
    context.close()
    expected = ("403", "401", "404", "Failed to load resource")  # what the tests provoke
    assert [p for p in problems if not any(e in p for e in expected)] == []


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "dashboard" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    return path


def wait_until(page: Any, condition: str, arg: Any = None, timeout_s: float = 10.0) -> None:
    """Until the JavaScript `condition` holds in the page. (Playwright's own waiting evaluates a
    string in the page, which the dashboard's Content-Security-Policy forbids, as it should.)"""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(condition, arg):
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {condition}"
        time.sleep(0.05)


def log_in(page: Any, lab: Lab, then: str) -> None:
    """Log in as the operator from the login page, which sends the browser on to `then`."""
    page.goto(f"{lab.url}/login?next={then}")
    page.fill("#login-user", ALICE[0])
    page.fill("#login-password", ALICE[1])
    page.click("#login-submit")
    page.wait_for_url(f"{lab.url}{then}")


def field(page: Any, channel: str, name: str) -> str:
    text: str = page.locator(f'[data-channel="{channel}"] [data-field="{name}"]').inner_text()
    return text


def test_every_tile_shows_its_channel_and_moves_without_a_reload(lab: Lab, page: Any) -> None:
    page.goto(lab.url)
    for i in range(1, 5):
        tile = page.locator(f'[data-channel="ch{i}"]')
        tile.wait_for()
        assert f"ch{i}" in field(page, f"ch{i}", "name")
        assert field(page, f"ch{i}", "cell") == f"MgAgSn-{i}"
    page.evaluate("window.stillTheSamePage = true")
    wait_until(page, "() => document.querySelector('#live')?.textContent.includes('live')")
    before = {name: field(page, "ch1", name) for name in ("cycle", "voltage")}
    for name, was in before.items():
        wait_until(
            page,
            "([selector, was]) => document.querySelector(selector).textContent !== was",
            [f'[data-channel="ch1"] [data-field="{name}"]', was],
        )
    assert page.evaluate("window.stillTheSamePage") is True  # changed in place, not by a reload
    assert " V" in field(page, "ch1", "voltage") or "mV" in field(page, "ch1", "voltage")
    assert "A" in field(page, "ch1", "current")
    assert page.locator('[data-channel="ch1"] .spark').count() == 1
    screenshot(page, "lab-view")
    page.goto(f"{lab.url}/?large=1")
    page.locator('[data-channel="ch4"]').wait_for()
    screenshot(page, "lab-view-large")


def test_a_run_page_plots_the_run_and_lists_its_events(lab: Lab, page: Any) -> None:
    run = lab.run_of("ch2")
    page.goto(f"{lab.url}/runs/{run}")
    wait_until(page, "() => Number(document.body.dataset.plotPoints || 0) > 100")
    assert page.locator("#plot-vi canvas").count() >= 1
    # Zoom: drag across the middle of the plot; the page fetches that range's detail.
    box = page.locator("#plot-vi .u-over").bounding_box()
    assert box is not None
    middle = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.4, middle)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, middle, steps=5)
    page.mouse.up()
    wait_until(page, "() => runView.series.zoom !== null")
    zoomed = page.evaluate("runView.series.zoom")
    wait_until(page, "() => runView.series.shown.samples < runView.series.whole.samples")  # the detail came
    # Pan: half a range back, the same width.
    page.get_by_role("button", name="Earlier: pan back by half the range shown").click()
    panned = page.evaluate("runView.series.zoom")
    assert abs((panned[1] - panned[0]) - (zoomed[1] - zoomed[0])) < 1e-9
    assert panned[0] < zoomed[0]
    page.get_by_role("button", name="Show the whole run (or double-click the plot)").click()
    wait_until(page, "() => runView.series.zoom === null")
    page.locator("#events tr").first.wait_for()
    assert "run started" in page.locator("#events").inner_text()
    wait_until(page, "() => document.querySelector('#plot-cycles canvas') !== null")
    screenshot(page, "run-page")


def test_an_anonymous_visitor_sees_no_control(lab: Lab, page: Any) -> None:
    run = lab.run_of("ch3")
    page.goto(f"{lab.url}/runs/{run}")
    wait_until(page, "() => Number(document.body.dataset.plotPoints || 0) > 0")
    assert page.locator("[data-action]").count() == 0
    assert page.get_by_role("link", name="Log in").count() == 1
    assert page.get_by_role("link", name="Submit").count() == 0
    refused = page.evaluate(
        """async (run) => (await fetch(`/api/runs/${run}/stop`, {method: "POST", body: "{}",
              headers: {"Content-Type": "application/json"}})).status""",
        run,
    )
    assert refused == 403
    assert lab.api(f"/api/runs/{run}")["state"] == "running"


def test_an_operator_logs_in_and_stops_a_run_and_the_event_names_them(lab: Lab, page: Any) -> None:
    run = lab.run_of("ch4")
    log_in(page, lab, f"/runs/{run}")
    page.on("dialog", lambda dialog: dialog.accept())
    page.locator('[data-action="stop"]').click()
    deadline = time.monotonic() + 10
    while lab.api(f"/api/runs/{run}")["state"] != "stopped":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    wait_until(
        page, "() => document.querySelector('#events').textContent.includes('stop requested by alice')"
    )
    screenshot(page, "run-page-stopped")


def test_a_foreign_page_cannot_act_for_a_logged_in_operator(lab: Lab, page: Any, tmp_path: Path) -> None:
    run = lab.run_of("ch1")
    log_in(page, lab, "/")
    # Another site on this machine (another port: same-site, so the session cookie goes along).
    (tmp_path / "index.html").write_text(
        "<!doctype html><title>elsewhere</title><script>"
        f"fetch('{lab.url}/api/runs/{run}/stop', {{method: 'POST', mode: 'no-cors', credentials: 'include',"
        " body: '{}'}).then(() => document.title = 'sent', () => document.title = 'sent');</script>"
    )
    port = free_port()
    elsewhere = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                page.goto(f"http://127.0.0.1:{port}/")
                break
            except PlaywrightError:  # not listening yet
                assert time.monotonic() < deadline
                time.sleep(0.1)
        wait_until(page, "() => document.title === 'sent'")
    finally:
        elsewhere.terminate()
        elsewhere.wait(10)
    time.sleep(0.5)  # a stop that got through would show at once; nothing else to wait on
    assert lab.api(f"/api/runs/{run}")["state"] == "running"


def test_a_bad_protocol_shows_the_errors_validate_prints(lab: Lab, page: Any, tmp_path: Path) -> None:
    log_in(page, lab, "/submit")
    broken = tmp_path / "broken.yaml"
    broken.write_text(E1.replace("count: 250", "cuont: 250"))
    page.set_input_files("#protocol-file", str(broken))
    wait_until(page, "() => document.querySelector('#protocol-text').value.includes('cuont')")
    page.click("#check")
    page.locator("#errors").wait_for()
    validate = subprocess.run(
        [CYCLERD, "validate", "broken.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    shown = page.locator("#errors").inner_text()
    said = [line for line in validate.stderr.splitlines() if "broken.yaml:" in line]
    assert said
    assert said[0] in shown
    assert page.locator("#submit").is_disabled()
    screenshot(page, "submit-errors")
    huge = tmp_path / "huge.yaml"
    huge.write_text("# nothing but a comment\n" * 80_000)  # ~1.9 MB, past the 1 MB limit
    page.set_input_files("#protocol-file", str(huge))
    wait_until(page, "() => document.querySelector('#form-message').textContent.includes('huge.yaml')")
    assert "at most 1 MiB" in page.locator("#form-message").inner_text()
    assert "nothing but a comment" not in page.locator("#protocol-text").input_value()  # not taken in


def test_an_unknown_run_is_a_404_page(lab: Lab, page: Any) -> None:
    answer = page.goto(f"{lab.url}/runs/987654")
    assert answer is not None
    assert answer.status == 404
    page.locator("#notfound-message").wait_for()
    assert "no run 987654" in page.locator("#notfound-message").inner_text()


def test_a_page_whose_user_is_taken_out_of_the_users_file_goes_to_the_login(
    page: Any, tmp_path: Path
) -> None:
    with serving(tmp_path, channels=1, anonymous=False) as private:
        log_in(page, private, "/")
        page.locator('[data-channel="ch1"]').wait_for()
        remove_user(tmp_path / "users.toml", ALICE[0])
        page.wait_for_url(f"{private.url}/login", timeout=10_000)  # the live feed's next flush
