"""64 simulated channels through the daemon with MQTT publishing on, against a bare publisher.

The daemon runs E1 (plating/stripping on MgAgSn) on 64 simulated channels in virtual time:
simulation, safety checks, SQLite, and the bus publishing every batch at QoS 1 to a real
Mosquitto started here on a free loopback port. In the same run, a bare aiomqtt client
publishes the very same samples (one message per step, the same columnar JSON, QoS 1, each
awaited) to the same broker, once before the daemon and once after; the mean of the two is the
baseline. The daemon also runs the jobs once without a bus: acquisition alone. Printed per
workload: aggregate samples/s of each, their ratio, the CPU seconds the daemon used (its own
process, and its encoder process), whether the broker acknowledged every sample of every run,
acquisition alone, and the bus alone replaying the store.

Two workloads, because the simulated cells are themselves a load:
- grid: E1 logged every 1 s, the simulator's grid, so every sample the cell model computes is
  stored and published: the figure measures the daemon.
- E1: the library file as written (every 10 s or 1 mV), where the model computes several
  grid points per logged sample: the figure is bound by the simulated physics.

The machine's speed varies from run to run (and within a run too), so each workload can be
measured several times: the median of the runs' ratios is the figure to quote. The best times
are printed beside it (the fastest daemon against the fastest bare publisher): a slowdown only
ever adds time, so they show what the daemon costs on an undisturbed machine.

Run: .venv/bin/python bench/daemon_throughput.py [--channels 64] [--only grid|E1] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from importlib.resources import files
from pathlib import Path

import aiomqtt
import numpy as np

from cyclerd.bus.publisher import FLOAT_COLUMNS, INT_COLUMNS, QOS, Bus, data_payload
from cyclerd.daemon.config import Lab
from cyclerd.daemon.service import Daemon
from cyclerd.store.database import Store

LAB = "bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n")
    broker = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return broker, port


async def through_the_daemon(
    db: Path, port: int | None, channels: int, cycles: int, every: str
) -> tuple[float, Bus | None, Store]:
    """The daemon runs the jobs; with `port`, it publishes through the broker there, else it has
    no bus (the same seeds store the same samples: what acquisition alone costs)."""
    text = (files("cyclerd.protocols") / "library" / "plating_stripping.yaml").read_text()
    text = text.replace("count: 250", f"count: {cycles}")
    if every:  # log at this interval only, without the 1 mV trigger
        text = text.replace("every: 10 s", f"every: {every}").replace("voltage_change: 1 mV", "")
    lab = Lab.model_validate(
        {
            "lab": LAB,
            "database": db,
            "channels": [{"name": f"ch{k:02d}", "sim": "mgagsn", "seed": k} for k in range(channels)],
        }
    )
    store = Store(db)
    for k in range(channels):
        store.jobs.submit(f"ch{k:02d}", "E1", text, "plating_stripping.yaml", {})
    bus = None if port is None else Bus(LAB, "127.0.0.1", port, store=store, queue_size=10_000)
    if bus is not None:
        bus.start()
        await bus.wait_connected()
    daemon = Daemon(lab, bus)  # a started daemon: its start-up is not part of its throughput
    started = time.perf_counter()
    await daemon.run(until_idle=True)
    if bus is not None:
        flushed = await bus.flush(timeout_s=600)
        assert flushed, "the broker did not acknowledge every sample"
    elapsed = time.perf_counter() - started
    if bus is not None:
        await bus.close()
    return elapsed, bus, store


async def bare_publisher(store: Store, port: int) -> tuple[float, int, int]:
    """The same batches (read back from the store by step), published with a bare aiomqtt client."""
    batches = []
    for run in store.runs():
        samples = store.samples(run.id)
        edges = np.flatnonzero(np.diff(samples["step"])) + 1  # one batch per step: the daemon's size
        for part in np.split(np.arange(len(samples["seq"])), edges):
            cols = {"seq": samples["seq"][part].astype(np.int64)}
            cols.update({n: samples[n][part] for n in (*FLOAT_COLUMNS, *INT_COLUMNS)})
            batches.append((run.channel, run.id, cols))
    count = sum(len(cols["seq"]) for _, _, cols in batches)
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        started = time.perf_counter()
        for channel, run_id, cols in batches:
            await client.publish(f"cyclerd/{LAB}/{channel}/data", data_payload(run_id, cols), qos=QOS)
        elapsed = time.perf_counter() - started
    return elapsed, count, len(batches)


async def bus_replay(store: Store, port: int) -> float:
    """The daemon's publishing path alone: a fresh Bus replays every stored run from the store."""
    async with Bus(LAB, "127.0.0.1", port, store=store) as bus:
        await bus.wait_connected()
        started = time.perf_counter()
        for run in store.runs():
            await bus.replay(store, run.id, run.channel, -1)
        return time.perf_counter() - started


