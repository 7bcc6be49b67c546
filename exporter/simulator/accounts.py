"""How the simulated Bitbucket takes credentials, as the real server does (reference: ../shared/reference/
bitbucket-mirroring.md section 8, and docs/assumptions.md):

- ``/rest`` and ``/scm`` take Basic auth with the password or with an HTTP access token as the password, and a token
  as ``Authorization: Bearer``.
- Any other path (``/status``, ``/login``, ...) is anonymous. Since 8.9.22, 8.19.12 and 9.3.2 a request there that
  carries an access token is answered **302 to the login page** (Bearer) or **401** (the token as a Basic password)
  (Atlassian KB "Access tokens no longer work as expected after upgrading Bitbucket Data Center").
- After ``Scenario.captcha_after_failures`` failed logins of one account in a row, Bitbucket wants a person to solve a
  CAPTCHA: every request with that account's credentials is then answered 401 with ``X-Authentication-Denied-Reason:
  CAPTCHA_CHALLENGE; login-url=…`` until the simulator is told to clear it (``POST /sim/accounts``), as an admin would.

Every request that brought credentials where none belong is counted by the host it reached, so a test can prove the
exporter never sends any there.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from aiohttp import web

DENIED_REASON = "X-Authentication-Denied-Reason"
LOGIN_PATH = "/login"


class Login(StrEnum):
    """What a request's Authorization header is, for the account it names."""

    NONE = "none"
    BEARER = "bearer"  # the account's access token as a Bearer token
    PASSWORD = "password"  # Basic with the account's password
    TOKEN = "token"  # Basic with the account's access token as the password
    WRONG = "wrong"  # Basic with a known account and a wrong password, or an unknown token or account


class Credentials(Protocol):
    """The scenario's account, read at every request (a test may change the password, as an admin rotating it)."""

    username: str
    password: str
    token: str
    captcha_after_failures: int


@dataclass
class Accounts:
    """The one account the simulator has (the scenario's), its failed logins and its CAPTCHA lock."""

    account: Credentials
    failures_in_a_row: int = 0
    locked: bool = False
    # Host ("primary", a mirror's name or "mirror/node") -> requests that carried credentials outside /rest and /scm.
    credentials_outside_rest: dict[str, int] = field(default_factory=dict)
    # Host -> requests answered with the CAPTCHA denial.
    denied: dict[str, int] = field(default_factory=dict)

    def login(self, header: str) -> tuple[str | None, Login]:
        """The account the header names (None: no account, or one the simulator does not know) and how."""
        if not header:
            return None, Login.NONE
        if header.startswith("Bearer "):
            account = self.account
            return (account.username, Login.BEARER) if header[7:] == account.token else (None, Login.WRONG)
        if header.startswith("Basic "):
            try:
                user, _, secret = base64.b64decode(header[6:], validate=True).decode().partition(":")
            except (ValueError, binascii.Error):
                return None, Login.WRONG
            if user != self.account.username:
                return None, Login.WRONG
            if secret == self.account.password:
                return user, Login.PASSWORD
            return user, Login.TOKEN if secret == self.account.token else Login.WRONG
        return None, Login.WRONG

    def failed(self, user: str | None) -> None:
        if user is None:
            return
        self.failures_in_a_row += 1
        if 0 < self.account.captcha_after_failures <= self.failures_in_a_row:
            self.locked = True

    def succeeded(self) -> None:
        self.failures_in_a_row = 0

    def clear(self) -> None:
        """An admin cleared the CAPTCHA (or the user solved it in a browser)."""
        self.locked, self.failures_in_a_row = False, 0


def _unauthorized() -> web.Response:
    body = {"errors": [{"message": "Authentication failed. Please check your credentials and try again."}]}
    return web.json_response(body, status=401)


def check(request: web.Request, accounts: Accounts, host: str, protected: bool) -> web.Response | None:
    """The answer Bitbucket's login layer gives this request, or None to let it through. ``protected``: the resource
    wants an authenticated user (under /rest); other /rest and /scm paths take credentials but do not need them."""
    user, how = accounts.login(request.headers.get("Authorization", ""))
    if user is not None and accounts.locked:
        accounts.denied[host] = accounts.denied.get(host, 0) + 1
        login_url = str(request.url.with_path(LOGIN_PATH).with_query(None))
        return web.json_response(
            {"errors": [{"message": "CAPTCHA required: log in through the web interface first."}]},
            status=401,
            headers={DENIED_REASON: f"CAPTCHA_CHALLENGE; login-url={login_url}"},
        )
    takes_credentials = request.path.startswith(("/rest/", "/scm/"))
    if not takes_credentials and (how is not Login.NONE or _session(request)):
        accounts.credentials_outside_rest[host] = accounts.credentials_outside_rest.get(host, 0) + 1
        if how is Login.BEARER:
            location = request.url.with_path(LOGIN_PATH).with_query({"next": request.path})
            return web.Response(status=302, headers={"Location": str(location)})
        if how in (Login.TOKEN, Login.WRONG):
            accounts.failed(user)
            return _unauthorized()
    if not takes_credentials:
        return None
    if how is Login.WRONG:
        accounts.failed(user)
        return _unauthorized()
    if how is not Login.NONE:
        accounts.succeeded()
        return None
    return _unauthorized() if protected else None


def _session(request: web.Request) -> bool:
    """Whether the request carries a Bitbucket session cookie (an authenticated session's)."""
    return any("SESSION" in name.upper() for name in request.cookies)
