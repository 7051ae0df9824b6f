"""The emulator's pty link: a hang-up while the device's output is stalled on a client that
does not read (as a busy driver on a loaded machine) must neither hang nor break the new pty."""

from __future__ import annotations

import asyncio
import os

from cyclerd.simulators.methodscript_transport import Transport


async def test_a_hang_up_during_a_stalled_write_opens_a_working_pty() -> None:
    transport = Transport(pty=True, tcp=False, port=0, wait_for_reader=False)
    await transport.start()
    assert transport.pty_path is not None
    client = os.open(transport.pty_path, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(client, b"t\n")
        assert await asyncio.wait_for(transport.next_line(), 5.0) == "t"
        stalled = asyncio.create_task(transport.write("P" * (4 << 20)))  # far more than a pty holds
        for _ in range(3):  # the client reads nothing: the pty fills and the write waits for room
            await asyncio.sleep(0)
        assert not stalled.done()
        old_path = transport.pty_path
        transport.drop(tcp=False, pty=True)  # the new pty may reuse the old master's descriptor
        await asyncio.wait_for(stalled, 5.0)  # the stalled output is lost with the cable
        assert transport.pty_path not in (None, old_path)
        again = os.open(transport.pty_path, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(again, b"i\n")
            assert await asyncio.wait_for(transport.next_line(), 5.0) == "i"
            await transport.write("iEmStat4HR")
            assert await asyncio.wait_for(_read_line(again), 5.0) == b"iEmStat4HR\n"
        finally:
            os.close(again)
    finally:
        os.close(client)
        await transport.stop()


async def _read_line(fd: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while not data.endswith(b"\n"):
        ready = loop.create_future()
        loop.add_reader(fd, ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
        data += os.read(fd, 4096)
    return data
