"""The run page's voltage and current series on real SQLite files: decimation keeps every
bucket's extremes, raw ranges come back exactly, a live run is read incrementally, and the
cache drops the least recently used run beyond its bound."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from cyclerd.store.database import Store
from cyclerd.web.series import MAX_POINTS, MIN_POINTS, RunSeries, Window, bucket_edges

Array = np.ndarray


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "lab.db") as opened:
        yield opened


def _append(store: Store, run: int, seq: Array, t: Array, voltage: Array, current: Array) -> None:
    n = len(seq)
    ones = np.ones(n, dtype=np.int64)
    store.append_samples(
        run,
        {
            "seq": seq,
            "t": t,
            "step": ones,
            "cycle": ones,
            "voltage": voltage,
            "current": current,
            "charge": np.zeros(n),
            "energy": np.zeros(n),
        },
    )


def _run(store: Store, t: Array, voltage: Array, current: Array, batch: int = 97, skip_every: int = 5) -> int:
    """A run written in batches; after every `skip_every` samples three seq numbers are missing
    (samples lost on the way), which splits a batch into several blocks."""
    run = store.create_run("E1", "ch1", "", {}, {})
    seq = np.arange(len(t)) + 3 * (np.arange(len(t)) // skip_every)
    for a in range(0, len(t), batch):
        _append(
            store, run, seq[a : a + batch], t[a : a + batch], voltage[a : a + batch], current[a : a + batch]
        )
    return run


def _series(seed: int, n: int, nan_share: float) -> tuple[Array, Array, Array]:
    """A plating-like voltage with noise, spikes, repeated times, pauses in time and NaNs."""
    rng = np.random.default_rng(seed)
    dt = rng.choice([0.0, 1.0, 1.0, 1.0, 2.5, 600.0], size=n)
    t = 1000.0 * rng.random() + np.cumsum(dt)
    voltage = -0.02 + 0.01 * np.sin(t / 3000) + rng.normal(0, 1e-3, n)
    current = np.where((t // 3600) % 2 == 0, -1e-3, 1e-3) + rng.normal(0, 1e-5, n)
    spikes = rng.integers(0, n, size=3)
    voltage[spikes] = rng.choice([-5.0, 5.0], size=3)
    voltage[rng.random(n) < nan_share] = np.nan
    current[rng.random(n) < nan_share / 2] = np.nan
    return t, voltage, current


def _extremes(values: Array) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    return (np.nan, np.nan) if len(finite) == 0 else (float(finite.min()), float(finite.max()))


def _check_window(
    t: Array, voltage: Array, current: Array, got: Window, t0: float, t1: float, points: int
) -> None:
    """`got` against buckets made here sample by sample: by edges, not by the code's searches."""
    inside = (t >= t0) & (t <= t1)
    assert got["samples_in_range"] == int(inside.sum())
    assert got["t_range"] == [t.min(), t.max()]
    assert np.all(np.diff(got["t"]) >= 0)
    assert len(got["t"]) == len(got["voltage"]) == len(got["current"]) <= 2 * points
    if not got["decimated"]:
        np.testing.assert_array_equal(got["t"], t[inside])
        np.testing.assert_array_equal(got["voltage"], voltage[inside])
        np.testing.assert_array_equal(got["current"], current[inside])
        return
    assert inside.sum() > 2 * points
    bucket = np.searchsorted(bucket_edges(t0, t1, points), t[inside], "right") - 1
    times, volts, amps = t[inside], voltage[inside], current[inside]
    expected: list[list[float]] = [[], [], []]
    for k in np.unique(bucket):
        mine = bucket == k
        expected[0] += [times[mine][0], times[mine][-1]]
        expected[1] += list(_extremes(volts[mine]))
        expected[2] += list(_extremes(amps[mine]))
    for name, values in zip(("t", "voltage", "current"), expected, strict=True):
        np.testing.assert_array_equal(got[name], values, err_msg=name)
    for trace, values in (("voltage", volts), ("current", amps)):
        low, high = _extremes(values)
        if not np.isnan(low):
            assert low in got[trace]
            assert high in got[trace]


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.sampled_from([1, 2, 120, 999, 2500, 4001, 6000, 8000]),
    nan_share=st.sampled_from([0.0, 0.0, 0.01, 0.5, 1.0]),
    bounds=st.tuples(st.none() | st.floats(-0.2, 1.2), st.none() | st.floats(-0.2, 1.2)),
    points=st.integers(0, 150) | st.sampled_from([1000, 1600, 4000, 5000]),
)
@settings(max_examples=150, deadline=None)
def test_any_window_of_any_run_keeps_each_buckets_extremes_or_gives_the_raw_samples(
    seed: int, n: int, nan_share: float, bounds: tuple[float | None, float | None], points: int
) -> None:
    t, voltage, current = _series(seed, n, nan_share)
    span = t[-1] - t[0]
    t0, t1 = (None if f is None else float(t[0] + f * span) for f in bounds)
    if t0 is not None and t1 is not None and t0 > t1:
        t0, t1 = t1, t0
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "lab.db") as store:
        run = _run(store, t, voltage, current)
        got = RunSeries(store).window(run, t0, t1, points)
    clamped = min(max(points, MIN_POINTS), MAX_POINTS)
    event("decimated" if got["decimated"] else "raw")
    _check_window(t, voltage, current, got, t[0] if t0 is None else t0, t[-1] if t1 is None else t1, clamped)


