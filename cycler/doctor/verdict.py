"""The model of a `cyclerd doctor` report: a verdict per check, and the exit code a script acts on.
Kept apart so that every check module and the orchestration share it without importing each other.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, the verdict, and what to do when it is not ok."""

    name: str
    verdict: Verdict
    detail: str


def exit_code(checks: list[Check]) -> int:
    """0 when everything is ok or only warns, 1 when anything failed."""
    return 1 if any(c.verdict is Verdict.FAIL for c in checks) else 0


def current_user() -> str:
    """The user doctor runs as: verdicts about file rights name them, and the fix is for them."""
    return pwd.getpwuid(os.geteuid()).pw_name
