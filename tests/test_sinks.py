"""The store as a run's sink: which writes share a commit, and that a failed commit takes its
waiting writes along. Checked with a second connection, which sees only what is committed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from cyclerd.drivers.base import StepProgress
from cyclerd.engine.cursor import Cursor, Phase
from cyclerd.engine.sinks import RunEvent, StepEnded, StepStarted, StoreSink
from cyclerd.engine.states import RunState
from cyclerd.store.database import Store


def _batch(start: int, n: int) -> dict[str, np.ndarray]:
    seq = np.arange(start, start + n)
    columns = dict.fromkeys(("t", "voltage", "current", "charge", "energy"), seq * 0.5)
    return {"seq": seq, "step": np.full(n, 1), "cycle": np.full(n, 1), **columns}


def _cursor(step: int, t_s: float) -> Cursor:
    return Cursor(
        command=1,
        phase=Phase.STEP,
        step_number=step,
        progress=StepProgress(t_s, 0.0, 0.0),
        pause_at_s=None,
        loops={},
        cycle=1,
        t_s=t_s,
    )


def _committed(store: Store, query: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(store.path) as reader:
        return reader.execute(query).fetchall()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "lab.db")


async def test_a_steps_start_commits_with_its_first_batch_never_with_another_runs_commit(
    store: Store,
) -> None:
    run_a = store.create_run("E1", "ch1", "name: x\n", {}, {})
    run_b = store.create_run("E1", "ch2", "name: x\n", {}, {})
    a, b = StoreSink(store, run_a), StoreSink(store, run_b)
    started = asyncio.Event()
    other_done = asyncio.Event()

    async def channel_a() -> None:
        a.step_started(StepStarted(1, 1, "plate", "plate", 1, 0.0), _cursor(1, 0.0))
        started.set()
        await other_done.wait()
        assert _committed(store, "SELECT COUNT(*) FROM steps") == [(0,)]  # still waiting
        a.batch(_batch(0, 10), _cursor(1, 4.5), final=False)

    async def channel_b() -> None:
        await started.wait()
        b.event(RunEvent(0.0, "note", "the other channel", {}))
        other_done.set()

    await asyncio.gather(channel_a(), channel_b())
    assert _committed(store, "SELECT run_id, number FROM steps") == [(run_a, 1)]
    assert store.checkpoint(run_a) == (4.5, _cursor(1, 4.5).as_state())
    assert store.checkpoint(run_b) is None


def test_a_final_batch_commits_with_its_steps_end(store: Store) -> None:
    run = store.create_run("E1", "ch1", "name: x\n", {}, {})
    sink = StoreSink(store, run)
    sink.step_started(StepStarted(1, 1, "plate", "plate", 1, 0.0), _cursor(1, 0.0))
    sink.batch(_batch(0, 10), _cursor(1, 4.5), final=True)
    assert _committed(store, "SELECT COUNT(*) FROM sample_blocks") == [(0,)]
    sink.step_ended(StepEnded(1, 4.5, "duration", 1.0, 2.0), _cursor(1, 4.5))
    assert _committed(store, "SELECT COUNT(*) FROM sample_blocks") == [(1,)]
    assert [(s["number"], s["end_reason"]) for s in store.steps(run)] == [(1, "duration")]


def test_a_spectrums_step_is_committed_as_it_begins(store: Store) -> None:
    """A spectrum takes minutes on a real potentiostat: `cyclerd status` shows it meanwhile."""
    run = store.create_run("E1", "ch1", "name: x\n", {}, {})
    StoreSink(store, run).step_started(StepStarted(1, 1, "eis", "eis", 1, 0.0), _cursor(1, 0.0))
    assert _committed(store, "SELECT kind FROM steps") == [("eis",)]


def test_a_failed_commit_takes_the_writes_waiting_for_it_along(store: Store) -> None:
    """All or nothing: what waited is part of the transaction that failed, and is redone by
    the run from the commit before."""
    run = store.create_run("E1", "ch1", "name: x\n", {}, {})
    sink = StoreSink(store, run)
    sink.batch(_batch(0, 10), _cursor(1, 4.5), final=False)
    sink.step_started(StepStarted(2, 1, "strip", "strip", 1, 5.0), _cursor(2, 5.0))
    with pytest.raises(sqlite3.IntegrityError):
        sink.batch(_batch(5, 10), _cursor(2, 9.0), final=False)  # overlaps what is stored
    sink.state_changed(RunState.STOPPED, 1)
    assert [s["number"] for s in store.steps(run)] == []
    assert store.checkpoint(run) == (4.5, _cursor(1, 4.5).as_state())
    assert store.run(run).state == "stopped"
