"""The dashboard's live feed on its own: what a page is sent, thinned without losing a spike, and a
page that falls behind is closed rather than buffered without bound."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cyclerd.engine.sinks import RunEvent
from cyclerd.web.live import BACKLOG, LiveHub, thin


def columns(t0: float, n: int, spike_at: int | None = None) -> dict[str, Any]:
    t = t0 + np.arange(n, dtype=np.float64)
    voltage = 0.01 + 1e-4 * np.sin(t / 50.0)
    if spike_at is not None:
        voltage[spike_at] = -0.4
    return {"t": t, "voltage": voltage, "current": np.full(n, -7.85e-4)}


def drain(page: asyncio.Queue[str | None]) -> list[dict[str, Any]]:
    said = []
    while not page.empty():
        text = page.get_nowait()
        assert text is not None
        said += json.loads(text)  # one message per flush: a list of updates
    return said


@given(arrays(np.float64, st.integers(1, 3000), elements=st.floats(-5, 5)), st.integers(4, 300))
def test_thinning_keeps_each_runs_extremes_and_the_order(voltage: np.ndarray, points: int) -> None:
    t = np.arange(len(voltage), dtype=np.float64)
    kept_t, kept_v, kept_i = thin(t, voltage, -voltage, points)
    assert len(kept_t) <= max(points, len(voltage) if len(voltage) <= points else points)
    assert np.all(np.diff(kept_t) >= 0)
    assert kept_v.min() == voltage.min()
    assert kept_v.max() == voltage.max()
    assert np.array_equal(kept_i, -kept_v)  # the current of the same samples


async def test_a_page_gets_the_latest_states_then_what_arrives_with_its_spike() -> None:
    hub = LiveHub("lab", flush_s=3600)  # flushed by hand below
    hub.publish_state(
        "ch1", {"run": 3, "state": "running", "cycle": 2, "elapsed_s": 100.0, "step_time_s": 40.0}
    )
    page = hub.listen()
    hello, state = drain(page)
    assert hello == {"type": "hello", "lab": "lab"}
    assert state["state"]["cycle"] == 2
    hub.publish_batch("ch1", 3, columns(101.0, 5000, spike_at=4321))
    hub.publish_event("ch1", 3, RunEvent(5100.0, "state", "pause requested by alice", {}))
    hub.flush()
    state, samples, event = drain(page)
    assert state["state"]["elapsed_s"] == 5100.0
    assert state["state"]["step_time_s"] == 5100.0 - 60.0  # the step began at 60 s
    assert len(samples["t"]) <= 60
    assert min(samples["voltage"]) == -0.4
    assert samples["run"] == 3
    assert event["event"]["message"] == "pause requested by alice"
    hub.flush()
    assert drain(page) == []  # nothing new, nothing sent
    await hub.close()


async def test_a_page_that_falls_behind_is_closed_and_the_others_go_on() -> None:
    hub = LiveHub("lab", flush_s=3600)
    slow, fast = hub.listen(), hub.listen()
    drain(fast)
    for i in range(BACKLOG + 5):
        hub.publish_batch("ch1", 1, columns(float(i), 3))
        hub.flush()
        drain(fast)
    assert hub.pages == 1
    said = []
    while not slow.empty():
        said.append(slow.get_nowait())
    assert said == [None]  # told to close, its backlog dropped
    hub.publish_batch("ch1", 1, columns(1e6, 3))
    hub.flush()
    assert [m["type"] for m in drain(fast)] == ["state", "samples"]
    await hub.close()


async def test_without_pages_a_batch_keeps_only_the_tiles_readings() -> None:
    hub = LiveHub("lab")
    hub.publish_batch("ch1", 1, columns(0.0, 100_000))
    hub.publish_event("ch1", 1, RunEvent(1.0, "state", "nobody reads this", {}))
    page = hub.listen()
    hello, state = json.loads(page.get_nowait())
    assert hello["type"] == "hello"
    assert state["state"]["elapsed_s"] == 99_999.0
    assert page.empty()  # neither the samples nor the event were kept for pages that came later
    await hub.close()
