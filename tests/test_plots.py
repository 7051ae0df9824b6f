"""The paper's figures drawn from real simulated runs in a real store, and `cyclerd plot` as a user meets it.

Each figure is checked for the data it shows (the CE line is the stored CEs × 100, the dQ/dV
peaks sit on the simulator's alloying plateaus, ...), not only that something was drawn.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.container import ErrorbarContainer
from matplotlib.lines import Line2D
from PIL import Image
from typer.testing import CliRunner

from cyclerd.analysis.plot_eis import fit_runs
from cyclerd.analysis.plot_profiles import DECIMATE_ABOVE, Branch, cycle_profile, dq_dv, dqdv_limits, envelope
from cyclerd.analysis.plots import (
    KINDS,
    CycleNotInRun,
    NoDataToPlot,
    RunData,
    figure,
    figure_bytes,
    load_run,
    save_figure,
)
from cyclerd.cli.main import app
from cyclerd.simulators.presets_halfcell import AG, MG, SN
from cyclerd.store.database import Store

LIBRARY = files("cyclerd.protocols") / "library"
cli = CliRunner()

MGAGSN, SN_SHORTED, MG_RUN, AG_RUN, E4, FULL = 1, 2, 3, 4, 5, 6


def simulate(tmp: Path, db: Path, protocol: str, preset: str, seed: int, *extra: str, **edit: str) -> None:
    """`cyclerd run` on a library protocol, shortened by text edits, into `db`."""
    text = (LIBRARY / protocol).read_text()
    for old, new in edit.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / f"{preset}-{protocol}"
    path.write_text(text)
    args = ["run", str(path), "--sim", preset, "--seed", str(seed), "--db", str(db), *extra]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six short runs: E1 on each seed (single seeds made to short early), E4 with two spectra, E8."""
    tmp = tmp_path_factory.mktemp("plots")
    db = tmp / "lab.db"
    e1 = "plating_stripping.yaml"
    simulate(tmp, db, e1, "mgagsn", 1, **{"count: 250": "count: 4"})
    simulate(tmp, db, e1, "sn", 2, "--set", "short_n0_cycles=5", **{"count: 250": "count: 15"})
    simulate(tmp, db, e1, "mg", 1, **{"count: 250": "count: 2"})
    simulate(tmp, db, e1, "ag", 1, **{"count: 250": "count: 2"})
    simulate(tmp, db, "eis_after_cycling.yaml", "mgagsn-pvdf", 1, **{"count: 5": "count: 2"})
    simulate(tmp, db, "cycling.yaml", "ncm811-anodeless", 3, **{"count: 100": "count: 4"})
    return db


@pytest.fixture(scope="module")
def runs(db: Path) -> dict[int, RunData]:
    with Store(db) as store:
        return {run.id: load_run(store, run.id) for run in store.runs()}


def _lines(fig: object) -> list[Line2D]:
    return [line for ax in fig.axes for line in ax.get_lines()]  # type: ignore[attr-defined]


def test_the_runs_are_what_the_figures_need(runs: dict[int, RunData]) -> None:
    assert len(runs[MGAGSN].cycles) == 4
    assert any(e["kind"] == "short_circuit" for e in runs[SN_SHORTED].events)
    assert len(runs[E4].spectra) == 2
    assert runs[FULL].full_cell
    assert not runs[MGAGSN].full_cell


def test_ce_line_is_the_stored_ce_in_percent(db: Path, runs: dict[int, RunData]) -> None:
    fig = figure("ce", [runs[MGAGSN], runs[SN_SHORTED]])
    with Store(db) as store:
        for line, run_id in zip(_lines(fig), (MGAGSN, SN_SHORTED), strict=False):
            stored = store.cycles(run_id)
            np.testing.assert_allclose(line.get_ydata(), 100 * stored["coulombic_efficiency"], rtol=1e-12)
            np.testing.assert_array_equal(line.get_xdata(), stored["cycle"])
    # A cycle whose CE is off the axis (a short's) is named at the axis' top edge; the check
    # now stops a soft short in its first cycle, usually before the CE runs away.
    top = fig.axes[0].get_ylim()[1]
    texts = [t.get_text() for t in fig.axes[0].texts]
    off_axis = [
        c.cycle
        for run in (runs[MGAGSN], runs[SN_SHORTED])
        for c in run.cycles
        if 100 * c.coulombic_efficiency > top
    ]
    assert sorted(int(text.split()[1].rstrip(":")) for text in texts if text.startswith("cycle ")) == sorted(
        off_axis
    )


