"""Export and import in Battery Data Format: a real simulated run out to each format and back in.

The run (cyclerd run, simulated MgAgSn half-cell) has a rest and a voltage sweep in cycle 0 (the
sweep's current changes sign within the step), then three plating/stripping cycles whose stripping
an every-block interrupts for spectra: the cases where a column's meaning could go wrong.
"""

from __future__ import annotations

import gzip
import itertools
import string
from importlib.resources import files
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from cyclerd.analysis import bdf, bdf_columns, bdf_import, bdf_steps
from cyclerd.cli.main import app
from cyclerd.store.database import Store

runner = CliRunner()

PROTOCOL = """\
name: BDF round trip
cell: {area: 0.785 cm^2}
safety: {voltage_min: -0.5 V, voltage_max: 3.0 V, current_max: 2 mA/cm^2, duration_max: 20 h}
record: {every: 60 s, voltage_change: 5 mV}
steps:
  - rest: 10 min
  - sweep: {start: 1.47 V, vertices: [1.2 V, 1.47 V], scan_rate: 5 mV/s, scans: 1, record: {every: 5 s}}
  - repeat:
      label: plating/stripping
      count: 3
      steps:
        - plate: {current: 1 mA/cm^2, until: {charge: 0.2 mAh/cm^2}}
        - strip:
            current: 1 mA/cm^2
            until: {voltage_above: 1.0 V, duration: 1 h}
            every:
              interval: 5 min
              at_end: false
              steps:
                - rest: 10 s
                - eis: {frequency_start: 100 kHz, frequency_stop: 1 Hz, points_per_decade: 3,
                        amplitude: 10 mV}
"""

