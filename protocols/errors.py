"""The one error a protocol file can raise: every problem, each with file:line:column."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in a protocol file; `line` and `column` count from 1."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class ProtocolError(ValueError):
    """A protocol that cannot run, with all its problems listed (not just the first)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(set(problems))
        count = len(self.problems)
        where = self.problems[0].file if self.problems else "the file"
        head = f"{count} problem{'s' if count != 1 else ''} in {where}"
        super().__init__("\n".join([head, *map(str, self.problems)]))