def test_cumulative_ce_is_the_running_product(db: Path, runs: dict[int, RunData]) -> None:
    (line,) = _lines(figure("cumulative-ce", [runs[MGAGSN]]))
    with Store(db) as store:
        ce = store.cycles(MGAGSN)["coulombic_efficiency"]
    np.testing.assert_allclose(line.get_ydata(), 100 * np.cumprod(ce), rtol=1e-12)
    assert line.get_ydata()[0] == pytest.approx(84.5, abs=1.0)  # the ICE of MgAgSn (E1)


def test_cumulative_ce_stops_before_the_shorted_cycle(runs: dict[int, RunData]) -> None:
    run = runs[SN_SHORTED]
    short = run.short_cycle
    assert short is not None
    line, mark = _lines(figure("cumulative-ce", [run]))
    assert line.get_xdata()[-1] == short - 1  # the short's 200 % "CE" is not multiplied in
    np.testing.assert_allclose(
        line.get_ydata(), 100 * np.cumprod([c.coulombic_efficiency for c in run.cycles[: short - 1]])
    )
    assert mark.get_marker() == "x"


def test_first_cycle_profile_plates_one_mah_per_cm2_and_strips_the_ice(runs: dict[int, RunData]) -> None:
    fig = figure("first-cycle", [runs[MGAGSN], runs[MG_RUN]])
    assert "mAh cm⁻²" in fig.axes[0].get_xlabel()
    plate, strip, mg_plate, mg_strip = _lines(fig)[1:]  # the first line is the 0 V guide
    assert max(plate.get_xdata()) == pytest.approx(1.0, rel=1e-6)  # 1 mAh/cm² plated (E1)
    assert max(strip.get_xdata()) == pytest.approx(runs[MGAGSN].cycles[0].coulombic_efficiency, rel=1e-6)
    assert max(mg_strip.get_xdata()) == pytest.approx(0.685, abs=0.01)  # Mg's ICE
    # E3: the potential falls through the seed plateaus to Li plating below 0 V.
    assert plate.get_ydata()[-1] < 0 < plate.get_ydata()[len(plate.get_ydata()) // 20]
    assert mg_plate.get_label() == runs[MG_RUN].label


@pytest.mark.parametrize(
    ("run_id", "plateaus_V"),
    [
        (SN_SHORTED, (SN.lithiation_V[2], SN.lithiation_V[5])),
        (MG_RUN, MG.lithiation_V),
        (AG_RUN, AG.lithiation_V),
    ],
)
def test_dqdv_peaks_sit_on_the_simulators_alloying_plateaus(
    runs: dict[int, RunData], run_id: int, plateaus_V: tuple[float, ...]
) -> None:
    run = runs[run_id]
    plating, _ = cycle_profile(run.samples, run.cycles[0])
    # Under current each plateau sits below its open-circuit potential by the overpotential,
    # which Li plating at 0 V vs Li shows directly.
    overpotential = -float(plating.voltage[-1])
    assert 0.01 < overpotential < 0.08
    volts, density = dq_dv(plating)
    interior = density[1:-1]
    is_peak = (interior >= density[:-2]) & (interior >= density[2:]) & (interior > 0.02 * density.max())
    peaks = volts[1:-1][is_peak]
    for plateau in plateaus_V:
        assert np.min(np.abs(peaks - (plateau - overpotential))) < 0.010, (plateau, peaks)
    # The figure draws the same curve, plating below zero.
    fig = figure("dqdv", [run])
    drawn = _lines(fig)[1]
    np.testing.assert_allclose(drawn.get_xdata(), volts)
    assert np.min(drawn.get_ydata()) < 0


def test_dqdv_of_a_chosen_cycle_and_a_cycle_that_does_not_exist(runs: dict[int, RunData]) -> None:
    fig = figure("dqdv", [runs[MGAGSN]], cycle=3)
    assert "cycle 3" in fig.axes[0].get_title(loc="left")
    with pytest.raises(CycleNotInRun, match="no cycle 9; its cycles are 1–4"):
        figure("dqdv", [runs[MGAGSN]], cycle=9)


def test_dqdv_axis_holds_every_peak_and_a_zoom_keeps_the_alloy_peaks_readable(
    runs: dict[int, RunData],
) -> None:
    fig = figure("dqdv", [runs[MGAGSN]])
    whole = fig.axes[0]
    low, high = whole.get_ylim()
    for line in whole.get_lines()[1:]:  # the first line is the 0 guide
        y = np.asarray(line.get_ydata())
        assert low < y.min()
        assert y.max() < high
    # Li plating and stripping (~60 mAh cm⁻² V⁻¹) dwarf the alloy peaks: a second panel zooms on those.
    assert len(fig.axes) == 2
    zoom = fig.axes[1]
    z_low, z_high = zoom.get_ylim()
    assert z_high < 0.2 * max(high, -low)
    plating = zoom.get_lines()[1]
    volts, y = np.asarray(plating.get_xdata()), np.asarray(plating.get_ydata())
    alloying = y[volts > 0.03]  # above Li plating: the seeds' alloying peaks
    assert z_low < alloying.min() < 0.3 * z_low  # the tallest alloy peak fills the zoom, uncut
    # A full cell has no such giant: one panel, every peak inside it.
    fig = figure("dqdv", [runs[FULL]])
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    for line in ax.get_lines()[1:]:
        y = np.asarray(line.get_ydata())
        assert low < y.min()
        assert y.max() < high
        assert max(y.max(), -y.min()) > 0.7 * max(high, -low)  # and the axis is not mostly empty


def test_dqdv_limits_from_the_data() -> None:
    volts = np.linspace(0, 1, 201)
    peak = lambda v, h: h * np.exp(-0.5 * ((volts - v) / 0.01) ** 2)  # noqa: E731
    giant = -peak(0.0, 50.0) - peak(0.5, 3.0) + peak(0.8, 2.0)
    whole, zoom = dqdv_limits([giant])
    assert whole is not None
    assert whole[0] < -50.0
    assert whole[1] > 2.0
    assert zoom == pytest.approx((-3.9, 3.9), rel=0.01)
    even = -peak(0.3, 3.0) + peak(0.6, 2.5)
    whole, zoom = dqdv_limits([even])
    assert zoom is None
    assert whole is not None
    assert -3.5 < whole[0] < -3.0
    assert 2.5 < whole[1] < 3.0
    assert dqdv_limits([np.zeros(5)]) == (None, None)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=4, unique=True),
    # Charges within 10x of each other and bins up to 3 mV (σ = 1 bin): with 5 mV bins, or a
    # plateau 60x smaller than its neighbour 20 mV away, the small one sits in the big one's
    # smoothed tail and its peak moves (hypothesis found both).
    st.lists(st.floats(0.1, 1.0), min_size=4, max_size=4),
    st.floats(0.001, 0.003),
)
def test_dq_dv_keeps_the_charge_and_puts_each_plateau_at_its_voltage(
    steps: list[int], charges: list[float], bin_V: float
) -> None:
    # A staircase: each plateau passes its charge at one voltage (0.1 mV noise); plateaus 20 mV apart.
    plateaus = [(0.02 * k, q) for k, q in zip(steps, charges, strict=False)]
    rng = np.random.default_rng(0)
    voltage = np.concatenate([np.full(200, v) + rng.normal(0, 1e-4, 200) for v, _ in plateaus])
    capacity = np.cumsum(np.concatenate([np.full(200, q / 200) for _, q in plateaus]))
    volts, density = dq_dv(Branch(-1, capacity, voltage), bin_V)
    # The area under dQ/dV is the charge passed: binning and smoothing move none of it.
    assert float(np.sum(density) * bin_V) == pytest.approx(float(np.sum(np.diff(capacity))), rel=1e-9)
    for v, q in plateaus:
        near = np.abs(volts - v) <= 1.5 * bin_V
        assert density[near].max() > 0.15 * q / bin_V  # a peak right at the plateau
        assert volts[near][np.argmax(density[near])] == pytest.approx(v, abs=bin_V)


