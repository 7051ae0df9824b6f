"""The dashboard's users file, password hashes, login throttle, sessions and origin checks.

Each scrypt costs ~50 ms, so the hashes are made once per module where a test only needs one.
"""

from __future__ import annotations

import base64
import os
import stat
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyclerd.web.sessions import Sessions, csrf_ok, same_origin
from cyclerd.web.users import (
    LoginThrottle,
    Role,
    UnknownUserError,
    User,
    Users,
    UsersFileError,
    add_user,
    hash_password,
    remove_user,
    verify_password,
)

PASSWORD = "plate-strip-1mA/cm2"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return tmp_path / "users.toml"


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- hashing ---------------------------------------------------------------------------------------


def test_a_hash_has_the_documented_format(stored: str) -> None:
    kind, n, r, p, salt, key = stored.split("$")
    assert (kind, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt, validate=True)) == 16
    assert len(base64.b64decode(key, validate=True)) == 32
    assert PASSWORD not in stored


def test_the_right_password_verifies_and_a_wrong_one_does_not(stored: str) -> None:
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + " ", stored)


def test_two_hashes_of_one_password_differ_by_their_salt(stored: str) -> None:
    again = hash_password(PASSWORD)
    assert again != stored
    assert again.split("$")[4] != stored.split("$")[4]


def _flip_one_byte(encoded: str) -> str:
    raw = bytearray(base64.b64decode(encoded))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("part", [4, 5], ids=["salt", "key"])
def test_a_tampered_hash_does_not_verify(stored: str, part: int) -> None:
    parts = stored.split("$")
    parts[part] = _flip_one_byte(parts[part])
    assert not verify_password(PASSWORD, "$".join(parts))


@pytest.mark.parametrize(
    "other",
    [
        PASSWORD,  # the password written into the file itself
        "",
        "scrypt$16384$8$1$c2FsdA==",  # too few parts
        "scrypt$16384$8$1$c2FsdA==$not base64!",
        "scrypt$16383$8$1$c2FsdHNhbHRzYWx0$a2V5a2V5a2V5a2V5a2V5a2V5",  # N not a power of two
        "scrypt$1073741824$8$1$c2FsdHNhbHRzYWx0$a2V5a2V5a2V5a2V5a2V5a2V5",  # would need 1 TiB
        "scrypt$-16384$8$1$c2FsdHNhbHRzYWx0$a2V5a2V5a2V5a2V5a2V5a2V5",
        "scrypt$16384$8$1$$a2V5a2V5a2V5a2V5a2V5a2V5",  # no salt
        "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",  # bcrypt
        "pbkdf2_sha256$600000$salt$hash",
    ],
)
def test_a_stored_value_of_another_format_never_verifies(other: str) -> None:
    assert not verify_password(PASSWORD, other)


def test_passwords_beyond_ascii_round_trip_and_lone_surrogates_do_not_raise() -> None:
    battery = "Zelle-𝟑,7V-ü🔋"
    stored = hash_password(battery)
    assert verify_password(battery, stored)
    assert not verify_password("\ud800", stored)  # what a JSON body can carry


# --- the users file --------------------------------------------------------------------------------


def _read_back(path: Path) -> dict[str, dict[str, str]]:
    with path.open("rb") as file:
        users: dict[str, dict[str, str]] = tomllib.load(file)["users"]
    return users


def test_add_and_remove_users_keep_the_others(users_file: Path, stored: str) -> None:
    add_user(users_file, "alice", "operator", PASSWORD)
    users_file.write_text(
        users_file.read_text() + f'\n[users.bob]\nrole = "viewer"\npassword = "{stored}"\n', encoding="utf-8"
    )
    add_user(users_file, "alice.smith", Role.VIEWER, "another one")

    written = _read_back(users_file)
    assert list(written) == ["alice", "bob", "alice.smith"]
    assert written["bob"] == {"role": "viewer", "password": stored}
    assert written["alice"]["role"] == "operator"
    assert written["alice.smith"]["role"] == "viewer"

    remove_user(users_file, "alice")
    written = _read_back(users_file)
    assert list(written) == ["bob", "alice.smith"]
    assert written["bob"] == {"role": "viewer", "password": stored}

    users = Users.load(users_file)
    assert set(users) == {"bob", "alice.smith"}
    assert users["bob"] == User("bob", Role.VIEWER)
    assert users.authenticate("bob", PASSWORD) == User("bob", Role.VIEWER)


