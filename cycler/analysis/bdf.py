"""Runs to and from Battery Data Format (BDF) files, so other labs' tools read ours and we read theirs.

Names, units and meanings are the Battery Data Alliance's: the quantity tables of
github.com/battery-data-alliance/battery-data-format (README, "Defining the BDF") with the
definitions of its ontology (battery-data-format-ontology, docs/battery-data-format.rst). We write
Test Time / s, Voltage / V, Current / A (positive charges the cell, as stored), Unix Time / s
(run start + test time), Cycle Count / 1, Step Count / 1, Step Index / 1 (1-based position in the
step), Step ID (the protocol's step command), Step Type (plate, strip, rest, ...), Charging,
Discharging and Net Capacity / Ah (running from the start of the test, never reset), Step
Capacity / Ah (|charge| of the step so far), the same four in Energy / Wh, and Ambient
Temperature / degC when a temperature was logged. Spectra go to their own CSV: Sequence / 1 (ours:
BDF has none), Test Time / s (spectrum start), Cycle Count / 1, Step Count / 1, Frequency / Hz,
Real Impedance / ohm, Imaginary Impedance / ohm (Im Z as measured, negative on a capacitive arc).
The `csv` format is ours and SI: seq, t_s, unix_s, cycle, step, step_command, step_kind, voltage_V,
current_A, charge_As (signed, this step so far), energy_J, temperature_K.

Floats are written shortest-repr and read back bit for bit. Ah and Wh cannot hold A·s and J
exactly (3600 is not a power of two), so a BDF file read and written again is the same file while
charge and energy in the store come back within one ulp; the `csv` format is exact. A step that an
every-block (periodic EIS) interrupts goes on under its own Step Count after the interruption's
steps, so Step Count is not monotonic in such runs, and Step Index counts on across the gap.
"""

from __future__ import annotations

import csv
import gzip
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from numpy.typing import NDArray

from cyclerd.cycles import summarise
from cyclerd.store import Store

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
FORMATS = ("bdf-csv", "bdf-parquet", "csv")
AS_PER_AH = 3600.0  # and J per Wh
ZERO_CELSIUS_K = 273.15
BATCH = 50_000  # samples per store transaction on import
SPECTRUM = ("sequence", "t", "step", "cycle", "frequency_Hz", "impedance_ohm")  # as Store.spectra has them


class BdfError(ValueError):
    """A file cyclerd cannot read or write as asked; the message says which, where and what to do."""


class MissingColumn(BdfError):
    """A required quantity is absent: time, voltage, current (frequency and impedance for spectra)."""


class UnknownUnit(BdfError):
    """A known quantity in a unit cyclerd does not convert."""


class DuplicateColumn(BdfError):
    """Two columns hold the same quantity."""


class BadValues(BdfError):
    """Text in a numeric column, an empty required value, a fractional count, or no rows at all."""


