"""A run's tables beside its samples: the cycle summary, the spectra with their fitted curves, the fits.

`cyclerd export` writes them next to the samples file (bdf.py), each under its own name (`names`):
runN.cycles, runN.spectra and runN.fits, as CSV, or Parquet when the samples go to bdf-parquet.
The spectra keep the BDF-style headers that `cyclerd import --spectra` reads back; the cycle table
and the fits use the store's SI column names. The DC level comes from the run's stored protocol;
an imported run has none, so its spectra and fits leave the DC columns out.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from cyclerd.analysis.bdf import stem, write_table
from cyclerd.analysis.bdf_columns import QUANTITIES
from cyclerd.analysis.eis_trends import EisTrends, spectrum_trends
from cyclerd.protocols import ProtocolError, loads
from cyclerd.protocols.compiler import CellDataMissing, compile_for_stored_cell
from cyclerd.protocols.program import ImpedanceCommand
from cyclerd.store.database import Store

TABLES = ("cycles", "spectra", "fits")  # what goes beside the samples, in this order
# Spectra columns BDF has no name for (ours, in BDF's "Name / unit" style; import leaves them out).
STEP_LABEL = "Step Label"
DC_LEVEL = "DC Level"
DC_POTENTIAL = "DC Potential / V"
FIT_REAL = "Fitted Real Impedance / ohm"
FIT_IMAG = "Fitted Imaginary Impedance / ohm"
_INTEGER_CYCLE_COLUMNS = ("cycle", "forward_sign")


def names(samples: Path, fmt: str) -> dict[str, Path]:
    """Where each table goes beside `samples`: runN.bdf.csv -> runN.cycles.csv, runN.spectra.csv,
    runN.fits.csv (runN.*.parquet beside a bdf-parquet file)."""
    suffix = ".parquet" if fmt == "bdf-parquet" else ".csv"
    return {table: samples.with_name(f"{stem(samples)}.{table}{suffix}") for table in TABLES}


def write_side_table(table: pa.Table, path: Path) -> None:
    """Parquet if `path` is named so, else CSV: text quoted where it needs it (labels and notes
    hold commas), numbers as bdf.write_table writes them (shortest repr, empty when unknown)."""
    if path.name.lower().endswith(".parquet"):
        write_table(table, path, "bdf-parquet")
        return
    with path.open("w", newline="", encoding="utf-8") as text:
        csv.writer(text, lineterminator="\n").writerow(table.column_names)
    with path.open("ab") as f:
        pa_csv.write_csv(table, f, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))


def cycles_table(store: Store, run_id: int) -> pa.Table:
    """The run's stored cycle summary as the store holds it (A·s, J, V, s; CE as a fraction)."""
    cycles = store.cycles(run_id)
    return pa.table(
        {
            key: values.astype(np.int64) if key in _INTEGER_CYCLE_COLUMNS else values
            for key, values in cycles.items()
        }
    )


@dataclass(frozen=True)
class DcLevel:
    """What a spectrum was taken around, from the protocol: `text` ("ocv", "0.1 V", "0.0001 A")
    and the potential in V: the set one, or for ocv the OCV stored as the spectrum's first
    sample (NaN for a DC current, and for ocv where the instrument reported no potential)."""

    text: str
    potential_V: float


def dc_levels(store: Store, run_id: int) -> dict[int, DcLevel] | None:
    """Each EIS step command's DC level from the run's stored protocol, compiled again with the
    cell values the run was resolved with; None when the run has no protocol cyclerd can read
    (an imported run, a protocol from an older cyclerd)."""
    run = store.run(run_id)
    text = store.protocol_text(run_id)
    if not text.strip():
        return None
    try:
        program = compile_for_stored_cell(loads(text, "<stored protocol>"), run.cell)
    except (ProtocolError, CellDataMissing):
        return None
    levels = {}
    for command in program.commands():
        if isinstance(command, ImpedanceCommand):
            spec = command.spec
            if spec.dc_level is None:
                levels[command.index] = DcLevel("ocv", math.nan)
            elif spec.dc_is_current:
                levels[command.index] = DcLevel(f"{spec.dc_level!r} A", math.nan)
            else:
                levels[command.index] = DcLevel(f"{spec.dc_level!r} V", spec.dc_level)
    return levels


@dataclass(frozen=True)
class SpectraExport:
    """The spectra (one row per point) and the fits (one row per spectrum) of a run, as tables."""

    spectra: pa.Table
    fits: pa.Table
    dc_known: bool  # False: no protocol to read the DC level from; the DC columns are left out


