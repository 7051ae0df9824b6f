"""JSON for the page: numpy arrays as lists, and NaN and infinities (not JSON) as null."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def dumps(value: Any) -> str:
    """`value` as JSON text; the common case (finite floats) pays for one encoding only."""
    try:
        return json.dumps(value, allow_nan=False, default=_plain, separators=(",", ":"))
    except ValueError:  # a NaN or an infinity somewhere
        return json.dumps(_clean(value), allow_nan=False, default=_plain, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _clean(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
