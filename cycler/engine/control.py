"""The run's control: whether it may go on, whether it must stop, and what a request cancels.

Pause and stop must take effect at once whatever the run is waiting for — the next sample of a
step logged every 5 minutes, a spectrum, a retry's backoff — so the runner awaits such things
through `interruptible`, and a request cancels the wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class Interrupted(Exception):
    """A pause or stop cancelled what the run was waiting for."""


class RunControl:
    def __init__(self) -> None:
        self._go = asyncio.Event()
        self._go.set()
        self.stop_requested = False
        self._waiting: asyncio.Future[Any] | None = None

    @property
    def paused(self) -> bool:
        return not self._go.is_set()

    def pause(self) -> None:
        self._go.clear()
        self._interrupt()

    def resume(self) -> None:
        self._go.set()

    def stop(self) -> None:
        self.stop_requested = True
        self._go.set()
        self._interrupt()

    async def wait_until_resumed(self) -> None:
        await self._go.wait()

    def _interrupt(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()

    async def interruptible(self, work: Awaitable[T]) -> T:
        """Await `work` in a task that a pause or stop cancels, and then raise Interrupted.

        Cancelling the run's own task still cancels it: only a cancellation that came from a
        request becomes Interrupted.
        """
        task = asyncio.ensure_future(work)
        self._waiting = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise Interrupted from None
            raise
        finally:
            self._waiting = None
