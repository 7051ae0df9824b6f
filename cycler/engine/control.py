"""Acting on pause/resume/stop requests that people left in the store for a running run.

The CLI only writes requests (it works with or without a daemon); whoever runs the run — the
daemon, or `cyclerd run` in a terminal — follows them with this loop, about once a second.
"""

from __future__ import annotations

import asyncio

from cyclerd.engine.runner import Runner
from cyclerd.engine.states import FINAL, TransitionError
from cyclerd.store.database import Store

ACTIONS = ("pause", "resume", "stop")


async def follow_requests(store: Store, run_id: int, runner: Runner, interval_s: float = 1.0) -> None:
    """Apply the run's pending requests in order until the run is over; each gets its result."""
    while runner.state not in FINAL:
        for request_id, action in store.pending_requests(run_id):
            try:
                if action not in ACTIONS:
                    raise TransitionError(f"unknown action {action!r}; actions: {', '.join(ACTIONS)}")
                getattr(runner, action)()
                result = "done"
            except TransitionError as exc:
                result = f"refused: {exc}"
            store.handle_request(request_id, result)
        await asyncio.sleep(interval_s)
