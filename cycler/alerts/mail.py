"""Alerts by e-mail: one message per alert through the lab's SMTP server (STARTTLS or TLS, login).

The standard library's smtplib, called from the notifier's thread: an alert is a few hundred
bytes, seconds apart at most, and a blocking client with a timeout is the simplest thing that
cannot hold up the event loop from there. Errors come back as DeliveryError with a message
that names the server and what it said, never the password.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from cyclerd.alerts.config import Email
from cyclerd.alerts.message import Alert
from cyclerd.alerts.receiver import DeliveryError


class EmailReceiver:
    """Sends each alert to the configured recipients; `send` blocks (call it from a thread)."""

    def __init__(self, config: Email) -> None:
        self.config = config
        self._password = config.password()  # read once; AlertsSetupError if it cannot be
        self.name = f"e-mail via {config.host}:{config.port_used}"

    def __repr__(self) -> str:
        return f"EmailReceiver({self.name})"

    def message(self, alert: Alert) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = alert.subject
        message["From"] = self.config.sender
        message["To"] = ", ".join(self.config.to)
        message["Date"] = formatdate(localtime=False, usegmt=True)
        message["Message-ID"] = make_msgid(domain=self.config.sender.rpartition("@")[2] or None)
        message.set_content(alert.body + "\n")
        return message

    def send(self, alert: Alert) -> None:
        config = self.config
        try:
            with self._connect() as smtp:
                if config.username is not None:
                    smtp.login(config.username, self._password or "")
                smtp.send_message(self.message(alert))
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"the server refused the login as {config.username!r}: {_said(exc)}"
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(sorted(exc.recipients))
            raise DeliveryError(f"the server refused the recipients {refused}", retry=False) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"the server does not offer it: {exc}", retry=False) from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"the server answered {_said(exc)}", retry=exc.smtp_code < 500) from None
        except ssl.SSLCertVerificationError as exc:
            fix = "set [alerts.email] ca_file to its CA, or host to the name in its certificate"
            raise DeliveryError(f"its certificate does not verify ({exc.verify_message}): {fix}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        port, timeout = config.port_used, config.timeout_s
        if config.security == "tls":
            return smtplib.SMTP_SSL(config.host, port, timeout=timeout, context=self._tls())
        smtp = smtplib.SMTP(config.host, port, timeout=timeout)
        try:
            if config.security == "starttls":
                smtp.starttls(context=self._tls())
        except BaseException:
            smtp.close()
            raise
        return smtp

    def _tls(self) -> ssl.SSLContext:
        ca = None if self.config.ca_file is None else str(self.config.ca_file)
        return ssl.create_default_context(cafile=ca)


def _said(exc: smtplib.SMTPResponseException) -> str:
    text = (
        exc.smtp_error.decode("utf-8", "replace")
        if isinstance(exc.smtp_error, bytes)
        else str(exc.smtp_error)
    )
    return f"{exc.smtp_code} {text}".strip()