def test_adding_an_existing_user_replaces_role_and_password(users_file: Path, stored: str) -> None:
    users_file.write_text(f'[users.bob]\nrole = "viewer"\npassword = "{stored}"\n', encoding="utf-8")
    add_user(users_file, "bob", "operator", "a new one")
    written = _read_back(users_file)
    assert written["bob"]["role"] == "operator"
    assert written["bob"]["password"] != stored


def test_the_file_holds_a_comment_on_how_to_add_users(users_file: Path) -> None:
    add_user(users_file, "alice", "operator", PASSWORD)
    assert users_file.read_text().startswith("# cyclerd dashboard users; add one with `cyclerd web user add")


@pytest.mark.usefixtures("umask_022")
def test_the_file_is_readable_by_its_owner_only(users_file: Path, stored: str) -> None:
    users_file.write_text(f'[users.bob]\nrole = "viewer"\npassword = "{stored}"\n', encoding="utf-8")
    users_file.chmod(0o644)
    remove_user(users_file, "bob")
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600
    assert [p.name for p in users_file.parent.iterdir()] == ["users.toml"]  # no temporary file left


@pytest.mark.usefixtures("umask_022")
def test_a_new_file_is_readable_by_its_owner_only(users_file: Path) -> None:
    add_user(users_file, "alice", "viewer", PASSWORD)
    assert stat.S_IMODE(users_file.stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["", "a b", "bob\n", "zoë", "x/y", 'a"b', "[users]", "a=b"])
def test_names_outside_the_allowed_characters_are_refused(users_file: Path, name: str) -> None:
    with pytest.raises(UsersFileError, match=r"letters, digits, '_', '\.' and '-'"):
        add_user(users_file, name, "viewer", PASSWORD)
    assert not users_file.exists()


def test_an_unknown_role_or_an_empty_password_is_refused(users_file: Path) -> None:
    with pytest.raises(UsersFileError, match="'admin' is not one of viewer, operator"):
        add_user(users_file, "bob", "admin", PASSWORD)
    with pytest.raises(UsersFileError, match="empty password"):
        add_user(users_file, "bob", "viewer", "")
    assert not users_file.exists()


def test_removing_a_user_who_is_not_there_says_so(users_file: Path) -> None:
    with pytest.raises(UnknownUserError, match="no user 'carol'"):
        remove_user(users_file, "carol")
    add_user(users_file, "alice", "viewer", PASSWORD)
    with pytest.raises(UnknownUserError, match="no user 'carol'"):
        remove_user(users_file, "carol")


def test_a_missing_file_means_nobody_may_log_in(users_file: Path) -> None:
    users = Users.load(users_file)
    assert len(users) == 0
    assert users.authenticate("alice", PASSWORD) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[users.bob]\nrole = "admin"\npassword = "{stored}"\n',
            "users.toml: user 'bob': role 'admin' is not one of viewer, operator",
        ),
        (
            '[users.bob]\nrole = "viewer"\npassword = "hunter2"\n',
            "users.toml: user 'bob': the password is not a scrypt hash .* `cyclerd web user add bob",
        ),
        (
            '[users.bob]\nrole = "viewer"\n',
            "users.toml: user 'bob': no password; .*`cyclerd web user add bob",
        ),
        ('[users.bob]\npassword = "{stored}"\n', "user 'bob': no role; add role = \"viewer\""),
        (
            '[users.bob]\nrole = "viewer"\npassword = "{stored}"\npasword = "x"\n',
            "user 'bob': unexpected 'pasword'",
        ),
        (
            '[users.alice.smith]\nrole = "viewer"\npassword = "{stored}"\n',
            "user 'alice': .*needs quotes: \\[users.\"alice.smith\"\\]",
        ),
        ('[users]\nbob = "viewer"\n', r"user 'bob': must be a table .*\[users.bob\]"),
        (
            '[users."bob smith"]\nrole = "viewer"\npassword = "{stored}"\n',
            "user 'bob smith': a name may hold",
        ),
        ('[user.bob]\nrole = "viewer"\n', r"users.toml: unexpected 'user': .*\[users.NAME\]"),
        ('users = "bob"\n', r"'users' must be tables"),
        ('[users.bob]\nrole = "viewer\n', r"users.toml: .*line 2.*fix the TOML"),
    ],
    ids=[
        "role",
        "plaintext",
        "no-password",
        "no-role",
        "typo",
        "dotted-name",
        "not-a-table",
        "bad-name",
        "top-level",
        "users-not-table",
        "syntax",
    ],
)
def test_load_errors_name_the_file_the_user_and_the_fix(
    users_file: Path, stored: str, text: str, expected: str
) -> None:
    users_file.write_text(text.replace("{stored}", stored), encoding="utf-8")
    with pytest.raises(UsersFileError, match=expected):
        Users.load(users_file)


