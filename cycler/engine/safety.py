"""The run's safety limits, checked on every logged sample of every batch."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cyclerd.protocols.compiler import SafetyLimits


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