Conversion = tuple[float, float, float]  # to the store's SI: x * mul / div + add (3.6 is not exact)
ONE: Conversion = (1.0, 1.0, 0.0)
UNITS: dict[str, dict[str, Conversion]] = {
    "time": {"s": ONE, "ms": (1.0, 1e3, 0.0), "min": (60.0, 1.0, 0.0), "h": (3600.0, 1.0, 0.0)},
    "voltage": {"V": ONE, "mV": (1.0, 1e3, 0.0)},
    "current": {"A": ONE, "mA": (1.0, 1e3, 0.0), "µA": (1.0, 1e6, 0.0)},
    "charge": {
        "Ah": (AS_PER_AH, 1.0, 0.0),
        "mAh": (AS_PER_AH, 1e3, 0.0),
        "µAh": (AS_PER_AH, 1e6, 0.0),
        "As": ONE,
    },
    "energy": {"Wh": (AS_PER_AH, 1.0, 0.0), "mWh": (AS_PER_AH, 1e3, 0.0), "J": ONE},
    "temperature": {"degC": (1.0, 1.0, ZERO_CELSIUS_K), "°C": (1.0, 1.0, ZERO_CELSIUS_K), "K": ONE},
    "count": {"1": ONE},
    "none": {"": ONE},
    "frequency": {"Hz": ONE, "kHz": (1e3, 1.0, 0.0)},
    "impedance": {"ohm": ONE, "Ohm": ONE, "Ω": ONE},
}
# The one table of what cyclerd reads and writes: key -> (BDF header, dimension, BDF machine-readable
# names and alternative labels, all in the header's unit). Names match ignoring case and spacing.
QUANTITIES: dict[str, tuple[str, str, str]] = {
    "t": ("Test Time / s", "time", "test_time_second test_time_s"),
    "voltage": ("Voltage / V", "voltage", "voltage_volt voltage_v"),
    "current": ("Current / A", "current", "current_ampere current_a"),
    "unix": ("Unix Time / s", "time", "unix_time_second unix_time_s"),
    "cycle": ("Cycle Count / 1", "count", "cycle_count cycle_count_1 cycle_dimensionless"),
    "step": ("Step Count / 1", "count", "step_count step_count_1 step_dimensionless"),
    "step_index": ("Step Index / 1", "count", "step_index step_index_1"),
    "step_id": ("Step ID", "none", "step_id"),
    "step_type": ("Step Type", "none", "step_type"),
    "charging_capacity": ("Charging Capacity / Ah", "charge", "charging_capacity_ah"),
    "discharging_capacity": ("Discharging Capacity / Ah", "charge", "discharging_capacity_ah"),
    "net_capacity": ("Net Capacity / Ah", "charge", "net_capacity_ah"),
    "step_capacity": ("Step Capacity / Ah", "charge", "step_capacity_ah"),
    "charging_energy": ("Charging Energy / Wh", "energy", "charging_energy_wh"),
    "discharging_energy": ("Discharging Energy / Wh", "energy", "discharging_energy_wh"),
    "net_energy": ("Net Energy / Wh", "energy", "net_energy_wh"),
    "step_energy": ("Step Energy / Wh", "energy", "step_energy_wh"),
    "temperature": (
        "Ambient Temperature / degC",
        "temperature",
        "ambient_temperature_celsius ambient_temperature_degc",
    ),
    "sequence": ("Sequence / 1", "count", "sequence"),
    "frequency": ("Frequency / Hz", "frequency", "frequency_hertz"),
    "z_real": ("Real Impedance / ohm", "impedance", "real_impedance_ohm"),
    "z_imag": ("Imaginary Impedance / ohm", "impedance", "imaginary_impedance_ohm"),
    "charge": ("", "charge", ""),  # ours only: the store's signed step counters
    "energy": ("", "energy", ""),
    "seq": ("", "count", ""),
}
# Our `csv` format: key -> (column, SI unit).
PLAIN = {
    "seq": ("seq", "1"),
    "t": ("t_s", "s"),
    "unix": ("unix_s", "s"),
    "cycle": ("cycle", "1"),
    "step": ("step", "1"),
    "step_id": ("step_command", ""),
    "step_type": ("step_kind", ""),
    "voltage": ("voltage_V", "V"),
    "current": ("current_A", "A"),
    "charge": ("charge_As", "As"),
    "energy": ("energy_J", "J"),
    "temperature": ("temperature_K", "K"),
}


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _unit(text: str) -> str:
    """One spelling per unit: µ, μ and u are one prefix, Ω and the ohm sign one letter."""
    text = unicodedata.normalize("NFKC", text.strip())
    return "μ" + text[1:] if text[:1] == "u" and len(text) > 1 else text


_LABELS = {_norm(h.partition("/")[0]): key for key, (h, _, _) in QUANTITIES.items() if "/" in h}
_NAMES = {_norm(h): (key, "") for key, (h, _, _) in QUANTITIES.items() if h and "/" not in h}
_NAMES |= {
    _norm(n): (k, h.partition("/")[2].strip())
    for k, (h, _, names) in QUANTITIES.items()
    for n in names.split()
}
_NAMES |= {_norm(name): (key, unit) for key, (name, unit) in PLAIN.items()}
_UNITS = {dim: {_unit(u): c for u, c in units.items()} for dim, units in UNITS.items()}


@dataclass(frozen=True)
class Column:
    key: str  # a QUANTITIES key
    header: str  # as the file spells it
    conversion: Conversion

    def to_si(self, x: FloatArray) -> FloatArray:
        mul, div, add = self.conversion
        x = x * mul if mul != 1.0 else x
        x = x / div if div != 1.0 else x
        return x + add if add else x


