"""`cyclerd report`: one self-contained HTML page, checked for its numbers and opened in headless Chromium.

The browser is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`, no new
Python dependency): it reports console errors, uncaught exceptions and failed loads with their
levels, every request the page makes, and takes a full-page screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import re
import selectors
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat
from typer.testing import CliRunner

from cyclerd.analysis.key_figures import summarise_run
from cyclerd.analysis.paper import reference
from cyclerd.analysis.plot_data import load_run
from cyclerd.analysis.report import build_report
from cyclerd.cli.main import app
from cyclerd.store.database import Store

LIBRARY = files("cyclerd.protocols") / "library"
cli = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
E1_PRESETS = (("mgagsn", 1), ("mg", 1), ("ag", 2), ("sn", 3))


def simulate(tmp: Path, db: Path, preset: str, seed: int, text: str, *extra: str) -> None:
    path = tmp / f"{preset}.yaml"
    path.write_text(text)
    result = cli.invoke(
        app, ["run", str(path), "--sim", preset, "--seed", str(seed), "--db", str(db), *extra]
    )
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def e1_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """E1 on the four seed electrodes (Fig. 2), 15 cycles; single seeds made to short within them."""
    tmp = tmp_path_factory.mktemp("e1")
    db = tmp / "e1.db"
    text = (LIBRARY / "plating_stripping.yaml").read_text().replace("count: 250", "count: 15")
    for preset, seed in E1_PRESETS:
        early_short = () if preset == "mgagsn" else ("--set", "short_n0_cycles=6")
        simulate(tmp, db, preset, seed, text, *early_short)
    return db


# -- the page's content --------------------------------------------------------------------------


def test_report_holds_the_summary_numbers_and_the_papers(e1_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "e1.html"
    result = cli.invoke(app, ["report", "1", "2", "3", "4", "--db", str(e1_db), "--output", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    with Store(e1_db) as store:
        for run_id, (preset, _) in enumerate(E1_PRESETS, start=1):
            summary = summarise_run(load_run(store, run_id))
            stored_ce = store.cycles(run_id)["coulombic_efficiency"]
            assert summary.ice == stored_ce[0]
            assert f"{100 * summary.ice:.1f} %" in page
            assert summary.average_ce is not None
            assert summary.average_cycles is not None
            first, last = summary.average_cycles
            assert f"{100 * summary.average_ce:.2f} %" in page
            assert f"cycles {first}–{last}" in page
            assert f"run {run_id} · {preset}" in page
            if preset == "mgagsn":
                assert summary.short is None
                assert (first, last) == (2, 15)
            else:
                assert summary.short is not None
                assert last == summary.short.cycle - 1  # the shorted cycle is not averaged
                assert f"cycle {summary.short.cycle}</span>" in page
    for paper in ("paper: 84.5 %", "paper: 68.5 %", "paper: 76.2 %", "paper: 72.7 %"):
        assert paper in page
    # The paper's average CE and life are over > 230 cycles; a 15-cycle protocol is not compared with them.
    assert "paper: 99.62 %" not in page
    assert "average CE and life over 230 cycles; this protocol plans 15" in page
    # Fig. 2 side by side: the cycling figures, voltage–time per run; no EIS, no retention here.
    for title in ("First-cycle voltage profile", "Coulombic efficiency", "Cumulative coulombic efficiency",
                  "Voltage against time"):  # fmt: skip
        assert f"<b>{title}.</b>" in page
    assert "Nyquist" not in page
    assert "Capacity retention" not in page
    assert page.count("short_circuit</span>") == 3  # the events table


def test_report_is_self_contained(e1_db: Path) -> None:
    with Store(e1_db) as store:
        page = build_report(store, [1])
    assert "<script" not in page
    # Nothing to fetch: every src is inline data and no stylesheet or font is linked.
    assert all(src.startswith("data:image/svg+xml;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert "<link" not in page
    assert "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page


def test_report_escapes_what_users_typed(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    text = (LIBRARY / "plating_stripping.yaml").read_text().replace("count: 250", "count: 1")
    text = re.sub(r"^name: .*$", 'name: "<script>alert(1)</script> & <b>bold</b>"', text, flags=re.M)
    text = text.replace("binder: Elastane", 'binder: "<img src=x onerror=alert(2)>"')
    simulate(tmp_path, db, "mgagsn", 1, text)
    with Store(db) as store:
        page = build_report(store, [1])
    assert "<script" not in page
    assert "<img src=x" not in page
    assert "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page


def test_report_has_impedance_for_spectra_and_retention_for_full_cells(tmp_path: Path) -> None:
    db = tmp_path / "mixed.db"
    e4 = (LIBRARY / "eis_after_cycling.yaml").read_text().replace("count: 5", "count: 1")
    simulate(tmp_path, db, "mgagsn-pvdf", 1, e4)
    full = (LIBRARY / "cycling.yaml").read_text().replace("count: 100", "count: 3")
    simulate(tmp_path, db, "ncm811-anodeless", 3, full)
    with Store(db) as store:
        eis_page = build_report(store, [1])
        full_page = build_report(store, [2])
    assert "<b>Nyquist plot, run 1 · mgagsn-pvdf.</b>" in eis_page
    assert "Fitted equivalent circuits" in eis_page
    assert "after cycle 1" in eis_page
    assert "Capacity retention" not in eis_page
    assert "<b>Capacity retention.</b>" in full_page
    assert "paper: 85.0 %" in full_page  # E8 starts with E7's formation: its ICE compares
    assert "paper: 70 %" not in full_page  # retention after 100 cycles, and this protocol plans 3
    assert "Nyquist" not in full_page


# -- the paper's numbers only where the run reproduces the experiment -------------------------------------

E1_TEXT = (LIBRARY / "plating_stripping.yaml").read_text()
AREA = {"area_m2": 0.785e-4, "capacity_As": None}
HALF_CELL_WORDS = ("seeds alloy", "stripped over plated", "alloying plateau", "stripping branch", "Fig. 2")


def test_a_reference_needs_the_declared_experiment_under_its_conditions() -> None:
    mgagsn = {"preset": "mgagsn", "seed": 1}
    library = reference(E1_TEXT, AREA, mgagsn)
    assert library is not None
    assert (library.ice, library.average_ce, library.cycles) == (0.845, 0.9962, "> 230")
    assert reference(E1_TEXT.replace("1 mA/cm^2", "0.5 mA/cm^2"), AREA, mgagsn) is None
    assert reference(E1_TEXT.replace("experiment: E1", "experiment: E4"), AREA, mgagsn) is None
    assert reference(E1_TEXT.replace("    experiment: E1\n", ""), AREA, mgagsn) is None
    assert reference(E1_TEXT.replace("voltage_above: 1.0 V", "voltage_above: 1.5 V"), AREA, mgagsn) is None
    # What the experiment leaves to the lab does not matter: the backstop, the rest, the logging.
    relaxed = E1_TEXT.replace("duration: 2 h", "duration: 3 h").replace("rest: 1 h", "rest: 6 h")
    assert reference(relaxed.replace("every: 10 s", "every: 30 s"), AREA, mgagsn) == library
    # A shorter loop keeps the ICE but not the figures of a > 230-cycle run.
    short = reference(E1_TEXT.replace("count: 250", "count: 50"), AREA, mgagsn)
    assert short is not None
    assert (short.ice, short.average_ce, short.cycles, short.hours) == (0.845, None, None, None)
    # The paper reports per cell: E1 on a full-cell preset has nothing to compare with.
    assert reference(E1_TEXT, AREA, {"preset": "ncm811-anodeless"}) is None
    assert reference(E1_TEXT, AREA, {"port": "/dev/ttyUSB0"}) is None


@pytest.fixture(scope="module")
def references_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run 1: the library E1 as is; 2: at 0.5 mA/cm²; 3: without metadata.experiment; 4: E8 (full cell)."""
    tmp = tmp_path_factory.mktemp("references")
    db = tmp / "references.db"
    simulate(tmp, db, "mgagsn", 1, E1_TEXT)
    three = E1_TEXT.replace("count: 250", "count: 3")
    simulate(
        tmp, db, "mgagsn", 1, three.replace("1 mA/cm^2", "0.5 mA/cm^2").replace("1 mAh/cm^2", "0.5 mAh/cm^2")
    )
    simulate(tmp, db, "mgagsn", 1, three.replace("    experiment: E1\n", ""))
    full = (LIBRARY / "cycling.yaml").read_text().replace("count: 100", "count: 3")
    simulate(tmp, db, "ncm811-anodeless", 3, full)
    return db


