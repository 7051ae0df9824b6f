"""The dashboard's live feed: what the runs' sinks publish, sent to every open page.

The hub is one more publisher beside the MQTT bus (cyclerd.bus.sink.Publisher): the runner's
sinks hand it states, batches, events and spectra as they are stored, so a page sees what the
store holds, never what it does not yet. The runner must not wait on a page, so a hook only
files what arrived; a flush task sends it four times a second. Every page gets the same text,
encoded once per flush, whatever the number of viewers. With nobody watching, a batch costs
a dictionary update (the tiles' latest readings).

Each flush is one WebSocket message, a JSON array of the updates (a send costs as much as the
encoding of a small update, and 64 channels give a hundred of them a second), and the samples
go rounded to what the instruments resolve (1 ms, 1 µV, 1 pA), which halves the text to write.

A page that cannot keep up (a tab in the background on a slow link) is closed rather than
buffered without bound: the page reconnects and reads the lab afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cyclerd.engine.sinks import RunEvent, SpectrumTaken
from cyclerd.web.jsontext import dumps as _encode

log = logging.getLogger(__name__)

FLUSH_S = 0.25  # an update reaches the page within this (plus the network)
TAIL_POINTS = 60  # samples sent per channel per flush at most: the min and max of 30 runs
BACKLOG = 200  # flushes a page may fall behind before it is closed
DECIMALS = {"t": 3, "voltage": 6, "current": 12}  # 1 ms, 1 µV, 1 pA


@dataclass
class _Channel:
    """What arrived for one channel since the last flush, and its latest state."""

    state: dict[str, Any] = field(default_factory=dict)
    step_start_s: float | None = None  # elapsed time at the step's start, for the step time
    left_at: tuple[float, float | None, float | None] | None = None  # (elapsed, max, min) when said
    run: int | None = None
    batches: list[tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]] = field(
        default_factory=list
    )
    stored_unix: float = 0.0  # when the newest of `batches` was stored (the sinks follow the store)
    changed: bool = False


class LiveHub:
    """Collects the lab's live results and sends them to the pages that listen (`listen`)."""

    def __init__(self, lab: str, flush_s: float = FLUSH_S) -> None:
        self.lab = lab
        self.flush_s = flush_s
        self._channels: dict[str, _Channel] = {}
        self._messages: list[dict[str, Any]] = []  # events and spectra, in order
        self._pages: set[asyncio.Queue[str | None]] = set()
        self._flusher: asyncio.Task[None] | None = None

    # -- the Publisher hooks (called by the runner's sinks, on the event loop) -------------

    def track(self, channel: str, run_id: int) -> None:
        self._channel(channel).run = run_id

    def publish_state(self, channel: str, state: Mapping[str, Any]) -> None:
        live = self._channel(channel)
        live.state = dict(state)
        live.run = state.get("run")
        elapsed, step_time = state.get("elapsed_s"), state.get("step_time_s")
        live.step_start_s = None if elapsed is None or step_time is None else elapsed - step_time
        left = (state.get("time_left_s"), state.get("time_left_min_s"))
        live.left_at = None if elapsed is None or left == (None, None) else (elapsed, *left)
        live.changed = True

    def publish_batch(self, channel: str, run_id: int, columns: Mapping[str, Any]) -> None:
        live = self._channel(channel)
        t, voltage, current = columns["t"], columns["voltage"], columns["current"]
        if len(t) == 0:
            return
        live.run = run_id
        self._advance(live, float(t[-1]), float(voltage[-1]), float(current[-1]))
        if self._pages:
            live.batches.append((np.asarray(t), np.asarray(voltage), np.asarray(current)))
            live.stored_unix = time.time()
        live.changed = True

    def publish_event(self, channel: str, run_id: int, event: RunEvent) -> None:
        if self._pages:
            said = {"t_s": _number(event.t_s), "kind": event.kind, "message": event.message}
            self._messages.append({"type": "event", "channel": channel, "run": run_id, "event": said})

    def publish_spectrum(self, channel: str, run_id: int, spectrum: SpectrumTaken) -> None:
        if self._pages:
            self._messages.append(
                {
                    "type": "spectrum",
                    "channel": channel,
                    "run": run_id,
                    "sequence": spectrum.sequence,
                    "t_s": spectrum.t_s,
                }
            )

    # -- pages -----------------------------------------------------------------------------

    def listen(self) -> asyncio.Queue[str | None]:
        """A queue of the texts to send one page, starting with the lab's latest states;
        None in it: the page fell behind and is to be closed."""
        page: asyncio.Queue[str | None] = asyncio.Queue(BACKLOG)
        said: list[dict[str, Any]] = [{"type": "hello", "lab": self.lab}]
        said += [
            {"type": "state", "channel": name, "state": live.state}
            for name, live in self._channels.items()
            if live.state
        ]
        page.put_nowait(_encode(said))
        self._pages.add(page)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_forever(), name="dashboard live feed")
        return page

    def leave(self, page: asyncio.Queue[str | None]) -> None:
        self._pages.discard(page)

    @property
    def pages(self) -> int:
        return len(self._pages)

    async def close(self) -> None:
        for page in list(self._pages):
            self._drop(page)
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher

    # -- sending -----------------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while self._pages:
            await asyncio.sleep(self.flush_s)
            try:
                self.flush()
            except Exception:  # a page's feed must not end on one odd value
                log.exception("the dashboard's live feed could not send an update")
        self._flusher = None

    def flush(self) -> None:
        """Send what arrived since the last flush to every page, as one message."""
        said: list[dict[str, Any]] = []
        for name, live in self._channels.items():
            if not live.changed:
                continue
            live.changed = False
            said.append({"type": "state", "channel": name, "state": live.state})
            if live.batches and live.run is not None:
                t, voltage, current = (np.concatenate(c) for c in zip(*live.batches, strict=True))
                kept = dict(zip(DECIMALS, thin(t, voltage, current, TAIL_POINTS), strict=True))
                message: dict[str, Any] = {"type": "samples", "channel": name, "run": live.run}
                message["stored_unix"] = live.stored_unix
                message |= {key: np.round(kept[key], DECIMALS[key]).tolist() for key in DECIMALS}
                said.append(message)
            live.batches.clear()
        said += self._messages
        self._messages.clear()
        if not said:
            return
        text = _encode(said)
        for page in list(self._pages):
            try:
                page.put_nowait(text)
            except asyncio.QueueFull:
                self._drop(page)

    def _drop(self, page: asyncio.Queue[str | None]) -> None:
        self._pages.discard(page)
        while not page.empty():
            page.get_nowait()
        page.put_nowait(None)

    def _channel(self, name: str) -> _Channel:
        live = self._channels.get(name)
        if live is None:
            live = self._channels[name] = _Channel()
        return live

    @staticmethod
    def _advance(live: _Channel, t: float, voltage: float, current: float) -> None:
        """The tile's readings at the batch's last sample: the step time and the time left
        move on from what the last state said."""
        state = live.state
        state["voltage"], state["current"] = voltage, current
        state["elapsed_s"] = t
        if live.step_start_s is not None:
            state["step_time_s"] = max(t - live.step_start_s, 0.0)
        if live.left_at is not None:
            said_at, high, low = live.left_at
            if high is not None:
                state["time_left_s"] = max(high - (t - said_at), 0.0)
            if low is not None:
                state["time_left_min_s"] = max(low - (t - said_at), 0.0)


def thin(
    t: NDArray[np.float64], voltage: NDArray[np.float64], current: NDArray[np.float64], points: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """At most `points` samples for a live tail: in each of points/2 runs of consecutive samples,
    the ones at the voltage's minimum and maximum, in their order (a spike is never thinned away)."""
    n = len(t)
    if n <= points:
        return t, voltage, current
    runs = points // 2
    size = -(-n // runs)  # the last run may be short: padded with values never chosen
    finite = np.nan_to_num(voltage)  # a missing reading may be kept; it never hides a real one
    padded = np.full(runs * size, np.nan)
    padded[:n] = finite
    grid = padded.reshape(runs, size)
    low = np.argmin(np.where(np.isnan(grid), np.inf, grid), axis=1)
    high = np.argmax(np.where(np.isnan(grid), -np.inf, grid), axis=1)
    starts = np.arange(runs) * size
    keep = np.unique(np.concatenate([starts + low, starts + high]))  # in order, each once
    keep = keep[keep < n]
    return t[keep], voltage[keep], current[keep]


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value
