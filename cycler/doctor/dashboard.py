"""The doctor's checks of the dashboard ([web]): its users file, its certificate, its port.

The daemon runs its channels without the dashboard when any of these fails, saying so only in its
log; doctor says it before the daemon starts.
"""

from __future__ import annotations

import socket
import ssl
import stat

from cyclerd.daemon.config import Web
from cyclerd.doctor.verdict import Check, Verdict, current_user
from cyclerd.web.users import Users, UsersFileError


def check_dashboard(web: Web | None, daemon_running: bool) -> list[Check]:
    if web is None:
        return [Check("dashboard", Verdict.OK, "no [web]: not served")]
    return [_users(web), *_certificate(web), _port(web, daemon_running)]


def _users(web: Web) -> Check:
    path = web.users
    try:
        users = Users.load(path)
    except UsersFileError as exc:
        return Check("dashboard users", Verdict.FAIL, str(exc))
    except PermissionError:
        return Check("dashboard users", Verdict.FAIL, f"user {current_user()} may not read {path}")
    if not path.exists():
        add = f"cyclerd web user add NAME --role operator --users {path}"
        verdict = Verdict.OK if web.anonymous else Verdict.WARN
        return Check("dashboard users", verdict, f"{path} does not exist: nobody can log in; `{add}`")
    mode = stat.S_IMODE(path.stat().st_mode)
    operators = sum(1 for user in users.values() if user.role.may_control)
    detail = f"{path}: {len(users)} user(s), {operators} operator(s), mode {mode:04o}"
    if mode & stat.S_IROTH:
        return Check("dashboard users", Verdict.WARN, f"{detail}: readable by every user; chmod o-r {path}")
    if not operators:
        return Check("dashboard users", Verdict.WARN, f"{detail}: nobody may control runs from the page")
    return Check("dashboard users", Verdict.OK, detail)


def _certificate(web: Web) -> list[Check]:
    if web.tls_cert is None or web.tls_key is None:
        if web.bind in ("127.0.0.1", "::1", "localhost"):
            return []
        detail = f"plain http on {web.bind}: passwords cross the network in clear; set tls_cert and tls_key"
        return [Check("dashboard tls", Verdict.WARN, detail)]
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(web.tls_cert, web.tls_key)
    except (OSError, ssl.SSLError) as exc:
        return [Check("dashboard tls", Verdict.FAIL, f"{web.tls_cert} / {web.tls_key}: {exc}")]
    return [Check("dashboard tls", Verdict.OK, f"{web.tls_cert}: certificate and key load")]


def _port(web: Web, daemon_running: bool) -> Check:
    where = f"{web.bind} port {web.port}"
    if daemon_running:
        return Check("dashboard port", Verdict.OK, f"{where}: the running daemon serves it")
    family = socket.AF_INET6 if ":" in web.bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((web.bind, web.port))
        except OSError as exc:
            detail = (
                f"{where}: cannot listen ({exc.strerror or exc}); the daemon would run without its dashboard"
            )
            return Check("dashboard port", Verdict.FAIL, detail)
    return Check("dashboard port", Verdict.OK, f"{where}: free")
