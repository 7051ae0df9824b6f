"""The store on real SQLite files: what goes in comes out, WAL readers, many runs per file."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cyclerd.store.database import Store, StoreInUse
from cyclerd.store.migrate import SAMPLES_V0
from cyclerd.store.schema import VERSION


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


def test_a_batch_that_skips_sequence_numbers_keeps_the_gap_visible(store: Store) -> None:
    run = store.create_run("E1", "ch1", "", {}, {})
    batch = _batch(0, 10)
    keep = np.r_[0:4, 6:10]  # seq 4 and 5 never arrived
    store.append_samples(run, {name: column[keep] for name, column in batch.items()})
    samples = store.samples(run)
    assert samples["seq"].tolist() == [0, 1, 2, 3, 6, 7, 8, 9]
    np.testing.assert_array_equal(samples["voltage"], batch["voltage"][keep])
    with pytest.raises(sqlite3.IntegrityError):
        store.append_samples(run, _batch(5, 1))  # behind what is stored: refused, not filled in


def test_steps_cycles_and_temperatures_come_back_exactly(store: Store) -> None:
    run = store.create_run("E1", "ch1", "", {}, {})
    batch = _batch(0, 6) | {"step": np.array([7, 7, 8, 8, 8, 9]), "cycle": np.array([1, 1, 1, 2, 2, 2])}
    batch["temperature"] = np.array([25.0, np.nan, 25.5, 26.0, np.nan, 26.5])
    store.append_samples(run, batch)
    store.append_samples(run, _batch(6, 2, step=9))  # no thermometer in this batch
    samples = store.samples(run)
    assert samples["step"].tolist() == [7, 7, 8, 8, 8, 9, 9, 9]
    assert samples["cycle"].tolist() == [1, 1, 1, 2, 2, 2, 1, 1]
    np.testing.assert_array_equal(samples["temperature"][:6], batch["temperature"])
    assert np.isnan(samples["temperature"][6:]).all()
    assert samples["t"].tobytes() == np.r_[batch["t"], _batch(6, 2)["t"]].tobytes()


@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8),
    gaps=st.lists(st.integers(0, 3), min_size=8, max_size=8),
    after=st.integers(-1, 200),
    limit=st.none() | st.integers(0, 120),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_slice_of_any_batches_reads_back_as_the_samples_written(
    tmp_path: Path, sizes: list[int], gaps: list[int], after: int, limit: int | None
) -> None:
    with Store(tmp_path / f"slices-{len(list(tmp_path.iterdir()))}.db") as store:
        run = store.create_run("E1", "ch1", "", {}, {})
        written, start = [], 0
        for size, gap in zip(sizes, gaps, strict=False):
            start += gap
            store.append_samples(run, _batch(start, size))
            written.append(np.arange(start, start + size))
            start += size
        seq = np.concatenate(written)
        expected = seq[seq > after][:limit]
        part = store.samples(run, after_seq=after, limit=limit)
        assert part["seq"].tolist() == expected.tolist()
        np.testing.assert_array_equal(part["voltage"], -0.01 - 1e-4 * expected)


def test_a_file_with_one_row_per_sample_is_converted_without_losing_one(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(SAMPLES_V0)
    rows = [
        (1, s, 0.5 * s, 1 + s // 70, 1, -0.01 - 1e-4 * s, -7.85e-4, 0.0, 1e-6 * s, None) for s in range(100)
    ]
    rows += [(2, s, 1.0 * s, 1, 1, 3.7, 1e-3, 1e-3 * s, 3.7e-3 * s, 25.0) for s in (0, 1, 2, 5, 6)]
    old.executemany("INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    old.commit()
    old.close()
    with Store(path) as store:
        one, two = store.samples(1), store.samples(2)
        assert one["seq"].tolist() == list(range(100))
        assert one["step"].tolist() == [1 + s // 70 for s in range(100)]
        np.testing.assert_array_equal(one["voltage"], [-0.01 - 1e-4 * s for s in range(100)])
        assert np.isnan(one["temperature"]).all()
        assert two["seq"].tolist() == [0, 1, 2, 5, 6]
        assert two["temperature"].tolist() == [25.0] * 5
        store.append_samples(1, _batch(100, 5))  # and the run goes on where it was
        assert len(store.samples(1)["seq"]) == 105
    tables = sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert ("samples",) not in tables
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == VERSION


def test_a_queue_from_before_refusal_reasons_keeps_its_jobs_and_gains_the_reasons(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with Store(path) as store:
        waiting = store.jobs.submit("ch1", "E1", "name: E1", "e1.yaml", {"cell": "A7"})
    old = sqlite3.connect(path)  # the jobs table as schema version 1 had it
    old.executescript("ALTER TABLE jobs DROP COLUMN reason; PRAGMA user_version = 1;")
    old.close()
    with Store(path) as store:
        (job,) = store.jobs.list()
        assert (job["id"], job["state"], job["cell"], job["reason"]) == (
            waiting,
            "queued",
            {"cell": "A7"},
            None,
        )
        store.jobs.finish(waiting, "refused", reason="ch1 cannot measure impedance spectra (EIS)")
        assert store.jobs.list("refused")[0]["reason"] == "ch1 cannot measure impedance spectra (EIS)"
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == VERSION


async def test_a_transaction_held_across_an_await_refuses_another_task(store: Store) -> None:
    """The daemon's channels share one Store: a task that awaited inside its transaction must
    not get another channel's writes committed (or rolled back) with its own."""
    run_a = store.create_run("a", "ch0", "x", {}, {})
    run_b = store.create_run("b", "ch1", "x", {}, {})
    inside = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        with store.transaction():
            store.record_event(run_a, "note", "a, before the await")
            inside.set()
            await release.wait()  # the mistake the guard is for
        # no exception: it commits its own work

    async def other() -> None:
        await inside.wait()
        try:
            with pytest.raises(StoreInUse), store.transaction():
                store.record_event(run_b, "note", "b")
        finally:
            release.set()

    await asyncio.gather(holder(), other())
    assert [e["message"] for e in store.events(run_a)] == ["a, before the await"]
    assert store.events(run_b) == []
    with store.transaction():  # and the store is usable afterwards
        store.record_event(run_b, "note", "b, afterwards")
    assert [e["message"] for e in store.events(run_b)] == ["b, afterwards"]


