"""Alerts by webhook: one JSON POST per alert, shaped for Slack, Microsoft Teams or a lab's own code.

The standard library's urllib, called from the notifier's thread (as smtplib is): one small
POST per alert needs no HTTP client library. A webhook URL's path is its password, so the
receiver is named by its host alone and no message repeats the URL.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from email.message import Message
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

from cyclerd.alerts.config import Webhook
from cyclerd.alerts.message import Alert
from cyclerd.alerts.receiver import DeliveryError

RETRIED_STATUSES = frozenset({408, 425, 429})  # and every 5xx; any other 4xx will not improve


def payload(alert: Alert, format: str) -> dict[str, Any]:
    """The JSON body for `format` (docs/alerts.md shows each)."""
    if format == "teams":
        return teams_card(alert)
    if format == "json":
        return {"text": alert.text, "subject": alert.subject, "alert": dict(alert.facts)}
    return {"text": alert.text}


def teams_card(alert: Alert) -> dict[str, Any]:
    """An Adaptive Card message, what a Teams Workflows webhook posts to a channel (and what the
    retiring Office 365 connectors accept too). One text block per line: a card does not keep
    single line breaks inside a block."""
    blocks: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": alert.subject, "weight": "Bolder", "size": "Medium", "wrap": True}
    ]
    blocks += [{"type": "TextBlock", "text": line, "wrap": True} for line in alert.body.splitlines() if line]
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": blocks,
    }
    attachment = {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "contentUrl": None,
        "content": card,
    }
    return {"type": "message", "attachments": [attachment]}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirected POST would arrive as a GET without its body: report it instead of following."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookReceiver:
    """POSTs each alert to one URL; `send` blocks (call it from a thread)."""

    def __init__(self, config: Webhook) -> None:
        self.config = config
        self._url = config.url_value()  # read once; AlertsSetupError if it cannot be
        parts = urlsplit(self._url)
        port = f":{parts.port}" if parts.port is not None else ""
        self.name = f"webhook {parts.hostname}{port}"
        tls = ssl.create_default_context(cafile=None if config.ca_file is None else str(config.ca_file))
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=tls), _NoRedirects)
        self._agent = f"cyclerd/{version('cyclerd')}"

    def __repr__(self) -> str:
        return f"WebhookReceiver({self.name})"

    def send(self, alert: Alert) -> None:
        body = json.dumps(payload(alert, self.config.format)).encode("utf-8")
        request = urllib.request.Request(
            self._url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": self._agent},
        )
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            said = f"HTTP {status} {exc.reason}".strip()
            exc.close()
            if 300 <= status < 400:
                raise DeliveryError(
                    f"{said}: the URL redirects elsewhere; give the final URL", retry=False
                ) from None
            retry = status >= 500 or status in RETRIED_STATUSES
            raise DeliveryError(said, retry=retry, after_s=_retry_after(exc.headers)) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                fix = "set ca_file to its CA if the receiver is the lab's own"
                raise DeliveryError(
                    f"its certificate does not verify ({reason.verify_message}): {fix}"
                ) from None
            raise DeliveryError(f"cannot connect: {reason}") from None
        except (TimeoutError, OSError) as exc:  # a timeout or reset while reading the answer
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None


def _retry_after(headers: Message | None) -> float | None:
    """Retry-After in seconds (an HTTP date is rare for webhooks and read as no advice)."""
    value = None if headers is None else headers.get("Retry-After")
    try:
        return None if value is None else max(0.0, float(value))
    except ValueError:
        return None
