"""The daemon's log as text for a person at a terminal, or as JSON for journald and log shippers.

A decision the daemon logs carries its run, channel and cell as fields (`extra=`); a line that a
channel's task logs while a run is on without naming it (a driver reconnecting) is given the
run's fields from its context (cyclerd.engine.sinks.RUN_FIELDS), so that a shipper can select
one run's whole story by field. The text format shows the message only: it names the channel
and run itself.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cyclerd.engine.sinks import RUN_FIELDS

__all__ = [
    "TEXT_FORMAT",
    "JournalPriority",
    "JsonFormatter",
    "LogFormat",
    "RunFields",
    "configure_logging",
    "stderr_is_journal",
]

TEXT_FORMAT = "%(asctime)s %(name)s: %(message)s"

# What every record has: anything else on a record came with `extra=` (or from RunFields).
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}
_LINE_KEYS = ("time", "level", "logger", "message")


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class RunFields(logging.Filter):
    """Gives a record the fields of the run whose task logged it, where it has none of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = RUN_FIELDS.get()
        if fields:
            for key, value in fields.items():
                if key not in record.__dict__:
                    setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, then the record's
    own fields (run, channel, cell, kind, ...; those that are None are left out) and a traceback,
    if any, as `exception`.

    A message's line breaks are escaped, so that a shipper that splits on lines never cuts a
    record in two; values JSON cannot hold are written as their text.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        line: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            own = key not in _RECORD_ATTRIBUTES and key not in _LINE_KEYS and not key.startswith("_")
            if own and value is not None:  # a field not known (a job with no cell id) is left out
                line[key] = _plain(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class JournalPriority(logging.Formatter):
    """Lines of `inner` with the level as a syslog priority prefix ("<4>" for a warning), which
    journald takes off and keeps as the entry's priority: `journalctl -p warning` then finds the
    warnings, which without it are all stored at the unit's one level (info)."""

    PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in self.PRIORITIES if record.levelno >= level), 7)
        return f"<{priority}>{self.inner.format(record)}"


def stderr_is_journal() -> bool:
    """Whether stderr is systemd's journal stream ($JOURNAL_STREAM names its device and inode)."""
    try:
        device, inode = (int(part) for part in os.environ.get("JOURNAL_STREAM", "").split(":"))
        found = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):  # not set, not ours, or stderr has no file (a test's capture)
        return False
    return (found.st_dev, found.st_ino) == (device, inode)


def _plain(value: Any) -> Any:
    """A value as JSON holds it: NaN and infinities (which json.dumps would write as bare words
    no other parser reads) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def configure_logging(log_format: LogFormat | str = LogFormat.TEXT, level: int = logging.INFO) -> None:
    """Log to stderr (the journal, under systemd) in `log_format`, from `level` up.

    Like logging.basicConfig, it leaves a root logger that already has handlers alone (a test
    runner's capture). With JSON, Python's warnings are logged too: every line on stderr is then
    one object, as a shipper reads them. Under systemd each line starts with its priority, for
    journald (JournalPriority).
    """
    chosen = LogFormat(log_format)
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RunFields())
    formatter = JsonFormatter() if chosen is LogFormat.JSON else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(JournalPriority(formatter) if stderr_is_journal() else formatter)
    root.addHandler(handler)
    root.setLevel(level)
    if chosen is LogFormat.JSON:
        logging.captureWarnings(True)
