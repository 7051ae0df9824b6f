"""The bus's encoder process: payloads equal to encoding in the daemon, in call order."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cyclerd.encoder import Encoder, EncoderGone
from cyclerd.payloads import data_payload


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