@settings(max_examples=40, deadline=None)
@given(st.integers(5_000, 60_000), st.integers(10, 400), st.data())
def test_envelope_keeps_every_columns_extremes(n: int, columns: int, data: st.DataObject) -> None:
    t = np.cumsum(np.full(n, 10.0))
    v = np.sin(t / 3e3) * 0.05
    spike = data.draw(st.integers(0, n - 1))
    v[spike] = -0.9  # a one-sample voltage collapse
    x, y = envelope(t, v, columns)
    assert len(x) <= 2 * columns
    assert y.min() == -0.9
    assert y.max() == v.max()
    assert np.all(np.diff(x) >= 0)  # still in time order, so the line does not zigzag back


def test_voltage_of_a_long_run_is_decimated_but_a_short_stays_visible(tmp_path: Path) -> None:
    store = Store(tmp_path / "long.db")
    run = store.run(store.create_run("long", "sim", "name: long\n", {}, {}))
    n = DECIMATE_ABOVE + 50_000  # ~700 h at a sample per 10 s
    t = np.arange(n) * 10.0
    v = 0.05 * np.sign(np.sin(t / 3600.0))
    v[123_456] = -0.4  # one sample of a collapsing voltage
    samples = {"t": t, "voltage": v, "step": np.ones(n), "cycle": np.ones(n)}
    (line,) = _lines(figure("voltage", [RunData(run, samples, [], [], [], [])]))
    assert len(line.get_xdata()) < 5_000
    assert min(line.get_ydata()) == -0.4
    assert max(line.get_ydata()) == 0.05
    assert max(line.get_xdata()) == pytest.approx(t[-1] / 3600)
    assert line.get_rasterized() is False  # decimated: few enough points to stay vector in an SVG


