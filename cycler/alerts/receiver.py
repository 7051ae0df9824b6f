"""The contract between the notifier and a way of delivering alerts (e-mail, a webhook)."""

from __future__ import annotations

from typing import Protocol

from cyclerd.alerts.message import Alert


class DeliveryError(Exception):
    """An alert did not reach its receiver. The message is safe to log: it names the server and
    what went wrong, never a password or a webhook's secret path."""

    def __init__(self, message: str, *, retry: bool = True, after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry = retry  # False: trying again cannot help (a wrong address, a 404)
        self.after_s = after_s  # the receiver asked to wait this long (HTTP 429 Retry-After)


class Receiver(Protocol):
    """Delivers one alert or raises DeliveryError; `send` may block, it runs in a thread."""

    @property
    def name(self) -> str:
        """Who this is, for the log: a host, never a secret."""
        ...

    def send(self, alert: Alert) -> None: ...
