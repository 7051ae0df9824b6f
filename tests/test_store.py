"""The store on real SQLite files: what goes in comes out, WAL readers, many runs per file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cyclerd.store import Store


def _batch(start: int, n: int, step: int = 1) -> dict[str, np.ndarray]:
    seq = np.arange(start, start + n)
    t = seq * 0.5
    return {
        "seq": seq,
        "t": t,
        "step": np.full(n, step),
        "cycle": np.full(n, 1),
        "voltage": -0.01 - 1e-4 * seq,
        "current": np.full(n, -7.85e-4),
        "charge": -7.85e-4 * t,
        "energy": 1e-6 * seq,
    }


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "lab.db")


def test_samples_round_trip_as_columns(store: Store) -> None:
    run = store.create_run("E1", "ch1", "name: x\n", {"area_m2": 7.85e-5}, {"preset": "mgagsn", "seed": 1})
    store.append_samples(run, _batch(0, 100))
    store.append_samples(run, _batch(100, 50, step=2))
    samples = store.samples(run)
    assert samples["seq"].tolist() == list(range(150))
    np.testing.assert_array_equal(samples["voltage"], -0.01 - 1e-4 * np.arange(150))
    assert samples["step"][99] == 1
    assert samples["step"][100] == 2
    assert np.isnan(samples["temperature"]).all()
    part = store.samples(run, after_seq=99, limit=20)  # a slice, as a replay reads it
    assert part["seq"].tolist() == list(range(100, 120))


def test_a_duplicate_sequence_number_is_refused_and_the_batch_rolled_back(store: Store) -> None:
    run = store.create_run("E1", "ch1", "", {}, {})
    store.append_samples(run, _batch(0, 10))
    with pytest.raises(sqlite3.IntegrityError):
        store.append_samples(run, _batch(5, 10))  # overlaps 5..9
    assert len(store.samples(run)["seq"]) == 10  # none of the second batch went in


def test_one_file_holds_many_runs(store: Store) -> None:
    a = store.create_run("a", "ch1", "", {}, {})
    b = store.create_run("b", "ch2", "", {}, {})
    store.append_samples(a, _batch(0, 3))
    store.append_samples(b, _batch(0, 7))
    assert [r.name for r in store.runs()] == ["a", "b"]
    assert len(store.samples(a)["seq"]) == 3
    assert len(store.samples(b)["seq"]) == 7


def test_readers_see_committed_batches_while_the_writer_holds_the_file(tmp_path: Path) -> None:
    writer = Store(tmp_path / "lab.db")
    run = writer.create_run("E1", "ch1", "", {}, {})
    writer.append_samples(run, _batch(0, 5))
    mode = sqlite3.connect(tmp_path / "lab.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    reader = Store(tmp_path / "lab.db")
    with writer.transaction() as db:  # a write in progress does not block the reader
        db.execute("INSERT INTO events (unix, kind, message) VALUES (0, 'x', 'y')")
        assert len(reader.samples(run)["seq"]) == 5
    assert len(reader.events()) == 1


def test_spectra_steps_events_checkpoints(store: Store) -> None:
    run = store.create_run("E5", "ch1", "", {}, {})
    freqs = np.logspace(6, -1, 8)
    z = 38 + 10 / (1 + 1j * freqs / 4e3)
    store.append_spectrum(run, 1, 600.0, 2, 1, freqs, z)
    store.append_spectrum(run, 2, 1200.0, 2, 1, freqs, 2 * z)
    spectra = store.spectra(run)
    assert [s["sequence"] for s in spectra] == [1, 2]
    np.testing.assert_allclose(spectra[1]["impedance_ohm"], 2 * z)
    np.testing.assert_allclose(spectra[0]["frequency_Hz"], freqs)

    store.begin_step(run, 1, 3, "plate", "plate", 1, 0.0)
    store.end_step(run, 1, 3600.0, "charge", -2.826, -0.05)
    (step,) = store.steps(run)
    assert step["end_reason"] == "charge"
    assert step["charge_As"] == pytest.approx(-2.826)

    store.record_event(run, "safety", "voltage above 1.5 V", t=12.0, data={"voltage": 1.6})
    (event,) = store.events(run)
    assert event["kind"] == "safety"
    assert event["data"] == {"voltage": 1.6}

    assert store.checkpoint(run) is None
    store.save_checkpoint(run, 10.0, {"step": 1})
    store.save_checkpoint(run, 20.0, {"step": 2})
    assert store.checkpoint(run) == (20.0, {"step": 2})