def test_voltage_panels_one_per_run_with_the_short_marked(runs: dict[int, RunData]) -> None:
    fig = figure("voltage", [runs[MGAGSN], runs[SN_SHORTED]])
    assert len(fig.axes) == 2
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), runs[MGAGSN].samples["t"] / 3600)
    short = next(e for e in runs[SN_SHORTED].events if e["kind"] == "short_circuit")
    marks = [ln.get_xdata()[0] for ln in fig.axes[1].get_lines()[1:]]
    assert marks == [pytest.approx(short["t"] / 3600)]


def test_retention_is_relative_to_the_first_cycle_of_each_loop(runs: dict[int, RunData]) -> None:
    """E8: a 0.1C formation loop (cycle 1), then 0.5C cycling from cycle 2. Each loop starts at
    100 %: the rate change is not drawn as a capacity loss."""
    full = runs[FULL]
    line = _lines(figure("retention", [full]))[0]
    assert line.get_xdata().tolist() == [c.cycle for c in full.cycles]
    discharged = np.array([c.discharge_As for c in full.cycles])
    np.testing.assert_allclose(line.get_ydata()[1:], 100 * discharged[1:] / discharged[1])
    assert line.get_ydata()[0] == 100.0
    assert full.retention[1] == [1, 2, 2, 2, 2]
    named = dataclasses.replace(full, reference_cycle=1)
    np.testing.assert_allclose(
        _lines(figure("retention", [named]))[0].get_ydata(), 100 * discharged / discharged[0]
    )
    with pytest.raises(NoDataToPlot, match="full cells"):
        figure("retention", [runs[MGAGSN]])


def test_nyquist_draws_each_spectrum_and_its_fit(db: Path, runs: dict[int, RunData]) -> None:
    run = runs[E4]
    with Store(db) as store:
        fits = fit_runs(store, [run])
    fig = figure("nyquist", [run], fits=fits)
    (ax,) = fig.axes
    measured = [ln for ln in ax.get_lines() if ln.get_marker() == "o"]
    fitted = [ln for ln in ax.get_lines() if ln.get_marker() != "o"]
    assert len(measured) == len(fitted) == 2
    for line, spectrum in zip(measured, run.spectra, strict=True):
        np.testing.assert_array_equal(line.get_xdata(), spectrum["impedance_ohm"].real)
        np.testing.assert_array_equal(line.get_ydata(), -spectrum["impedance_ohm"].imag)
    assert not np.array_equal(measured[0].get_color(), measured[1].get_color())
    assert ax.get_aspect() == 1.0
    # Each fit follows its spectrum: within 2 % of |Z| where they share frequencies.
    fit = fits[E4].fits[0]
    assert fit is not None
    z = run.spectra[0]["impedance_ohm"]
    assert np.max(np.abs(fit.predict(run.spectra[0]["frequency_Hz"]) - z) / np.abs(z)) < 0.02
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1: after cycle 2", "2: after cycle 4"]


def test_nyquist_without_fits_draws_the_measured_points_and_says_so(runs: dict[int, RunData]) -> None:
    (ax,) = figure("nyquist", [runs[E4]]).axes
    assert [line.get_marker() for line in ax.get_lines()] == ["o", "o"]
    assert "measured (not fitted)" in ax.get_title(loc="left")


def test_resistance_plots_the_fitted_values_with_their_errors(db: Path, runs: dict[int, RunData]) -> None:
    run = runs[E4]
    with Store(db) as store:
        fits = fit_runs(store, [run])
    fig = figure("resistance", [run], fits=fits)
    bars = {c.get_label(): c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)}
    r_ct = bars["R_CT (charge transfer)"]
    np.testing.assert_allclose(r_ct.lines[0].get_ydata(), fits[E4].R_CT_ohm)
    assert r_ct.has_yerr
    r_b = bars["R_b (bulk)"].lines[0].get_ydata()
    assert np.all((np.asarray(r_b) > 20) & (np.asarray(r_b) < 60))  # 30 Ω cm² on 0.785 cm² ≈ 38 Ω


