"""One CTI connection to an Arbin (MITS Pro), blocking: connect and log in, ask and read replies.

The login comes from ARBIN_CTI_USERNAME and ARBIN_CTI_PASSWORD in the environment (the names
pycti-arbin's .env uses), so no password sits in lab.toml or on a command line.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from typing import TypeVar

from cyclerd.drivers import arbin_messages as cti
from cyclerd.drivers.base import InstrumentDisconnected, InstrumentError, InstrumentGarbled, InstrumentTimeout

M = TypeVar("M", bound=cti.Message)
CLOSED = "link failed: the cycler closed the connection"


def credentials() -> tuple[str, str]:
    return os.environ.get("ARBIN_CTI_USERNAME", ""), os.environ.get("ARBIN_CTI_PASSWORD", "")


class CtiLink:
    """One CTI connection, blocking: connect and log in, ask and read the reply. A transport
    fault closes it, so a late or half-read reply is never taken for the next one."""

    def __init__(self, name: str, host: str, port: int, timeout_s: float, user: tuple[str, str]) -> None:
        self.name, self.host, self.port, self.timeout_s, self.user = name, host, port, timeout_s, user
        self.identity = ""
        self._sock: socket.socket | None = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> cti.LoginFeedback:
        self.close()
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except TimeoutError:
            raise InstrumentTimeout(self.name, f"no connection within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise InstrumentDisconnected(self.name, f"cannot connect: {exc.strerror or exc}") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        login = self.ask(cti.Login(*self.user), cti.LoginFeedback)
        if login.result not in (cti.LOGIN_OK, cti.LOGIN_ALREADY):
            self.close()
            words = cti.LOGIN_WORDS.get(login.result, f"result {login.result}")
            raise InstrumentError(
                self.name,
                login.result,
                f"login {words}: set ARBIN_CTI_USERNAME and ARBIN_CTI_PASSWORD to a CTI user of MITS Pro",
            )
        self.identity = (
            f"Arbin {login.nickname or 'cycler'}, serial {login.serial or '?'}, CTI {login.version}"
        )
        return login

    def ask(self, request: cti.Message, kind: type[M]) -> M:
        try:
            if self._sock is None:
                raise InstrumentDisconnected(self.name, "not connected: the link was lost")
            self._sock.sendall(cti.encode(request))
            return cti.decode(kind, self._receive(self._sock))
        except cti.CtiFormatError as exc:
            self.close()
            raise InstrumentGarbled(self.name, f"unreadable reply: {exc}") from None
        except TimeoutError:
            self.close()
            raise InstrumentTimeout(self.name, f"no reply within {self.timeout_s:g} s") from None
        except OSError as exc:
            self.close()
            raise InstrumentDisconnected(self.name, f"link failed: {exc.strerror or exc}") from None
        except InstrumentDisconnected:
            self.close()
            raise

    def _receive(self, sock: socket.socket) -> bytes:
        head = self._exactly(sock, cti.HEADER.size)
        at = head.find(cti.MAGIC_BYTES)
        if at != 0:  # what a server left behind its declared length, else a broken header
            if not 0 < at <= cti.STRAY_TAIL:
                raise cti.CtiFormatError(f"no CTI header: {head[:8].hex(' ')}")
            head = head[at:] + self._exactly(sock, at)
        return head + self._exactly(sock, cti.frame_size(head) - cti.HEADER.size)

    def _exactly(self, sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise InstrumentDisconnected(self.name, CLOSED)
            data += chunk
        return data

    def closed_by_peer(self) -> bool:
        """Whether the cycler closed the connection: readable with nothing to read."""
        if self._sock is None:
            return False
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable) and self._sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setblocking(False)
                while sock.recv(4096):  # a stray tail left unread would make close() reset the link
                    pass
            sock.close()