def spectra_tables(store: Store, run_id: int, trends: EisTrends | None = None) -> SpectraExport | None:
    """The run's spectra with their step label, DC level and fitted curve, and the fits
    (eis_trends.spectrum_trends: R_b, R_SEI, R_CT and every parameter of the circuit kept);
    None when the run has no spectra."""
    spectra = store.spectra(run_id)
    if not spectra:
        return None
    trends = trends if trends is not None else spectrum_trends(store, run_id)
    steps = {row["number"]: row for row in store.steps(run_id)}
    levels = dc_levels(store, run_id)
    own = [steps.get(sp["step"], {"label": "", "command": -1}) for sp in spectra]
    labels = [row["label"] for row in own]
    dc = None if levels is None else [levels.get(row["command"], DcLevel("", math.nan)) for row in own]
    if dc is not None:
        held = _first_voltage_of_steps(store, run_id)
        dc = [
            DcLevel(level.text, held.get(sp["step"], math.nan)) if level.text == "ocv" else level
            for level, sp in zip(dc, spectra, strict=True)
        ]

    sizes = [len(sp["frequency_Hz"]) for sp in spectra]
    frequency = np.concatenate([sp["frequency_Hz"] for sp in spectra])
    z = np.concatenate([sp["impedance_ohm"] for sp in spectra])
    fitted = np.concatenate(
        [
            fit.predict(sp["frequency_Hz"]) if fit is not None else np.full(n, np.nan + 1j * np.nan)
            for sp, fit, n in zip(spectra, trends.fits, sizes, strict=True)
        ]
    )
    points: dict[str, Any] = {
        QUANTITIES[key][0]: np.repeat([sp[key] for sp in spectra], sizes)
        for key in ("sequence", "t", "cycle", "step")
    }
    points[STEP_LABEL] = np.repeat(labels, sizes)
    if dc is not None:
        points[DC_LEVEL] = np.repeat([level.text for level in dc], sizes)
        points[DC_POTENTIAL] = _nullable(np.repeat([level.potential_V for level in dc], sizes))
    points[QUANTITIES["frequency"][0]] = frequency
    points[QUANTITIES["z_real"][0]] = z.real.copy()
    points[QUANTITIES["z_imag"][0]] = z.imag.copy()
    points[FIT_REAL] = _nullable(fitted.real.copy())
    points[FIT_IMAG] = _nullable(fitted.imag.copy())
    return SpectraExport(pa.table(points), _fits_table(trends, spectra, labels, dc), dc is not None)


def _first_voltage_of_steps(store: Store, run_id: int) -> dict[int, float]:
    """The voltage of each step's first stored sample: for an EIS step, the OCV it began at."""
    samples = store.samples(run_id)
    steps, first = np.unique(samples["step"].astype(np.int64), return_index=True)
    return dict(zip(steps.tolist(), samples["voltage"][first].tolist(), strict=True))


def _fits_table(
    trends: EisTrends, spectra: list[dict[str, Any]], labels: list[str], dc: list[DcLevel] | None
) -> pa.Table:
    """One row per spectrum: where it was taken, what interrupted step it belongs to, the kept
    circuit with its resistances and every fitted parameter (SI, circuits.py) with its 1σ error."""
    columns: dict[str, Any] = {
        "sequence": trends.sequence,
        "t_s": trends.t_s,
        "cycle": trends.cycle,
        "step": np.array([sp["step"] for sp in spectra], dtype=np.int64),
        "step_label": np.array(labels, dtype=str),
    }
    if dc is not None:
        columns["dc_level"] = np.array([level.text for level in dc], dtype=str)
        columns["dc_potential_V"] = _nullable(np.array([level.potential_V for level in dc]))
    columns |= {
        "during_step": trends.step,
        "during_kind": trends.step_kind,
        "during_label": trends.step_label,
        "during_sequence": trends.step_sequence,
        "circuit": trends.circuit,
    }
    for name in ("R_b_intercept_ohm", "R_b_ohm", "R_b_stderr_ohm", "R_SEI_ohm", "R_SEI_stderr_ohm"):
        columns[name] = _nullable(getattr(trends, name))
    for name in ("R_CT_ohm", "R_CT_stderr_ohm", "chi2_reduced", "sei_p_value"):
        columns[name] = _nullable(getattr(trends, name))
    parameters = list(dict.fromkeys(name for fit in trends.fits if fit is not None for name in fit.names))
    for name in parameters:
        values = [fit.as_dict().get(name, math.nan) if fit is not None else math.nan for fit in trends.fits]
        errors = [
            fit.uncertainty(name) if fit is not None and name in fit.names else math.nan
            for fit in trends.fits
        ]
        columns[name] = _nullable(np.array(values, dtype=np.float64))
        columns[f"{name}_stderr"] = _nullable(np.array(errors, dtype=np.float64))
    columns["note"] = trends.note
    return pa.table(
        {key: pa.array(value) if isinstance(value, np.ndarray) else value for key, value in columns.items()}
    )


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, mask=np.isnan(values))


@dataclass(frozen=True)
class Written:
    """What went where: table -> (path, how many cycles, spectra or fits), for those the run has."""

    files: dict[str, tuple[Path, int]]
    dc_known: bool


def export_tables(store: Store, run_id: int, where: dict[str, Path]) -> Written:
    """Write the cycle table, spectra and fits to `where[table]` (CSV or Parquet by the name);
    a run with no cycles or no spectra writes no such file."""
    files: dict[str, tuple[Path, int]] = {}
    cycles = cycles_table(store, run_id)
    if cycles.num_rows:
        write_side_table(cycles, where["cycles"])
        files["cycles"] = (where["cycles"], cycles.num_rows)
    spectra = spectra_tables(store, run_id)
    if spectra is None:
        return Written(files, dc_known=False)
    for table, rows in (("spectra", spectra.spectra), ("fits", spectra.fits)):
        write_side_table(rows, where[table])
        files[table] = (where[table], spectra.fits.num_rows)
    return Written(files, spectra.dc_known)