def test_load_reports_every_broken_user_at_once(users_file: Path) -> None:
    users_file.write_text(
        '[users.bob]\nrole = "admin"\npassword = "x"\n[users.carol]\nrole = "root"\npassword = "y"\n',
        encoding="utf-8",
    )
    with pytest.raises(UsersFileError) as raised:
        Users.load(users_file)
    message = str(raised.value)
    assert "user 'bob': role 'admin'" in message
    assert "user 'carol': role 'root'" in message
    assert "user 'bob': the password is not a scrypt hash" in message


def test_adding_a_user_is_how_a_broken_entry_is_fixed(users_file: Path, stored: str) -> None:
    users_file.write_text(
        f'[users.alice]\nrole = "operator"\npassword = "{stored}"\n'
        '[users.bob]\nrole = "viewer"\npassword = "hunter2"\n'
        '[users.carol]\nrole = "admin"\npassword = "x"\n',
        encoding="utf-8",
    )
    with pytest.raises(UsersFileError, match="cyclerd web user add bob"):
        Users.load(users_file)
    add_user(users_file, "bob", "viewer", PASSWORD)
    written = _read_back(users_file)
    assert written["alice"] == {"role": "operator", "password": stored}
    assert written["carol"] == {"role": "admin", "password": "x"}  # kept, still for its owner to fix
    remove_user(users_file, "carol")
    assert set(Users.load(users_file)) == {"alice", "bob"}


# --- logging in ------------------------------------------------------------------------------------


def test_authenticate_knows_the_role_and_refuses_a_wrong_password(stored: str) -> None:
    users = Users({"alice": (Role.OPERATOR, stored)})
    user = users.authenticate("alice", PASSWORD)
    assert user == User("alice", Role.OPERATOR)
    assert user.role.may_control
    assert not Role.VIEWER.may_control
    assert users.authenticate("alice", "wrong") is None


def test_an_unknown_user_is_refused_after_spending_a_scrypt(stored: str) -> None:
    users = Users({"alice": (Role.OPERATOR, stored)})

    def slowest_of_fastest(name: str) -> float:
        spent = []
        for _ in range(2):
            start = time.perf_counter()
            assert users.authenticate(name, "wrong") is None
            spent.append(time.perf_counter() - start)
        return min(spent)

    # Without the dummy check an unknown name would answer in microseconds, not tens of ms.
    assert slowest_of_fastest("mallory") > 0.2 * slowest_of_fastest("alice")


def test_five_failures_lock_a_name_out_for_a_minute(stored: str) -> None:
    clock = FakeClock()
    users = Users({"alice": (Role.OPERATOR, stored)}, throttle=LoginThrottle(clock=clock))
    for _ in range(5):
        assert users.locked_out("alice") is None
        assert users.authenticate("alice", "guess") is None
        clock.now += 10
    clock.now -= 10
    reason = users.locked_out("alice")
    assert reason is not None
    assert "too many failed logins" in reason
    assert "wait 60 s" in reason
    assert users.authenticate("alice", PASSWORD) is None  # even the right password, while locked
    assert users.locked_out("bob") is None

    clock.now += 60
    assert users.locked_out("alice") is None
    assert users.authenticate("alice", PASSWORD) == User("alice", Role.OPERATOR)


def test_the_throttle_window_slides() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(5):
        throttle.failed("alice")
        clock.now += 50  # the 5th failure comes 200 s after the first
    clock.now -= 50
    assert throttle.locked_out("alice") is not None
    clock.now += 59.5
    assert "wait 1 s" in (throttle.locked_out("alice") or "")
    clock.now += 0.5
    assert throttle.locked_out("alice") is None
    throttle.failed("alice")  # still five failures within 300 s: locked again
    assert throttle.locked_out("alice") is not None
    clock.now += 300 + 60
    assert throttle.locked_out("alice") is None
    throttle.failed("alice")  # the old failures are past the window
    assert throttle.locked_out("alice") is None


