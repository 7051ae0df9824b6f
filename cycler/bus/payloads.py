"""The bus's messages as JSON: `data` (a batch of samples, columnar), `events` and `eis`.

Its own small module (json and numpy only) because it runs in the bus's encoder process,
which should start in a fraction of a second and hold nothing but this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

FLOAT_COLUMNS = ("t", "voltage", "current", "charge", "energy")
INT_COLUMNS = ("cycle", "step")
DATA_COLUMNS = ("seq", *FLOAT_COLUMNS, *INT_COLUMNS)


def data_payload(run_id: int, columns: Mapping[str, Any]) -> str:
    """One `data` message: columnar JSON, `seq` the first sequence number of the batch.

    Floats are written with Python's shortest round-trip repr, so a subscriber gets back the
    stored doubles bit for bit.
    """
    body: dict[str, Any] = {"run": run_id, "seq": int(columns["seq"][0])}
    body.update({name: np.asarray(columns[name], dtype=np.float64).tolist() for name in FLOAT_COLUMNS})
    body.update({name: np.asarray(columns[name], dtype=np.int64).tolist() for name in INT_COLUMNS})
    return json.dumps(body)


def event_payload(run_id: int, t: float | None, kind: str, message: str, data: Mapping[str, Any]) -> str:
    """One `events` message: what happened in run `run_id`, at test time `t` (s)."""
    body = {"run": run_id, "t": t, "kind": kind, "message": message, "data": dict(data)}
    return json.dumps(body, sort_keys=True)


def spectrum_payload(
    run_id: int, sequence: int, t: float, step: int, cycle: int, frequency: Any, z_real: Any, z_imag: Any
) -> str:
    """One `eis` message: a spectrum (its `sequence` within the run) and where it was taken."""
    body = {
        "run": run_id,
        "sequence": sequence,
        "t": t,
        "step": step,
        "cycle": cycle,
        "frequency": np.asarray(frequency, dtype=np.float64).tolist(),
        "z_real": np.asarray(z_real, dtype=np.float64).tolist(),
        "z_imag": np.asarray(z_imag, dtype=np.float64).tolist(),
    }
    return json.dumps(body)
