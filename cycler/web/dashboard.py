"""What the dashboard's handlers share: the lab it shows, its store, its users, and (in the daemon)
the live feed and the controls. Without the last two the dashboard only reads (`cyclerd web --db`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from cyclerd.bus.commands import Command, Refusals
from cyclerd.web.live import LiveHub
from cyclerd.web.reads import ChannelInfo, Reader
from cyclerd.web.roster import Roster
from cyclerd.web.sessions import Sessions
from cyclerd.web.users import Users


class Control(Protocol):
    """What the daemon lets the dashboard do: its channels' commands, as MQTT's are done."""

    async def execute(self, channel: str, command: Command, by: str | None = None) -> dict[str, Any]:
        """The reply's fields; raises CommandError for a command that cannot be carried out."""
        ...

    def refusals(self, channel: str) -> Refusals: ...


@dataclass
class Dashboard:
    """Everything the server needs: the lab, its store, who may log in, and (in the daemon) the
    live feed and the controls; without them it is read-only."""

    lab: str
    channels: Callable[[Reader], Sequence[ChannelInfo]]
    reader: Reader
    roster: Roster
    sessions: Sessions = field(default_factory=Sessions)
    anonymous: bool = False
    secure: bool = False
    max_upload_bytes: int = 1024 * 1024
    hub: LiveHub | None = None
    control: Control | None = None

    @property
    def live(self) -> bool:
        return self.hub is not None

    @property
    def users(self) -> Users:
        """Who may log in now: the users file as it is on disk."""
        return self.roster.current()


DASHBOARD = web.AppKey("dashboard", Dashboard)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def of(request: web.Request) -> Dashboard:
    return request.app[DASHBOARD]
