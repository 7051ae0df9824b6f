"""Battery Data Format (BDF) files, theirs or ours, read into store columns and imported as a run.

Columns are recognised by bdf_columns' tables whatever their order, unit or spelling; what a file
lacks is derived (charge and energy integrated per step, steps from the current's sign). Every
problem is found before the store is touched and raised as a BdfError naming file, column and row.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cyclerd.analysis.bdf import stem
from cyclerd.analysis.bdf_columns import (
    QUANTITIES,
    BadValues,
    BdfError,
    Column,
    DuplicateColumn,
    FloatArray,
    IntArray,
    MissingColumn,
    UnknownUnit,
    parse_header,
)
from cyclerd.analysis.bdf_steps import StepGroups
from cyclerd.analysis.cycles import summarise
from cyclerd.store.database import Store

BATCH = 50_000  # samples per store transaction on import
SPECTRUM = ("sequence", "t", "step", "cycle", "frequency_Hz", "impedance_ohm")  # as Store.spectra has them


def read_columns(path: Path, required: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """A CSV or Parquet file's known columns in SI (Step Type as text), their headers, and the
    headers cyclerd leaves out."""
    if not path.is_file():
        raise BdfError(f"no file at {path}")
    with path.open("rb") as f:
        parquet = f.read(4) == b"PAR1"
    try:
        if parquet:
            headers = list(pq.read_schema(path).names)
        else:
            with (gzip.open if path.suffix == ".gz" else open)(
                path, "rt", newline="", encoding="utf-8-sig"
            ) as f:
                headers = next(csv.reader(f), [])
    except (pa.ArrowInvalid, UnicodeDecodeError, csv.Error, gzip.BadGzipFile) as exc:
        raise BadValues(f"{path}: not a CSV or Parquet file cyclerd can read ({exc})") from None
    found: dict[str, Column] = {}
    for header in headers:
        try:
            column = parse_header(header)
        except UnknownUnit as exc:
            raise UnknownUnit(f"{path}: {exc}") from None
        if column is not None and column.key in found:
            raise DuplicateColumn(
                f"{path}: '{found[column.key].header}' and '{header}' are one quantity; drop one"
            )
        found |= {column.key: column} if column is not None else {}
    missing = [QUANTITIES[key][0] for key in required if key not in found]
    if missing:
        needed = ", ".join(QUANTITIES[key][0] for key in required)
        raise MissingColumn(
            f"{path}: no {' or '.join(missing)} column (required: {needed});"
            f" columns found: {', '.join(headers) or 'none'}"
        )
    types = {c.header: pa.string() if c.key == "step_type" else pa.float64() for c in found.values()}
    try:
        if parquet:
            table = pq.read_table(path, columns=list(types))
            table = table.cast(pa.schema([(name, types[name]) for name in table.column_names]))
        else:
            read = pa_csv.ReadOptions(column_names=headers, skip_rows=1)
            convert = pa_csv.ConvertOptions(column_types=types, include_columns=list(types))
            table = pa_csv.read_csv(path, read_options=read, convert_options=convert)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadValues(
            f"{path}: {exc}; each row needs a value per header, numbers in numeric columns (empty if unknown)"
        ) from None
    values = {
        k: table.column(c.header) if k == "step_type" else c.to_si(table.column(c.header).to_numpy())
        for k, c in found.items()
    }
    return (
        values,
        {key: c.header for key, c in found.items()},
        [h for h in headers if parse_header(h) is None],
    )


class _File:
    """Checked access to a file's columns, each failure naming the file, the column and the row."""

    def __init__(self, path: Path, required: tuple[str, ...]) -> None:
        self.path = path
        self.values, self.headers, self.ignored = read_columns(path, required)
        self.n = len(self.values[required[0]])
        if self.n == 0:
            raise BadValues(f"{path}: the file has a header but no data rows")

    def filled(self, key: str) -> FloatArray:
        x: FloatArray = self.values[key]
        empty = np.flatnonzero(~np.isfinite(x))
        if len(empty):
            raise BadValues(
                f"{self.path}: '{self.headers[key]}' is empty or infinite in data row {empty[0] + 1}; fix it"
            )
        return x

    def whole(self, key: str, default: int) -> IntArray:
        if key not in self.values:
            return np.full(self.n, default, dtype=np.int64)
        x = self.filled(key)
        bad = np.flatnonzero(x != np.round(x))
        if len(bad):
            raise BadValues(
                f"{self.path}: '{self.headers[key]}' must hold whole numbers; data row"
                f" {bad[0] + 1} holds {float(x[bad[0]])!r}"
            )
        return x.astype(np.int64)

    def counter(self, keys: str, steps: StepGroups, rate: FloatArray) -> FloatArray:
        """The store's signed per-step counter (A·s or J) from the most exact column there is.

        BDF's step column is a magnitude: its sign is that of the step's running net (from the
        cumulative columns), or of `rate` (current or power) where the net has not moved. Without
        it the counter is the running net, and without a net the integral of `rate` over time.
        """
        signed, size, net, positive, negative = (self.values.get(key) for key in keys.split())
        if signed is not None:
            return self.filled(keys.split()[0])
        if net is None and positive is not None and negative is not None:
            net = positive - negative
        running = None if net is None else steps.running(np.diff(net, prepend=0.0))
        if size is not None:
            sign = np.sign(running) if running is not None else np.zeros(self.n)
            counter = np.where(np.where(sign == 0, np.sign(rate), sign) < 0, -size, size)
        else:
            counter = (
                running if running is not None else steps.running(steps.trapezoid(rate, self.values["t"]))
            )
        if not np.isfinite(counter).all():
            raise BadValues(
                f"{self.path}: empty values in the charge or energy columns (data row"
                f" {np.flatnonzero(~np.isfinite(counter))[0] + 1}); fill them in or drop those columns"
            )
        return np.asarray(counter, dtype=np.float64)


