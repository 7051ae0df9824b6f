"""Mass-specific quantities: the active mass, currents in mA/g, charges in mAh/g, C-rates from a
specific capacity; what is missing or contradictory said where; reports in mAh/g."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyclerd.analysis.key_figures import summarise_run
from cyclerd.analysis.plot_data import load_run
from cyclerd.analysis.report import build_report
from cyclerd.cli.main import app
from cyclerd.engine.session import CellSpec, prepare, prepare_stored
from cyclerd.protocols import ProtocolError, loads
from cyclerd.protocols.compiler import CellDataMissing, compile_protocol
from cyclerd.protocols.plan import plan
from cyclerd.protocols.program import CurrentCommand
from cyclerd.protocols.units import Amount, Basis, parse_charge, parse_current, parse_mass
from cyclerd.store.database import Store

runner = CliRunner()
MAH = 3.6  # A·s


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# -- reading the units ---------------------------------------------------------------------------


def test_specific_units_are_read_per_kilogram() -> None:
    assert parse_current("100 mA/g") == Amount(pytest.approx(100.0), Basis.SPECIFIC)  # A/kg
    assert parse_charge("195 mAh/g") == Amount(pytest.approx(195 * 3600.0), Basis.SPECIFIC)  # A·s/kg
    assert parse_mass("10.3 mg") == Amount(pytest.approx(10.3e-6), Basis.ABSOLUTE)
    assert parse_mass("10.3 mg/cm^2") == Amount(pytest.approx(0.103), Basis.AREAL)  # kg/m²
    assert parse_current("100 mA/g").text("A") == "100 mA/g"
    assert parse_charge("195 mAh/g").text("Ah") == "195 mAh/g"
    assert parse_mass("10.3 mg/cm^2").text("g") == "10.3 mg/cm²"


# -- compiling -------------------------------------------------------------------------------------

MASS_CELL = doc("""
    name: per gram
    cell: {active_mass: 10.3 mg, specific_capacity: 195 mAh/g}
    safety: {current_max: 2C}
    steps:
      - cc: {current: 100 mA/g, until: {charge: 150 mAh/g, voltage_above: 4.3 V}}
      - cc: {current: -0.1C, until: {voltage_below: 2.5 V}}
    """)


def test_per_gram_values_and_c_rates_resolve_with_the_active_mass() -> None:
    program = compile_protocol(loads(MASS_CELL))
    charge, discharge = program.commands()
    assert isinstance(charge, CurrentCommand)
    assert isinstance(discharge, CurrentCommand)
    assert program.active_mass_kg == pytest.approx(10.3e-6)
    assert program.capacity_As == pytest.approx(195 * 10.3e-3 * MAH)  # 2.0085 mAh
    assert charge.current_A == pytest.approx(1.03e-3)  # 100 mA/g × 10.3 mg
    assert charge.end.charge_As == pytest.approx(150 * 10.3e-3 * MAH)
    assert discharge.current_A == pytest.approx(-0.20085e-3)  # 0.1C of 2.0085 mAh
    assert program.safety.current_max_A == pytest.approx(4.017e-3)
    assert any("1.03 mA" in line.text for line in plan(program).lines)


def test_an_areal_loading_needs_the_area_and_gives_the_mass_with_it() -> None:
    text = MASS_CELL.replace("active_mass: 10.3 mg", "area: 0.785 cm^2, active_mass: 10.3 mg/cm^2")
    program = compile_protocol(loads(text))
    assert program.active_mass_kg == pytest.approx(10.3e-6 * 0.785)
    assert next(iter(program.commands())).current_A == pytest.approx(1.03e-3 * 0.785)  # type: ignore[union-attr]
    without_area = MASS_CELL.replace("active_mass: 10.3 mg", "active_mass: 10.3 mg/cm^2")
    with pytest.raises(CellDataMissing) as caught:
        compile_protocol(loads(without_area))
    assert list(caught.value.needs) == [
        "the electrode area (cell.area or --area), to scale the areal active mass"
    ]
    assert compile_protocol(loads(without_area), area_m2=0.785e-4).active_mass_kg == pytest.approx(
        10.3e-6 * 0.785
    )


def test_a_missing_mass_is_named_with_every_value_that_needs_it() -> None:
    text = MASS_CELL.replace("active_mass: 10.3 mg, ", "")
    with pytest.raises(CellDataMissing) as caught:
        compile_protocol(loads(text))
    needs = caught.value.needs
    assert list(needs) == ["the active-material mass (cell.active_mass or --mass)"]
    where = needs["the active-material mass (cell.active_mass or --mass)"]
    assert where == [
        "safety.current_max",
        "steps[0].cc.until.charge",
        "steps[0].cc.current",
        "steps[1].cc.current",
    ]
    assert "the active-material mass (cell.active_mass or --mass) is needed for" in str(caught.value)
    given = compile_protocol(loads(text), mass=Amount(20e-6, Basis.ABSOLUTE))
    assert given.active_mass_kg == pytest.approx(20e-6)
    assert next(iter(given.commands())).current_A == pytest.approx(2e-3)  # type: ignore[union-attr]


def test_a_c_rate_without_any_capacity_says_a_specific_capacity_would_do() -> None:
    text = MASS_CELL.replace(", specific_capacity: 195 mAh/g", "")
    with pytest.raises(CellDataMissing) as caught:
        compile_protocol(loads(text))
    assert any("cell.specific_capacity" in what for what in caught.value.needs)


def test_a_given_capacity_wins_over_the_specific_capacity() -> None:
    text = MASS_CELL.replace("active_mass: 10.3 mg,", "capacity: 2.0 mAh, active_mass: 10.3 mg,")
    program = compile_protocol(loads(text))  # 2.0085 vs 2.0 mAh: within 1 %
    assert program.capacity_As == pytest.approx(2.0 * MAH)
    overridden = compile_protocol(loads(MASS_CELL), capacity=Amount(3 * MAH, Basis.ABSOLUTE))
    assert overridden.capacity_As == pytest.approx(3 * MAH)


# -- protocol errors, at file:line:column ------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "at", "fragments"),
    [
        (
            "cell: {capacity: 1.57 mAh, active_mass: 10.3 mg, specific_capacity: 195 mAh/g}",
            "2:69",
            (
                "cell.capacity (1.57 mAh)",
                "cell.specific_capacity (195 mAh/g)",
                "10.3 mg",
                "2.008 mAh",
                "27.9 %",
            ),
        ),
        (
            "cell: {active_mass: 10.3 mAh}",
            "2:21",
            ("'10.3 mAh' is a charge", "a mass such as '10.3 mg'", "a mass loading such as '10.3 mg/cm^2'"),
        ),
        ("cell: {active_mass: 0 mg}", "2:21", ("a mass must be positive",)),
        ("cell: {specific_capacity: 195 mAh}", "2:27", ("a specific charge such as '195 mAh/g'",)),
        ("cell: {specific_capacity: 195 mA/g}", "2:27", ("specific current", "'195 mAh/g'")),
    ],
)
def test_mass_problems_are_reported_where_they_are(cell: str, at: str, fragments: tuple[str, ...]) -> None:
    text = f"name: x\n{cell}\nsteps:\n  - rest: 10 min\n"
    with pytest.raises(ProtocolError) as caught:
        loads(text, "cell.yaml")
    message = str(caught.value)
    assert f"cell.yaml:{at}:" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_areal_capacity_and_areal_mass_are_compared_without_the_area() -> None:
    text = "name: x\ncell: {capacity: 3 mAh/cm^2, active_mass: 10 mg/cm^2, specific_capacity: 200 mAh/g}\n"
    text += "steps:\n  - rest: 10 min\n"
    with pytest.raises(ProtocolError) as caught:
        loads(text, "c.yaml")
    assert "= 2 mAh/cm² disagree by 33.3 %" in str(caught.value)
    loads(text.replace("3 mAh/cm^2", "2.01 mAh/cm^2"))  # within 1 %: fine


def test_a_step_current_per_gram_of_the_wrong_kind_is_refused_at_its_place() -> None:
    text = "name: x\nsteps:\n  - cc: {current: 100 mAh/g, until: {duration: 1 h}}\n"
    with pytest.raises(ProtocolError) as caught:
        loads(text, "s.yaml")
    assert "s.yaml:3:19:" in str(caught.value)
    assert "a specific current such as '100 mA/g'" in str(caught.value)


# -- the session: the mass given when the run starts, and stored with the run ------------------------


def test_the_cell_spec_takes_the_mass_and_the_run_stores_it() -> None:
    text = MASS_CELL.replace("active_mass: 10.3 mg, ", "")
    spec = CellSpec.parse(None, None, "5 mg")
    assert spec.mass == Amount(pytest.approx(5e-6), Basis.ABSOLUTE)
    assert CellSpec.of_job({"mass": "5 mg"}) == spec
    prepared = prepare(text, "p.yaml", spec)
    info = prepared.cell_info()
    assert info["active_mass_kg"] == pytest.approx(5e-6)
    again = prepare_stored(text, info, "p.yaml")
    assert again.program == prepared.program
    with pytest.raises(ValueError, match="mass"):
        CellSpec.parse(None, None, "5 mAh")


def test_a_run_without_a_mass_stores_none() -> None:
    text = "name: x\nsteps:\n  - rest: 10 min\n"
    assert "active_mass_kg" not in prepare(text, "p.yaml", CellSpec()).cell_info()


# -- the command line and the reports --------------------------------------------------------------

E1_PER_GRAM = doc("""
    name: E1 per gram
    cell: {area: 0.785 cm^2}
    safety: {voltage_min: -0.5 V, voltage_max: 1.5 V}
    record: {every: 1 min}
    steps:
      - repeat:
          count: 3
          steps:
            - plate: {current: 1 mA/cm^2, until: {charge: 1 mAh/cm^2}}
            - strip: {current: 1 mA/cm^2, until: {voltage_above: 1 V, duration: 2 h}}
    """)


def test_validate_takes_the_mass(tmp_path: Path) -> None:
    protocol = tmp_path / "g.yaml"
    protocol.write_text(MASS_CELL.replace("active_mass: 10.3 mg, ", ""))
    missing = CliRunner().invoke(app, ["validate", str(protocol)])
    assert missing.exit_code == 0
    assert "the active-material mass (cell.active_mass or --mass) is needed" in missing.output
    given = CliRunner().invoke(app, ["validate", str(protocol), "--mass", "10.3 mg"])
    assert given.exit_code == 0, given.output
    assert "1.03 mA" in given.output
    wrong = CliRunner().invoke(app, ["validate", str(protocol), "--mass", "10.3 mAh"])
    assert wrong.exit_code == 2
    assert "mass" in wrong.output


def test_run_with_a_mass_shows_and_reports_specific_capacities(tmp_path: Path) -> None:
    protocol = tmp_path / "e1.yaml"
    protocol.write_text(E1_PER_GRAM)
    db = tmp_path / "lab.db"
    args = ["run", str(protocol), "--sim", "mgagsn", "--seed", "2", "--db", str(db), "--mass", "2 mg"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["show", "1", "--db", str(db)])
    assert "plated / mAh/g" in shown.output
    assert "stripped / mAh/g" in shown.output
    assert shown.output.count("392.50") == 3  # 0.785 mAh on 2 mg, every cycle
    with Store(db) as store:
        assert store.run(1).cell["active_mass_kg"] == pytest.approx(2e-6)
        summary = summarise_run(load_run(store, 1))
        page = build_report(store, [1])
    assert summary.specific_reverse_Ah_per_kg is not None
    first, last = summary.specific_reverse_Ah_per_kg
    assert 300 < first < 392.5  # stripped ≤ plated
    assert 300 < last <= 392.5
    assert "capacity / mAh/g" in page
    assert f"{first:.1f} → {last:.1f}" in page
    assert "2.000 mg" in page  # the run's cell: its active mass


def test_show_without_a_mass_has_no_specific_columns(tmp_path: Path) -> None:
    protocol = tmp_path / "e1.yaml"
    protocol.write_text(E1_PER_GRAM)
    db = tmp_path / "lab.db"
    assert runner.invoke(app, ["run", str(protocol), "--sim", "mgagsn", "--db", str(db)]).exit_code == 0
    shown = runner.invoke(app, ["show", "1", "--db", str(db)])
    assert "plated / mAh" in shown.output
    assert "mAh/g" not in shown.output
    with Store(db) as store:
        assert "mAh/g" not in build_report(store, [1])


def test_submit_queues_the_mass_with_the_job(tmp_path: Path) -> None:
    protocol = tmp_path / "g.yaml"
    protocol.write_text(MASS_CELL.replace("active_mass: 10.3 mg, ", ""))
    db = tmp_path / "lab.db"
    Store(db).close()  # the lab's store, as serve creates it: submit never creates one
    refused = runner.invoke(app, ["submit", str(protocol), "--channel", "a", "--db", str(db)])
    assert refused.exit_code == 2
    queued = runner.invoke(
        app, ["submit", str(protocol), "--channel", "a", "--mass", "10.3 mg", "--db", str(db)]
    )
    assert queued.exit_code == 0, queued.output
    with Store(db) as store:
        (job,) = store.jobs.list("queued")
    assert job["cell"] == {"mass": "10.3 mg"}
    assert CellSpec.of_job(job["cell"]).mass == Amount(pytest.approx(10.3e-6), Basis.ABSOLUTE)