def test_the_library_e1_is_compared_with_the_paper(references_db: Path) -> None:
    shown = cli.invoke(app, ["show", "1", "--db", str(references_db)])
    assert shown.exit_code == 0, shown.output
    assert re.search(r"average CE, cycles 2–250 +99\.\d\d % +99\.62 %", shown.output), shown.output
    assert "paper: E1, MgAgSn-Elastane" in shown.output
    with Store(references_db) as store:
        page = build_report(store, [1])
    assert "paper: 99.62 %" in page
    assert "paper: 84.5 %" in page
    assert "E1 / Fig. 2b" in page


@pytest.mark.parametrize("run_id", [2, 3])
def test_a_modified_protocol_gets_no_paper_numbers(references_db: Path, run_id: int) -> None:
    shown = cli.invoke(app, ["show", str(run_id), "--db", str(references_db)])
    assert shown.exit_code == 0, shown.output
    assert "paper" not in shown.output
    with Store(references_db) as store:
        page = build_report(store, [run_id])
    assert "paper:" not in page
    assert "Fig. 2" not in page  # its figures are not captioned as the paper's


def test_a_full_cell_never_gets_half_cell_captions(references_db: Path) -> None:
    with Store(references_db) as store:
        page = build_report(store, [4])
        both = build_report(store, [1, 4])
    assert "<b>Capacity retention.</b>" in page
    for words in HALF_CELL_WORDS:
        assert words not in page, words
    assert "discharged over charged" in page.lower()
    # A half cell beside a full cell: words for both, the paper's figures for neither.
    assert "stripped over plated charge (discharged over charged in a full cell)" in both.lower()
    assert "Fig. 2" not in both