BDF_HEADER = [
    "Test Time / s",
    "Voltage / V",
    "Current / A",
    "Unix Time / s",
    "Cycle Count / 1",
    "Step Count / 1",
    "Step Index / 1",
    "Step ID",
    "Step Type",
    "Charging Capacity / Ah",
    "Discharging Capacity / Ah",
    "Net Capacity / Ah",
    "Step Capacity / Ah",
    "Charging Energy / Wh",
    "Discharging Energy / Wh",
    "Net Energy / Wh",
    "Step Energy / Wh",
]
PLAIN_HEADER = ["seq", "t_s", "unix_s", "cycle", "step", "step_command", "step_kind"]
PLAIN_HEADER += ["voltage_V", "current_A", "charge_As", "energy_J"]
SPECTRA_HEADER = [
    "Sequence / 1",
    "Test Time / s",
    "Cycle Count / 1",
    "Step Count / 1",
    "Step Label",
    "DC Level",
    "DC Potential / V",
    "Frequency / Hz",
    "Real Impedance / ohm",
    "Imaginary Impedance / ohm",
    "Fitted Real Impedance / ohm",
    "Fitted Imaginary Impedance / ohm",
]
SUFFIX = {"bdf-csv": ".bdf.csv", "bdf-parquet": ".bdf.parquet", "csv": ".csv"}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding run 1, recorded by `cyclerd run` on a simulated cell."""
    folder = tmp_path_factory.mktemp("recorded")
    protocol = folder / "roundtrip.yaml"
    protocol.write_text(PROTOCOL)
    db = folder / "recorded.db"
    result = runner.invoke(app, ["run", str(protocol), "--sim", "mgagsn", "--seed", "1", "--db", str(db)])
    assert result.exit_code == 0, result.output
    return db


def _export(db: Path, fmt: str, output: Path) -> str:
    result = runner.invoke(app, ["export", "1", "--format", fmt, "--output", str(output), "--db", str(db)])
    assert result.exit_code == 0, result.output
    return result.output


def _import(path: Path, db: Path, *extra: str) -> int:
    result = runner.invoke(app, ["import", str(path), "--db", str(db), *extra])
    assert result.exit_code == 0, result.output
    with Store(db) as store:
        return store.runs()[-1].id


def _header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


def test_the_recorded_run_has_what_the_round_trip_must_survive(recorded: Path) -> None:
    with Store(recorded) as store:
        s = store.samples(1)
        kinds = [row["kind"] for row in store.steps(1)]
        sweep = s["step"] == max(row["number"] for row in store.steps(1) if row["kind"] == "sweep")
        assert store.run(1).state == "completed"
        assert len(store.spectra(1)) >= 3
    assert {"rest", "plate", "strip", "eis", "sweep"} <= set(kinds)
    assert (np.diff(s["step"]) < 0).any(), "an every-block interruption resumes an earlier step"
    assert (np.sign(s["charge"][sweep]) == -np.sign(s["current"][sweep])).any()


def test_bdf_csv_header_is_the_spec_list_and_numbers_are_the_stored_ones(
    recorded: Path, tmp_path: Path
) -> None:
    path = tmp_path / "run1.bdf.csv"
    output = _export(recorded, "bdf-csv", path)
    with Store(recorded) as store:
        s, run = store.samples(1), store.run(1)
        assert f"run 1: {len(s['t'])} samples to {path}" in output
    assert _header(path) == BDF_HEADER  # no temperature column: the simulator logs none
    table = bdf_import.read_columns(path, ("t",))[0]
    np.testing.assert_array_equal(table["t"], s["t"])
    np.testing.assert_array_equal(table["voltage"], s["voltage"])
    np.testing.assert_array_equal(table["current"], s["current"])
    np.testing.assert_array_equal(table["unix"], run.started_unix + s["t"])
    np.testing.assert_array_equal(table["step"], s["step"])
    np.testing.assert_array_equal(table["cycle"], s["cycle"])


def test_sign_convention_plating_stays_negative_and_charging_capacity_counts_positive_current(
    recorded: Path, tmp_path: Path
) -> None:
    path = tmp_path / "run1.bdf.parquet"
    _export(recorded, "bdf-parquet", path)
    table = pq.read_table(path)
    assert table.column_names == BDF_HEADER
    kind = np.array(table.column("Step Type").to_pylist())
    current = table.column("Current / A").to_numpy()
    step_capacity = table.column("Step Capacity / Ah").to_numpy()
    assert (current[kind == "plate"] < 0).all()
    assert (current[kind == "strip"] > 0).all()
    assert (step_capacity >= 0).all()
    for name in ("Charging Capacity / Ah", "Discharging Capacity / Ah", "Charging Energy / Wh"):
        assert (np.diff(table.column(name).to_numpy()) >= 0).all(), f"{name} never decreases"
    grows = np.r_[False, np.diff(table.column("Charging Capacity / Ah").to_numpy()) > 0]
    falls = np.r_[False, np.diff(table.column("Discharging Capacity / Ah").to_numpy()) > 0]
    cc = np.isin(kind, ["plate", "strip"])
    assert (current[grows & cc] > 0).all()
    assert (current[falls & cc] < 0).all()
    with Store(recorded) as store:
        steps = store.steps(1)
    plated_Ah = -sum(r["charge_As"] for r in steps if r["kind"] == "plate") / 3600
    stripped_Ah = sum(r["charge_As"] for r in steps if r["kind"] == "strip") / 3600
    # Stripping has no negative current, so all discharging is plating plus the sweep's reduction.
    assert table.column("Discharging Capacity / Ah").to_numpy()[-1] >= plated_Ah * (1 - 1e-12)
    assert table.column("Charging Capacity / Ah").to_numpy()[-1] >= stripped_Ah * (1 - 1e-12)
    net = table.column("Net Capacity / Ah").to_numpy()[-1]
    assert net == pytest.approx(sum(r["charge_As"] or 0.0 for r in steps) / 3600, rel=1e-9)
    types = {f.name: f.type for f in table.schema}
    assert types["Test Time / s"] == pa.float64()
    assert types["Step Count / 1"] == pa.int64()


@pytest.mark.parametrize("fmt", ["bdf-csv", "bdf-parquet", "csv"])
def test_export_then_import_gives_the_same_run(recorded: Path, tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"run1{SUFFIX[fmt]}"
    _export(recorded, fmt, path)
    db = tmp_path / "imported.db"
    run_id = _import(path, db, "--name", "back", "--channel", "bench")
    with Store(recorded) as original, Store(db) as imported:
        a, b = original.samples(1), imported.samples(run_id)
        assert (imported.run(run_id).name, imported.run(run_id).channel) == ("back", "bench")
        assert imported.run(run_id).source == {"import": str(path.resolve())}
        assert imported.run(run_id).started_unix == original.run(1).started_unix
        for key in ("t", "voltage", "current", "step", "cycle", "seq"):
            assert np.array_equal(a[key], b[key]), key
        assert np.array_equal(a["temperature"], b["temperature"], equal_nan=True)
        steps_a, steps_b = original.steps(1), imported.steps(run_id)
        with_samples = {int(n) for n in np.unique(a["step"])}
        same = ("number", "command", "kind", "cycle", "t_start")
        assert [[r[k] for k in same] for r in steps_a if r["number"] in with_samples] == [
            [r[k] for k in same] for r in steps_b
        ]
        cycles_a, cycles_b = original.cycles(1), imported.cycles(run_id)
        again = bdf.run_table(imported, run_id, fmt)
        assert again.equals(bdf.run_table(original, 1, fmt)), "exported again, the file is the same"
    if fmt == "csv":  # SI throughout: the store's numbers come back bit for bit
        for key in ("charge", "energy"):
            assert np.array_equal(a[key], b[key]), key
        for key, column in cycles_a.items():
            assert np.array_equal(column, cycles_b[key]), key
    else:  # A·s -> Ah -> A·s is not an identity in binary floating point: within one ulp
        for key in ("charge", "energy"):
            np.testing.assert_array_max_ulp(a[key], b[key], maxulp=1)
        assert cycles_a.keys() == cycles_b.keys()
        for key, column in cycles_a.items():
            np.testing.assert_allclose(cycles_b[key], column, rtol=1e-14, atol=0, err_msg=key)


def test_an_imported_run_shows_like_a_recorded_one(recorded: Path, tmp_path: Path) -> None:
    path = tmp_path / "run1.bdf.csv"
    _export(recorded, "bdf-csv", path)
    db = tmp_path / "imported.db"
    _import(path, db)
    shown = runner.invoke(app, ["show", "1", "--db", str(db)])
    recorded_shown = runner.invoke(app, ["show", "1", "--db", str(recorded)])
    assert shown.exit_code == 0, shown.output
    assert "run1 — completed" in shown.output

    def cycle_rows(output: str) -> list[str]:  # the cycle table's rows, not the sweep's peak table
        return [
            line
            for line in output.splitlines()
            if line.strip().startswith(("1 ", "2 ", "3 ")) and "%" in line
        ]

    table, expected = cycle_rows(shown.output), cycle_rows(recorded_shown.output)
    assert len(table) == 3
    assert table == expected


def test_spectra_round_trip_through_their_csv(recorded: Path, tmp_path: Path) -> None:
    output = _export(recorded, "bdf-csv", tmp_path / "cell7.bdf.csv")
    spectra = tmp_path / "cell7.spectra.csv"
    with Store(recorded) as store:
        stored = store.spectra(1)
    assert f"run 1: {len(stored)} spectrum(s) to {spectra}" in output
    assert _header(spectra) == SPECTRA_HEADER
    read = bdf_import.read_spectra(spectra)
    assert [(s["sequence"], s["t"], s["step"], s["cycle"]) for s in read] == [
        (s["sequence"], s["t"], s["step"], s["cycle"]) for s in stored
    ]
    for got, want in zip(read, stored, strict=True):
        assert np.array_equal(got["frequency_Hz"], want["frequency_Hz"])
        assert np.array_equal(got["impedance_ohm"], want["impedance_ohm"])
        assert (want["impedance_ohm"].imag < 0).any(), "Z'' is Im Z, negative on the capacitive arc"
    db = tmp_path / "imported.db"
    run_id = _import(tmp_path / "cell7.bdf.csv", db, "--spectra", str(spectra))
    with Store(db) as store:
        attached = store.spectra(run_id)
    assert len(attached) == len(stored)
    assert all(
        np.array_equal(x["impedance_ohm"], y["impedance_ohm"]) for x, y in zip(attached, stored, strict=True)
    )


def test_temperature_goes_out_in_celsius_and_comes_back_in_kelvin(tmp_path: Path) -> None:
    db = tmp_path / "warm.db"
    n = 7
    temperature = np.array([298.15, 298.2, np.nan, 299.0, 301.37, 298.15, 310.1])
    with Store(db) as store:
        run_id = store.create_run("warm", "sim", "", {}, {}, started_unix=1.7e9)
        store.begin_step(run_id, 1, 0, "strip", "strip", 1, 0.0)
        store.append_samples(
            run_id,
            {
                "seq": np.arange(n),
                "t": np.arange(n) * 10.0,
                "step": np.ones(n, dtype=np.int64),
                "cycle": np.ones(n, dtype=np.int64),
                "voltage": np.linspace(0.1, 0.7, n),
                "current": np.full(n, 1e-3),
                "charge": np.arange(n) * 1e-2,
                "energy": np.arange(n) * 4e-3,
                "temperature": temperature,
            },
        )
        store.end_step(run_id, 1, 60.0, "duration", 0.06, 0.024)
        path = tmp_path / "warm.bdf.csv"
        bdf.export_run(store, run_id, path, "bdf-csv")
        assert _header(path)[-1] == "Ambient Temperature / degC"
        cells = [line.rsplit(",", 1)[1] for line in path.read_text().splitlines()[1:]]
        assert cells[2] == "", "an unknown temperature is an empty cell"
        celsius = np.array([float(cell) if cell else np.nan for cell in cells])
        assert np.array_equal(celsius, temperature - 273.15, equal_nan=True)
        back = bdf_import.import_run(store, path)
        assert np.array_equal(store.samples(back.run_id)["temperature"], temperature, equal_nan=True)


def test_a_file_without_voltage_is_refused_naming_the_column_and_listing_those_found(tmp_path: Path) -> None:
    path = tmp_path / "partial.bdf.csv"
    path.write_text("Test Time / s,Current / A,Cycle Count / 1\n0,0.001,1\n")
    db = tmp_path / "x.db"
    result = runner.invoke(app, ["import", str(path), "--db", str(db)])
    assert result.exit_code == 2
    assert "no Voltage / V column" in result.output
    assert "columns found: Test Time / s, Current / A, Cycle Count / 1" in result.output
    with Store(db) as store:
        assert store.runs() == [], "nothing stored from a file that failed"


def test_an_unknown_unit_is_refused_with_the_accepted_ones_and_known_scalings_convert(tmp_path: Path) -> None:
    bad = tmp_path / "kiloamps.csv"
    bad.write_text("Test Time / s,Voltage / V,Current / kA\n0,3.0,1\n")
    with pytest.raises(bdf_columns.UnknownUnit, match=r"'kA' for current; write it in one of: A, mA, µA"):
        bdf_import.read_samples(bad)
    scaled = tmp_path / "lab.csv"
    scaled.write_text(
        "Test Time / min,Voltage / mV,Current / mA,Step Capacity / mAh,Step Energy / mWh\n"
        "0,3000,0,0,0\n1,3100,2,0.5,1.5\n2,3200,2,1,3\n"
    )
    read = bdf_import.read_samples(scaled)
    np.testing.assert_array_equal(read.samples["t"], [0.0, 60.0, 120.0])
    np.testing.assert_array_equal(read.samples["voltage"], [3.0, 3.1, 3.2])
    np.testing.assert_array_equal(read.samples["current"], [0.0, 0.002, 0.002])
    np.testing.assert_allclose(read.samples["charge"], [0.0, 1.8, 3.6])  # mAh -> A·s
    np.testing.assert_allclose(read.samples["energy"], [0.0, 5.4, 10.8])  # mWh -> J


def test_other_bad_files_get_their_own_errors(tmp_path: Path) -> None:
    cases = {
        "text.csv": (
            "Test Time / s,Voltage / V,Current / A\n0,3.0,abc\n",
            bdf_columns.BadValues,
            "invalid value 'abc'",
        ),
        "gap.csv": (
            "Test Time / s,Voltage / V,Current / A\n0,3.0,\n",
            bdf_columns.BadValues,
            "empty or infinite in data row 1",
        ),
        "half.csv": (
            "Test Time / s,Voltage / V,Current / A,Step Count / 1\n0,3,0,1.5\n",
            bdf_columns.BadValues,
            "whole",
        ),
        "twice.csv": (
            "Test Time / s,Voltage / V,voltage_volt,Current / A\n0,3,3,0\n",
            bdf_columns.DuplicateColumn,
            "drop",
        ),
        "empty.csv": ("Test Time / s,Voltage / V,Current / A\n", bdf_columns.BadValues, "no data rows"),
    }
    for name, (text, error, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(error, match=message):
            bdf_import.read_samples(tmp_path / name)
    with pytest.raises(bdf_columns.BdfError, match="no file at"):
        bdf_import.read_samples(tmp_path / "absent.csv")


def test_machine_readable_headers_and_derived_columns(tmp_path: Path) -> None:
    """A minimal third-party file: steps follow the current's sign, charge is integrated per step."""
    path = tmp_path / "other_lab.bdf.csv"
    rows = ["0,3.0,0", "60,3.1,0.001", "120,3.2,0.001", "180,3.1,-0.001", "240,3.0,-0.001"]
    path.write_text(
        "test_time_second,voltage_volt,current_ampere,Power / W\n" + "\n".join(f"{r},0" for r in rows)
    )
    db = tmp_path / "x.db"
    result = runner.invoke(app, ["import", str(path), "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "columns cyclerd does not use: Power / W" in result.output
    with Store(db) as store:
        s, steps, cycles = store.samples(1), store.steps(1), store.cycles(1)
        assert store.run(1).name == "other_lab"
    np.testing.assert_array_equal(s["step"], [1, 2, 2, 3, 3])
    np.testing.assert_array_equal(s["cycle"], [1, 1, 1, 1, 1])
    np.testing.assert_allclose(s["charge"], [0.0, 0.0, 0.06, 0.0, -0.06])
    assert [r["kind"] for r in steps] == ["rest", "charge", "discharge"]
    assert cycles["coulombic_efficiency"].tolist() == pytest.approx([1.0])
    assert runner.invoke(app, ["show", "1", "--db", str(db)]).exit_code == 0


def test_an_interrupted_step_is_integrated_over_its_own_rows_only() -> None:
    """Step 1 runs, step 2 interrupts it for 80 s, step 1 resumes: the gap adds no charge."""
    step = np.array([1, 1, 2, 2, 1, 1], dtype=np.int64)
    t = np.array([0.0, 10.0, 10.0, 90.0, 90.0, 100.0])
    current = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    groups = bdf_steps.StepGroups(step)
    np.testing.assert_array_equal(groups.running(groups.trapezoid(current, t)), [0, 10, 0, 0, 10, 20])


@pytest.fixture(scope="module")
def insitu(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """E5 (insitu_eis.yaml, MgAgSn-PVDF, seed 3) recorded, and imported back from a BDF CSV without
    capacity or energy columns, as a tool that logs only time, voltage, current and steps writes it."""
    folder = tmp_path_factory.mktemp("insitu")
    recorded = folder / "recorded.db"
    protocol = str(files("cyclerd.protocols") / "library" / "insitu_eis.yaml")
    ran = runner.invoke(app, ["run", protocol, "--sim", "mgagsn-pvdf", "--seed", "3", "--db", str(recorded)])
    assert ran.exit_code == 0, ran.output
    full = folder / "run1.bdf.csv"
    _export(recorded, "bdf-csv", full)
    table = pa_csv.read_csv(full)
    lean = folder / "lean.bdf.csv"
    kept = [name for name in table.column_names if "Capacity" not in name and "Energy" not in name]
    assert kept == BDF_HEADER[:9]
    bdf.write_table(table.select(kept), lean, "bdf-csv")
    imported = folder / "imported.db"
    assert _import(lean, imported) == 1
    return recorded, imported


def test_without_capacity_columns_a_step_an_eis_block_interrupts_is_not_integrated_over_the_gap(
    insitu: tuple[Path, Path],
) -> None:
    recorded, imported = insitu
    with Store(recorded) as original, Store(imported) as back:
        a, b = original.samples(1), back.samples(1)
        stored, read = original.cycles(1), back.cycles(1)
        interrupted = [
            r["number"] for r in original.steps(1) if r["label"] in ("plate with EIS", "strip with EIS")
        ]
    # The case: cycle 4 plated 0.7850 and stripped about 0.7730 mAh (read back before as
    # 1.0408 / 1.0288: the time spent in each interruption counted as plating or stripping).
    assert stored["forward_As"][3] / 3.6 == pytest.approx(0.7850, abs=5e-5)
    assert stored["reverse_As"][3] / 3.6 == pytest.approx(0.7730, rel=0.01)
    for key in ("forward_As", "reverse_As"):
        np.testing.assert_allclose(read[key][:3], stored[key][:3], rtol=1e-12)
    missed = 0.0
    for number in interrupted:
        rows = np.flatnonzero(a["step"] == number)
        stretches = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
        assert len(stretches) == 6, "five spectra interrupt each step"
        for stretch in stretches:  # over its own rows the integral is the channel's counter
            np.testing.assert_allclose(
                np.diff(b["charge"][stretch]), np.diff(a["charge"][stretch]), rtol=1e-9, atol=1e-12
            )
        for before, after in itertools.pairwise(stretches):
            assert b["charge"][after[0]] == b["charge"][before[-1]], "the gap adds nothing"
            missed += abs(a["charge"][after[0]] - a["charge"][before[-1]])
    # The channel logs a row at the instant the step resumes, carrying its charge: nothing of
    # the step's charge falls between two rows of the file.
    assert missed == 0.0
    for key in ("forward_As", "reverse_As"):
        assert read[key][3] == pytest.approx(stored[key][3], rel=1e-9), key


def test_without_capacity_columns_show_gives_the_recorded_cycle_4(insitu: tuple[Path, Path]) -> None:
    rows = []
    for db in insitu:
        shown = runner.invoke(app, ["show", "1", "--db", str(db)])
        assert shown.exit_code == 0, shown.output
        rows.append(next(line.split() for line in shown.output.splitlines() if line.strip().startswith("4 ")))
    recorded, imported = rows
    assert imported[1:3] == recorded[1:3]


def test_export_says_what_is_missing_and_import_reads_gzip(recorded: Path, tmp_path: Path) -> None:
    absent = runner.invoke(app, ["export", "9", "--format", "csv", "--db", str(recorded)])
    assert absent.exit_code == 2
    assert f"no run 9 in {recorded}" in absent.output
    nowhere = runner.invoke(app, ["export", "1", "--format", "csv", "--db", str(tmp_path / "none.db")])
    assert nowhere.exit_code == 2
    assert "no store at" in nowhere.output
    into = tmp_path / "missing" / "run1.csv"
    no_folder = runner.invoke(app, ["export", "1", "--format", "csv", "-o", str(into), "--db", str(recorded)])
    assert no_folder.exit_code == 2
    assert f"no directory {into.parent}" in no_folder.output
    packed = tmp_path / "run1.bdf.csv.gz"
    with gzip.open(packed, "wb") as f:
        f.write(bdf_csv_bytes(recorded, tmp_path))
    run_id = _import(packed, tmp_path / "x.db")
    with Store(tmp_path / "x.db") as imported, Store(recorded) as original:
        assert imported.run(run_id).name == "run1"
        assert np.array_equal(imported.samples(run_id)["voltage"], original.samples(1)["voltage"])


def bdf_csv_bytes(db: Path, folder: Path) -> bytes:
    path = folder / "plain.bdf.csv"
    _export(db, "bdf-csv", path)
    return path.read_bytes()


# -- the header parser ---------------------------------------------------------------------

# (label, unit, what it holds, x in that unit is x * scale + offset in the store's SI unit)
KNOWN = [
    ("Test Time", "s", "t", 1.0, 0.0),
    ("Test Time", "h", "t", 3600.0, 0.0),
    ("Test Time", "min", "t", 60.0, 0.0),
    ("Voltage", "mV", "voltage", 1e-3, 0.0),
    ("Current", "mA", "current", 1e-3, 0.0),
    ("Current", "uA", "current", 1e-6, 0.0),
    ("Current", "µA", "current", 1e-6, 0.0),
    ("Charging Capacity", "mAh", "charging_capacity", 3.6, 0.0),
    ("Step Capacity", "Ah", "step_capacity", 3600.0, 0.0),
    ("Net Energy", "mWh", "net_energy", 3.6, 0.0),
    ("Ambient Temperature", "degC", "temperature", 1.0, 273.15),
    ("Ambient Temperature", "°C", "temperature", 1.0, 273.15),
    ("Cycle Count", "1", "cycle", 1.0, 0.0),
    ("Frequency", "Hz", "frequency", 1.0, 0.0),
    ("Imaginary Impedance", "Ohm", "z_imag", 1.0, 0.0),
]
spacing = st.text(alphabet=" \t", max_size=3)


@given(
    st.sampled_from(KNOWN),
    spacing,
    spacing,
    spacing,
    st.booleans(),
    st.floats(-1e6, 1e6, allow_nan=False),
)
def test_headers_name_quantity_and_unit_however_spaced_or_cased(
    known: tuple[str, str, str, float, float], a: str, b: str, c: str, upper: bool, x: float
) -> None:
    label, unit, key, scale, offset = known
    header = f"{a}{label.upper() if upper else label}{b}/{c}{unit}{a}"
    column = bdf_columns.parse_header(header)
    assert column is not None
    assert (column.key, column.header) == (key, header)
    assert column.to_si(np.array([x]))[0] == pytest.approx(x * scale + offset, rel=1e-12, abs=1e-9)


@given(st.sampled_from(KNOWN), st.text(alphabet=string.ascii_letters + "µ°/%·", min_size=1, max_size=6))
def test_an_unknown_unit_of_a_known_quantity_is_refused_listing_the_accepted_units(
    known: tuple[str, str, str, float, float], unit: str
) -> None:
    label, _, key, _, _ = known
    accepted = bdf_columns.UNITS[bdf_columns.QUANTITIES[key][1]]
    if unit in set(accepted) | {u.replace("µ", "u") for u in accepted}:
        assert getattr(bdf_columns.parse_header(f"{label} / {unit}"), "key", None) == key
        return
    with pytest.raises(bdf_columns.UnknownUnit) as refused:
        bdf_columns.parse_header(f"{label} / {unit}")
    assert f"'{label} / {unit}'" in str(refused.value)
    assert all(u in str(refused.value) for u in accepted), str(refused.value)


@given(st.text(max_size=40))
def test_any_header_is_a_column_unknown_or_an_unknown_unit_never_a_crash(header: str) -> None:
    try:
        column = bdf_columns.parse_header(header)
    except bdf_columns.UnknownUnit:
        return
    assert column is None or column.key in bdf_columns.QUANTITIES


def test_bdf_machine_readable_names_and_our_own_csv_names_are_read() -> None:
    names = {
        "test_time_second": "t",
        "Voltage_Volt": "voltage",
        "current_ampere": "current",
        "unix_time_second": "unix",
        "cycle_count": "cycle",
        "step_count": "step",
        "charging_capacity_ah": "charging_capacity",
        "ambient_temperature_celsius": "temperature",
        "Step Type": "step_type",
        "t_s": "t",
        "charge_As": "charge",
        "temperature_K": "temperature",
    }
    for header, key in names.items():
        column = bdf_columns.parse_header(header)
        assert getattr(column, "key", None) == key, header
    assert bdf_columns.parse_header("Power / W") is None
    assert bdf_columns.parse_header("Record Index") is None
    kelvin = bdf_columns.parse_header("ambient_temperature_celsius")
    assert kelvin is not None
    assert kelvin.to_si(np.array([0.0]))[0] == 273.15
