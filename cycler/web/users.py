"""Who may log in to the dashboard, and as what: the users file, its password hashes, a login throttle.

The file is small TOML the lab edits with `cyclerd web user add`; it holds scrypt hashes only, so a
copy of it does not give anyone a password. Nothing here knows about HTTP: the app calls these.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import math
import os
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# scrypt's cost: ~50 ms of one core and 16 MiB per check, which is what slows a guesser down.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
# A stored hash may carry other parameters (a lab that raised them); these bounds keep one check
# from asking for more memory than a lab PC can spare.
_MAX_SCRYPT_MEMORY = 256 * 1024 * 1024

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

# Checked when the name is unknown, so that an unknown name costs the same scrypt as a known one.
_DUMMY_HASH = "scrypt$16384$8$1$hcfaZLQWwfvT7+/7IXbRKg==$o8P5NrXRvan6Uw1H0/iOpeEQ8s9FHtTi4ykzopFdWDg="

_HEADER = (
    "# cyclerd dashboard users; add one with `cyclerd web user add NAME --role operator`\n"
    "# role: viewer may look; operator may also pause, resume, stop and submit.\n"
    "# password: a scrypt hash written by `cyclerd web user add`, never the password itself.\n"
)


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"

    @property
    def may_control(self) -> bool:
        """Pause, resume, stop and submit are the operator's; a viewer only looks."""
        return self is Role.OPERATOR


_ROLES = ", ".join(role.value for role in Role)


class UsersFileError(ValueError):
    """The users file cannot be used as written; the message names the file, the user and the fix."""


class UnknownUserError(UsersFileError):
    """A user to remove is not in the file."""


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    # Changes with the user's entry (role or password): a session opened before the change ends.
    stamp: str = field(default="", compare=False)


def _password_bytes(password: str) -> bytes:
    # A JSON body can carry a lone surrogate; it must fail to match, not raise.
    return password.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class _ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @property
    def maxmem(self) -> int:
        return 128 * self.r * (self.n + self.p + 2) + 1024 * 1024


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def _parse_hash(stored: str) -> _ScryptHash | None:
    """The parts of `scrypt$N$r$p$salt$key`, or None when the text is anything else."""
    parts = stored.split("$")
    if (
        len(parts) != 6
        or parts[0] != "scrypt"
        or not all(part.isascii() and part.isdigit() for part in parts[1:4])
    ):
        return None
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    if n < 2 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or 128 * r * (n + p) > _MAX_SCRYPT_MEMORY:
        return None
    salt, key = _b64(parts[4]), _b64(parts[5])
    if not salt or key is None or len(key) < 16:
        return None
    return _ScryptHash(n, r, p, salt, key)


