"""Telling systemd how the daemon is doing (sd_notify): ready, stopping, a status line, and the
watchdog's keep-alive, which proves the event loop still turns.

A few lines over the datagram socket systemd names in $NOTIFY_SOCKET rather than a dependency.
Outside systemd (no $NOTIFY_SOCKET) every call does nothing; a message that cannot be sent is
logged once and never stops the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """The service's line to systemd; `address` is $NOTIFY_SOCKET's value (None: not under systemd)."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.watchdog_s = watchdog_s
        self._address = None if not address else "\0" + address[1:] if address[0] == "@" else address
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls) -> Notifier:
        """As systemd started us: $NOTIFY_SOCKET, and $WATCHDOG_USEC when the watchdog is meant
        for this process ($WATCHDOG_PID absent or ours)."""
        watchdog_s = None
        pid = os.environ.get("WATCHDOG_PID")
        usec = os.environ.get("WATCHDOG_USEC", "")
        if usec.isdigit() and int(usec) > 0 and (pid is None or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(os.environ.get("NOTIFY_SOCKET"), watchdog_s)

    def send(self, *fields: str) -> None:
        """One notification of `fields` ("READY=1", "STATUS=..."), if systemd listens."""
        if self._address is None:
            return
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self._address.lstrip("\0"), exc)
            self._failed = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    async def keep_alive(self) -> None:
        """WATCHDOG=1 at half the watchdog's interval, from the event loop itself: a loop stuck
        longer than the interval stops the pings, and systemd restarts the service."""
        if self.watchdog_s is None or self._address is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_s / 2)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
