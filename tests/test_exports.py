"""`cyclerd export` beside the samples: the cycle table, the spectra with their fits, one file each.

The run (simulated MgAgSn half-cell) has a spectrum at the open-circuit voltage before its two
plating/stripping cycles and one held at 1.0 V after them, so both kinds of DC level are exported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cyclerd.analysis import bdf_import
from cyclerd.analysis.eis_trends import spectrum_trends
from cyclerd.cli.main import app
from cyclerd.store.database import Store

runner = CliRunner()

PROTOCOL = """\
name: export tables
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.5 V, voltage_max: 3.0 V, current_max: 2 mA/cm^2, duration_max: 20 h}
record: {every: 60 s}
steps:
  - rest: 10 min
  - eis: {label: fresh cell, frequency_start: 100 kHz, frequency_stop: 1 Hz, points_per_decade: 4,
          amplitude: 10 mV}
  - repeat:
      count: 2
      steps:
        - plate: {current: 1 mA/cm^2, until: {charge: 0.2 mAh/cm^2}}
        - strip: {current: 1 mA/cm^2, until: {voltage_above: 1.0 V, duration: 1 h}}
  - eis: {label: held at 1 V, frequency_start: 100 kHz, frequency_stop: 1 Hz, points_per_decade: 4,
          amplitude: 10 mV, dc_level: 1.0 V}
