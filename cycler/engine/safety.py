"""The run's safety limits, checked on every logged sample of every batch, and the batch as stored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cyclerd.drivers.base import Batch
from cyclerd.protocols.program import SafetyLimits


def first_violation(limits: SafetyLimits, columns: Mapping[str, np.ndarray]) -> tuple[int, str] | None:
    """The first sample crossing a limit and what it crossed, or None: vectorised, no sample skipped."""
    v, i, t = columns["voltage"], columns["current"], columns["t"]
    found: list[tuple[int, str]] = []
    if limits.voltage_max_V is not None and (v > limits.voltage_max_V).any():
        k = int(np.argmax(v > limits.voltage_max_V))
        found.append((k, f"voltage {v[k]:.4g} V above {limits.voltage_max_V:g} V"))
    if limits.voltage_min_V is not None and (v < limits.voltage_min_V).any():
        k = int(np.argmax(v < limits.voltage_min_V))
        found.append((k, f"voltage {v[k]:.4g} V below {limits.voltage_min_V:g} V"))
    if limits.current_max_A is not None:
        over = np.abs(i) > limits.current_max_A * (1 + 1e-9)
        if over.any():
            k = int(np.argmax(over))
            found.append((k, f"|current| {abs(i[k]):.4g} A above {limits.current_max_A:.4g} A"))
    temperature = columns.get("temperature")
    if limits.temperature_max_K is not None and temperature is not None:
        hot = temperature > limits.temperature_max_K
        if hot.any():
            k = int(np.argmax(hot))
            found.append((k, f"temperature {temperature[k] - 273.15:.1f} °C above the limit"))
    if limits.duration_max_s is not None and (t > limits.duration_max_s).any():
        k = int(np.argmax(t > limits.duration_max_s))
        found.append((k, f"run time {t[k] / 3600:.2f} h beyond duration_max"))
    return min(found) if found else None


def stored_columns(
    batch: Batch, first_seq: int, step: int, cycle: int, segment_start_s: float
) -> dict[str, NDArray[Any]]:
    """A channel's batch as the store's columns: numbered from `first_seq`, in test time."""
    n = len(batch)
    columns: dict[str, NDArray[Any]] = {
        "seq": np.arange(first_seq, first_seq + n),
        "t": segment_start_s + batch.t_s,
        "step": np.full(n, step),
        "cycle": np.full(n, cycle),
        "voltage": batch.voltage_V,
        "current": batch.current_A,
        "charge": batch.charge_As,
        "energy": batch.energy_J,
    }
    if batch.temperature_K is not None:
        columns["temperature"] = batch.temperature_K
    return columns


def clipped_at_violation(
    limits: SafetyLimits, columns: dict[str, NDArray[Any]]
) -> tuple[dict[str, NDArray[Any]], str | None]:
    """The columns up to and including the first sample that crosses a limit, and what it crossed.

    Samples after the crossing are not stored: the run stops there, and the record ends on the
    sample that made it stop.
    """
    violation = first_violation(limits, columns)
    if violation is None:
        return columns, None
    end = violation[0] + 1
    return {key: value[:end] for key, value in columns.items()}, violation[1]
