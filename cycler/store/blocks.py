"""Samples on disk as blocks: one row per batch, each column a little-endian array.

A months-long run logs millions of samples, and one SQLite row per sample costs more to
write than everything else the daemon does with the sample (simulate, check, publish). A
batch already arrives as columns, so it is stored as columns: one row holds a contiguous
range of sequence numbers and the batch's arrays as blobs (float64 `<f8`, step and cycle
int64 `<i8`). Sequence numbers are not stored per sample: a block holds first_seq..last_seq.
A batch whose sequence numbers skip becomes several blocks, so gaps stay visible.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from itertools import pairwise
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cyclerd.store.schema import SAMPLE_COLUMNS

FloatArray = NDArray[np.float64]

INT_COLUMNS = ("step", "cycle")
FLOAT_COLUMNS = ("t", "voltage", "current", "charge", "energy")
BLOB_COLUMNS = ("t", "step", "cycle", "voltage", "current", "charge", "energy", "temperature")
INSERT = (
    f"INSERT INTO sample_blocks (run_id, first_seq, last_seq, {', '.join(BLOB_COLUMNS)})"
    f" VALUES (?, ?, ?{', ?' * len(BLOB_COLUMNS)})"
)
SELECT = f"SELECT first_seq, last_seq, {', '.join(BLOB_COLUMNS)} FROM sample_blocks"


class SequenceError(sqlite3.IntegrityError):
    """A batch whose sequence numbers go backwards or overlap what the run already stored."""


def block_rows(run_id: int, columns: Mapping[str, Any], after: int) -> list[tuple[Any, ...]]:
    """The rows of one batch; `after` is the run's last stored seq (-1: none).

    Raises SequenceError (nothing is written) when seq does not rise strictly past `after`.
    """
    seq = np.asarray(columns["seq"], dtype=np.int64)
    if len(seq) == 0:
        return []
    step = np.diff(seq)
    if seq[0] <= after or (step <= 0).any():
        raise SequenceError(
            f"run {run_id}: samples {int(seq[0])}..{int(seq[-1])} overlap or go back"
            f" (the run has stored up to seq {after}); every sample has its own seq, rising"
        )
    bounds = [0, *(np.flatnonzero(step != 1) + 1).tolist(), len(seq)]
    temperature = columns.get("temperature")
    if temperature is not None and np.isnan(np.asarray(temperature, dtype=np.float64)).all():
        temperature = None
    rows = []
    for a, b in pairwise(bounds):
        blobs: list[bytes | None] = [_blob(columns[name], a, b, _dtype(name)) for name in BLOB_COLUMNS[:-1]]
        blobs.append(None if temperature is None else _blob(temperature, a, b, "<f8"))
        rows.append((run_id, int(seq[a]), int(seq[b - 1]), *blobs))
    return rows


def _dtype(name: str) -> str:
    return "<i8" if name in INT_COLUMNS else "<f8"


def _blob(values: Any, a: int, b: int, dtype: str) -> bytes:
    return np.asarray(values[a:b]).astype(dtype, copy=False).tobytes()


def read_blocks(rows: Iterable[tuple[Any, ...]], after_seq: int, limit: int | None) -> dict[str, FloatArray]:
    """Columns (as SAMPLE_COLUMNS, all float64) from block rows in seq order; seq > after_seq,
    at most `limit` samples. Stops reading rows once it has enough."""
    parts: dict[str, list[FloatArray]] = {name: [] for name in SAMPLE_COLUMNS}
    count = 0
    for first, last, *blobs in rows:
        if limit is not None and count >= limit:
            break  # the cursor is lazy: the rest of a long run is never read
        n = last - first + 1
        start = max(0, after_seq + 1 - first)
        stop = n if limit is None else min(n, start + limit - count)
        parts["seq"].append(np.arange(first + start, first + stop, dtype=np.float64))
        for name, blob in zip(BLOB_COLUMNS, blobs, strict=True):
            if blob is None:
                column = np.full(stop - start, np.nan)
            else:
                column = np.frombuffer(blob, dtype=_dtype(name))[start:stop].astype(np.float64)
            parts[name].append(column)
        count += stop - start
    if count == 0:
        return {name: np.empty(0) for name in SAMPLE_COLUMNS}
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def read_columns(
    rows: Iterable[tuple[Any, ...]], names: tuple[str, ...], after_seq: int
) -> tuple[dict[str, FloatArray], int]:
    """Only the columns `names` (each as float64) of block rows (first_seq, last_seq, then one blob
    per name, in seq order), seq > after_seq; and the last seq read (`after_seq` when none).

    The dashboard plots three of a run's eight columns over millions of samples: decoding only
    those, and no seq column, is most of what makes a long run's page open fast. A NULL blob
    (no thermometer) reads as NaN.
    """
    parts: list[list[NDArray[Any]]] = [[] for _ in names]
    dtypes = [_dtype(name) for name in names]
    last = after_seq
    for first, last_seq, *blobs in rows:
        start = max(0, after_seq + 1 - first)
        n = last_seq - first + 1 - start
        if n <= 0:
            continue
        for part, dtype, blob in zip(parts, dtypes, blobs, strict=True):
            part.append(np.full(n, np.nan) if blob is None else np.frombuffer(blob, dtype=dtype)[start:])
        last = last_seq
    columns = {
        name: np.concatenate(part).astype(np.float64, copy=False) if part else np.empty(0)
        for name, part in zip(names, parts, strict=True)
    }
    return columns, last
