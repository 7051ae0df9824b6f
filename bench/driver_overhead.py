"""CPU time per logged sample: the Keithley 2450 driver + software stepper vs a bare pyvisa loop.

The emulator runs in a separate process (`cyclerd emulate keithley2450 --virtual-step 1`), so
this process's CPU time is the client side only. Both clients talk to the same emulator over
the same TCP socket: the bare loop sends `:READ? "defbuffer1", READ, SOUR, REL` N times; the
driver runs a constant-current step of N seconds at 1 s logging through SteppedChannel.
Run: .venv/bin/python bench/driver_overhead.py [N]
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyvisa

from cyclerd.drivers.base import Batch, StepProgress
from cyclerd.drivers.clock import VirtualClock
from cyclerd.drivers.keithley2450 import Keithley2450
from cyclerd.drivers.stepper import SteppedChannel
from cyclerd.protocols.program import CurrentCommand, EndConditions, RecordRule, SafetyLimits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int) -> None:
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.1)
    raise RuntimeError("the emulator did not start")


def bare_loop(resource: str, n: int) -> float:
    session = pyvisa.ResourceManager("@py").open_resource(
        resource, read_termination="\n", write_termination="\n", timeout=2000
    )
    session.write(':SOUR:FUNC CURR;:SOUR:CURR:VLIM 5;:SOUR:CURR -7.85E-04;:SENS:FUNC "VOLT";:OUTP ON')
    start = time.process_time()
    for _ in range(n):
        reply = session.query(':READ? "defbuffer1", READ, SOUR, REL')
        [float(x) for x in reply.split(",")]
    used = time.process_time() - start
    session.write(":OUTP OFF")
    session.close()
    return used


async def driver_step(resource: str, n: int) -> tuple[float, int]:
    smu = Keithley2450(resource)
    await smu.open()
    channel = SteppedChannel(smu, VirtualClock(), poll_interval_s=1.0)
    command = CurrentCommand(
        index=1,
        kind="plate",
        label="plate",
        source="bench",
        end=EndConditions(duration_s=float(n)),
        record=RecordRule(every_s=1.0),
        current_A=-7.85e-4,
    )
    logged = 0
    start = time.process_time()
    async for item in channel.run(command, StepProgress(), SafetyLimits()):
        if isinstance(item, Batch):
            logged += len(item)
    used = time.process_time() - start
    await smu.close()
    return used, logged


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    port = free_port()
    cyclerd = Path(sys.executable).with_name("cyclerd")
    emulator = subprocess.Popen(
        [str(cyclerd), "emulate", "keithley2450", "--port", str(port), "--virtual-step", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(port)
        resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
        bare = bare_loop(resource, n)
        driver, logged = asyncio.run(driver_step(resource, n))
    finally:
        emulator.terminate()
        emulator.wait(5)
    per_bare, per_driver = bare / n * 1e6, driver / logged * 1e6
    print(f"bare pyvisa :READ? loop      {per_bare:8.1f} µs CPU per reading   ({n} readings)")
    print(f"driver + software stepper    {per_driver:8.1f} µs CPU per logged sample ({logged} samples)")
    print(f"ratio                        {per_driver / per_bare:8.2f}  (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