"""
ALL = {
    "bdf-csv": ["run1.bdf.csv", "run1.cycles.csv", "run1.spectra.csv", "run1.fits.csv"],
    "bdf-parquet": ["run1.bdf.parquet", "run1.cycles.parquet", "run1.spectra.parquet", "run1.fits.parquet"],
    "csv": ["run1.csv", "run1.cycles.csv", "run1.spectra.csv", "run1.fits.csv"],
}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("recorded")
    protocol = folder / "tables.yaml"
    protocol.write_text(PROTOCOL)
    db = folder / "recorded.db"
    result = runner.invoke(app, ["run", str(protocol), "--sim", "mgagsn", "--seed", "1", "--db", str(db)])
    assert result.exit_code == 0, result.output
    return db


def _export(db: Path, fmt: str, *extra: str) -> str:
    result = runner.invoke(app, ["export", "1", "--format", fmt, "--db", str(db), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def _read(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pa_csv.read_csv(path)


@pytest.mark.parametrize("fmt", list(ALL))
def test_without_o_each_format_writes_each_table_under_its_own_name(
    recorded: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    monkeypatch.chdir(tmp_path)
    output = _export(recorded, fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ALL[fmt])
    for name in ALL[fmt]:
        assert f" to {name}" in output
        parquet = (tmp_path / name).read_bytes()[:4] == b"PAR1"
        assert parquet == name.endswith(".parquet"), name


def test_the_tables_are_the_same_whichever_csv_format_wrote_them(recorded: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _export(recorded, "bdf-csv", "-o", str(a / "run1.bdf.csv"))
    _export(recorded, "csv", "-o", str(b / "run1.csv"))
    for table in ("cycles", "spectra", "fits"):
        assert (a / f"run1.{table}.csv").read_bytes() == (b / f"run1.{table}.csv").read_bytes(), table


@pytest.mark.parametrize("fmt", ["bdf-csv", "bdf-parquet"])
def test_the_cycle_table_is_the_stored_summary(recorded: Path, tmp_path: Path, fmt: str) -> None:
    suffix = ".parquet" if fmt == "bdf-parquet" else ".csv"
    output = _export(recorded, fmt, "-o", str(tmp_path / f"cell.bdf{suffix}"))
    path = tmp_path / f"cell.cycles{suffix}"
    assert f"run 1: 2 cycle(s) to {path}" in output
    table = _read(path)
    with Store(recorded) as store:
        stored = store.cycles(1)
    assert table.column_names == list(stored)
    assert table.schema.field("cycle").type == pa.int64()
    for key, column in stored.items():
        assert np.array_equal(table.column(key).to_numpy().astype(np.float64), column), key
    assert table.column("cycle").to_pylist() == [1, 2]


def test_spectra_carry_step_label_dc_level_and_the_fitted_curve(recorded: Path, tmp_path: Path) -> None:
    _export(recorded, "bdf-parquet", "-o", str(tmp_path / "run1.bdf.parquet"))
    table = pq.read_table(tmp_path / "run1.spectra.parquet")
    with Store(recorded) as store:
        stored, trends = store.spectra(1), spectrum_trends(store, 1)
        labels = {r["number"]: r["label"] for r in store.steps(1)}
    sequence = np.array(table.column("Sequence / 1").to_pylist())
    assert len(stored) == 2
    assert any(fit is not None for fit in trends.fits)
    for spectrum, fit in zip(stored, trends.fits, strict=True):
        rows = sequence == spectrum["sequence"]
        assert set(np.array(table.column("Step Label").to_pylist())[rows]) == {labels[spectrum["step"]]}
        z_fit = table.column("Fitted Real Impedance / ohm").to_numpy()[rows]
        z_fit = z_fit + 1j * table.column("Fitted Imaginary Impedance / ohm").to_numpy()[rows]
        if fit is None:  # neither circuit fitted (see the fits' note): empty cells, not numbers
            assert np.isnan(z_fit).all()
        else:
            np.testing.assert_array_equal(z_fit, fit.predict(spectrum["frequency_Hz"]))
        z = table.column("Real Impedance / ohm").to_numpy()[rows]
        assert np.array_equal(z, spectrum["impedance_ohm"].real)
    assert [labels[s["step"]] for s in stored] == ["fresh cell", "held at 1 V"]
    first, last = sequence == stored[0]["sequence"], sequence == stored[-1]["sequence"]
    level = np.array(table.column("DC Level").to_pylist())
    potential = table.column("DC Potential / V").to_pylist()
    assert set(level[first]) == {"ocv"}
    assert set(level[last]) == {"1.0 V"}
    # At OCV the potential is the one measured as the spectrum began: its step's first sample.
    with Store(recorded) as store:
        samples = store.samples(1)
    ocv = float(samples["voltage"][samples["step"] == stored[0]["step"]][0])
    assert {potential[i] for i in np.flatnonzero(first)} == {ocv}
    assert {potential[i] for i in np.flatnonzero(last)} == {1.0}
    back = bdf_import.read_spectra(tmp_path / "run1.spectra.parquet")  # import still reads it
    assert all(
        np.array_equal(x["impedance_ohm"], y["impedance_ohm"]) for x, y in zip(back, stored, strict=True)
    )


def test_the_fits_have_one_row_per_spectrum_with_resistances_and_parameters(
    recorded: Path, tmp_path: Path
) -> None:
    output = _export(recorded, "csv", "-o", str(tmp_path / "run1.csv"))
    assert f"run 1: 2 fit(s), one per spectrum to {tmp_path / 'run1.fits.csv'}" in output
    table = pa_csv.read_csv(tmp_path / "run1.fits.csv")
    with Store(recorded) as store:
        trends = spectrum_trends(store, 1)
    assert table.num_rows == len(trends) == 2
    assert table.column("step_label").to_pylist() == ["fresh cell", "held at 1 V"]
    assert table.column("dc_level").to_pylist() == ["ocv", "1.0 V"]
    for key in ("sequence", "cycle", "R_b_ohm", "R_b_stderr_ohm", "R_CT_ohm", "chi2_reduced"):
        assert np.array_equal(table.column(key).to_numpy(), getattr(trends, key), equal_nan=True), key
    assert table.column("circuit").to_pylist() == trends.circuit.tolist()
    assert table.column("note").to_pylist() == trends.note.tolist(), "notes with commas stay one cell"
    parameters = [name for name in table.column_names if name.startswith(("R0", "R1", "CPE1", "W1"))]
    assert "CPE1_alpha_stderr" in parameters
    for i, fit in enumerate(trends.fits):
        if fit is None:  # no circuit kept: no parameter
            assert all(table.column(name)[i].as_py() is None for name in parameters)
            continue
        for name, value in fit.as_dict().items():
            assert table.column(name)[i].as_py() == value, name
            assert table.column(f"{name}_stderr")[i].as_py() == fit.uncertainty(name), name


def test_an_imported_run_has_no_protocol_so_the_dc_columns_are_left_out_and_said_so(
    recorded: Path, tmp_path: Path
) -> None:
    _export(recorded, "bdf-csv", "-o", str(tmp_path / "run1.bdf.csv"))
    db = tmp_path / "imported.db"
    result = runner.invoke(
        app,
        [
            "import",
            str(tmp_path / "run1.bdf.csv"),
            "--spectra",
            str(tmp_path / "run1.spectra.csv"),
            "--db",
            str(db),
        ],
    )
    assert result.exit_code == 0, result.output
    again = tmp_path / "again"
    again.mkdir()
    output = _export(db, "bdf-csv", "-o", str(again / "back.bdf.csv"))
    assert "no protocol stored with the run to read the DC level from; DC columns left out" in output
    spectra, fits = _read(again / "back.spectra.csv"), _read(again / "back.fits.csv")
    assert "DC Level" not in spectra.column_names
    assert "DC Potential / V" not in spectra.column_names
    assert "dc_level" not in fits.column_names
    assert "dc_potential_V" not in fits.column_names
    assert "Step Label" in spectra.column_names


def test_paths_given_explicitly_are_used_and_two_tables_never_share_a_file(
    recorded: Path, tmp_path: Path
) -> None:
    cycles, fits = tmp_path / "summary.parquet", tmp_path / "eis-fits.csv"
    _export(
        recorded, "bdf-csv", "-o", str(tmp_path / "x.bdf.csv"), "--cycles", str(cycles), "--fits", str(fits)
    )
    assert pq.read_table(cycles).num_rows == 2, "a .parquet name is written as Parquet"
    assert pa_csv.read_csv(fits).num_rows == 2
    assert (tmp_path / "x.spectra.csv").is_file()
    same = tmp_path / "both.csv"
    clash = runner.invoke(
        app,
        [
            "export",
            "1",
            "--format",
            "csv",
            "--db",
            str(recorded),
            "--spectra",
            str(same),
            "--fits",
            str(same),
        ],
    )
    assert clash.exit_code == 2
    assert "two tables would go to" in clash.output


def test_export_help_names_every_file_it_writes() -> None:
    result = runner.invoke(app, ["export", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for option in ("--output", "--cycles", "--spectra", "--fits"):
        assert option in text
    for name in ("runN.bdf.csv", "runN.bdf.parquet", "runN.csv", "NAME.cycles.csv", "NAME.fits.csv"):
        assert name in text, name
    assert "cycle table, spectra and their fits" in text
