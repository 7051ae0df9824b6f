"""A sink for tests: hands each batch's columns to a function, as a live view would see them."""

from __future__ import annotations

from collections.abc import Callable

from cyclerd.engine.cursor import Cursor
from cyclerd.engine.sinks import Columns, Sink, Sinks, StoreSink
from cyclerd.store.database import Store


class OnBatch(Sink):
    def __init__(self, seen: Callable[[Columns], object]) -> None:
        self.seen = seen

    def batch(self, columns: Columns, cursor: Cursor | None, final: bool) -> None:
        self.seen(columns)


def stored_and_watched(store: Store, run_id: int, seen: Callable[[Columns], object]) -> Sinks:
    """The store first, then `seen`: the order the daemon gives its sinks."""
    return Sinks([StoreSink(store, run_id), OnBatch(seen)])
