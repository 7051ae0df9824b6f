"""The job queue and run requests in the store, used by the CLI with or without a daemon."""

from __future__ import annotations

import asyncio
from pathlib import Path

from linear_cell import LinearCell
from typer.testing import CliRunner

from cyclerd.cli.main import app
from cyclerd.drivers.clock import VirtualClock
from cyclerd.engine.control import follow_requests
from cyclerd.engine.runner import Runner
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
    job = first.submit_job("ch1", "x", LONG, "x.yaml", {})
    claimed = first.claim_job("ch1")
    assert claimed is not None
    assert claimed["id"] == job
    assert second.claim_job("ch1") is None  # a second daemon (or a retry) gets nothing
    assert second.job_protocol(job) == LONG
    first.finish_job(job, "done", run_id=7)
    assert second.jobs()[0]["state"] == "done"


def test_requests_from_the_store_pause_resume_and_stop_a_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "lab.db")
    program = compile_protocol(loads(LONG))
    run_id = store.create_run(program.name, "sim", LONG, {}, {})
    clock = VirtualClock()
    channel = SimulatedChannel(LinearCell(capacitance_F=1e9), clock, chunk=256)
    runner = Runner(program, channel, store, run_id, clock)

    async def drive() -> RunState:
        task = asyncio.create_task(runner.run())
        follower = asyncio.create_task(follow_requests(store, run_id, runner, interval_s=0))
        while clock.now() < 3600 and not task.done():
            await asyncio.sleep(0)
        store.request(run_id, "pause")
        while runner.state is not RunState.PAUSED and not task.done():
            await asyncio.sleep(0)
        store.request(run_id, "pause")  # again: refused, the run is already paused
        store.request(run_id, "resume")
        store.request(run_id, "stop")
        result = await task
        await follower
        return result.state

    assert asyncio.run(drive()) is RunState.STOPPED
    handled = store._db.execute("SELECT action, result FROM requests ORDER BY id").fetchall()
    assert [action for action, _ in handled] == ["pause", "pause", "resume", "stop"]
    assert handled[0][1] == "done"
    assert handled[1][1].startswith("refused: a paused run cannot become paused")
    assert handled[3][1] == "done"
    over = cli.invoke(app, ["stop", str(run_id), "--db", str(tmp_path / "lab.db")])
    assert over.exit_code == 2
    assert "is stopped; it cannot stop" in over.output
