"""The dashboard's performance (issue 18): the run page's first plot of a 470 h run, and a lab of
64 live channels watched by five viewers, each against a baseline measured in the same run.

First plot. One run of 1.8 M samples (E1-like: an hour of plating with its nucleation dip, an
hour of stripping up to the 1 V cutoff, noise, one short spike), written as 3600 batches of 500
through Store.append_samples. Then, best of --repeat each:

- read: t, voltage and current of the whole run from the store (Store.sample_columns), the baseline;
- first open: RunSeries.window(run, None, None, 1600) on a new, empty cache: what opening the run
  page costs (read, then 1600 min/max buckets); target <= 2x read and < 1 s;
- zoom: a window of a twentieth of the run on the warm cache (the store asked only for new blocks);
- sparkline: RunSeries.tail(run, 3600) of a run not held, as the lab page's tiles ask;
- endpoint: `GET /api/runs/{id}/series?points=1600` through the real aiohttp server (serve_store
  on a free loopback port), a new server (so a new Reader: a new connection, nothing held) each
  time, from the request to the parsed JSON. It is the page's first request, so the reader opens
  its connection within it; target <= 2x read and < 1 s;
- browser: Chromium (Playwright) from navigating to /runs/{id} to the plot drawn
  (`body.dataset.plotPoints` set, stamped in the page with performance.now(), whose origin is the
  navigation, and said on its console), a new server and a new browser context (an empty cache)
  each time; target < 1 s. Skipped, and said so, without Chromium or Playwright.

Printed: each in ms and its ratio to `read`. `measure` returns the figures by name and the others
add theirs, so `report` prints every ratio the same way.

Live. A `cyclerd serve` process runs 64 simulated MgAgSn cells (seeds 1-64), each with E1 queued
(250 cycles, ~500 h), paced at --sim-speed 3600 simulated seconds per second: the simulator
computes a step in chunks of up to 4096 s of test time and a plating step lasts 3600 s, so at
3600x every channel stores one batch of ~540 samples about once a second, all the time (at 360x a
channel would store once in 10 s; at 36 000x the daemon falls behind its pace on 2 cores). The
daemon serves [web] on a free port with anonymous viewing and no [mqtt] (so no bus encoder child).
Its CPU is utime + stime from /proc (its own, and any child's) over three windows of
--live-seconds: no viewer, five viewers, no viewer again; each as CPU seconds per wall second,
with the samples and batches stored meanwhile. Added = viewers - mean(without); target added
<= 10 % of without. The windows compare only if the daemon kept its pace in each (a daemon that
falls behind takes all the CPU it is given): checked as the batches stored with viewers >= 90 %
of those without.

The five viewers are WebSocket clients of /api/live in this process (aiohttp, one event loop),
json.loads-ing every message as a page does; with --chromium-viewer one of them is instead a
Chromium page on the lab view. Latency of a "samples" message = its arrival - its `stored_unix`
(when the daemon stored its newest sample; the same machine's clock); target median and p99
<= 1 s. This process's own CPU while the viewers read is printed too: it shares the 2 cores.

Exit 1 when a target is missed. A quick run: --samples 200000 --repeat 2 --live-seconds 8.

Run: .venv/bin/python bench/dashboard.py [--samples 1800000] [--batch 500] [--repeat 5]
     [--live-seconds 30] [--channels 64] [--viewers 5] [--sim-speed 3600] [--chromium-viewer]
     [--skip-browser] [--skip-plot | --skip-live]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from cyclerd.daemon.config import Web
from cyclerd.store.database import Store
from cyclerd.web.app import bound_port, stop
from cyclerd.web.series import RunSeries
from cyclerd.web.serve import serve_store
from cyclerd.web.users import Users

SAMPLES = 1_800_000
BATCH = 500
HOURS = 470.0
AREA_CM2 = 0.785
PLATE_S, STRIP_S = 3600.0, 3586.0  # 1 mAh/cm^2 at 1 mA/cm^2, stripped at 99.6 % CE


def e1_like(t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Voltage and current of a seed-layer half-cell cycled as E1, vectorised over test time."""
    phase = t % (PLATE_S + STRIP_S)
    plating = phase < PLATE_S
    strip = np.clip((phase - PLATE_S) / STRIP_S, 0.0, 1.0)
    voltage = np.where(
        plating,
        -0.012 - 0.03 * np.exp(-phase / 60.0),  # the nucleation dip, then the plating plateau
        0.012 + 0.988 * strip**60,  # the stripping plateau, then the rise to the 1 V cutoff
    )
    voltage += rng.normal(0.0, 3e-4, len(t))
    voltage[len(t) * 2 // 3] = -0.35  # one short spike: the plot must keep it at any zoom
    current = np.where(plating, -1e-3, 1e-3) * AREA_CM2 + rng.normal(0.0, 1e-7, len(t))
    return voltage, current


def make_store(path: Path, samples: int = SAMPLES, batch: int = BATCH) -> int:
    """A store at `path` holding one E1-like run of `samples` over 470 h; its run id."""
    rng = np.random.default_rng(1)
    t = np.linspace(0.0, HOURS * 3600.0, samples)
    voltage, current = e1_like(t, rng)
    cycle = 1 + (t // (PLATE_S + STRIP_S)).astype(np.int64)
    step = 2 * cycle - (t % (PLATE_S + STRIP_S) < PLATE_S)
    with Store(path) as store:
        run = store.create_run("E1 plating/stripping", "ch1", "", {"area_m2": AREA_CM2 * 1e-4}, {})
        for a in range(0, samples, batch):
            part = slice(a, a + batch)
            store.append_samples(
                run,
                {
                    "seq": np.arange(a, min(a + batch, samples)),
                    "t": t[part],
                    "step": step[part],
                    "cycle": cycle[part],
                    "voltage": voltage[part],
                    "current": current[part],
                    "charge": current[part] * (t[part] % (PLATE_S + STRIP_S)),
                    "energy": np.zeros(len(t[part])),
                },
            )
    return run


def best_of(repeat: int, measured: Callable[[], object]) -> float:
    """The shortest of `repeat` timings of `measured`, in ms."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        measured()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def measure(path: Path, run: int, repeat: int = 5) -> dict[str, float]:
    """ms by name, `read` first (the baseline the others are divided by)."""
    with Store(path) as store:
        read = best_of(repeat, lambda: store.sample_columns(run))
        first_open = best_of(repeat, lambda: RunSeries(store).window(run, None, None, 1600))
        warm = RunSeries(store)
        whole = warm.window(run, None, None, 1600)
        assert whole["t_range"] is not None
        t0, t1 = whole["t_range"]
        middle, width = (t0 + t1) / 2, (t1 - t0) / 20
        zoom = best_of(repeat, lambda: warm.window(run, middle - width / 2, middle + width / 2, 1600))
        sparkline = best_of(repeat, lambda: RunSeries(store).tail(run, 3600.0))
    return {"read": read, "first open": first_open, "zoom": zoom, "sparkline": sparkline}


def report(timings: dict[str, float], baseline: str = "read") -> None:
    for name, ms in timings.items():
        print(f"{name:<28} {ms:>9.1f} ms   {ms / timings[baseline]:>6.2f} x {baseline}")


# -- the first plot through the server and in a browser -----------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Says on the console when the run page first shows plotted points: ms after the navigation began
# (performance.now()), so that nothing polls the page while it loads.
PLOTTED = """
const watching = new MutationObserver(() => {
  if (Number(document.body?.dataset.plotPoints || 0) > 0) {
    console.log(`plotted ${performance.now()}`);
    watching.disconnect();
  }
});
watching.observe(document, {subtree: true, attributes: true, attributeFilter: ["data-plot-points"]});
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def served(path: Path) -> AsyncIterator[str]:
    """A new read-only dashboard of the store at `path`, nothing read or held yet; its URL."""
    runner, dashboard = await serve_store(path, Web(port=free_port(), anonymous=True), Users())
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}"
    finally:
        await stop(runner, dashboard)


async def endpoint_first_plot(path: Path, run: int, repeat: int) -> float:
    """ms from asking a cold server for the whole run's plot to its parsed JSON, best of `repeat`."""
    times = []
    for _ in range(repeat):
        async with served(path) as url, aiohttp.ClientSession() as client:
            start = time.perf_counter()  # the page's first request: the reader opens its connection too
            async with client.get(f"{url}/api/runs/{run}/series", params={"points": "1600"}) as answer:
                window = await answer.json()
            times.append(time.perf_counter() - start)
            async with client.get(f"{url}/api/runs/{run}") as answer:
                header = await answer.json()
        assert window["samples_in_range"] == header["samples"], (window["samples_in_range"], header)
    return 1e3 * min(times)


def browser_missing() -> str | None:
    """Why the browser's figure cannot be measured here; None: it can."""
    if CHROMIUM is None:
        return "Chromium is not installed (Debian package `chromium`)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright)"
    return None


@dataclass(frozen=True)
class PageTimes:
    """ms after the navigation began, from the page's own performance entries."""

    plotted: float  # the plot first drawn
    loaded: float  # the page and its scripts (DOMContentLoaded handled)
    series_asked: float  # the series request sent
    series_read: float  # its response received


async def browser_first_plot(path: Path, run: int, repeat: int) -> PageTimes:
    """From navigating to the run page to its plot drawn, a cold server and an empty browser
    cache each time: the fastest of `repeat`."""
    from playwright.async_api import async_playwright

    entries = """() => {
      const loaded = performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd;
      const series = performance.getEntriesByType("resource").find((e) => e.name.includes("/series?"));
      return [loaded, series?.startTime ?? NaN, series?.responseEnd ?? NaN];
    }"""
    times = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for _ in range(repeat):
                async with served(path) as url:
                    context = await browser.new_context(viewport={"width": 1366, "height": 768})
                    try:
                        page = await context.new_page()
                        await page.add_init_script(PLOTTED)
                        said = page.expect_console_message(lambda m: m.text.startswith("plotted "))
                        async with said as message:
                            await page.goto(f"{url}/runs/{run}")
                        plotted = float((await message.value).text.split()[1])
                        times.append(PageTimes(plotted, *await page.evaluate(entries)))
                    finally:
                        await context.close()
        finally:
            await browser.close()
    return min(times, key=lambda page: page.plotted)


async def page_value(page: Any, expression: str, timeout_s: float) -> float:
    """The number `expression` gives in the page once it is not null. (Playwright's own waiting
    evaluates a string in the page, which the dashboard's Content-Security-Policy forbids.)"""
    deadline = time.monotonic() + timeout_s
    while (value := await page.evaluate(expression)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout_s:g} s: {expression}")
        await asyncio.sleep(0.05)
    return float(value)


# -- 64 live channels and five viewers ----------------------------------------------------------

CYCLERD = str(Path(sys.executable).parent / "cyclerd")
E1 = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
CHANNELS, VIEWERS, SIM_SPEED, LIVE_SECONDS = 64, 5, 3600.0, 30.0
SETTLE_S = 5.0  # after every run has started: the first batches, the first cycles' analyses
# Wraps the page's WebSocket so that a Chromium viewer times its "samples" messages as we do ours:
# on arrival, before the page's own handler, while `window.recording`.
LATENCIES = """
window.liveLatencies = [];
window.recording = false;
const Native = window.WebSocket;
window.WebSocket = class extends Native {
  constructor(...args) {
    super(...args);
    this.addEventListener("message", (event) => {
      const arrived = Date.now() / 1000;
      if (!window.recording) return;
      for (const update of JSON.parse(event.data)) {  // each message: the updates of one flush
        if (update.type === "samples") window.liveLatencies.push(arrived - update.stored_unix);
      }
    });
  }
};
"""


def write_lab(folder: Path, channels: int, sim_speed: float, port: int) -> Path:
    """lab.toml of `channels` simulated MgAgSn cells, each with E1 queued; its path."""
    lines = [
        'lab = "bench-lab"',
        'database = "lab.db"',
        f"sim_speed = {sim_speed}",
        "",
        "[web]",
        f"port = {port}",
        "anonymous = true",
        "",
    ]
    for i in range(1, channels + 1):
        lines += ["[[channels]]", f'name = "ch{i}"', 'sim = "mgagsn"', f"seed = {i}", ""]
    (folder / "lab.toml").write_text("\n".join(lines))
    with Store(folder / "lab.db") as store:
        for i in range(1, channels + 1):
            store.jobs.submit(f"ch{i}", "E1", E1, "plating_stripping.yaml", {"cell": f"MgAgSn-{i}"})
    return folder / "lab.toml"


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid`, its children it has waited for, and its live descendants."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        children = [
            int(c) for f in Path(f"/proc/{pid}/task").glob("*/children") for c in f.read_text().split()
        ]
    except FileNotFoundError:  # a child that ended meanwhile: its parent's cutime has it now
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state); the name may hold spaces
    ticks = sum(int(f) for f in fields[11:15])  # fields 14-17: utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK") + sum(cpu_seconds(child) for child in children)


@dataclass(frozen=True)
class Phase:
    """The daemon over one window, per wall second: its CPU seconds, and what it stored. Its CPU
    compares with another window's only if it kept its pace in both (stored as many batches): a
    daemon that falls behind uses all the CPU it is given, which then says nothing of its work."""

    cpu: float
    samples: float
    batches: float


async def phase(pid: int, database: Path, seconds: float) -> Phase:
    """The daemon `pid` (and its children) over the next `seconds`."""
    (samples, batches), cpu, wall = stored(database), cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu, wall = cpu_seconds(pid) - cpu, time.monotonic() - wall
    samples_after, batches_after = stored(database)
    return Phase(cpu / wall, (samples_after - samples) / wall, (batches_after - batches) / wall)


def stored(database: Path) -> tuple[int, int]:
    """Samples and batches the store holds, read without a write lock or a schema check."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        samples, batches = db.execute(
            "SELECT COALESCE(SUM(last_seq - first_seq + 1), 0), COUNT(*) FROM sample_blocks"
        ).fetchone()
    return int(samples), int(batches)


@dataclass
class Viewers:
    """What the viewers' feeds brought while `recording`: messages, and each "samples"
    message's latency from its storing to its arrival."""

    recording: bool = False
    latencies_s: list[float] = field(default_factory=list)
    messages: int = 0
    greeted: int = 0
    dropped: int = 0  # feeds the daemon closed while recording (a viewer that fell behind)

    async def watch(self, client: aiohttp.ClientSession, url: str) -> None:
        async with client.ws_connect(f"{url}/api/live") as feed:
            async for message in feed:
                arrived = time.time()
                for update in json.loads(message.data):  # each message: the updates of one flush
                    if update["type"] == "hello":
                        self.greeted += 1
                    elif self.recording:
                        self.messages += 1
                        if update["type"] == "samples":
                            self.latencies_s.append(arrived - update["stored_unix"])
        if self.recording:
            self.dropped += 1


@dataclass
class LiveFigures:
    phases: dict[str, Phase]  # "no viewer", "viewers", "no viewer again"
    latencies_s: list[float]  # of every viewer's "samples" messages
    chromium_latencies_s: list[float]
    messages: int
    dropped: int
    viewers_cpu: float  # this process and its children but the daemon (Chromium): CPU s per wall s
    running: int  # runs still running at the end

    @property
    def without(self) -> Phase:
        alone = [window for name, window in self.phases.items() if name != "viewers"]
        return Phase(*(statistics.mean(getattr(w, f) for w in alone) for f in ("cpu", "samples", "batches")))

    @property
    def added(self) -> float:
        return self.phases["viewers"].cpu - self.without.cpu


async def measure_live(
    folder: Path, channels: int, viewers: int, sim_speed: float, seconds: float, chromium: bool
) -> LiveFigures:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_lab(folder, channels, sim_speed, port)
    with (folder / "serve.log").open("w") as log:
        daemon = subprocess.Popen([CYCLERD, "serve", "--config", str(config)], stdout=log, stderr=log)
        try:
            async with aiohttp.ClientSession() as client:
                await all_running(client, url, channels, daemon, folder / "serve.log")
                return await phases(client, url, daemon.pid, folder / "lab.db", viewers, seconds, chromium)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


async def all_running(
    client: aiohttp.ClientSession, url: str, channels: int, daemon: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(aiohttp.ClientError):
            async with client.get(f"{url}/api/lab") as answer:
                tiles = (await answer.json())["channels"]
                if sum(tile["state"] == "running" for tile in tiles) == channels:
                    break
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the daemon did not start every run within 60 s:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.2)
    await asyncio.sleep(SETTLE_S)


async def phases(
    client: aiohttp.ClientSession,
    url: str,
    pid: int,
    database: Path,
    viewers: int,
    seconds: float,
    chromium: bool,
) -> LiveFigures:
    """No viewer, `viewers` viewers, no viewer: the daemon in each window of `seconds`."""
    windows = {"no viewer": await phase(pid, database, seconds)}
    feed = Viewers()
    async with chromium_viewer(url, chromium) as page:
        watching = [asyncio.create_task(feed.watch(client, url)) for _ in range(viewers - chromium)]
        deadline = time.monotonic() + 10
        while feed.greeted < len(watching):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{feed.greeted} of {len(watching)} viewers greeted within 10 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # past the feeds' opening (each is sent every channel's state)
        ours = cpu_seconds(os.getpid()) - cpu_seconds(pid)
        if page is not None:
            await page.evaluate("() => { window.recording = true; }")
        feed.recording = True
        windows["viewers"] = await phase(pid, database, seconds)
        feed.recording = False
        ours = (cpu_seconds(os.getpid()) - cpu_seconds(pid) - ours) / seconds
        theirs = [] if page is None else await page.evaluate("() => window.liveLatencies")
        for task in watching:
            task.cancel()
        await asyncio.gather(*watching, return_exceptions=True)
    await asyncio.sleep(1.0)  # the live feed stops flushing once its last page has gone
    windows["no viewer again"] = await phase(pid, database, seconds)
    async with client.get(f"{url}/api/lab") as answer:
        running = sum(tile["state"] == "running" for tile in (await answer.json())["channels"])
    return LiveFigures(
        windows,
        feed.latencies_s + [float(x) for x in theirs],
        [float(x) for x in theirs],
        feed.messages,
        feed.dropped,
        ours,
        running,
    )


@contextlib.asynccontextmanager
async def chromium_viewer(url: str, wanted: bool) -> AsyncIterator[Any]:
    """A Chromium page on the lab view, its feed timed (LATENCIES), while the block runs; None
    when not `wanted`."""
    if not wanted:
        yield None
        return
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1366, "height": 768})
            await page.add_init_script(LATENCIES)
            await page.goto(url)
            live = "() => document.querySelector('#live')?.textContent.includes('live') ? 1 : null"
            await page_value(page, live, 20.0)
            yield page
        finally:
            await browser.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def report_live(figures: LiveFigures, channels: int, viewers: int, chromium: bool) -> None:
    watched = f"{viewers} viewer" + "s" * (viewers != 1)
    for name, window in figures.phases.items():
        print(
            f"daemon, {watched if name == 'viewers' else name:<16} {window.cpu:6.3f} CPU s/s, storing"
            f" {window.samples:>7,.0f} samples/s in {window.batches:4.0f} batches/s"
        )
    share = figures.added / figures.without.cpu
    print(
        f"added by {watched:<14} {figures.added:+6.3f} CPU s/s = {100 * share:+.1f} % of the CPU without;"
        f" {figures.running} of {channels} runs still running at the end"
    )
    kind = f"{viewers - 1} aiohttp + 1 Chromium" if chromium else f"{viewers} aiohttp"
    print(
        f"viewers ({kind}, in this process): {figures.messages:,} messages read by the aiohttp ones,"
        f" {figures.dropped} feeds dropped; {figures.viewers_cpu:.3f} CPU s/s of this process and its"
        " children but the daemon"
    )
    latencies = figures.latencies_s
    print(
        f'latency of {len(latencies):,} "samples" messages: median {percentile(latencies, 50):.3f} s,'
        f" p99 {percentile(latencies, 99):.3f} s, max {max(latencies, default=float('nan')):.3f} s"
    )
    if chromium:
        theirs = figures.chromium_latencies_s
        print(
            f"  of which Chromium's {len(theirs):,}: median {percentile(theirs, 50):.3f} s,"
            f" p99 {percentile(theirs, 99):.3f} s"
        )


# -- the summary --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    figure: str
    measured: str
    target: str
    met: bool


def summary(verdicts: list[Verdict]) -> bool:
    """Print the targets and whether each is met; whether all are."""
    print("\ntargets")
    for v in verdicts:
        print(f"  {v.figure:<36} {v.measured:<28} {v.target:<26} {'pass' if v.met else 'FAIL'}")
    return all(v.met for v in verdicts)


def plot_verdicts(timings: dict[str, float]) -> list[Verdict]:
    """The first plot on the server's side costs at most twice reading its columns, and under a
    second; the browser's (which adds loading the page and its scripts) under a second."""
    read, verdicts = timings["read"], []
    for name, figure, bound in (
        ("first open", "first plot, RunSeries", 2.0),
        ("endpoint", "first plot, through the server", 2.0),
        ("browser", "first plot, Chromium", math.inf),
    ):
        if name in timings:
            ms = timings[name]
            target = "< 1000 ms" + (f", <= {bound:g} x read" if bound < math.inf else "")
            measured = f"{ms:.0f} ms = {ms / read:.2f} x read"
            verdicts.append(Verdict(figure, measured, target, ms < 1000 and ms <= bound * read))
    return verdicts


def live_verdicts(figures: LiveFigures, viewers: int) -> list[Verdict]:
    share = figures.added / figures.without.cpu
    paced = figures.phases["viewers"].batches / figures.without.batches
    median, p99 = percentile(figures.latencies_s, 50), percentile(figures.latencies_s, 99)
    return [
        Verdict(
            f"daemon CPU added by {viewers} viewers",
            f"{100 * share:+.1f} % of without",
            "<= 10 %",
            share <= 0.1,
        ),
        Verdict("update to a viewer, median", f"{median:.3f} s", "<= 1 s", median <= 1.0),
        Verdict("update to a viewer, p99", f"{p99:.3f} s", "<= 1 s", p99 <= 1.0),
        Verdict("viewers' feeds kept open", f"{figures.dropped} dropped", "0", figures.dropped == 0),
        Verdict(
            "daemon's pace with viewers (batches)", f"{100 * paced:.0f} % of without", ">= 90 %", paced >= 0.9
        ),
    ]


def first_plot(options: argparse.Namespace) -> list[Verdict]:
    missing = "--skip-browser" if options.skip_browser else browser_missing()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lab.db"
        start = time.perf_counter()
        run = make_store(path, options.samples, options.batch)
        print(
            f"store: {options.samples:,} samples in {-(-options.samples // options.batch):,} batches,"
            f" written in {time.perf_counter() - start:.1f} s; best of {options.repeat}:"
        )
        timings = measure(path, run, options.repeat)
        timings["endpoint"] = asyncio.run(endpoint_first_plot(path, run, options.repeat))
        page = None if missing else asyncio.run(browser_first_plot(path, run, options.repeat))
    if page is not None:
        timings["browser"] = page.plotted
    report(timings)
    if page is None:
        print(f"browser: skipped ({missing})")
    else:
        print(
            f"browser, its fastest: page and scripts loaded at {page.loaded:.0f} ms, series asked at"
            f" {page.series_asked:.0f} ms and read at {page.series_read:.0f} ms, plot drawn at"
            f" {page.plotted:.0f} ms"
        )
    return plot_verdicts(timings)


def live(options: argparse.Namespace) -> list[Verdict]:
    print(
        f"\nlive: {options.channels} channels at {options.sim_speed:g}x, windows of"
        f" {options.live_seconds:g} s: no viewer, {options.viewers} viewers, no viewer"
    )
    with tempfile.TemporaryDirectory() as folder:
        figures = asyncio.run(
            measure_live(
                Path(folder),
                options.channels,
                options.viewers,
                options.sim_speed,
                options.live_seconds,
                options.chromium_viewer,
            )
        )
    report_live(figures, options.channels, options.viewers, options.chromium_viewer)
    return live_verdicts(figures, options.viewers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-plot", action="store_true", help="only the live part")
    parser.add_argument("--skip-browser", action="store_true", help="the first plot without Chromium")
    parser.add_argument("--skip-live", action="store_true", help="only the first plot")
    parser.add_argument("--live-seconds", type=float, default=LIVE_SECONDS, help="each of the three windows")
    parser.add_argument("--channels", type=int, default=CHANNELS)
    parser.add_argument("--viewers", type=int, default=VIEWERS)
    parser.add_argument("--sim-speed", type=float, default=SIM_SPEED)
    parser.add_argument("--chromium-viewer", action="store_true", help="one of the viewers a Chromium page")
    options = parser.parse_args()
    if options.chromium_viewer and not options.skip_live and (missing := browser_missing()):
        parser.error(f"--chromium-viewer: {missing}")
    verdicts = [] if options.skip_plot else first_plot(options)
    if not options.skip_live:
        verdicts += live(options)
    return 0 if summary(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