@dataclass
class Imported:
    """A file's samples as the store's columns, one row per step, and the columns left out."""

    samples: dict[str, np.ndarray]
    steps: list[tuple[Any, ...]]  # number, command, kind, cycle, t_start, t_end, charge_As, energy_J
    started_unix: float | None
    ignored: list[str]


def read_samples(path: Path) -> Imported:
    """Read a BDF (or our `csv`) file into store columns; what is absent is derived: charge and energy
    integrated per step, cycle 1, and a new step where the cycle or the current's sign changes."""
    f = _File(path, ("t", "voltage", "current"))
    t, voltage, current = f.filled("t"), f.filled("voltage"), f.filled("current")
    cycle = f.whole("cycle", 1)
    moved = np.r_[True, (np.diff(cycle) != 0) | (np.diff(np.sign(current)) != 0)]
    step = f.whole("step", 1) if "step" in f.values else np.cumsum(moved).astype(np.int64)
    steps = StepGroups(step)
    power = voltage * current
    charge = f.counter(
        "charge step_capacity net_capacity charging_capacity discharging_capacity", steps, current
    )
    energy = f.counter("energy step_energy net_energy charging_energy discharging_energy", steps, power)
    seq = f.whole("seq", 0) if "seq" in f.values else np.arange(f.n, dtype=np.int64)
    samples = {"seq": seq, "t": t, "step": step, "cycle": cycle, "voltage": voltage, "current": current}
    samples |= {"charge": charge, "energy": energy}
    samples |= {"temperature": f.values["temperature"]} if "temperature" in f.values else {}
    first, last = steps.first_index, steps.last_index
    command = f.whole("step_id", 0)[first]
    if "step_type" in f.values:
        kinds = [str(k or "step") for k in f.values["step_type"].take(pa.array(first)).to_pylist()]
    else:
        moving = steps.running(np.abs(current))[last] > 0
        kinds = np.where(moving, np.where(charge[last] < 0, "discharge", "charge"), "rest").tolist()
    per_step = (cycle[first], t[first], t[last], charge[last], energy[last])
    rows = list(
        zip(steps.numbers.tolist(), command.tolist(), kinds, *(c.tolist() for c in per_step), strict=True)
    )
    unix = f.values.get("unix")
    started = float(unix[0] - t[0]) if unix is not None and np.isfinite(unix[0]) else None
    return Imported(samples, rows, started, f.ignored)


def read_spectra(path: Path) -> list[dict[str, Any]]:
    """Spectra from a CSV or Parquet file as `cyclerd export` writes them (analysis/exports.py), shaped
    like Store.spectra (one per Sequence)."""
    f = _File(path, ("frequency", "z_real", "z_imag"))
    frequency, z = f.filled("frequency"), f.filled("z_real") + 1j * f.filled("z_imag")
    sequence, step, cycle = f.whole("sequence", 1), f.whole("step", 0), f.whole("cycle", 0)
    t = f.values.get("t", np.zeros(f.n))
    groups = StepGroups(sequence)
    spectra = []
    for i, j in zip(groups.starts, np.r_[groups.starts[1:], f.n], strict=True):
        rows, k = groups.order[i:j], groups.order[i]
        head = (int(sequence[k]), float(t[k]), int(step[k]), int(cycle[k]), frequency[rows], z[rows])
        spectra.append(dict(zip(SPECTRUM, head, strict=True)))
    return spectra


@dataclass(frozen=True)
class ImportResult:
    run_id: int
    samples: int
    steps: int
    cycles: int
    spectra: int
    ignored: list[str]


def import_run(
    store: Store, path: Path, channel: str = "import", name: str | None = None, spectra: Path | None = None
) -> ImportResult:
    """A file as a new completed run (spectra from `spectra`), its cycles summarised as the runner
    does; everything is read and checked before the store is touched."""
    data = read_samples(path)
    measured = read_spectra(spectra) if spectra is not None else []
    source = {"import": str(path.resolve())} | ({"spectra": str(spectra.resolve())} if spectra else {})
    run_id = store.create_run(name or stem(path), channel, "", {}, source, data.started_unix)
    t = data.samples["t"]
    try:
        store.record_event(run_id, "import", f"imported {len(t)} samples", data={"ignored": data.ignored})
        for number, command, kind, cycle, t_start, t_end, charge_As, energy_J in data.steps:
            store.begin_step(run_id, number, command, kind, kind, cycle, t_start)
            store.end_step(run_id, number, t_end, "imported", charge_As, energy_J)
        for start in range(0, len(t), BATCH):
            store.append_samples(
                run_id, {key: value[start : start + BATCH] for key, value in data.samples.items()}
            )
        for spectrum in measured:
            store.append_spectrum(run_id, *(spectrum[key] for key in SPECTRUM))
        summaries = summarise(data.samples)
        for summary in summaries:
            store.save_cycle(run_id, summary.as_row())
    except BaseException:
        store.set_state(run_id, "failed")
        raise
    store.set_state(run_id, "completed", ended_unix=store.run(run_id).started_unix + float(t[-1] - t[0]))
    return ImportResult(run_id, len(t), len(data.steps), len(summaries), len(measured), data.ignored)
