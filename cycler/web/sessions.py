"""Who is logged in to the dashboard: session tokens, their CSRF tokens, and the origin check.

A session lives only in the daemon's memory: restarting the daemon logs everyone out, which costs
a login and spares a table of secrets on disk. Nothing here knows about HTTP: the app calls these.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict
from urllib.parse import urlsplit

from cyclerd.web.users import Role, User

COOKIE_NAME = "cyclerd_session"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Session:
    """One login. `expires` is in the clock's seconds (seconds since the epoch with the default clock)."""

    token: str
    csrf: str
    user: str
    role: Role
    expires: float
    stamp: str = ""  # the user's entry when they logged in (User.stamp)

    @property
    def may_control(self) -> bool:
        return self.role.may_control


class CookieAttributes(TypedDict):
    """Keyword arguments for aiohttp's `set_cookie`, besides the name and the value."""

    path: str
    httponly: bool
    samesite: str
    secure: bool
    max_age: int


class Sessions:
    """The open sessions, in memory only (a daemon restart logs everyone out).

    A session lasts `lifetime_s` from its login, however active it is. The table is bounded: expired
    sessions go at each login, and past `max_sessions` the oldest logins go first.
    """

    def __init__(
        self,
        lifetime_s: float = 12 * 3600,
        clock: Callable[[], float] = time.time,
        *,
        max_sessions: int = 10_000,
    ) -> None:
        if lifetime_s <= 0 or max_sessions < 1:
            raise ValueError("a session needs a positive lifetime and room for at least one session")
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}  # in login order, oldest first

    def open(self, user: User) -> Session:
        now = self._clock()
        for token in [token for token, session in self._sessions.items() if session.expires <= now]:
            del self._sessions[token]
        while len(self._sessions) >= self._max_sessions:
            del self._sessions[next(iter(self._sessions))]
        session = Session(
            token=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            user=user.name,
            role=user.role,
            expires=now + self.lifetime_s,
            stamp=user.stamp,
        )
        self._sessions[session.token] = session
        return session

    def get(self, token: str | None) -> Session | None:
        """The session of a cookie's token; None when there is none, it is unknown, or it has expired."""
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._sessions[token]
            return None
        return session

    def close(self, token: str | None) -> None:
        """Log out; an unknown or already closed token is not an error (logging out twice is fine)."""
        if token:
            self._sessions.pop(token, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def cookie_attributes(self, secure: bool) -> CookieAttributes:
        """How the session cookie is set: out of scripts' reach, never sent by another site's page."""
        return CookieAttributes(
            path="/", httponly=True, samesite="Strict", secure=secure, max_age=int(self.lifetime_s)
        )


def csrf_ok(session: Session, presented: str | None) -> bool:
    """Whether a request's X-CSRF-Token is this session's, compared in constant time."""
    if not presented:
        return False
    # compare_digest refuses non-ASCII str; bytes compare whatever a client sends.
    return hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), session.csrf.encode("utf-8", "surrogatepass")
    )


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the default port filled in; None for anything that is not one."""
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS or not netloc or "@" in netloc:
        return None
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or parts.path or parts.query or parts.fragment:
        return None
    return scheme, host, _DEFAULT_PORTS[scheme] if port is None else port


def _url_origin(url: str, *, whole_url: bool) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not whole_url and (parts.path or parts.query or parts.fragment):
        return None  # an Origin header is scheme://host[:port], nothing more
    return _origin(parts.scheme, parts.netloc)


def _is_header_text(value: str) -> bool:
    return value.isascii() and value.isprintable() and value == value.strip()


def same_origin(origin: str | None, referer: str | None, scheme: str, host: str) -> bool:
    """Whether a state-changing request comes from a page of this dashboard.

    The Origin header decides when present (`null`, sent from sandboxed or opaque contexts, fails);
    without it, the Referer's scheme, host and port; without either, the request is refused. Host
    names compare without case, and a default port equals no port (`http://lab` is `http://lab:80`).
    """
    own = _origin(scheme, host) if _is_header_text(host) else None
    if own is None:
        return False
    if origin is not None:
        claimed = _url_origin(origin, whole_url=False) if _is_header_text(origin) else None
    elif referer is not None:
        claimed = _url_origin(referer, whole_url=True) if _is_header_text(referer) else None
    else:
        return False
    return claimed == own
