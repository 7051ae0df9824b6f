"""`cyclerd doctor`: is this lab PC ready to serve? lab.toml, the store, the broker and every
instrument are checked concurrently with short timeouts, and each verdict says what to do.

Instruments are only asked who they are (no reset, no output change, no abort), and not even
that while a daemon holds them (a serve process here with the same config, or the daemon's
status on the broker): doctor must be safe to run beside a months-long run. This module runs
the checks and decides who holds the instruments; the checks themselves live in cyclerd.doctor's
config, store, broker and instruments modules, and the report's model in its verdict module.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from cyclerd.doctor.broker import check_broker
from cyclerd.doctor.config import check_channels, check_config
from cyclerd.doctor.cyclers import check_cycler
from cyclerd.doctor.dashboard import check_dashboard
from cyclerd.doctor.instruments import check_instrument
from cyclerd.doctor.store import check_database
from cyclerd.doctor.verdict import Check, Verdict, exit_code
from cyclerd.drivers.cycler import CYCLERS

__all__ = ["Check", "Verdict", "diagnose", "exit_code", "serve_pids"]


async def diagnose(config: Path, timeout_s: float = 2.0, ask_instruments: bool = True) -> list[Check]:
    """Every check for the lab configured in `config`, in report order."""
    loaded, lab = check_config(config)
    if lab is None:
        return [loaded]
    # Who holds the instruments, if anyone: a serve process here, or the daemon's status on the
    # broker. The instrument checks wait for the answer; they must not disturb a running daemon.
    holder: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    if pids := serve_pids(config):
        holder.set_result(f"cyclerd serve (pid {pids[0]}) runs with this config")
    elif lab.mqtt is None:
        holder.set_result(None)
    # An instrument no channel names is not the daemon's, whoever holds the others: it is asked.
    used = {c.instrument for c in lab.channels}
    free: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    free.set_result(None)
    async with asyncio.TaskGroup() as group:
        database = group.create_task(_guarded("database", asyncio.to_thread(check_database, lab)))
        broker = None
        if lab.mqtt is not None:
            broker = group.create_task(_guarded("broker", check_broker(lab.mqtt, lab.lab, timeout_s, holder)))
        asked = [
            group.create_task(
                _guarded(
                    f"instrument {i.name}",
                    check_cycler(
                        i,
                        {c.name: c.cycler_channel or 0 for c in lab.channels if c.instrument == i.name},
                        timeout_s,
                        holder if i.name in used else free,
                        ask_instruments,
                    )
                    if i.driver in CYCLERS
                    else check_instrument(i, timeout_s, holder if i.name in used else free, ask_instruments),
                )
            )
            for i in lab.instruments
        ]
    checks = [loaded, *check_channels(lab), *database.result()]
    checks += broker.result() if broker is not None else [Check("broker", Verdict.OK, "no [mqtt]: not used")]
    for instrument, task in zip(lab.instruments, asked, strict=True):
        checks += task.result() if instrument.name in used else map(_unused, task.result())
    checks += check_dashboard(lab.web, daemon_running=bool(pids))
    return checks


def _unused(check: Check) -> Check:
    verdict = Verdict.FAIL if check.verdict is Verdict.FAIL else Verdict.WARN
    return Check(
        check.name, verdict, f"{check.detail}; no channel uses it: add a [[channels]] entry, or remove it"
    )


async def _guarded(name: str, work: Coroutine[Any, Any, list[Check] | Check]) -> list[Check]:
    """A check that crashes is reported as failed, and the other checks go on."""
    try:
        found = await work
    except Exception as exc:  # noqa: BLE001 - a doctor reports its own failure as a verdict
        return [Check(name, Verdict.FAIL, f"doctor could not check this: {type(exc).__name__}: {exc}")]
    return found if isinstance(found, list) else [found]


def serve_pids(config: Path) -> list[int]:
    """The `cyclerd serve` processes on this PC started with `config` (Linux: read from /proc).

    Needed besides the broker's word: serve may run without a bus, and two channels must never
    talk to one instrument, so doctor keeps its hands off instruments a daemon here holds.
    """
    wanted, found = config.resolve(), []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # gone already, or another user's process we may not look into
            continue
        if not any(a.endswith("cyclerd") for a in argv[:2]) or "serve" not in argv[1:3]:
            continue
        given = [v for k, v in itertools.pairwise(argv) if k == "--config"]
        given += [a.removeprefix("--config=") for a in argv if a.startswith("--config=")]
        if any((cwd / g).resolve() == wanted for g in given):
            found.append(int(entry.name))
    return found