def test_report_errors(e1_db: Path, tmp_path: Path) -> None:
    missing = cli.invoke(app, ["report", "1", "7", "--db", str(e1_db), "-o", str(tmp_path / "r.html")])
    assert missing.exit_code == 2
    assert "no run 7 in" in missing.output
    wrong = cli.invoke(app, ["report", "1", "--db", str(e1_db), "-o", str(tmp_path / "r.png")])
    assert wrong.exit_code == 2
    assert "end the file name in .html" in wrong.output
    no_store = cli.invoke(app, ["report", "1", "--db", str(tmp_path / "none.db")])
    assert no_store.exit_code == 2
    assert "no store at" in no_store.output
    assert list(tmp_path.iterdir()) == []


# -- in a real browser ---------------------------------------------------------------------------


@dataclass
class Visit:
    """What a page did in the browser: console errors, exceptions, failed loads, requests."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)


class DevTools:
    """The DevTools protocol over Chromium's pipe: JSON messages, each ended by a NUL byte."""

    def __init__(self, to_chrome: int, from_chrome: int) -> None:
        self.to_chrome, self.from_chrome = to_chrome, from_chrome
        self.buffer, self.last_id = b"", 0
        self.events: list[dict[str, Any]] = []
        self.selector = selectors.DefaultSelector()
        self.selector.register(from_chrome, selectors.EVENT_READ)

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            if not self.selector.select(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("chromium did not answer within the time limit")
            chunk = os.read(self.from_chrome, 1 << 20)
            if not chunk:
                raise ConnectionError("chromium closed its DevTools pipe")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        parsed: dict[str, Any] = json.loads(message)
        return parsed

    def call(self, method: str, session: str | None = None, timeout: float = 30.0, **params: Any) -> Any:
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(event.get("method") == method for event in self.events):
            self.events.append(self._next(deadline))


def visit(url: str, screenshot: Path, profile: Path, width: int = 1280) -> Visit:
    """Open `url` in headless Chromium, wait for load, screenshot the whole page, report problems."""
    assert CHROMIUM is not None
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def chrome_fds() -> None:  # --remote-debugging-pipe: commands on fd 3, replies on fd 4
        commands, replies = os.dup(to_chrome_r), os.dup(from_chrome_w)
        os.dup2(commands, 3)
        os.dup2(replies, 4)

    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            "--no-first-run", f"--user-data-dir={profile}", "about:blank"]  # fmt: skip
    process = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=chrome_fds, close_fds=False,
    )  # fmt: skip
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    tools = DevTools(to_chrome_w, from_chrome_r)
    try:
        target = tools.call("Target.createTarget", url="about:blank")["targetId"]
        session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable", session)
        tools.call("Emulation.setDeviceMetricsOverride", session, width=width, height=900,
                   deviceScaleFactor=1, mobile=False)  # fmt: skip
        tools.events.clear()
        tools.call("Page.navigate", session, url=url)
        tools.wait_for("Page.loadEventFired")
        content = tools.call("Page.getLayoutMetrics", session)["cssContentSize"]
        size = (int(content["width"]), int(content["height"]))
        clip = {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}
        shot = tools.call(
            "Page.captureScreenshot", session, format="png", captureBeyondViewport=True, clip=clip
        )
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return _problems(tools.events, size)
    finally:
        try:
            tools.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, ConnectionError, OSError):
            process.kill()
        process.wait(timeout=30)
        os.close(to_chrome_w)
        os.close(from_chrome_r)


