"""A live progress line for a run at the terminal: test time, cycle and the last CE."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cyclerd.drivers.clock import Clock
from cyclerd.engine.runner import Runner

HOUR = 3600.0


class RunProgress:
    """Shows how far a run is; updates at most every `every_s` of test time to stay cheap."""

    def __init__(self, console: Console, expected_s: float | None, every_s: float = 600.0) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        total = expected_s / HOUR if expected_s else None
        self.task = self.progress.add_task("running", total=total, status="")
        self.every_s = every_s
        self.runner: Runner | None = None
        self._next = 0.0

    def batch_callback(self, clock: Clock) -> Callable[[dict[str, np.ndarray]], None]:
        start = clock.now()

        def update(columns: dict[str, np.ndarray]) -> None:
            t = clock.now() - start
            if t < self._next:
                return
            self._next = t + self.every_s
            runner = self.runner
            cycle = runner.cycle if runner else 0
            ce = (
                f", last CE {100 * runner.cycles[-1].coulombic_efficiency:.2f} %"
                if runner and runner.cycles
                else ""
            )
            status = f"{t / HOUR:7.1f} h test time, cycle {cycle}{ce}"
            self.progress.update(self.task, completed=t / HOUR, status=status)

        return update

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.runner is not None:
            t = self.runner.test_time_s
            self.progress.update(self.task, completed=t / HOUR, description=str(self.runner.state))
        self.progress.stop()