WORKLOADS = {"grid": (5, "1 s"), "E1": (20, "")}  # name: cycles, logging interval


def cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, channels: int) -> tuple[float, float, float]:
    """One workload: acquisition alone, the bare publisher, the daemon with its bus, the bare
    publisher again (its mean is the baseline, so that a machine speeding up or slowing down
    during the run does not favour either side), and the bus alone replaying the store."""
    cycles, every = WORKLOADS[name]
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            quiet_elapsed, _, quiet = asyncio.run(
                through_the_daemon(Path(tmp) / "quiet.db", None, channels, cycles, every)
            )
            before, base_count, batches = asyncio.run(bare_publisher(quiet, port))
            own, children = cpu_s(resource.RUSAGE_SELF), cpu_s(resource.RUSAGE_CHILDREN)
            elapsed, bus, store = asyncio.run(
                through_the_daemon(Path(tmp) / "lab.db", port, channels, cycles, every)
            )
            own, children = cpu_s(resource.RUSAGE_SELF) - own, cpu_s(resource.RUSAGE_CHILDREN) - children
            assert bus is not None
            runs = store.runs()
            stored = {run.id: len(store.samples(run.id)["seq"]) for run in runs}
            total = sum(stored.values())
            quiet_runs = {run.channel: run.id for run in quiet.runs()}
            same = total == base_count and all(
                np.array_equal(
                    store.samples(run.id)["voltage"], quiet.samples(quiet_runs[run.channel])["voltage"]
                )
                for run in runs
            )
            assert same, "the same seeds stored other samples with and without the bus"
            lost = sum(1 for run_id, n in stored.items() if bus.delivered(run_id) != n - 1)
            after, _, _ = asyncio.run(bare_publisher(store, port))
            replay_elapsed = asyncio.run(bus_replay(store, port))
        finally:
            broker.terminate()
            broker.wait()
    base_elapsed = (before + after) / 2
    daemon_rate, base_rate, replay_rate = total / elapsed, total / base_elapsed, total / replay_elapsed
    quiet_rate = total / quiet_elapsed
    logging = f"every {every}" if every else "every 10 s or 1 mV"
    print(f"[{name}] {channels} channels x {cycles} cycles of E1 on MgAgSn, logged {logging}")
    print(f"  samples                         {total:,} ({batches:,} steps)")
    print(f"  daemon (sim+store+bus, QoS 1)   {daemon_rate:>12,.0f} samples/s  ({elapsed:.2f} s)")
    print(
        f"  bare aiomqtt publisher (QoS 1)  {base_rate:>12,.0f} samples/s"
        f"  ({base_elapsed:.2f} s: {before:.2f} s before, {after:.2f} s after)"
    )
    print(f"  ratio                           {daemon_rate / base_rate:>12.2f}  (target >= 0.8)")
    print(f"  daemon CPU                      {own:>12.1f} s own + {children:.1f} s encoder (2 cores)")
    print(
        f"  daemon without a bus (sim+store){quiet_rate:>12,.0f} samples/s  ({quiet_rate / base_rate:.2f}x)"
    )
    print(
        f"  bus alone, replaying the store  {replay_rate:>12,.0f} samples/s  ({replay_rate / base_rate:.2f}x)"
    )
    print(
        f"  runs with unacknowledged data   {lost:>12}  (of {len(runs)}; dropped and replayed: {bus.dropped})"
    )
    return daemon_rate / base_rate, elapsed, min(before, after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--only", choices=sorted(WORKLOADS))
    parser.add_argument("--repeat", type=int, default=1, help="measure each workload this many times")
    args = parser.parse_args()
    names = [args.only] if args.only else list(WORKLOADS)
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
    for _ in range(args.repeat):
        for name in names:
            results[name].append(measure(name, args.channels))
    if args.repeat > 1:
        for name, each in results.items():
            ratios = [ratio for ratio, _, _ in each]
            runs = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"[{name}] ratio, median of {len(each)}: {statistics.median(ratios):.2f}  ({runs})")
            daemon_s, bare_s = min(e for _, e, _ in each), min(b for _, _, b in each)
            print(
                f"[{name}] best times: daemon {daemon_s:.2f} s, bare publisher {bare_s:.2f} s,"
                f" ratio {bare_s / daemon_s:.2f}"
            )


if __name__ == "__main__":
    main()
