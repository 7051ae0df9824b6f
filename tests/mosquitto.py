"""A real Mosquitto broker for the bus tests: its own config, password and ACL files in a
temporary folder, listening on a free loopback port; it can be stopped and started again on
the same port to play a broker that goes away and comes back.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

USERS = {
    "daemon": "daemon-secret",
    "viewer": "viewer-secret",
    "operator": "operator-secret",
    "outsider": "outsider-secret",
}
# The daemon owns cyclerd/#; a viewer reads everything and commands nothing; an operator
# commands and reads state and its own replies but no data; an outsider may log in, nothing more.
ACL = """\
user daemon
topic readwrite cyclerd/#

user viewer
topic read cyclerd/#

user operator
topic write cyclerd/+/+/cmd
topic read cyclerd/+/+/state
topic read cyclerd/+/reply/operator/#

user outsider
topic read nothing/#
"""


def _binary(name: str, *fallbacks: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    return next((path for path in fallbacks if os.access(path, os.X_OK)), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """One broker process; `start()` waits until the port accepts connections."""

    host = "127.0.0.1"

    def __init__(self, folder: Path) -> None:
        binary = _binary("mosquitto", "/usr/sbin/mosquitto")
        passwd = _binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
        if binary is None or passwd is None:
            pytest.skip("the bus tests need a real broker: no `mosquitto`/`mosquitto_passwd` installed")
        self.binary, self.passwd = binary, passwd
        self.folder = folder
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.password_file = folder / "passwords"
        self.acl_file = folder / "acl"
        self.log_file = folder / "mosquitto.log"
        self.acl_file.write_text(ACL)
        self.config.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous false\n"
            f"password_file {self.password_file}\n"
            f"acl_file {self.acl_file}\n"
            # Sessions and their queued messages survive a restart: a viewer with a persistent
            # session gets what the broker had acknowledged but not yet handed over when it stopped.
            "persistence true\n"
            f"persistence_location {folder}/\n"
            # As root, mosquitto would drop to user `mosquitto`, who cannot read tmp_path.
            f"user {getpass.getuser()}\n"
            "log_dest stderr\n"
            "log_type all\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    def _write_passwords(self, users: Iterable[str]) -> None:
        self.password_file.unlink(missing_ok=True)
        self.password_file.touch(mode=0o600)
        for user in users:
            subprocess.run([self.passwd, "-b", str(self.password_file), user, USERS[user]], check=True)

    def start(self, users: Iterable[str] = tuple(USERS)) -> None:
        """Start the broker, letting in only `users` (all by default; see `allow`)."""
        self._write_passwords(users)
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                output = self.log_file.read_text()
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}:\n{output}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within 10 s")

    def allow(self, users: Iterable[str] = tuple(USERS)) -> None:
        """Rewrite the password file and make the running broker reload it (SIGHUP)."""
        assert self._process is not None
        self._write_passwords(users)
        self._process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None
