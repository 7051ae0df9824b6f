"""Where the bus's batches become JSON: in the encoder process (cyclerd.bus.encoder) while it
lives, in the daemon's own process once it is gone or when there is none.

A batch already handed to a child that dies is not lost: its payload is made here instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from cyclerd.bus.encoder import Encoder, EncoderGone
from cyclerd.bus.payloads import data_payload
from cyclerd.bus.sender import Outgoing, ready

log = logging.getLogger(__name__)


class Encoding:
    """Encodes `data` payloads; `process` is the encoder child while there is one."""

    def __init__(self, child: bool) -> None:
        self.process: Encoder | None = Encoder() if child else None
        self._reaping: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self.process is not None and not self.process.alive:
            try:
                await self.process.start()
            except (EncoderGone, OSError) as error:  # then the daemon encodes
                self._lose(error)

    def encode(self, run_id: int, columns: Mapping[str, Any]) -> asyncio.Future[str | bytes]:
        if self.process is not None:
            try:
                return asyncio.ensure_future(self.process.encode(run_id, columns))
            except EncoderGone as error:
                self._lose(error)
        return ready(data_payload(run_id, columns))

    async def payload(self, out: Outgoing) -> str | bytes:
        """The payload of `out`, encoded here if the child died before it was done."""
        try:
            return await out.payload
        except EncoderGone as error:
            self._lose(error)
            assert out.run_id is not None
            assert out.columns is not None
            return data_payload(out.run_id, out.columns)

    async def close(self) -> None:
        if self.process is not None:
            await self.process.close()

    def _lose(self, error: BaseException) -> None:
        process, self.process = self.process, None
        if process is not None:
            log.warning("bus: %s; encoding in the daemon from now on", error)
            reaping = asyncio.get_running_loop().create_task(process.close())  # its pipes and process
            self._reaping.add(reaping)  # keep a reference until it is done
            reaping.add_done_callback(self._reaping.discard)