def _reader(store: Store) -> sqlite3.Connection:
    """A second connection: it sees only what the store has committed."""
    return sqlite3.connect(store.path)


def test_a_runs_checkpoint_commits_with_the_transaction_the_latest_winning(tmp_path: Path) -> None:
    store = Store(tmp_path / "lab.db")
    reader = _reader(store)
    run = store.create_run("E1", "ch1", "name: x\n", {}, {})
    with store.transaction():
        store.save_checkpoint(run, 1.0, {"step": 1})
        assert reader.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0] == 0  # not committed yet
        store.append_samples(run, _batch(0, 10), checkpoint=(4.5, {"step": 1, "batch": 1}))
    assert store.checkpoint(run) == (4.5, {"step": 1, "batch": 1})
    assert reader.execute("SELECT t FROM checkpoints").fetchall() == [(4.5,)]

    def overlapping() -> None:  # after a checkpoint, a batch that overlaps what is stored
        with store.transaction():
            store.save_checkpoint(run, 9.0, {"step": 2})
            store.append_samples(run, _batch(5, 10))

    with pytest.raises(sqlite3.IntegrityError):  # a failed transaction writes none
        overlapping()
    assert store.checkpoint(run) == (4.5, {"step": 1, "batch": 1})


def test_the_daemons_writer_leaves_wal_checkpoints_to_a_thread_that_stops_with_the_store(
    tmp_path: Path,
) -> None:
    """A checkpoint in the writer's commit stalls the event loop for milliseconds; the thread
    copies the WAL into the database meanwhile. The writer's own checkpoint waits for a far
    larger WAL (WRITER_FALLBACK_PAGES), so only the thread can have copied these pages."""
    store = Store(tmp_path / "lab.db", wal_thread=True)
    run = store.create_run("E1", "ch1", "name: x\n", {}, {})
    n = 4000  # 7 stored columns of 4000 samples: 224 kB a batch, 14 MB (3500 pages) in all
    for k in range(64):
        store.append_samples(run, _batch(k * n, n))
    database, stored = tmp_path / "lab.db", 64 * n * 7 * 8
    deadline = time.monotonic() + 5.0
    while database.stat().st_size < stored and time.monotonic() < deadline:
        time.sleep(0.01)
    assert database.stat().st_size >= stored
    assert any(t.name == "wal checkpoints of lab.db" for t in threading.enumerate())
    store.close()
    assert not any(t.name == "wal checkpoints of lab.db" for t in threading.enumerate())
    with Store(database) as again:
        assert len(again.samples(run)["seq"]) == 64 * n