def hash_password(password: str) -> str:
    """A new `scrypt$N$r$p$salt$key` for the users file (a fresh random salt each time)."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(
        _password_bytes(password), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=KEY_BYTES
    )
    encode = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt).decode()}${encode(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` is the one `stored` was made from; False for a stored value of another format."""
    parsed = _parse_hash(stored)
    if parsed is None:
        return False
    try:
        key = hashlib.scrypt(
            _password_bytes(password),
            salt=parsed.salt,
            n=parsed.n,
            r=parsed.r,
            p=parsed.p,
            maxmem=parsed.maxmem,
            dklen=len(parsed.key),
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(key, parsed.key)


class LoginThrottle:
    """Slows a password guesser down per user name: 5 failures within 300 s lock the name for 60 s.

    The window slides: once locked, the failures that caused it still count until they are 300 s
    old, so each further failure in that time locks the name again. Unknown names are throttled
    like known ones, so a lockout does not tell which names exist. Thread-safe, because the app
    runs the slow scrypt check off its event loop.
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window_s: float = 300.0,
        lockout_s: float = 60.0,
        max_names: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self._max_names = max_names
        self._clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def locked_out(self, name: str) -> str | None:
        """Why tries for `name` are refused now (a sentence for the login page), or None."""
        with self._lock:
            now = self._clock()
            until = self._locked_until.get(name)
            if until is None or until <= now:
                self._locked_until.pop(name, None)
                return None
            wait = math.ceil(until - now)
            return f"too many failed logins for {name!r}: wait {wait} s, then try again"

    def failed(self, name: str) -> None:
        with self._lock:
            now = self._clock()
            recent = [t for t in self._failures.pop(name, []) if now - t < self.window_s]
            recent.append(now)
            self._failures[name] = recent  # re-inserted: the dict stays ordered by last failure
            if len(recent) >= self.max_failures:
                self._locked_until[name] = now + self.lockout_s
            self._forget_oldest(now)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)
            self._locked_until.pop(name, None)

    def _forget_oldest(self, now: float) -> None:
        """Keep the table bounded when someone tries thousands of names; a lockout in force stays.

        Locking a name costs a guesser five scrypt checks, so the names locked at once stay few.
        """
        if len(self._failures) <= self._max_names:
            return
        for name in list(self._failures):  # least recently failed first
            if len(self._failures) <= self._max_names:
                return
            if self._locked_until.get(name, -math.inf) <= now:
                del self._failures[name]
                self._locked_until.pop(name, None)


class Users(Mapping[str, User]):
    """The users from the users file: a read-only mapping name -> User, plus `authenticate`."""

    def __init__(
        self, entries: Mapping[str, tuple[Role, str]] | None = None, *, throttle: LoginThrottle | None = None
    ) -> None:
        self._entries = dict(entries or {})
        self.throttle = throttle if throttle is not None else LoginThrottle()

    @classmethod
    def load(cls, path: Path | str, *, throttle: LoginThrottle | None = None) -> Users:
        """The users in `path`; no file: nobody (the app says nobody can log in). UsersFileError."""
        document = _read(Path(path))
        problems: list[str] = []
        entries: dict[str, tuple[Role, str]] = {}
        for name, entry in _user_tables(path, document, problems).items():
            checked = _check_entry(path, name, entry, problems)
            if checked is not None:
                entries[name] = checked
        if problems:
            raise UsersFileError("\n".join(problems))
        return cls(entries, throttle=throttle)

    def __getitem__(self, name: str) -> User:
        role, stored = self._entries[name]
        return User(name, role, _stamp(role, stored))

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when `password` is theirs and the name is not locked out; else None.

        Costs one scrypt (~50 ms of CPU) whether or not the name exists, so the app should call it
        off its event loop (asyncio.to_thread). When None, `locked_out(name)` says if that is why.
        """
        if self.throttle.locked_out(name) is not None:
            return None
        # Counted as a failure before the check, so guesses sent at once cannot all slip past the throttle.
        self.throttle.failed(name)
        entry = self._entries.get(name)
        stored = entry[1] if entry is not None else _DUMMY_HASH
        if verify_password(password, stored) and entry is not None:
            self.throttle.succeeded(name)
            return self[name]
        return None

    def locked_out(self, name: str) -> str | None:
        return self.throttle.locked_out(name)


def _stamp(role: Role, stored: str) -> str:
    return hashlib.sha256(f"{role}\0{stored}".encode()).hexdigest()[:16]


def _read(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsersFileError(f"{path}: {exc}; fix the TOML there") from None
    except UnicodeDecodeError:
        raise UsersFileError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot be read ({exc.strerror})") from None


def _user_tables(path: Path | str, document: Mapping[str, object], problems: list[str]) -> dict[str, object]:
    for key in document:
        if key != "users":
            problems.append(f"{path}: unexpected {key!r}: the file holds only [users.NAME] tables")
    users = document.get("users", {})
    if not isinstance(users, dict):
        problems.append(f"{path}: 'users' must be tables, one per user: [users.NAME]")
        return {}
    return users


def _check_entry(path: Path | str, name: str, entry: object, problems: list[str]) -> tuple[Role, str] | None:
    where = f"{path}: user {name!r}"
    fix = f"set it with `cyclerd web user add {name} --role operator` (or --role viewer)"
    if not NAME_PATTERN.fullmatch(name):
        problems.append(f"{where}: a name may hold only letters, digits, '_', '.' and '-'; rename it")
        return None
    if not isinstance(entry, dict):
        problems.append(f"{where}: must be a table with role and password ([users.{name}]); {fix}")
        return None
    dotted = [f'[users."{name}.{key}"]' for key, value in entry.items() if isinstance(value, dict)]
    if dotted:  # [users.alice.smith] reads as a table `smith` inside user `alice`
        problems.append(f"{where}: holds a table; a name with a dot needs quotes: {', '.join(dotted)}")
        return None
    before = len(problems)
    for key in entry:
        if key not in ("role", "password"):
            problems.append(f"{where}: unexpected {key!r}; a user has only role and password")
    role = entry.get("role")
    if role is None:
        problems.append(f'{where}: no role; add role = "viewer" or role = "operator"')
    elif role not in tuple(Role):
        problems.append(f"{where}: role {role!r} is not one of {_ROLES}")
    password = entry.get("password")
    if password is None:
        problems.append(f"{where}: no password; {fix}")
    elif not isinstance(password, str) or _parse_hash(password) is None:
        problems.append(
            f"{where}: the password is not a scrypt hash (never write the password itself); {fix}"
        )
    if len(problems) > before or not isinstance(role, str) or not isinstance(password, str):
        return None
    return Role(role), password


def _check_name(name: str) -> None:
    if not NAME_PATTERN.fullmatch(name):
        allowed = "letters, digits, '_', '.' and '-'"
        raise UsersFileError(f"user name {name!r} is not allowed: use only {allowed} (e.g. alice.smith)")


def add_user(path: Path | str, name: str, role: Role | str, password: str) -> None:
    """Add `name` to the users file, or give an existing user a new role and password.

    Creates the file (mode 0o600: it holds hashes) when missing. Other users' entries are kept as
    they are, even ones `Users.load` would refuse, so that this is how a broken entry is fixed.
    """
    _check_name(name)
    if role not in tuple(Role):
        raise UsersFileError(f"role {role!r} is not one of {_ROLES}")
    if not password:
        raise UsersFileError(f"user {name!r}: an empty password is not allowed; give one")
    path = Path(path)
    users = _raw_users(path)
    users[name] = {"role": Role(role).value, "password": hash_password(password)}
    _write(path, users)


def remove_user(path: Path | str, name: str) -> None:
    """Take `name` out of the users file; UnknownUserError when it is not there."""
    path = Path(path)
    users = _raw_users(path)
    if name not in users:
        raise UnknownUserError(f"{path}: no user {name!r} to remove")
    del users[name]
    _write(path, users)


def _raw_users(path: Path) -> dict[str, dict[str, object]]:
    """The file's users as written, valid or not; only what cannot be written back is refused."""
    document = _read(path)
    problems: list[str] = []
    users = _user_tables(path, document, problems)
    if problems:
        raise UsersFileError("\n".join([*problems, f"{path}: fix these by hand first"]))
    raw: dict[str, dict[str, object]] = {}
    for name, entry in users.items():
        if not isinstance(entry, dict) or not all(isinstance(v, str | int | float) for v in entry.values()):
            problem = "only role and password belong there; fix it by hand"
            raise UsersFileError(f"{path}: user {name!r}: {problem}")
        raw[name] = entry
    return raw


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else f"\\U{ord(c):08x}" for c in escaped)
    return f'"{escaped}"'


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # Python's repr of an int or a float (inf and nan too) is valid TOML
    assert isinstance(value, str)
    return _toml_string(value)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _write(path: Path, users: Mapping[str, Mapping[str, object]]) -> None:
    """Write the whole file anew, atomically (a crash leaves the old file or the new one)."""
    lines = [_HEADER]
    for name, entry in users.items():
        lines.append(f"\n[users.{_toml_key(name)}]\n")
        lines.extend(f"{_toml_key(key)} = {_toml_value(value)}\n" for key, value in entry.items())
    text = "".join(lines)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
