"""CPU per stored sample on an emulated cycler: cyclerd's channels (driver, stepper or step file,
runner, SQLite store) against a bare loop of the vendor's own Python client on the same socket.

The emulator runs in its own process (`cyclerd emulate <cycler> --channels N`), so this process's
CPU time is the client side only. In one run, for each channel count:

- bare: the third-party client (pymacnet, pycti-arbin, aurora-neware) asks for every channel's
  readings in a round-robin loop, as fast as it can, and parses them; nothing is stored. CPU per
  reading.
- cyclerd: every channel runs one plating step at once, `--readings` readings long, each reading
  logged (record every poll), through `open_cycler_channel`, `Runner` and a `StoreSink` into one SQLite
  store. CPU per stored sample.

Run: .venv/bin/python bench/cycler_overhead.py [--cyclers maccor,neware,arbin] [--channels 8,64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from cyclerd.drivers.clock import AcceleratedClock
from cyclerd.engine.instruments import cycler_driver
from cyclerd.engine.runner import Runner
from cyclerd.engine.sinks import StoreSink
from cyclerd.protocols import loads
from cyclerd.protocols.compiler import compile_protocol
from cyclerd.store.database import Store

CYCLERD = Path(sys.executable).with_name("cyclerd")
PLATE_A = 7.85e-4  # 1 mA/cm^2 on a 10 mm pellet


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def emulator(cycler: str, channels: int, speed: float) -> Iterator[int]:
    port = free_port()
    args = [str(CYCLERD), "emulate", cycler, "--channels", str(channels), "--port", str(port)]
    process = subprocess.Popen(
        [*args, "--speed", f"{speed:g}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {cycler} emulator did not start")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


# -- the bare loops: the vendors' own clients ----------------------------------------------------


def bare_maccor(port: int, channels: int, readings: int) -> float:
    import pymacnet  # type: ignore[import-untyped]

    def config(channel: int) -> dict[str, Any]:
        return {
            "server_ip": "127.0.0.1",
            "json_msg_port": port,
            "bin_msg_port": port - 10,  # the emulator's binary port, as on a Maccor
            "msg_buffer_size_bytes": 4096,
            "channel": channel,
            "test_name": None,
            "test_procedure": "unused",
            "c_rate_ah": 1,
            "v_max_safety_limit_v": 3.0,
            "v_min_safety_limit_v": -0.5,
            "i_max_safety_limit_a": 0.01,
            "i_min_safety_limit_a": 0.01,
            "power_safety_limit_chg_w": 1,
            "power_safety_limit_dsg_w": 1,
            "v_max_v": 2.0,
            "v_min_v": -0.3,
            "data_record_time_s": 10,
            "data_record_voltage_delta_vbys": 0,
            "data_record_current_delta_abys": 0,
        }

    clients = [pymacnet.ChannelInterface(config(n)) for n in range(1, channels + 1)]
    for client in clients:
        client.start_test_with_direct_control()
        client.set_direct_mode_output(-PLATE_A)
    start = time.process_time()
    for i in range(readings):
        status = clients[i % channels].read_channel_status()
        float(status["Voltage"]), float(status["Current"])
    used = time.process_time() - start
    for client in clients:
        client.reset_channel()
    return used


def bare_arbin(port: int, channels: int, readings: int) -> float:
    import os

    from pyctiarbin import ChannelInterface  # type: ignore[import-untyped]

    with tempfile.TemporaryDirectory() as folder:
        env = Path(folder) / ".env"  # pycti-arbin reads its login from a .env file
        env.write_text("ARBIN_CTI_USERNAME='bench'\nARBIN_CTI_PASSWORD='bench'\n")
        config = {"ip_address": "127.0.0.1", "port": port, "timeout_s": 2}
        clients = [
            ChannelInterface(
                {**config, "channel": n, "test_name": "bench", "schedule_name": "cyclerd_follow.sdx"},
                str(env),
            )
            for n in range(1, channels + 1)
        ]
        os.environ.pop("ARBIN_CTI_USERNAME", None)
        os.environ.pop("ARBIN_CTI_PASSWORD", None)
    start = time.process_time()
    for i in range(readings):
        status = clients[i % channels].read_channel_status()
        float(status["voltage_v"]), float(status["current_a"])
    return time.process_time() - start


def bare_neware(port: int, channels: int, readings: int, points: int = 1) -> float:
    """Downloads of the channels' last test (the plating cyclerd just ran), `points` records each
    (as many as cyclerd's driver gets per poll), as aurora-neware's NewareAPI does it: inquiredf,
    then download."""
    from aurora_neware import NewareAPI

    with NewareAPI("127.0.0.1", port) as api:
        pipelines = list(api.channel_map)[:channels]
        got = 0
        start = time.process_time()
        while got < readings:
            for pipeline in pipelines:
                data = api.download(pipeline, last_n_points=points)
                got += len(next(iter(data.values()), []))
        used = time.process_time() - start
    return used * readings / got


BARE: dict[str, Callable[..., float]] = {
    "maccor": bare_maccor,
    "arbin": bare_arbin,
    "neware": bare_neware,
}


# -- cyclerd ------------------------------------------------------------------------------------


def plating(hours: float, poll_s: float) -> str:
    return f"""\
name: plating for the benchmark
cell: {{area: 0.785 cm^2}}
safety: {{voltage_min: -0.5 V, voltage_max: 3.0 V}}
record: {{every: {poll_s:g} s}}
steps:
  - plate: {{current: 1 mA/cm^2, until: {{duration: {hours * 3600:g} s}}}}
"""


async def through_cyclerd(
    cycler: str, port: int, channels: int, speed: float, poll_s: float, hours: float, store: Store
) -> tuple[float, int]:
    text = plating(hours, poll_s)
    program = compile_protocol(loads(text))
    clock = AcceleratedClock(speed)
    driver = cycler_driver(cycler)
    async with AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(
                driver.open_cycler_channel(f"tcp://127.0.0.1:{port}", n, clock, poll_s)
            )
            for n in range(1, channels + 1)
        ]
        runs = [store.create_run(program.name, f"{cycler}#{n}", text, {}, {}) for n in range(1, channels + 1)]
        start = time.process_time()
        await asyncio.gather(
            *(
                Runner(program, channel, clock, StoreSink(store, run)).run()
                for channel, run in zip(opened, runs, strict=True)
            )
        )
        used = time.process_time() - start
    stored = sum(len(store.samples(run)["t"]) for run in runs)
    return used, stored


def measure(cycler: str, channels: int, speed: float, poll_s: float, hours: float) -> tuple[float, float]:
    """µs of CPU per bare reading and per cyclerd sample, for `channels` channels."""
    with emulator(cycler, channels, speed) as port:
        with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "bench.db") as store:
            used, stored = asyncio.run(through_cyclerd(cycler, port, channels, speed, poll_s, hours, store))
        readings = max(2000, channels * 50)
        if cycler == "neware":  # records per poll: the driver downloads what came since the last
            from cyclerd.drivers.neware import POLL_WALL_MIN_S

            points = max(1, round(max(poll_s / speed, POLL_WALL_MIN_S) * speed / poll_s))
            bare = BARE[cycler](port, channels, readings, points) / readings * 1e6
        else:
            bare = BARE[cycler](port, channels, readings) / readings * 1e6
    return bare, used / stored * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cyclers", default="maccor,neware,arbin")
    parser.add_argument("--channels", default="8,64")
    parser.add_argument("--speed", type=float, default=3600.0, help="cell seconds per real second")
    parser.add_argument(
        "--readings", type=int, default=300, help="readings per channel (a 1 h step logged every 12 s)"
    )
    args = parser.parse_args()
    print(f"{'cycler':8} {'channels':>8} {'bare µs/reading':>16} {'cyclerd µs/sample':>18} {'ratio':>6}")
    for cycler in args.cyclers.split(","):
        for channels in (int(n) for n in args.channels.split(",")):
            # One reading per channel every poll_s cell seconds: about 1500 readings a second in all.
            poll_s = max(1.0, args.speed * channels / 1500)
            hours = args.readings * poll_s / 3600
            bare, ours = measure(cycler, channels, args.speed, poll_s, hours)
            print(f"{cycler:8} {channels:8d} {bare:16.1f} {ours:18.1f} {ours / bare:6.2f}")
    print("target: ratio <= 1.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
