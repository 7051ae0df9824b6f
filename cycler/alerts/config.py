"""The `[alerts]` table of lab.toml: who is told when a run ends badly or the daemon goes away.

Secrets (the SMTP password, a webhook URL, whose path is its token) are best kept out of
lab.toml: each can come from a file or an environment variable named here instead. They are
read once, when the alerts start, and never appear in a repr or a log line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

# What an alert can be about; `on` picks among them. "offline" covers the daemon going away,
# coming back, and restarting after a crash.
Topic = Literal["safety", "fault", "short", "stopped", "failed", "offline"]
TOPICS: tuple[Topic, ...] = ("safety", "fault", "short", "stopped", "failed", "offline")


class AlertsSetupError(Exception):
    """A receiver cannot be used as configured (a secret's file or variable is missing)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _secret(name: str, inline: str | None, file: Path | None, env: str | None) -> str:
    """The secret from whichever of its three sources is set; AlertsSetupError says what is missing."""
    if inline is not None:
        return inline
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AlertsSetupError(f"[alerts] {name}_file {file} cannot be read ({exc})") from None
        if not value:
            raise AlertsSetupError(f"[alerts] {name}_file {file} is empty")
        return value
    if env is not None:
        value = os.environ.get(env, "")
        if not value:
            where = "the unit's EnvironmentFile (docs/deployment.md)"
            raise AlertsSetupError(f"[alerts] {name}_env: ${env} is not set; set it in {where}")
        return value
    raise AlertsSetupError(f"[alerts] no {name} given")


class Email(_Strict):
    """An SMTP server that relays the alert to `to`: STARTTLS on 587 by default."""

    host: str = Field(examples=["smtp.example.org"])
    port: int | None = Field(None, gt=0, lt=65536, description="Default: 587, 465 for tls, 25 for none.")
    security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="starttls: upgrade a plain connection; tls: TLS from the start (465)."
    )
    username: str | None = None
    password_file: Path | None = Field(None, description="A file holding only the password.")
    password_env: str | None = Field(None, description="An environment variable holding the password.")
    sender: str = Field(examples=["cyclerd@example.org"], description="The From address.")
    to: list[str] = Field(min_length=1, examples=[["lab-alerts@example.org"]])
    ca_file: Path | None = Field(None, description="The CA of a server whose certificate is the lab's own.")
    timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _login_is_encrypted(self) -> Email:
        has_password = self.password_file is not None or self.password_env is not None
        if has_password and self.username is None:
            raise ValueError('a password is given but no username: add username = "..."')
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        if self.username is not None and self.security == "none":
            raise ValueError("security = 'none' would send the password in clear: use 'starttls' or 'tls'")
        return self

    @property
    def port_used(self) -> int:
        if self.port is not None:
            return self.port
        return {"starttls": 587, "tls": 465, "none": 25}[self.security]

    def password(self) -> str | None:
        if self.username is None:
            return None
        if self.password_file is None and self.password_env is None:
            raise AlertsSetupError(
                "[alerts.email] username is set but no password: add password_file or password_env"
            )
        return _secret("email.password", None, self.password_file, self.password_env)


class Webhook(_Strict):
    """A URL that takes a JSON POST: Slack, Teams, or a receiver of the lab's own.

    format "text" posts {"text": ...} (Slack incoming webhooks, Mattermost, Teams' retiring
    Office 365 connectors); "teams" an Adaptive Card message (Teams Workflows, "Post to a
    channel when a webhook request is received"); "json" the text and every fact as fields.
    """

    url: SecretStr | None = Field(None, description="The URL itself; its path is a secret, prefer url_env.")
    url_file: Path | None = None
    url_env: str | None = Field(None, examples=["CYCLERD_SLACK_WEBHOOK"])
    format: Literal["text", "teams", "json"] = "text"
    ca_file: Path | None = None
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _one_url(self) -> Webhook:
        given = [s for s in (self.url, self.url_file, self.url_env) if s is not None]
        if len(given) != 1:
            raise ValueError("a webhook needs exactly one of url, url_file or url_env")
        if self.url is not None:
            check_url(self.url.get_secret_value())
        return self

    def url_value(self) -> str:
        inline = None if self.url is None else self.url.get_secret_value()
        url = _secret("webhooks.url", inline, self.url_file, self.url_env)
        try:
            check_url(url)
        except ValueError as exc:
            raise AlertsSetupError(str(exc)) from None
        return url


def check_url(url: str) -> None:
    """An http(s) URL with a host; the message never repeats the URL (it holds a token)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("a webhook URL starts with https:// (or http://) and names a host")


class AlertsConfig(_Strict):
    """Receivers, what they are told about, and how hard a failing one is tried again."""

    email: Email | None = None
    webhooks: list[Webhook] = Field(default_factory=list)
    on: list[Topic] = Field(default_factory=lambda: list(TOPICS), description="What to alert about.")
    attempts: int = Field(6, ge=1, le=100, description="Deliveries tried per alert and receiver.")
    retry_s: float = Field(10.0, gt=0, description="First wait before trying again; doubles each try.")
    retry_max_s: float = Field(300.0, gt=0, description="The longest wait between tries.")
    offline_after_s: float = Field(
        60.0, ge=0, description="`cyclerd watch`: how long the daemon may be away (a restart) unreported."
    )

    def beside(self, folder: Path) -> AlertsConfig:
        """Relative file paths taken relative to `folder` (lab.toml's), as the rest of lab.toml's."""

        def fix(path: Path | None) -> Path | None:
            return path if path is None or path.is_absolute() else folder / path

        email = self.email
        if email is not None:
            email = email.model_copy(
                update={"password_file": fix(email.password_file), "ca_file": fix(email.ca_file)}
            )
        hooks = [
            h.model_copy(update={"url_file": fix(h.url_file), "ca_file": fix(h.ca_file)})
            for h in self.webhooks
        ]
        return self.model_copy(update={"email": email, "webhooks": hooks})
