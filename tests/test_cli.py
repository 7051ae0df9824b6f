"""The command line as a user meets it: `cyclerd validate`, `cyclerd schema`, `--version`."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.protocols.schema import SCHEMA_FILE, json_schema

runner = CliRunner()

GOOD = """\
name: in-situ EIS
cell: {area: 0.785 cm^2}
steps:
  - plate:
      current: 1 mA/cm^2
      until: {charge: 1 mAh/cm^2}
      every:
        interval: 10 min
        at_end: true
        steps:
          - eis: {frequency_start: 7 MHz, frequency_stop: 0.1 Hz, amplitude: 10 mV}
"""

BROKEN = """\
name: broken
steps:
  - plate: {current: 1 mA/cm^2, until: {durration: 1 h}}
  - rest: 600
"""


def test_validate_prints_the_plan(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "✓" in result.output
    assert "plate at -785 µA until 785 µAh passed" in result.output
    assert "(6 times)" in result.output
    assert "EIS (potentiostatic" in result.output


def test_validate_lists_every_problem_with_its_position_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:3:41: unknown key 'durration'; did you mean 'duration'?" in result.output
    assert f"{path}:4:11:" in result.output
    assert "write a duration such as '10 min'" in result.output


def test_validate_says_what_cell_data_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "crate.yaml"
    path.write_text("name: c\nsteps: [Charge at 0.1C until 4.2 V]\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0
    assert "nominal capacity" in result.output
    result = runner.invoke(app, ["validate", str(path), "--capacity", "2 mAh"])
    assert result.exit_code == 0
    assert "cc at 200 µA until V > 4.2 V" in result.output


def test_validate_rejects_a_bad_override(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = runner.invoke(app, ["validate", str(path), "--area", "10 min"])
    assert result.exit_code == 2
    assert "an area such as '0.785 cm^2'" in result.output


def test_schema_is_the_models_and_the_library_copy_is_current(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    result = runner.invoke(app, ["schema", "-o", str(out)])
    assert result.exit_code == 0
    written = json.loads(out.read_text())
    assert written == json_schema()
    assert "plate" in json.dumps(written["$defs"])
    shipped = files("cyclerd.protocols") / "library" / SCHEMA_FILE
    assert json.loads(shipped.read_text()) == written, (
        "run: cyclerd schema -o protocols/library/protocol.schema.json"
    )


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("cyclerd ")


E1_SHORT = """\
name: E1, three cycles
cell: {area: 0.785 cm^2}
record: {every: 1 min}
steps:
  - repeat:
      count: 3
      until: {short_circuit: true}
      steps:
        - plate: {current: 1 mA/cm^2, until: {charge: 1 mAh/cm^2}}
        - strip: {current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 2 h}}
"""


def test_run_stores_a_run_that_runs_and_show_report(tmp_path: Path) -> None:
    protocol = tmp_path / "e1.yaml"
    protocol.write_text(E1_SHORT)
    db = tmp_path / "lab.db"
    result = runner.invoke(app, ["run", str(protocol), "--sim", "mgagsn", "--seed", "2", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert "first-cycle CE (ICE)" in result.output
    assert "84.5 %" in result.output  # the paper's column and, within rounding, this run's
    assert f"stored as run 1 in {db}" in result.output
    listing = runner.invoke(app, ["runs", "--db", str(db)])
    assert "E1, three cycles" in listing.output
    assert "completed" in listing.output
    shown = runner.invoke(app, ["show", "1", "--db", str(db)])
    assert shown.exit_code == 0
    assert "plated / mAh" in shown.output
    assert shown.output.count("0.7850") == 3  # 1 mAh/cm² on 0.785 cm², every cycle
    missing = runner.invoke(app, ["show", "9", "--db", str(db)])
    assert missing.exit_code == 2
    assert "no run 9" in missing.output


def test_run_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    protocol = tmp_path / "e1.yaml"
    protocol.write_text(E1_SHORT)
    db = str(tmp_path / "lab.db")
    unknown = runner.invoke(app, ["run", str(protocol), "--sim", "mgagsnn", "--db", db])
    assert unknown.exit_code == 2
    assert "choose one of" in unknown.output
    typo = runner.invoke(app, ["run", str(protocol), "--sim", "mgagsn", "--set", "r_bulk=1", "--db", db])
    assert typo.exit_code == 2
    assert "unknown half-cell parameter" in typo.output
    crate = tmp_path / "crate.yaml"
    crate.write_text("name: c\nsteps: [Charge at 0.1C until 4.2 V]\n")
    needs = runner.invoke(app, ["run", str(crate), "--sim", "ncm811-anodeless", "--db", db])
    assert needs.exit_code == 2
    assert "nominal capacity" in needs.output
    assert not (tmp_path / "lab.db").exists()  # refused before anything was stored


def test_simulator_parameters_come_from_a_file(tmp_path: Path) -> None:
    protocol = tmp_path / "e1.yaml"
    protocol.write_text(E1_SHORT)
    params = tmp_path / "cell.yaml"
    params.write_text("ice: 0.9\n")  # a better first cycle than the paper's 84.5 %
    db = tmp_path / "lab.db"
    args = ["run", str(protocol), "--sim", "mgagsn", "--params", str(params), "--db", str(db)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "90.0 %" in result.output


def test_run_on_an_instrument_checks_its_capabilities_first(tmp_path: Path) -> None:
    from cyclerd.simulators.keithley2450_emulator import Keithley2450Emulator
    from cyclerd.simulators.presets import make_cell
    from cyclerd.simulators.scpi_server import running

    insitu = files("cyclerd.protocols") / "library" / "insitu_eis.yaml"
    rest = tmp_path / "rest.yaml"
    rest.write_text("name: OCV\nrecord: {every: 1 min}\nsteps:\n  - rest: 1 h\n")
    db = tmp_path / "lab.db"
    with running(Keithley2450Emulator(make_cell("mgagsn", seed=1), speed=3600)) as port:
        resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
        refused = runner.invoke(app, ["run", str(insitu), "--instrument", resource, "--db", str(db)])
        assert refused.exit_code == 4  # refused: docs/cli.md
        assert "cannot measure impedance spectra (EIS)" in refused.output
        ran = runner.invoke(
            app,
            ["run", str(rest), "--instrument", resource, "--speed", "3600", "--poll", "60", "--db", str(db)],
        )
    assert ran.exit_code == 0, ran.output
    assert "keithley2450" in runner.invoke(app, ["runs", "--db", str(db)]).output