def test_failures_spread_over_more_than_the_window_do_not_lock() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(20):
        throttle.failed("alice")
        clock.now += 76  # four per 300 s
        assert throttle.locked_out("alice") is None


def test_a_successful_login_forgets_the_failures() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(4):
        throttle.failed("alice")
    throttle.succeeded("alice")
    throttle.failed("alice")
    assert throttle.locked_out("alice") is None


def test_the_throttle_forgets_old_names_first_but_never_a_lockout() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock=clock, max_names=10)
    for _ in range(5):
        throttle.failed("alice")
    for _ in range(4):
        throttle.failed("bob")
    for i in range(100):
        throttle.failed(f"guess{i}")
    assert throttle.locked_out("alice") is not None
    throttle.failed("bob")  # bob's four earlier failures were forgotten to make room
    assert throttle.locked_out("bob") is None


# --- sessions --------------------------------------------------------------------------------------

ALICE = User("alice", Role.OPERATOR)
BOB = User("bob", Role.VIEWER)


def test_a_session_knows_its_user_role_and_tokens() -> None:
    clock = FakeClock()
    sessions = Sessions(lifetime_s=3600, clock=clock)
    session = sessions.open(ALICE)
    assert (session.user, session.role, session.may_control) == ("alice", Role.OPERATOR, True)
    assert session.expires == clock.now + 3600
    assert len(session.token) >= 43
    assert len(session.csrf) >= 43
    assert session.csrf != session.token
    assert sessions.get(session.token) == session
    other = sessions.open(BOB)
    assert other.token != session.token
    assert not other.may_control


def test_sessions_expire_and_are_dropped() -> None:
    clock = FakeClock()
    sessions = Sessions(lifetime_s=3600, clock=clock)
    session = sessions.open(ALICE)
    clock.now += 3599
    assert sessions.get(session.token) == session
    clock.now += 1
    assert sessions.get(session.token) is None
    assert len(sessions) == 0


def test_logging_in_drops_expired_sessions() -> None:
    clock = FakeClock()
    sessions = Sessions(lifetime_s=60, clock=clock)
    for _ in range(5):
        sessions.open(BOB)
    clock.now += 60
    sessions.open(ALICE)
    assert len(sessions) == 1


def test_unknown_closed_and_missing_tokens_have_no_session() -> None:
    sessions = Sessions()
    session = sessions.open(ALICE)
    assert sessions.get(None) is None
    assert sessions.get("") is None
    assert sessions.get(session.csrf) is None
    sessions.close(session.token)
    sessions.close(session.token)
    sessions.close(None)
    assert sessions.get(session.token) is None


def test_the_table_is_bounded_and_the_oldest_login_goes_first() -> None:
    sessions = Sessions(max_sessions=3)
    opened = [sessions.open(ALICE) for _ in range(4)]
    assert len(sessions) == 3
    assert sessions.get(opened[0].token) is None
    assert all(sessions.get(s.token) == s for s in opened[1:])


@pytest.mark.parametrize("secure", [True, False])
def test_the_cookie_is_for_this_site_only_and_out_of_scripts_reach(secure: bool) -> None:
    attributes = Sessions(lifetime_s=7200).cookie_attributes(secure)
    assert attributes == {
        "path": "/",
        "httponly": True,
        "samesite": "Strict",
        "secure": secure,
        "max_age": 7200,
    }


def test_csrf_tokens_compare_exactly() -> None:
    sessions = Sessions()
    session, other = sessions.open(ALICE), sessions.open(ALICE)
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, other.csrf)
    assert not csrf_ok(session, None)
    assert not csrf_ok(session, "")
    assert not csrf_ok(session, session.csrf[:-1])
    assert not csrf_ok(session, session.csrf + "x")
    assert not csrf_ok(session, "ünïcode\ud800")


# --- same origin -----------------------------------------------------------------------------------

HOST = "lab.example.com"