@pytest.mark.parametrize("kind", ["nyquist", "resistance"])
def test_impedance_kinds_refuse_a_run_without_spectra(runs: dict[int, RunData], kind: str) -> None:
    with pytest.raises(NoDataToPlot, match="no impedance spectra"):
        figure(kind, [runs[MGAGSN]])


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_files_are_valid_and_of_the_requested_format(
    runs: dict[int, RunData], tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / f"ce.{fmt}"
    save_figure(figure("ce", [runs[MGAGSN]]), path)
    data = path.read_bytes()
    if fmt == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "PNG"
            assert image.size[0] > 500
            assert image.size[1] > 300
            assert len(image.convert("RGB").getcolors(1 << 16) or []) > 20  # not a blank canvas
    else:
        root = ET.fromstring(data)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert len(root.findall(".//{http://www.w3.org/2000/svg}path")) > 20


def test_drawing_is_thread_safe_and_needs_no_pyplot(runs: dict[int, RunData]) -> None:
    chosen = [runs[MGAGSN], runs[SN_SHORTED]]
    kinds = ["ce", "voltage", "first-cycle", "dqdv"] * 2
    with ThreadPoolExecutor(4) as pool:
        images = list(pool.map(lambda kind: figure_bytes(figure(kind, chosen), "png"), kinds))
    for i in range(4):
        assert images[i] == images[i + 4]
    code = (
        "import sys; import cyclerd.analysis.plots, cyclerd.analysis.report, cyclerd.cli.analysis;"
        "sys.exit('matplotlib.pyplot' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- cyclerd plot ------------------------------------------------------------------------------------


def test_plot_writes_the_default_file_name_and_svg_by_suffix(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, ["plot", str(MGAGSN), "--kind", "ce", "--db", str(db)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"run{MGAGSN}-ce.png").read_bytes().startswith(b"\x89PNG")
    svg = tmp_path / ("a-folder-name-longer-than-a-terminal-line-" * 2) / "first.svg"
    svg.parent.mkdir()
    result = cli.invoke(
        app, ["plot", "1", "3", "--kind", "first-cycle", "--output", str(svg), "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    assert ET.fromstring(svg.read_bytes()).tag.endswith("svg")
    assert f"wrote {svg}\n" in result.output  # on one line, to be copied whole


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1", "--kind", "cee"], "no plot kind 'cee'; choose one of voltage, first-cycle"),
        (["1", "--kind", "nyquist"], "run 1 has no impedance spectra"),
        (["1", "--kind", "retention"], "capacity retention is drawn for full cells"),
        (["9", "--kind", "ce"], "no run 9 in"),
        (["1", "--kind", "ce", "--output", "ce.pdf"], "end the file name in .png or .svg"),
        (["1", "--kind", "dqdv", "--cycle", "40"], "run 1 has no cycle 40; its cycles are 1–4"),
        (["1", "--kind", "ce", "--cycle", "2"], "--cycle does not apply to 'ce'"),
        (["1", "--kind", "ce", "--output", "missing/ce.png"], "the folder missing does not exist"),
    ],
)
def test_plot_errors_say_what_to_do(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli.invoke(app, ["plot", *args, "--db", str(db)])
    assert result.exit_code == 2
    assert message in result.output
    assert list(tmp_path.iterdir()) == []  # no empty figure left behind


def test_plot_refuses_a_missing_store_instead_of_creating_one(tmp_path: Path) -> None:
    result = cli.invoke(app, ["plot", "1", "--kind", "ce", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2
    assert "no store at" in result.output
    assert not (tmp_path / "none.db").exists()


def test_every_kind_is_documented_in_the_help() -> None:
    result = cli.invoke(app, ["plot", "--help"])
    assert result.exit_code == 0
    for kind in KINDS:
        assert kind in result.output


def test_the_cli_names_every_kind_without_loading_matplotlib() -> None:
    import subprocess
    import sys

    from cyclerd.analysis.plots import KINDS
    from cyclerd.cli.analysis import KIND_NAMES

    assert tuple(KINDS) == KIND_NAMES
    # The daemon starts through the same CLI: no plotting or fitting libraries on the way.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, cyclerd.cli.main; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'matplotlib'" not in loaded
    assert "'scipy.optimize'" not in loaded  # (pint touches the bare `scipy` package: cheap)
    assert "'scipy.stats'" not in loaded