def test_a_long_run_is_decimated_to_two_points_per_bucket_and_keeps_a_short(store: Store) -> None:
    t = np.arange(50_000) * 1.0
    voltage = np.full(50_000, 0.05)
    voltage[31_337] = -0.4  # a short: one sample
    voltage[100:200] = np.nan  # the instrument answered nothing for a while
    voltage[150] = 0.07  # but once, in the middle of it
    run = _run(store, t, voltage, np.full(50_000, 1e-3), batch=500)
    got = RunSeries(store).window(run, None, None, 1000)
    assert got["decimated"]
    assert got["samples_in_range"] == 50_000
    assert len(got["t"]) == 2000
    assert np.nanmin(got["voltage"]) == -0.4
    assert np.isnan(got["voltage"][4:6]).all()  # seconds 100-149: nothing known, a gap in the line
    assert 0.07 in got["voltage"]  # a NaN does not hide the bucket's one reading
    _check_window(t, voltage, np.full(50_000, 1e-3), got, 0.0, 49_999.0, 1000)


def test_empty_buckets_give_nothing_so_a_pause_in_the_data_stays_a_gap(store: Store) -> None:
    t = np.r_[np.arange(1000.0), 10_000 + np.arange(1000.0)]
    run = _run(store, t, np.zeros(2000), np.zeros(2000))
    got = RunSeries(store).window(run, None, None, 100)
    assert np.diff(got["t"]).max() > 9000  # the empty buckets in between give no point
    assert not ((got["t"] > 1000) & (got["t"] < 10_000)).any()


def test_points_are_clamped_and_bad_bounds_refused(store: Store) -> None:
    t = np.arange(20_000.0)
    run = _run(store, t, np.sin(t), np.cos(t), batch=1000)
    series = RunSeries(store)
    assert len(series.window(run, None, None, 1)["t"]) == 2 * MIN_POINTS
    assert len(series.window(run, None, None, 10**6)["t"]) == 2 * MAX_POINTS
    for t0, t1 in ((5.0, 4.0), (float("nan"), None), (None, float("inf")), (-1e308, 1e308)):
        with pytest.raises(ValueError, match=r"seconds of test time|a finite number"):
            series.window(run, t0, t1, 100)
    nothing = series.window(run, 30_000.0, None, 100)  # after the run's end
    assert nothing["samples_in_range"] == 0
    assert len(nothing["t"]) == 0
    assert nothing["t_range"] == [0.0, 19_999.0]


def test_a_run_the_store_does_not_have_reads_as_empty_and_is_not_held(store: Store) -> None:
    series = RunSeries(store)
    got = series.window(42, None, None, 100)
    assert got["t_range"] is None
    assert got["samples_in_range"] == 0
    assert series.held() == []
    assert [len(column) for column in series.tail(42)] == [0, 0]


def test_a_live_run_is_read_incrementally_and_answers_as_a_fresh_cache(tmp_path: Path, store: Store) -> None:
    t, voltage, current = _series(7, 30_000, 0.001)
    run = _run(store, t[:10_000], voltage[:10_000], current[:10_000])
    series = RunSeries(store)
    assert series.window(run, None, None, 500)["samples_in_range"] == 10_000
    seq = 20_000  # past the gaps _run left
    for a, b in ((10_000, 10_001), (10_001, 10_500), (10_500, 25_000), (25_000, 25_003), (25_003, 30_000)):
        _append(store, run, np.arange(seq, seq + b - a), t[a:b], voltage[a:b], current[a:b])
        seq += b - a + 2  # and a gap between batches
        for t0, t1 in ((None, None), (t[9_000], t[b - 1]), (t[b - 50], None)):
            got, fresh = series.window(run, t0, t1, 500), RunSeries(store).window(run, t0, t1, 500)
            assert got.keys() == fresh.keys()
            for key, value in got.items():
                np.testing.assert_array_equal(value, fresh[key], err_msg=key)
            lo, hi = t[0] if t0 is None else t0, t[b - 1] if t1 is None else t1
            _check_window(t[:b], voltage[:b], current[:b], got, lo, hi, 500)
    # What the cache holds it does not read again: blocks gone from the file stay in the plot.
    with sqlite3.connect(tmp_path / "lab.db") as other:
        other.execute("DELETE FROM sample_blocks WHERE run_id = ? AND last_seq < 20000", (run,))
    assert series.window(run, None, None, 500)["samples_in_range"] == 30_000
    assert RunSeries(store).window(run, None, None, 500)["samples_in_range"] == 20_000