@pytest.mark.parametrize(
    ("origin", "referer", "scheme", "host", "expected"),
    [
        ("http://lab.example.com", None, "http", HOST, True),
        ("https://lab.example.com", None, "https", HOST, True),
        ("http://lab.example.com:8080", None, "http", f"{HOST}:8080", True),
        ("http://LAB.Example.com:8080", None, "http", f"{HOST}:8080", True),
        ("http://lab.example.com:80", None, "http", HOST, True),  # the default port is no port
        ("https://lab.example.com", None, "https", f"{HOST}:443", True),
        ("http://127.0.0.1:8080", None, "http", "127.0.0.1:8080", True),
        ("http://[::1]:8080", None, "http", "[::1]:8080", True),
        ("http://lab.example.com", None, "https", HOST, False),  # scheme differs
        ("https://lab.example.com", None, "http", HOST, False),
        ("http://lab.example.com:8081", None, "http", f"{HOST}:8080", False),  # port differs
        ("http://lab.example.com", None, "http", f"{HOST}:8080", False),
        ("http://lab.example.com:443", None, "https", HOST, False),
        ("http://lab.example.com.evil.org", None, "http", HOST, False),  # sub-domain trick
        ("http://evil.org", None, "http", HOST, False),
        ("http://sub.lab.example.com", None, "http", HOST, False),
        ("http://example.com", None, "http", HOST, False),
        ("http://lab.example.com@evil.org", None, "http", HOST, False),
        ("http://evil.org@lab.example.com", None, "http", HOST, False),
        ("http://lab.example.com/", None, "http", HOST, False),  # an Origin has no path
        ("null", None, "http", HOST, False),
        ("null", "http://lab.example.com/", "http", HOST, False),  # Origin decides when present
        ("", "http://lab.example.com/", "http", HOST, False),
        ("http://evil.org", "http://lab.example.com/", "http", HOST, False),
        ("ftp://lab.example.com", None, "ftp", HOST, False),
        ("http://lab.example.com:99999", None, "http", f"{HOST}:99999", False),
        ("http://lab.example.com", None, "http", "", False),
        (" http://lab.example.com", None, "http", HOST, False),
        (None, "http://lab.example.com/runs/3?x=1#y", "http", HOST, True),
        (None, "https://lab.example.com:8443/submit", "https", f"{HOST}:8443", True),
        (None, "http://lab.example.com.evil.org/", "http", HOST, False),
        (None, "https://lab.example.com/", "http", HOST, False),
        (None, "http://user@lab.example.com/", "http", HOST, False),
        (None, "/runs/3", "http", HOST, False),
        (None, "", "http", HOST, False),
        (None, None, "http", HOST, False),  # neither header
    ],
)
def test_same_origin(origin: str | None, referer: str | None, scheme: str, host: str, expected: bool) -> None:
    assert same_origin(origin, referer, scheme, host) is expected


@given(
    origin=st.none() | st.text() | st.from_regex(r"\Ahttps?://[a-z0-9.:\[\]@%-]{0,30}\Z"),
    referer=st.none() | st.text() | st.from_regex(r"\Ahttps?://[a-z0-9.:\[\]@%/?#-]{0,30}\Z"),
    scheme=st.sampled_from(["http", "https", "HTTP", "", "ftp"]) | st.text(max_size=8),
    host=st.text(max_size=40) | st.from_regex(r"\A[a-z0-9.:\[\]-]{0,30}\Z"),
)
def test_same_origin_never_raises(origin: str | None, referer: str | None, scheme: str, host: str) -> None:
    assert isinstance(same_origin(origin, referer, scheme, host), bool)


labels = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z")


@given(
    scheme=st.sampled_from(["http", "https"]),
    names=st.lists(labels, min_size=1, max_size=4),
    port=st.none() | st.integers(1, 65535),
    suffix=labels,
)
def test_a_page_matches_its_own_host_and_not_one_that_merely_starts_with_it(
    scheme: str, names: list[str], port: int | None, suffix: str
) -> None:
    hostname = ".".join(names)
    host = hostname if port is None else f"{hostname}:{port}"
    assert same_origin(f"{scheme}://{host}", None, scheme, host)
    assert same_origin(None, f"{scheme}://{host}/runs/1", scheme, host)
    evil = f"{hostname}.{suffix}" if port is None else f"{hostname}.{suffix}:{port}"
    assert not same_origin(f"{scheme}://{evil}", None, scheme, host)
