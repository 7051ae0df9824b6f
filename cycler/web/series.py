"""A run's voltage and current for the dashboard's plots: kept in memory, cut down to the pixels.

A 470 h run logged every second holds ~1.8 M samples and its plot some 1600 pixel columns. Each
column is a bucket of test time that gives its minimum and its maximum of each trace, so a
voltage spike or a short stays visible at every zoom. The columns come from the store once per
run and then only what a live run has added since.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from numpy.typing import NDArray

from cyclerd.store.database import Store

FloatArray = NDArray[np.float64]
IndexArray = NDArray[np.intp]

MIN_POINTS, MAX_POINTS = 50, 4000  # buckets a window may ask for: a plot's width in pixels, bounded
SPARK_BUCKETS = 120  # a tile's sparkline: at most 240 points
# 10 M samples of t, voltage and current are 240 MB: five runs of 470 h at 1 s logging, the
# longest the lab runs, so a few people looking at different long runs do not evict each other.
HELD_SAMPLES = 10_000_000
COLUMNS = ("t", "voltage", "current")


class Window(TypedDict):
    """The JSON of `GET /api/runs/{id}/series` (docs: the dashboard's API); NaN means unknown."""

    t: FloatArray
    voltage: FloatArray
    current: FloatArray
    decimated: bool
    samples_in_range: int
    t_range: list[float] | None  # of the whole run, so the page can zoom back out


@dataclass(frozen=True)
class Decimated:
    """Samples of [t0, t1]: raw, or two points per non-empty bucket (see `decimate`)."""

    t: FloatArray
    traces: tuple[FloatArray, ...]
    samples_in_range: int
    decimated: bool


def bucket_edges(t0: float, t1: float, points: int) -> FloatArray:
    """The left edges of `points` equal buckets of [t0, t1]; the last bucket includes t1."""
    return t0 + (t1 - t0) * (np.arange(points) / points)


def decimate(
    t: FloatArray, traces: tuple[FloatArray, ...], t0: float, t1: float, points: int, ordered: bool = True
) -> Decimated:
    """The samples with t0 <= t <= t1, or, when there are more than 2 * points of them, each
    non-empty bucket of `bucket_edges` as two points: (its first sample's t, each trace's
    minimum), then (its last sample's t, each trace's maximum).

    Drawn as a line this is a stroke from minimum to maximum within each pixel column, which
    is what the raw samples would paint there; an empty bucket gives nothing (a gap in the
    data stays a gap). NaN is skipped (fmin/fmax) unless the whole bucket is NaN.
    `ordered`: t never decreases (a run's test time does not). If it does, time buckets are not
    contiguous; then buckets are equal runs of the in-range samples in seq order instead, and
    the output t follows the data back and forth (no sort: the data is shown as stored).
    """
    if ordered:
        lo = int(np.searchsorted(t, t0, "left"))
        hi = max(lo, int(np.searchsorted(t, t1, "right")))
        inside: slice | IndexArray = slice(lo, hi)
        count = hi - lo
    else:
        inside = np.flatnonzero((t >= t0) & (t <= t1))
        count = len(inside)
    if count <= 2 * points:
        return Decimated(t[inside].copy(), tuple(trace[inside].copy() for trace in traces), count, False)
    times = t[inside]
    if ordered:
        starts = np.searchsorted(times, bucket_edges(t0, t1, points), "left")  # starts[0] == 0
    else:
        starts = np.arange(points) * count // points
    ends = np.append(starts[1:], count)
    first = starts[starts < ends]  # strictly rising, from 0: reduceat's segments are the buckets
    last = np.append(first[1:], count) - 1
    out_t = np.empty(2 * len(first))
    out_t[0::2], out_t[1::2] = times[first], times[last]
    out = []
    for trace in traces:
        values = trace[inside]
        pair = np.empty(2 * len(first))
        pair[0::2] = np.fmin.reduceat(values, first)
        pair[1::2] = np.fmax.reduceat(values, first)
        out.append(pair)
    return Decimated(out_t, tuple(out), count, True)


class _RunColumns:
    """One run's t, voltage and current in memory, grown in place as a live run adds samples."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.lock = threading.Lock()  # one reader of the store per run at a time
        self.columns: tuple[FloatArray, ...] = tuple(np.empty(0) for _ in COLUMNS)
        self.n = 0
        self.last_seq = -1
        self.ordered = True
        self.t_min = self.t_max = math.nan

    @property
    def capacity(self) -> int:
        return len(self.columns[0])

    def extend(self, new: dict[str, FloatArray], last_seq: int) -> None:
        """Append samples read after `last_seq`. Only [n:] of the arrays is ever written, so a
        view of [:n] handed out earlier never changes under its reader."""
        self.last_seq = last_seq
        k = len(new["t"])
        if k == 0:
            return
        t = new["t"]
        rising = bool((t[1:] >= t[:-1]).all())
        self.ordered = self.ordered and rising and (self.n == 0 or bool(t[0] >= self.columns[0][self.n - 1]))
        self.t_min = float(np.fmin(self.t_min, np.fmin.reduce(t)))
        self.t_max = float(np.fmax(self.t_max, np.fmax.reduce(t)))
        if self.n == 0:
            self.columns = tuple(new[name] for name in COLUMNS)  # freshly made by the reader: no copy
            self.n = k
            return
        if self.n + k > self.capacity:  # room for a quarter more: amortised, little unused
            size = (self.n + k) * 5 // 4
            grown = tuple(np.empty(size) for _ in COLUMNS)
            for old, column in zip(self.columns, grown, strict=True):
                column[: self.n] = old[: self.n]
            self.columns = grown
        for name, column in zip(COLUMNS, self.columns, strict=True):
            column[self.n : self.n + k] = new[name]
        self.n += k

    def snapshot(self) -> tuple[tuple[FloatArray, ...], bool]:
        return tuple(column[: self.n] for column in self.columns), self.ordered


class RunSeries:
    """Runs' plotted columns, least recently used dropped first beyond `held_samples` (counted
    as allocated: a growing run holds up to a quarter more). The most recent run is kept even
    when it alone is larger.

    `store`: a Store, or a function returning the Store to read with in the calling thread,
    called at every read (a sqlite3 connection stays in the thread that opened it). Safe to
    call from several threads: reads of one run wait for each other, other runs do not.
    """

    def __init__(self, store: Store | Callable[[], Store], held_samples: int = HELD_SAMPLES) -> None:
        self._store = store
        self.held_samples = held_samples
        self._lock = threading.Lock()  # the dict and its order
        self._runs: OrderedDict[int, _RunColumns] = OrderedDict()

    def _open(self) -> Store:
        return self._store if isinstance(self._store, Store) else self._store()

    def window(
        self, run_id: int, t0: float | None = None, t1: float | None = None, points: int = 1600
    ) -> Window:
        """What the run page plots of [t0, t1] (None: from the run's start, to its end).

        Raises ValueError for a bound that is not a finite number or t0 > t1 (an HTTP 400).
        A run id the store does not have reads as a run with no samples.
        """
        for name, bound in (("t0", t0), ("t1", t1)):
            if bound is not None and not math.isfinite(bound):
                raise ValueError(f"{name}={bound}: give the test time in seconds as a finite number")
        if t0 is not None and t1 is not None and (t0 > t1 or not math.isfinite(t1 - t0)):
            raise ValueError(f"t0={t0} and t1={t1}: give t0 <= t1 (seconds of test time)")
        points = min(max(points, MIN_POINTS), MAX_POINTS)
        run = self._held(run_id)
        with run.lock:
            (t, voltage, current), ordered = run.snapshot()
            t_range = None if math.isnan(run.t_min) else [run.t_min, run.t_max]
        if t_range is None:
            empty = np.empty(0)
            return Window(
                t=empty, voltage=empty, current=empty, decimated=False, samples_in_range=0, t_range=None
            )
        lo, hi = t_range[0] if t0 is None else t0, t_range[1] if t1 is None else t1
        if not math.isfinite(hi - lo):
            raise ValueError(f"t0={t0} and t1={t1}: too far apart (seconds of test time)")
        part = decimate(t, (voltage, current), lo, hi, points, ordered)
        voltage, current = part.traces
        return Window(
            t=part.t,
            voltage=voltage,
            current=current,
            decimated=part.decimated,
            samples_in_range=part.samples_in_range,
            t_range=t_range,
        )

    def tail(self, run_id: int, seconds: float = 3600.0) -> tuple[FloatArray, FloatArray]:
        """A tile's sparkline: t and voltage of the last `seconds` of test time, <= 240 points.

        From memory when the run is held (a poll of the lab page does not make it recently
        used), else from the newest blocks only.
        """
        with self._lock:
            run = self._runs.get(run_id)
        if run is not None:
            self._refresh(run)
            with run.lock:
                (t, voltage, _), ordered = run.snapshot()
        else:
            new, _ = self._open().sample_columns(run_id, ("t", "voltage"), last_s=seconds)
            t, voltage = new["t"], new["voltage"]
            ordered = bool((t[1:] >= t[:-1]).all())
        if len(t) == 0:
            return np.empty(0), np.empty(0)
        end = float(t[-1]) if ordered else float(np.fmax.reduce(t))
        if math.isnan(end):
            return np.empty(0), np.empty(0)
        part = decimate(t, (voltage,), end - seconds, end, SPARK_BUCKETS, ordered)
        return part.t, part.traces[0]

    def held(self) -> list[int]:
        """The runs in memory, least recently used first."""
        with self._lock:
            return list(self._runs)

    def _held(self, run_id: int) -> _RunColumns:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                run = self._runs[run_id] = _RunColumns(run_id)
            self._runs.move_to_end(run_id)
        self._refresh(run)
        with self._lock:
            if run.n == 0 and self._runs.get(run_id) is run:
                del self._runs[run_id]  # nothing to keep: an unknown id costs no memory
            self._evict()
        return run

    def _refresh(self, run: _RunColumns) -> None:
        with run.lock:
            new, last_seq = self._open().sample_columns(run.run_id, COLUMNS, after_seq=run.last_seq)
            run.extend(new, last_seq)

    def _evict(self) -> None:
        total = sum(run.capacity for run in self._runs.values())
        while total > self.held_samples and len(self._runs) > 1:
            _, run = self._runs.popitem(last=False)
            total -= run.capacity