def parse_header(header: str) -> Column | None:
    """What a header names: "<Name> / <unit>" or a machine-readable name; None if nothing we use."""
    if "/" in header:
        name, _, unit = header.partition("/")
        key = _LABELS.get(_norm(name))
        if key is None:
            return None
        dimension = QUANTITIES[key][1]
        conversion = _UNITS[dimension].get(_unit(unit))
        if conversion is None:
            raise UnknownUnit(
                f"column '{header}': cyclerd does not convert '{unit.strip()}' for {_norm(name)};"
                f" write it in one of: {', '.join(UNITS[dimension])}"
            )
        return Column(key, header, conversion)
    found = _NAMES.get(_norm(header))
    return None if found is None else Column(found[0], header, _UNITS[QUANTITIES[found[0]][1]][found[1]])


class _Steps:
    """Samples grouped by step number, in file order within a step (an interrupted step goes on)."""

    def __init__(self, step: IntArray) -> None:
        self.order = np.argsort(step, kind="stable")
        ordered = step[self.order]
        self.first = np.r_[True, ordered[1:] != ordered[:-1]][: len(step)]
        self.starts = np.flatnonzero(self.first)
        self.group = np.cumsum(self.first) - 1
        self.numbers = ordered[self.starts]
        self.first_index = self.order[self.starts]
        self.last_index = self.order[np.r_[self.starts[1:], len(step)][: len(self.starts)] - 1]

    def _back(self, ordered: np.ndarray) -> np.ndarray:
        out = np.empty_like(ordered)
        out[self.order] = ordered
        return out

    def index(self) -> IntArray:
        return self._back(np.arange(len(self.order)) - self.starts[self.group] + 1)

    def increments(self, v: FloatArray) -> FloatArray:
        """Change since the step's previous sample (at its first sample: the value itself)."""
        ordered = v[self.order]
        return self._back(np.where(self.first, ordered, ordered - np.r_[0.0, ordered[:-1]]))

    def running(self, dv: FloatArray) -> FloatArray:
        """Sum of `dv` over the step's samples so far."""
        total = np.cumsum(dv[self.order])
        return self._back(total - (total - dv[self.order])[self.starts][self.group])

    def trapezoid(self, f: FloatArray, t: FloatArray) -> FloatArray:
        fo, to = f[self.order], t[self.order]
        return self._back(
            np.where(self.first, 0.0, 0.5 * (fo + np.r_[0.0, fo[:-1]]) * np.diff(to, prepend=0.0))
        )


# -- export --------------------------------------------------------------------------------


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
    steps = _Steps(step)
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


def export_spectra(store: Store, run_id: int, path: Path) -> int:
    """Write every spectrum of a run to one CSV; the number of spectra (0: nothing written)."""
    spectra = store.spectra(run_id)
    if not spectra:
        return 0
    sizes = [len(sp["frequency_Hz"]) for sp in spectra]
    z = np.concatenate([sp["impedance_ohm"] for sp in spectra])
    columns = {
        key: np.repeat([sp[key] for sp in spectra], sizes) for key in ("sequence", "t", "cycle", "step")
    }
    columns |= {"frequency": np.concatenate([sp["frequency_Hz"] for sp in spectra])}
    columns |= {"z_real": z.real.copy(), "z_imag": z.imag.copy()}
    write_table(pa.table({QUANTITIES[key][0]: value for key, value in columns.items()}), path, "csv")
    return len(spectra)


# -- import --------------------------------------------------------------------------------


def stem(path: Path) -> str:
    """The file's name without .bdf, .csv, .parquet: the default name of what it holds."""
    name = path.name
    for suffix in (".gz", ".parquet", ".csv", ".bdf"):
        name = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    return name


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

    def counter(self, keys: str, steps: _Steps, rate: FloatArray) -> FloatArray:
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
    steps = _Steps(step)
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
    """Spectra from a CSV as export_spectra writes it, shaped like Store.spectra (one per Sequence)."""
    f = _File(path, ("frequency", "z_real", "z_imag"))
    frequency, z = f.filled("frequency"), f.filled("z_real") + 1j * f.filled("z_imag")
    sequence, step, cycle = f.whole("sequence", 1), f.whole("step", 0), f.whole("cycle", 0)
    t = f.values.get("t", np.zeros(f.n))
    groups = _Steps(sequence)
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
