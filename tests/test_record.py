"""Logging rules applied to sample arrays: time, voltage and current triggers."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cyclerd.drivers.record import FloatArray, RecordState, select, select_one
from cyclerd.protocols.program import RecordRule


def test_time_rule_keeps_one_sample_per_interval_across_chunks() -> None:
    state = RecordState()
    rule = RecordRule(every_s=10.0)
    t = np.arange(0.0, 100.0)
    kept = []
    for i in range(0, 98, 7):
        chunk = t[i : i + 7]
        kept.append(chunk[select(rule, chunk, np.zeros(7), np.zeros(7), state)])
    assert np.concatenate(kept).tolist() == [float(x) for x in range(0, 98, 10)]


def test_voltage_deadband_ignores_noise_below_the_change() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(0.0, 1000.0)
    noisy_flat = 3.0 + rng.normal(0, 1e-4, len(t))
    keep = select(RecordRule(voltage_change_V=1e-3), t, noisy_flat, np.zeros(len(t)), RecordState())
    assert keep.sum() == 1  # the first sample only
    ramp = 3.0 + 1e-5 * t  # 10 mV over the chunk: a sample every 1 mV
    keep = select(RecordRule(voltage_change_V=1e-3), t, ramp, np.zeros(len(t)), RecordState())
    assert 9 <= keep.sum() <= 11
    assert np.all(np.diff(ramp[keep]) >= 1e-3 - 1e-12)


def test_logging_as_often_as_sampling_keeps_everything() -> None:
    t = np.arange(0.0, 50.0)
    keep = select(RecordRule(every_s=1.0, voltage_change_V=1e-3), t, np.sin(t), np.zeros(50), RecordState())
    assert keep.all()


def test_a_current_step_change_is_logged_at_once() -> None:
    t = np.arange(0.0, 100.0)
    current = np.where(t < 42, 1e-3, 2e-3)
    keep = select(RecordRule(every_s=60.0, current_change_A=1e-4), t, np.zeros(100), current, RecordState())
    assert np.flatnonzero(keep).tolist() == [0, 42]


def test_one_at_a_time_agrees_with_the_array_rule() -> None:
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.uniform(0.5, 1.5, 500))
    v = 3.0 + np.cumsum(rng.normal(0, 4e-4, 500))
    i = np.where(t < 200, 1e-3, 5e-4)
    rule = RecordRule(every_s=10.0, voltage_change_V=2e-3, current_change_A=1e-4)
    array = select(rule, t, v, i, RecordState())
    state = RecordState()
    scalar = [
        select_one(rule, a, b, c, state) for a, b, c in zip(t.tolist(), v.tolist(), i.tolist(), strict=True)
    ]
    assert array.tolist() == scalar


def one_at_a_time(
    rule: RecordRule, t: FloatArray, v: FloatArray, i: FloatArray
) -> tuple[list[bool], RecordState]:
    """The reference: `select_one` sample by sample, with one state throughout."""
    state = RecordState()
    kept = [
        select_one(rule, a, b, c, state) for a, b, c in zip(t.tolist(), v.tolist(), i.tolist(), strict=True)
    ]
    return kept, state


def in_chunks(
    rule: RecordRule, t: FloatArray, v: FloatArray, i: FloatArray, cuts: list[int]
) -> tuple[list[bool], RecordState]:
    state = RecordState()
    bounds = [0, *cuts, len(t)]
    masks = [select(rule, t[a:b], v[a:b], i[a:b], state) for a, b in itertools.pairwise(bounds)]
    return np.concatenate(masks).tolist(), state


def assert_same(got: tuple[list[bool], RecordState], want: tuple[list[bool], RecordState]) -> None:
    assert np.flatnonzero(got[0]).tolist() == np.flatnonzero(want[0]).tolist()
    np.testing.assert_array_equal(dataclasses.astuple(got[1]), dataclasses.astuple(want[1]))  # NaN == NaN


Case = tuple[RecordRule, FloatArray, FloatArray, FloatArray, list[int]]


@st.composite
def samples(draw: st.DrawFn) -> Case:
    """A rule and samples that hit its edges: equal times, steps of exactly `every`, moves of
    exactly the change, NaNs, long quiet stretches (keeps beyond the window) and chunk cuts."""
    every = draw(st.none() | st.floats(0.5, 100.0))
    dv = draw(st.none() | st.floats(1e-4, 1e-2))
    di = draw(st.none() | st.floats(1e-5, 1e-3))
    rule = RecordRule(every_s=every, voltage_change_V=dv, current_change_A=di)
    n = draw(st.integers(1, 200))
    round_steps = [0.0, 0.25, 0.5, 1.0, every or 1.0, (every or 1.0) / 3]
    steps = draw(
        st.lists(st.sampled_from(round_steps) | st.floats(0.0, 30.0), min_size=n - 1, max_size=n - 1)
    )
    t = draw(st.floats(-1e3, 1e6)) + np.cumsum([0.0, *steps])
    scale = dv or 1e-3
    moves = [0.0, scale, -scale, scale / 2, 2 * scale]
    v = 3.0 + np.cumsum(
        draw(st.lists(st.sampled_from(moves) | st.floats(-2 * scale, 2 * scale), min_size=n, max_size=n))
    )
    levels = draw(st.lists(st.floats(-1e-2, 1e-2), min_size=1, max_size=5))
    i = np.array(levels)[np.sort(draw(st.lists(st.integers(0, len(levels) - 1), min_size=n, max_size=n)))]
    for x in (v, i):
        x[draw(st.lists(st.integers(0, n - 1), max_size=3))] = np.nan
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=6))) - {n})
    return rule, t, v, i, cuts


@settings(max_examples=300, deadline=None)
@given(samples())
def test_chunked_select_keeps_exactly_what_select_one_keeps(
    case: Case,
) -> None:
    rule, t, v, i, cuts = case
    assert_same(in_chunks(rule, t, v, i, cuts), one_at_a_time(rule, t, v, i))


def test_an_e1_chunk_keeps_exactly_what_select_one_keeps() -> None:
    # E1: a 1 s grid in chunks of 4096, every 10 s or 1 mV; a noisy slow ramp logs ~1 in 6.
    rng = np.random.default_rng(1)
    t = np.arange(4096.0)
    v = -0.05 + 2e-4 * t + rng.normal(0, 3e-4, len(t))
    rule = RecordRule(every_s=10.0, voltage_change_V=1e-3)
    want = one_at_a_time(rule, t, v, np.full(len(t), 1e-3))
    assert_same(in_chunks(rule, t, v, np.full(len(t), 1e-3), []), want)
    assert 1 / 8 < np.mean(want[0]) < 1 / 4


@pytest.mark.parametrize("every_s", [None, 20.0, 700.0])
@pytest.mark.parametrize("ordered", [True, False])
def test_keeps_far_apart_are_found_beyond_the_window(every_s: float | None, ordered: bool) -> None:
    # Voltage steps ~300 samples apart: past the offsets checked for every sample at once.
    rng = np.random.default_rng(7)
    t = np.arange(3000.0)
    if not ordered:
        t[5::50] -= 3.5  # a clock that jumps back now and then
    v = 1e-2 * (np.arange(3000) // 317) + rng.normal(0, 1e-5, len(t))
    i = np.where(t < 2222, 1e-3, 2e-3)
    rule = RecordRule(every_s=every_s, voltage_change_V=1e-3, current_change_A=1e-4)
    assert_same(in_chunks(rule, t, v, i, [1000, 1001, 2500]), one_at_a_time(rule, t, v, i))


@pytest.mark.parametrize("seed", range(5))
def test_times_out_of_order_get_the_same_rule(seed: int) -> None:
    # A clock that jumps back: no offset after it is due, yet a nearer sample is.
    rule = RecordRule(every_s=5.0, voltage_change_V=1e-3)
    t, flat = np.array([0.0, 10.0, 0.5]), np.zeros(3)
    assert_same(in_chunks(rule, t, flat, flat, []), one_at_a_time(rule, t, flat, flat))
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.uniform(0, 2, 500)) - np.where(rng.random(500) < 0.1, 20.0, 0.0)
    v = np.cumsum(rng.normal(0, 3e-4, 500))
    i = np.zeros(500)
    assert_same(in_chunks(rule, t, v, i, [77, 300]), one_at_a_time(rule, t, v, i))


# Long chunks (the simulator's are thousands of samples), against the rule applied one sample
# at a time.


@st.composite
def walks(draw: st.DrawFn) -> Case:
    """Long chunks: a clock of a few samples or none, a regular,
    jittered or backward-jumping grid (now and then with infinite or NaN times), moves from
    far below the change (keeps beyond the table's reach) to far above it (a keep every
    sample), exact multiples of the change, NaNs and infinities, and chunk cuts. The bulk
    comes from a seeded generator."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.integers(1, 700))
    spacing = draw(st.sampled_from([1.0, 0.5, 0.1, 3.0]))
    grid = draw(st.sampled_from(["regular", "jittered", "back"]))
    steps = np.full(n - 1, spacing)
    if grid == "jittered":
        steps *= rng.uniform(0.5, 1.5, n - 1)
    elif grid == "back":
        steps[rng.random(n - 1) < 0.05] = -3 * spacing
    t = draw(st.floats(-1e3, 1e6)) + np.cumsum([0.0, *steps])
    t[len(t) - draw(st.sampled_from([0, 0, 0, 1, 2])) :] = np.inf  # a clock run off the end
    t[draw(st.lists(st.integers(0, n - 1), max_size=1))] = np.nan
    samples_per_log = draw(st.integers(1, 40))
    every = draw(
        st.none()
        | st.sampled_from([1.0, 1 - 1e-12, 1 + 1e-7, 1.5]).map(lambda f: f * spacing * samples_per_log)
    )
    dv = draw(st.none() | st.floats(1e-4, 1e-2))
    di = draw(st.none() | st.floats(1e-5, 1e-3))
    if every is None and dv is None and di is None:
        dv = 1e-3
    rule = RecordRule(every_s=every, voltage_change_V=dv, current_change_A=di)
    v = _moving(draw, rng, n, dv or 1e-3)
    i = _moving(draw, rng, n, di or 1e-4) if draw(st.booleans()) else np.full(n, 1e-3)
    for x in (v, i):
        bad = draw(st.lists(st.integers(0, n - 1), max_size=3))
        x[bad] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=4))) - {n})
    return rule, t, v, i, cuts


def _moving(draw: st.DrawFn, rng: np.random.Generator, n: int, change: float) -> FloatArray:
    """A random walk whose steps are a drawn fraction of the change, or whole changes."""
    if draw(st.booleans()):
        return 3.0 + change * np.cumsum(rng.integers(-1, 2, n)).astype(float)
    scale = draw(st.sampled_from([0.01, 0.2, 0.5, 1.0, 3.0]))
    return 3.0 + np.cumsum(rng.normal(0, scale * change, n))


@settings(max_examples=300, deadline=None)
@given(walks())
def test_long_chunks_keep_exactly_what_select_one_keeps(case: Case) -> None:
    rule, t, v, i, cuts = case
    assert_same(in_chunks(rule, t, v, i, cuts), one_at_a_time(rule, t, v, i))