def _problems(events: list[dict[str, Any]], size: tuple[int, int]) -> Visit:
    seen = Visit(size=size)
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            seen.errors.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            seen.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            seen.errors.append(f"{params['entry']['text']} ({params['entry'].get('url', '')})")
        elif method == "Network.requestWillBeSent":
            seen.requests.append(params["request"]["url"])
    return seen


@pytest.fixture
def browser() -> str:
    if CHROMIUM is None:
        message = (
            "CHROMIUM IS NOT INSTALLED: the report was NOT checked in a browser. "
            "Install it with `make chromium` (Debian package `chromium`); CI does."
        )
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    return CHROMIUM


def _not_blank(png: Path) -> tuple[int, int]:
    with Image.open(png) as image:
        rgb = image.convert("RGB")
        assert max(ImageStat.Stat(rgb).stddev) > 10  # text, tables, curves: far from one flat colour
        assert len(rgb.getcolors(1 << 20) or []) > 200
        return rgb.size


def test_the_console_check_sees_a_javascript_error_and_a_failed_load(browser: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>broken</title></head><body><h1>broken</h1>"
        "<img src='missing.png' alt='missing'>"
        "<script>console.log('fine'); console.error('deliberate console error'); notAFunction();</script>"
        "</body></html>"
    )
    seen = visit(page.as_uri(), tmp_path / "broken.png", tmp_path / "profile")
    assert any("deliberate console error" in e for e in seen.errors), seen.errors
    assert any("notAFunction is not defined" in e for e in seen.errors), seen.errors
    assert any("ERR_FILE_NOT_FOUND" in e for e in seen.errors), seen.errors
    assert not any(e == "fine" for e in seen.errors)  # console.log is not an error
    assert (tmp_path / "missing.png").as_uri() in seen.requests


def test_e1_comparison_report_opens_in_chromium_without_errors(
    browser: str, e1_db: Path, tmp_path: Path
) -> None:
    """Acceptance: the Fig. 2 comparison of the four seed electrodes, from file://, no network, no errors."""
    report = tmp_path / "e1-comparison.html"
    result = cli.invoke(app, ["report", "1", "2", "3", "4", "--db", str(e1_db), "--output", str(report)])
    assert result.exit_code == 0, result.output
    screenshot = tmp_path / "e1-comparison.png"
    seen = visit(report.as_uri(), screenshot, tmp_path / "profile")
    assert seen.errors == []
    outside = [url for url in seen.requests if not url.startswith(("file://", "data:"))]
    assert outside == []  # works without network
    assert seen.requests[0] == report.as_uri()
    width, height = _not_blank(screenshot)
    assert width == seen.size[0]
    assert 1000 <= width <= 1400  # laid out for the 1280 px window, no horizontal overflow
    assert 2000 <= height <= 12000  # the whole page: summary, runs, four figures, voltage, events
