"""Logging rules applied to sample arrays: time, voltage and current triggers."""

from __future__ import annotations

import numpy as np

from cyclerd.drivers.record import RecordState, select
from cyclerd.protocols.compiler import RecordRule


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
    from cyclerd.drivers.record import select_one

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
