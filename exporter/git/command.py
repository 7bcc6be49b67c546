"""Runs git for the exporter: read-only commands only, each with a hard time limit in its own process group, at
most ``git_concurrency`` at once; credentials through an askpass helper and the child's environment, never its
command line (``ps``, ``/proc/*/cmdline``) or a URL; stderr scrubbed before it is logged or counted."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import tempfile
from pathlib import Path

from exporter.config import Credentials
from exporter.processes import Timeout, run
from exporter.secret_files import UserPassword
from exporter.sources import FetchError

# Reasons, also documented in docs/metrics.md.
GIT_TIMEOUT = "git_timeout"
GIT_AUTH = "git_auth"
GIT_NOT_FOUND = "git_not_found"
GIT_FAILED = "git_failed"
NOT_A_REPOSITORY = "not_a_repository"

# git asks this program for a username and a password; it answers from the child's environment only.
_ASKPASS = """#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "$BME_GIT_USERNAME" ;;
  *) printf '%s\\n' "$BME_GIT_PASSWORD" ;;
esac
"""
_USERINFO = re.compile(r"(://)[^/@\s]+@")


def askpass_helper() -> Path:
    """A private askpass script (readable and runnable by this user only), written once per process."""
    directory = Path(tempfile.mkdtemp(prefix="bme-git-"))
    script = directory / "askpass"
    script.write_text(_ASKPASS)
    script.chmod(stat.S_IRWXU)
    return script


def scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    text = _USERINFO.sub(r"\1***@", text)
    return " ".join(text.split())[:300]


def classify(stderr: str) -> str:
    lowered = stderr.lower()
    if "not a git repository" in lowered:
        return NOT_A_REPOSITORY
    if any(s in lowered for s in ("authentication failed", "could not read username", "could not read password",
                                  "returned error: 401", "returned error: 403", "permission denied")):  # fmt: skip
        return GIT_AUTH
    if any(s in lowered for s in ("not found", "does not appear to be a git repository", "returned error: 404")):
        return GIT_NOT_FOUND
    return GIT_FAILED


class Git:
    def __init__(self, concurrency: int, executable: str = "git") -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._git = executable
        self._askpass: Path | None = None
        self.spawned = 0  # processes started since start (bench/git_mirrors.py reports them)

    def _environment(self, credentials: UserPassword | None) -> tuple[dict[str, str], str | None]:
        if self._askpass is None:
            self._askpass = askpass_helper()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C",
            "HOME": str(self._askpass.parent),  # no user's configuration or credential helpers
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": str(self._askpass),
        }
        if credentials is None:
            return env, None
        try:
            token = credentials.resolved_token() if isinstance(credentials, Credentials) else None
            password = credentials.resolved_password() if credentials.username is not None else None
        except ValueError as exc:
            raise FetchError("credentials", str(exc)) from None
        if token is not None:
            secret = token.get_secret_value()
            # Configuration from the environment (git 2.31+), so the header is on no command line.
            env["GIT_CONFIG_COUNT"], env["GIT_CONFIG_KEY_0"] = "1", "http.extraHeader"
            env["GIT_CONFIG_VALUE_0"] = f"Authorization: Bearer {secret}"
            return env, secret
        if credentials.username is None:
            return env, None
        secret = password.get_secret_value() if password is not None else ""
        env["BME_GIT_USERNAME"], env["BME_GIT_PASSWORD"] = credentials.username, secret
        return env, secret

    async def output(self, args: list[str], time_limit: float, credentials: UserPassword | None = None) -> str:
        """git's standard output; FetchError with one of the reasons above. ``credentials``: a username with a
        password (through the askpass helper), or a token (``Credentials``, sent as a Bearer header)."""
        env, secret = self._environment(credentials)
        # A mirror volume owned by the syncer's user: reading it is safe, and git would refuse it otherwise.
        command = [self._git, "-c", "safe.directory=*", *args]
        async with self._slots:
            self.spawned += 1
            try:
                finished = await run(command, time_limit, env)
            except OSError as exc:
                raise FetchError(
                    GIT_FAILED, f"cannot start {self._git}: {exc.strerror or type(exc).__name__}"
                ) from None
            except Timeout:
                raise FetchError(GIT_TIMEOUT, f"git {args[0]}: no answer within {time_limit:g} s; killed") from None
        if finished.returncode != 0:
            stderr = finished.stderr.decode("utf-8", "replace")
            raise FetchError(classify(stderr), f"git {args[0]}: {scrub(stderr, secret)}")
        return finished.stdout.decode("utf-8", "replace")