def test_runs_beyond_the_bound_drop_the_least_recently_used(store: Store) -> None:
    t = np.arange(100.0)
    a, b, c = (_run(store, t, t, t) for _ in range(3))
    series = RunSeries(store, held_samples=250)
    series.window(a, None, None, 50)
    series.window(b, None, None, 50)
    assert series.held() == [a, b]
    series.window(a, None, None, 50)  # a is used again: b is now the oldest
    assert series.held() == [b, a]
    series.tail(b)  # a tile's poll does not make a run recently used
    series.window(c, None, None, 50)
    assert series.held() == [a, c]
    big = _run(store, np.arange(1000.0), np.zeros(1000), np.zeros(1000))
    assert series.window(big, None, None, 50)["samples_in_range"] == 1000
    assert series.held() == [big]  # larger than the bound alone: kept, everything else dropped


def test_a_sparkline_is_the_last_hour_thinned_and_the_same_whether_held_or_not(store: Store) -> None:
    t = np.arange(0.0, 3 * 3600.0, 1.5)
    voltage = 0.01 * np.sin(t / 600)
    voltage[100] = 3.0  # hours ago: not on the sparkline
    voltage[-700] = -2.0  # a short in the last hour: on it
    run = _run(store, t, voltage, np.zeros(len(t)), batch=50)
    series = RunSeries(store)
    spark_t, spark_v = series.tail(run, 3600.0)
    assert len(spark_t) == len(spark_v) <= 240
    assert spark_t[0] >= t[-1] - 3600
    assert spark_t[-1] == t[-1]
    assert spark_v.min() == -2.0
    assert spark_v.max() < 3.0
    series.window(run, None, None, 100)  # now held: the sparkline comes from memory
    held_t, held_v = series.tail(run, 3600.0)
    np.testing.assert_array_equal(held_t, spark_t)
    np.testing.assert_array_equal(held_v, spark_v)
    short_t, _ = series.tail(run, 60.0)  # few samples: raw
    np.testing.assert_array_equal(short_t, t[t >= t[-1] - 60])


def test_a_run_whose_time_goes_back_is_still_served_with_its_extremes(store: Store) -> None:
    t = np.r_[np.arange(5000.0), np.arange(2500.0, 7500.0)]  # test time restarted from 2500 s
    voltage = np.sin(t / 100)
    voltage[6000] = 9.0
    run = _run(store, t, voltage, np.zeros(len(t)))
    got = RunSeries(store).window(run, None, None, 200)
    assert got["decimated"]
    assert got["samples_in_range"] == 10_000
    assert len(got["t"]) <= 400
    assert got["voltage"].max() == 9.0
    assert got["voltage"].min() == voltage.min()
    part = RunSeries(store).window(run, 2000.0, 2600.0, 400)
    assert not part["decimated"]
    np.testing.assert_array_equal(part["t"], t[(t >= 2000) & (t <= 2600)])  # in seq order


def test_threads_reading_through_their_own_connections_agree(tmp_path: Path, store: Store) -> None:
    runs = [_run(store, *_series(seed, 5000, 0.0)) for seed in range(4)]
    expected = [RunSeries(store).window(run, None, None, 300) for run in runs]
    local = threading.local()

    def opened() -> Store:
        if not hasattr(local, "store"):
            local.store = Store(tmp_path / "lab.db")
        store: Store = local.store
        return store

    series = RunSeries(opened)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: series.window(runs[i % 4], None, None, 300), range(40)))
    for i, window in enumerate(got):
        np.testing.assert_array_equal(window["voltage"], expected[i % 4]["voltage"])


def test_the_store_reads_only_the_columns_and_samples_asked_for(store: Store) -> None:
    t = np.arange(1000.0)
    run = _run(store, t, -t, 2 * t, batch=100, skip_every=1000)
    every = store.samples(run)
    columns, last = store.sample_columns(run)
    assert columns.keys() == {"t", "voltage", "current"}
    assert last == int(every["seq"][-1])
    for name in columns:
        np.testing.assert_array_equal(columns[name], every[name])
    part, last = store.sample_columns(run, ("voltage", "temperature"), after_seq=555)  # mid-block
    np.testing.assert_array_equal(part["voltage"], every["voltage"][every["seq"] > 555])
    assert np.isnan(part["temperature"]).all()
    assert last == int(every["seq"][-1])
    none, last = store.sample_columns(run, after_seq=10**6)
    assert len(none["t"]) == 0
    assert last == 10**6
    recent, _ = store.sample_columns(run, ("t",), last_s=250.0)
    assert 250 <= recent["t"][-1] - recent["t"][0] < 250 + 100  # whole blocks of 100
    np.testing.assert_array_equal(recent["t"], t[-len(recent["t"]) :])
    with pytest.raises(ValueError, match="columns"):
        store.sample_columns(run, ("t", "seq; DROP TABLE runs"))
    with pytest.raises(ValueError, match="columns"):
        store.sample_columns(run, ("voltage",), last_s=10.0)
