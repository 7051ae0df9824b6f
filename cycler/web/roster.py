"""The users file as it stands now, for a dashboard that runs for months.

A lab adds and removes people with `cyclerd web user add|remove` while the daemon runs; the
dashboard asks the roster at every login and every request that carries a session, so a new user
can log in at once and a removed one (or one whose role or password changed) is logged out at once,
not at the daemon's next start. The file is read again only when it changed on disk (one stat per
request). A file that no longer reads lets nobody in until it is fixed: a typo made while taking
someone out must not leave them in.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cyclerd.web.users import Users, UsersFileError

log = logging.getLogger(__name__)

Signature = tuple[int, int, int] | None  # inode, mtime (ns) and size; None: no file


class Roster:
    """The current `Users` of a users file (`path`), or a fixed set (no path: `cyclerd web --db`
    without --users, and tests)."""

    def __init__(self, users: Users, path: Path | str | None = None) -> None:
        self._users = users
        self._path = None if path is None else Path(path)
        self.broken = False  # the file was changed and no longer reads: nobody may log in
        self._seen = _signature(self._path)

    @classmethod
    def load(cls, path: Path | str) -> Roster:
        """The roster of `path` as it is now; UsersFileError when it does not read (the daemon
        says so and serves no dashboard)."""
        seen = _signature(Path(path))
        roster = cls(Users.load(path), path)
        roster._seen = seen  # taken before the read: a change during it is read again next time
        return roster

    def current(self) -> Users:
        if self._path is None:
            return self._users
        seen = _signature(self._path)
        if seen != self._seen:
            self._seen = seen
            throttle = self._users.throttle  # lockouts outlive the reread
            try:
                self._users, self.broken = Users.load(self._path, throttle=throttle), False
                log.info("dashboard: read %s again: %d user(s)", self._path, len(self._users))
            except UsersFileError as exc:
                self._users, self.broken = Users(throttle=throttle), True
                log.error("dashboard: %s; nobody can log in until the users file reads again", exc)
        return self._users


def _signature(path: Path | None) -> Signature:
    if path is None:
        return None
    try:
        status = path.stat()
    except OSError:  # gone or unreadable: Users.load says which
        return None
    return status.st_ino, status.st_mtime_ns, status.st_size
