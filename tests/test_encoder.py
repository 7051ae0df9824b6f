"""The bus's encoder process: payloads equal to encoding in the daemon, in call order."""

from __future__ import annotations

import asyncio
import gc
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest

from cyclerd.bus.encoder import HEADER, Encoder, EncoderGone, _raw
from cyclerd.bus.payloads import data_payload


def _columns(first: int, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    seq = np.arange(first, first + n)
    return {
        "seq": seq,
        "t": np.cumsum(rng.uniform(0.1, 10.0, n)),
        "voltage": rng.normal(0.0, 1.0, n),
        "current": np.full(n, -7.85e-4),
        "charge": rng.normal(0.0, 1e-3, n),
        "energy": rng.normal(0.0, 1e-6, n),
        "cycle": np.full(n, 3),
        "step": np.full(n, 7),
    }


async def test_payloads_come_back_in_order_and_equal_to_encoding_here() -> None:
    rng = np.random.default_rng(5)
    batches = [(run, _columns(100 * k, int(rng.integers(1, 300)), rng)) for k, run in enumerate([1, 2] * 20)]
    encoder = Encoder()
    await encoder.start()
    try:
        futures = [encoder.encode(run, columns) for run, columns in batches]  # all in flight at once
        payloads = await asyncio.gather(*futures)
    finally:
        await encoder.close()
    assert [p.decode() for p in payloads] == [data_payload(run, columns) for run, columns in batches]


async def test_a_killed_encoder_fails_its_pending_batches_and_refuses_new_ones() -> None:
    encoder = Encoder()
    await encoder.start()
    try:
        rng = np.random.default_rng(6)
        pending = encoder.encode(1, _columns(0, 200_000, rng))  # long enough to be cut off
        encoder.kill()
        with pytest.raises(EncoderGone):
            await asyncio.wait_for(pending, 5.0)
        with pytest.raises(EncoderGone):
            encoder.encode(1, _columns(0, 10, rng))
    finally:
        await encoder.close()


async def test_batches_larger_than_the_pipes_arrive_whole_and_in_order() -> None:
    """Frames and payloads of megabytes: written and read in many pieces, as the pipes allow."""
    rng = np.random.default_rng(7)
    batches = [(run, _columns(50_000 * k, 30_000, rng)) for k, run in enumerate([3, 4, 3, 5, 4, 3])]
    encoder = Encoder()
    await encoder.start()
    try:
        payloads = await asyncio.wait_for(
            asyncio.gather(*(encoder.encode(run, columns) for run, columns in batches)), 60.0
        )
    finally:
        await encoder.close()
    assert [p.decode() for p in payloads] == [data_payload(run, columns) for run, columns in batches]


async def test_the_encoder_runs_no_thread_in_the_daemon() -> None:
    """The pipes are moved by the event loop: threads moving them made the loop hand the GIL
    back and forth with every batch, which cost more than the bytes."""
    before = threading.active_count()
    encoder = Encoder()
    await encoder.start()
    try:
        await encoder.encode(1, _columns(0, 10, np.random.default_rng(8)))
        assert threading.active_count() == before
    finally:
        await encoder.close()


async def test_an_encoder_started_again_after_closing_works() -> None:
    """A closed encoder's pipes leave the event loop with it: a new one may get the same file
    descriptors, and the loop must not still be watching the old ones."""
    rng = np.random.default_rng(9)
    for _ in range(3):
        encoder = Encoder()
        await encoder.start()
        try:
            columns = _columns(0, 50, rng)
            payload = await asyncio.wait_for(encoder.encode(7, columns), 10.0)
            assert payload.decode() == data_payload(7, columns)
        finally:
            await encoder.close()


async def test_batches_nobody_waits_for_any_more_fail_quietly_when_the_encoder_closes() -> None:
    """A bus that closes drops the batches it had in flight: asyncio must not report each one's
    EncoderGone as "never retrieved" in the daemon's log as it stops."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        encoder = Encoder()
        await encoder.start()
        rng = np.random.default_rng(8)
        kept = encoder.encode(1, _columns(0, 100_000, rng))
        for k in range(1, 4):
            encoder.encode(1, _columns(100_000 * k, 100_000, rng))  # dropped by their caller
        await encoder.close()
        with pytest.raises(EncoderGone):
            await kept  # a caller still waiting gets the error
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    assert [c["message"] for c in reported] == []


def test_an_encoder_whose_daemon_was_killed_exits_quietly() -> None:
    """SIGKILL of the daemon closes the read end of the encoder's stdout: the child must end
    without a BrokenPipeError traceback in the journal, which the next start's log would show."""
    child = subprocess.Popen(
        [sys.executable, "-m", "cyclerd.bus.encoder"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdout.close()  # the daemon is gone
    frame = pickle.dumps((1, _raw(_columns(0, 10, np.random.default_rng(9)))))
    child.stdin.write(HEADER.pack(len(frame)) + frame)
    child.stdin.close()
    assert child.stderr is not None
    assert child.stderr.read() == b""
    child.wait(30)
    assert child.returncode == 0
