"""While a spectrum is measured the cell's DC state is still logged: no hole in a plating step.

In-situ EIS interrupts plating every 10 minutes for ~200 s; the record must show the potential
the cell rested (or was held) at through the spectrum, both on the simulator and on an emulated
EmStat, and the exported spectra carry that potential as their DC level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_experiments import run_experiment

from cyclerd.analysis.exports import spectra_tables

RECORD_EVERY_S = 10.0  # insitu_eis.yaml's `record: every`


def test_the_record_of_an_in_situ_eis_plating_step_has_no_hole(tmp_path: Path) -> None:
    run = run_experiment(tmp_path, "insitu_eis.yaml", "mgagsn", **{"count: 3": "count: 1"})
    samples = run.store.samples(run.run_id)
    steps = {row["number"]: row for row in run.store.steps(run.run_id)}
    spectra = run.store.spectra(run.run_id)
    assert len(spectra) >= 7
    for spectrum in spectra:
        mine = samples["step"] == spectrum["step"]
        assert steps[spectrum["step"]]["kind"] == "eis"
        assert np.count_nonzero(mine) >= 3  # the spectrum's start, its end and points between
        assert np.all(samples["current"][mine] == 0.0)  # the cell rests while it is measured
        assert abs(float(samples["voltage"][mine][0])) < 0.2  # Li-plated: its OCV is near 0 V
    plating = [row["number"] for row in steps.values() if row["label"] == "plate with EIS"]
    start = samples["t"][samples["step"] == plating[0]][0]
    end = samples["t"][samples["step"] == plating[-1]][-1]
    during = samples["t"][(samples["t"] >= start) & (samples["t"] <= end)]
    assert np.diff(during).max() <= RECORD_EVERY_S + 1e-6


def test_the_exported_spectra_carry_the_ocv_they_were_measured_at(tmp_path: Path) -> None:
    run = run_experiment(tmp_path, "insitu_eis.yaml", "mgagsn", **{"count: 3": "count: 1"})
    export = spectra_tables(run.store, run.run_id)
    assert export is not None
    assert export.dc_known
    fits = export.fits.to_pydict()
    assert set(fits["dc_level"]) == {"ocv"}
    assert all(v == pytest.approx(0.0, abs=0.2) for v in fits["dc_potential_V"])
