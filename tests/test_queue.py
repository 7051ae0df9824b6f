"""The job queue and run requests in the store, used by the CLI with or without a daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from linear_cell import LinearCell
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.runner import Runner
from cyclerd.engine.session import Controls, forward_requests
from cyclerd.engine.sinks import StoreSink
from cyclerd.engine.states import RunState
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.simulators.channel import SimulatedChannel
from cyclerd.store.database import Store

cli = CliRunner()
LONG = "name: long charge\nrecord: {every: 10 s}\nsteps:\n  - cc: {current: 1 mA, until: {duration: 100 h}}\n"


def test_submit_checks_the_protocol_and_queues_it(tmp_path: Path) -> None:
    good, bad, crate = tmp_path / "good.yaml", tmp_path / "bad.yaml", tmp_path / "crate.yaml"
    good.write_text(LONG)
    bad.write_text("name: x\nsteps:\n  - rest: 600\n")
    crate.write_text("name: c\nsteps: [Charge at 0.1C until 4.2 V]\n")
    db = str(tmp_path / "lab.db")
    Store(db).close()  # the lab's store, as serve creates it: submit never creates one
    ok = cli.invoke(app, ["submit", str(good), "--channel", "ch1", "--cell", "MgAgSn-07", "--db", db])
    assert ok.exit_code == 0, ok.output
    assert "queued as job 1 for channel ch1" in ok.output
    refused = cli.invoke(app, ["submit", str(bad), "--channel", "ch1", "--db", db])
    assert refused.exit_code == 1
    assert "bad.yaml:3:11" in refused.output
    needs = cli.invoke(app, ["submit", str(crate), "--channel", "ch2", "--db", db])
    assert needs.exit_code == 2
    assert "nominal capacity" in needs.output
    listed = cli.invoke(app, ["queue", "--db", db])
    assert "long charge" in listed.output
    assert "MgAgSn-07" in listed.output
    assert "1 job(s) queued" in cli.invoke(app, ["status", "--db", db]).output


def test_a_job_is_claimed_once(tmp_path: Path) -> None:
    first, second = Store(tmp_path / "lab.db"), Store(tmp_path / "lab.db")
    job = first.jobs.submit("ch1", "x", LONG, "x.yaml", {})
    claimed = first.jobs.claim("ch1")
    assert claimed is not None
    assert claimed["id"] == job
    assert second.jobs.claim("ch1") is None  # a second daemon (or a retry) gets nothing
    assert second.jobs.protocol(job) == LONG
    first.jobs.finish(job, "done", run_id=7)
    assert second.jobs.list()[0]["state"] == "done"
    assert second.jobs.list()[0]["run_id"] == 7


def test_jobs_left_running_by_a_crash_are_the_channels_orphans(tmp_path: Path) -> None:
    store = Store(tmp_path / "lab.db")
    a = store.jobs.submit("ch1", "a", LONG, "a.yaml", {"cell": "MgAgSn-07"})
    b = store.jobs.submit("ch1", "b", LONG, "b.yaml", {})
    other = store.jobs.submit("ch2", "c", LONG, "c.yaml", {})
    assert [job["id"] for job in store.jobs.list("queued")] == [a, b, other]
    for channel in ("ch1", "ch1", "ch2"):
        store.jobs.claim(channel)
    assert store.jobs.claim("ch1") is None
    store.close()  # the daemon dies with three jobs running

    with Store(tmp_path / "lab.db") as store:
        orphans = store.jobs.orphans("ch1")
        assert [job["id"] for job in orphans] == [a, b]
        assert orphans[0]["cell"] == {"cell": "MgAgSn-07"}
        store.jobs.finish(a, "done", run_id=1)
        store.jobs.requeue(b)
        assert store.jobs.orphans("ch1") == []
        assert [job["id"] for job in store.jobs.list("queued")] == [b]
        claimed = store.jobs.claim("ch1")
        assert claimed is not None
        assert claimed["id"] == b
        assert [job["state"] for job in store.jobs.list()] == ["done", "running", "running"]
    with Store(tmp_path / "lab.db") as store, pytest.raises(KeyError, match="no job 99"):
        store.jobs.protocol(99)


def test_requests_from_the_store_pause_resume_and_stop_a_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "lab.db")
    program = compile_protocol(loads(LONG))
    run_id = store.create_run(program.name, "sim", LONG, {}, {})
    clock = VirtualClock()
    channel = SimulatedChannel(LinearCell(capacitance_F=1e9), clock, chunk=256)
    runner = Runner(program, channel, clock, StoreSink(store, run_id))

    async def drive() -> RunState:
        controls = Controls()
        async with controls.registered(run_id, runner):
            return await _drive(controls)

    async def _drive(controls: Controls) -> RunState:
        task = asyncio.create_task(runner.run())
        follower = asyncio.create_task(forward_requests(store, controls, interval_s=0))
        while clock.now() < 3600 and not task.done():
            await asyncio.sleep(0)
        asked.append(store.requests.add(run_id, "pause"))
        assert store.requests.result(asked[0]) is None  # waits for the follower
        while runner.state is not RunState.PAUSED and not task.done():
            await asyncio.sleep(0)
        asked.append(store.requests.add(run_id, "pause"))  # again: refused, the run is already paused
        asked.append(store.requests.add(run_id, "resume"))
        asked.append(store.requests.add(run_id, "stop"))
        assert [action for _, action in store.requests.pending(run_id)] == ["pause", "resume", "stop"]
        result = await task
        follower.cancel()
        return result.state

    asked: list[int] = []
    assert asyncio.run(drive()) is RunState.STOPPED
    assert store.requests.pending(run_id) == []
    results = [store.requests.result(request) for request in asked]
    assert results[0] == "done"
    assert results[1] is not None
    assert results[1].startswith("refused: a paused run cannot become paused")
    assert results[2:] == ["done", "done"]
    over = cli.invoke(app, ["stop", str(run_id), "--db", str(tmp_path / "lab.db")])
    assert over.exit_code == 2
    assert "is stopped; it cannot stop" in over.output
