"""Runs to Battery Data Format (BDF) files, so other labs' tools read ours (bdf_import reads them back).

What each column holds and in which unit is in bdf_columns. Floats are written shortest-repr and
read back bit for bit. Ah and Wh cannot hold A·s and J exactly (3600 is not a power of two), so a
BDF file read and written again is the same file while charge and energy in the store come back
within one ulp; the `csv` format is exact. A step that an every-block (periodic EIS) interrupts goes
on under its own Step Count after the interruption's steps, so Step Count is not monotonic in such
runs, and Step Index counts on across the gap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cyclerd.analysis.bdf_columns import (
    AS_PER_AH,
    PLAIN,
    QUANTITIES,
    ZERO_CELSIUS_K,
    BdfError,
    FloatArray,
    IntArray,
)
from cyclerd.analysis.bdf_steps import StepGroups
from cyclerd.store.database import Store

FORMATS = ("bdf-csv", "bdf-parquet", "csv")


def run_table(store: Store, run_id: int, fmt: str) -> pa.Table:
    """One run's samples as a table in `fmt` (one of FORMATS), every column built as an array."""
    if fmt not in FORMATS:
        raise BdfError(f"no export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    s = store.samples(run_id)
    t, step = s["t"], s["step"].astype(np.int64)
    columns: dict[str, Any] = {"t": t, "voltage": s["voltage"], "current": s["current"]}
    columns |= {
        "unix": store.run(run_id).started_unix + t,
        "cycle": s["cycle"].astype(np.int64),
        "step": step,
    }
    columns["step_id"], columns["step_type"] = _step_info(store, run_id, step)
    temperature = s["temperature"]
    logged = bool(np.isfinite(temperature).any())
    if fmt == "csv":
        columns |= {"seq": s["seq"].astype(np.int64), "charge": s["charge"], "energy": s["energy"]}
        columns |= {"temperature": _nullable(temperature)} if logged else {}
        return pa.table({name: columns[key] for key, (name, _) in PLAIN.items() if key in columns})
    steps = StepGroups(step)
    columns["step_index"] = steps.index()
    for what, counter in (("capacity", s["charge"] / AS_PER_AH), ("energy", s["energy"] / AS_PER_AH)):
        delta = steps.increments(counter)
        columns[f"charging_{what}"] = np.cumsum(np.maximum(delta, 0.0))
        columns[f"discharging_{what}"] = np.cumsum(np.maximum(-delta, 0.0))
        columns[f"net_{what}"] = np.cumsum(delta)
        columns[f"step_{what}"] = np.abs(counter)
    if logged:
        columns["temperature"] = _nullable(temperature - ZERO_CELSIUS_K)
    order = [key for key in QUANTITIES if key in columns]  # the table's order, not the computation's
    return pa.table({QUANTITIES[key][0]: columns[key] for key in order})


def _nullable(values: FloatArray) -> pa.Array:
    return pa.array(values, mask=np.isnan(values))


def _step_info(store: Store, run_id: int, step: IntArray) -> tuple[IntArray, pa.Array]:
    """Each sample's step command (Step ID, -1 if unknown) and kind (Step Type), looked up per step."""
    rows = store.steps(run_id) or [{"number": -1, "command": -1, "kind": ""}]
    numbers = np.array([r["number"] for r in rows], dtype=np.int64)
    kinds = sorted({r["kind"] for r in rows} | {""})
    pos = np.clip(np.searchsorted(numbers, step), 0, len(numbers) - 1)
    known = numbers[pos] == step
    command = np.where(known, np.array([r["command"] for r in rows], dtype=np.int64)[pos], -1)
    code = np.where(known, np.array([kinds.index(r["kind"]) for r in rows], dtype=np.int32)[pos], 0)
    return command, pa.DictionaryArray.from_arrays(pa.array(code), pa.array(kinds)).cast(pa.string())


def write_table(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "bdf-parquet":
        pq.write_table(table, path)
        return
    with path.open("wb") as f:  # the header unquoted, as BDF shows it; floats shortest-repr, exact
        f.write((",".join(table.column_names) + "\n").encode())
        pa_csv.write_csv(table, f, pa_csv.WriteOptions(include_header=False, quoting_style="none"))


def export_run(store: Store, run_id: int, path: Path, fmt: str) -> int:
    """Write one run's samples to `path` in `fmt`; the number of samples written."""
    table = run_table(store, run_id, fmt)
    write_table(table, path, fmt)
    return int(table.num_rows)


def stem(path: Path) -> str:
    """The file's name without .bdf, .csv, .parquet: the default name of what it holds."""
    name = path.name
    for suffix in (".gz", ".parquet", ".csv", ".bdf"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return name
