"""A live progress line for a run at the terminal: test time, cycle and the last CE."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cyclerd.engine.cursor import Cursor
from cyclerd.engine.sinks import Columns, Sink
from cyclerd.engine.states import RunState

HOUR = 3600.0


class RunProgress(Sink):
    """Shows how far a run is; redrawn at most every `every_s` of test time to stay cheap."""

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
        self._next = 0.0
        self._t = 0.0
        self._ce = ""

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        self._t = t = float(columns["t"][-1])
        if t < self._next:
            return
        self._next = t + self.every_s
        cycle = int(columns["cycle"][-1])
        status = f"{t / HOUR:7.1f} h test time, cycle {cycle}{self._ce}"
        self.progress.update(self.task, completed=t / HOUR, status=status)

    def cycle_closed(self, summary: Mapping[str, float]) -> None:
        forward, reverse = summary["forward_As"], summary["reverse_As"]
        if forward > 0:
            self._ce = f", last CE {100 * reverse / forward:.2f} %"

    def state_changed(self, state: RunState, cycle: int) -> None:
        self.progress.update(self.task, completed=self._t / HOUR, description=str(state))

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()
