"""``bitbucket-mirror-exporter wait``: the step a CI pipeline runs before it clones from a mirror.

It asks the exporter's gate (``GET /api/v1/repositories/{key}/{slug}/mirrors?commit=…``) until the commit is on the
mirror (or on every mirror), printing one line each time a mirror's state changes. Exit 0: on the mirror; 1: not within
``--timeout``; 2: a usage error (bad arguments, refused credentials, an unknown mirror); 3: the primary has no such
commit (a typo in a pipeline variable: waiting would never end).
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

PASSWORD_ENV = "BITBUCKET_MIRROR_EXPORTER_WAIT_PASSWORD"
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class UsageError(Exception):
    """Exit 2, with this line."""


EXIT_UNKNOWN_COMMIT = 3


def seconds(text: str) -> float:
    """``10m``, ``30s``, ``1h``, ``90`` (seconds)."""
    match = DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 10m or 1h")
    return float(match[1]) * SCALE[match[2]]


@dataclass(frozen=True)
class Request:
    exporter: str
    project: str
    slug: str
    commit: str
    mirror: str | None
    timeout: float
    interval: float
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None


def _describe(entry: dict[str, Any]) -> str:
    if entry.get("reason") == "unknown_commit":
        return "no such commit on the primary"
    if entry.get("on_mirror"):
        how = "its sync event named the commit" if entry.get("by") == "webhook" else "its listing is in sync"
        return f"on the mirror ({how})"
    if entry.get("in_scope") is False:
        return "not mirrored there (the mirror's sync settings leave the project out)"
    if entry.get("in_sync") is False:
        return f"not yet (behind for {entry.get('lag_seconds', 0):.0f}s)"
    if entry.get("in_sync") is None:
        return "not yet (the exporter cannot tell now)"
    return "not yet (in sync as of listings begun before the push)"


class Waiter:
    def __init__(self, request: Request, out: Callable[[str], None] = print) -> None:
        self._request = request
        self._out = out
        self._said: dict[str, str] = {}
        self._headers = {"Accept": "application/json"}
        if request.username is not None:
            password = self._password()
            pair = base64.b64encode(f"{request.username}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {pair}"
        self._tls = ssl.create_default_context(cafile=str(request.ca_file)) if request.ca_file else None

    def _password(self) -> str:
        # Never on the command line, where other users of the CI agent could read it.
        if self._request.password_file is not None:
            try:
                return self._request.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise UsageError(f"--password-file: cannot read it ({exc.strerror})") from None
        password = os.environ.get(PASSWORD_ENV)
        if password is None:
            raise UsageError(f"--username needs --password-file or {PASSWORD_ENV}")
        return password

    def _url(self, since: float) -> str:
        request = self._request
        path = f"/api/v1/repositories/{quote(request.project, safe='')}/{quote(request.slug, safe='')}/mirrors"
        query = urlencode({"commit": request.commit, "since": f"{since:.3f}"})
        return request.exporter.rstrip("/") + path + "?" + query

    def _say(self, what: str, line: str) -> None:
        if self._said.get(what) != line:
            self._said[what] = line
            self._out(f"{what}: {line}")

    def _ask(self, since: float) -> dict[str, Any] | None:
        request = urllib.request.Request(self._url(since), headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=10, context=self._tls) as resp:
                answer: dict[str, Any] = json.loads(resp.read())
                return answer
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise UsageError(f"the exporter refused the credentials (HTTP {exc.code})") from None
            if exc.code == 400:
                raise UsageError(
                    f"the exporter refused the question: {exc.read().decode(errors='replace')[:200]}"
                ) from None
            self._say(
                "exporter", f"HTTP {exc.code}" + (" (it knows no such repository yet)" if exc.code == 404 else "")
            )
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self._say("exporter", f"unreachable ({type(exc).__name__})")
        return None

    def run(self) -> int:
        request = self._request
        since = time.time()
        deadline = time.monotonic() + request.timeout
        while True:
            answer = self._ask(since)
            if answer is not None and answer.get("commit_exists") is False:
                self._out(
                    f"commit not found on the primary: {request.commit} is in no branch or tag of "
                    f"{request.project}/{request.slug}"
                )
                return EXIT_UNKNOWN_COMMIT
            if answer is not None and self._done(answer):
                return 0
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._out(f"timed out after {request.timeout:g}s: {request.commit} is not on the mirror")
                return 1
            time.sleep(min(request.interval, remaining))

    def _done(self, answer: dict[str, Any]) -> bool:
        mirrors = {m["mirror"]: m for m in answer.get("mirrors", []) if isinstance(m, dict) and "mirror" in m}
        wanted = [self._request.mirror] if self._request.mirror else sorted(mirrors)
        if not wanted:
            raise UsageError("the exporter monitors no mirror")
        for name in wanted:
            if name not in mirrors:
                raise UsageError(f"--mirror {name}: the exporter monitors {', '.join(sorted(mirrors)) or 'none'}")
            self._say(name, _describe(mirrors[name]))
        return all(mirrors[name].get("on_mirror") for name in wanted)
