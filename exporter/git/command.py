"""Runs git for the exporter: read-only commands only, each with a hard time limit in its own process group, at
most ``git_concurrency`` at once; credentials through an askpass helper and the child's environment, never its
command line (``ps``, ``/proc/*/cmdline``) or a URL; stderr scrubbed before it is logged or counted."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from exporter.config import Credentials
from exporter.processes import Timeout, run
from exporter.secret_files import UserPassword, prepare
from exporter.sources import FetchError

# Reasons, also documented in docs/metrics.md.
GIT_TIMEOUT = "git_timeout"
GIT_AUTH = "git_auth"
GIT_NOT_FOUND = "git_not_found"
GIT_FAILED = "git_failed"
NOT_A_REPOSITORY = "not_a_repository"

# git asks this program for a username and a password; it answers from the child's environment only, and only for the
# configured URL's scheme, host and port as git names them in its prompt ("Username for 'https://host:port': ",
# "Password for 'https://user@host:port': "): a prompt for any other host gets nothing.
_ASKPASS = """#!/bin/sh
case "$1" in
  Username*"'$BME_GIT_ORIGIN'"*) printf '%s\\n' "$BME_GIT_USERNAME" ;;
  Password*"'$BME_GIT_SCHEME://$BME_GIT_HOST'"*) printf '%s\\n' "$BME_GIT_PASSWORD" ;;
  Password*"'$BME_GIT_SCHEME://"*"@$BME_GIT_HOST'"*) printf '%s\\n' "$BME_GIT_PASSWORD" ;;
  *) exit 1 ;;
esac
"""
# Never follow a redirect: the credentials (the askpass answer, a token's header) belong to the configured host.
NO_REDIRECTS = ("-c", "http.followRedirects=false")
_USERINFO = re.compile(r"(://)[^/@\s]+@")


def askpass_helper() -> Path:
    """A private askpass script (readable and runnable by this user only), written once per configuration and
    removed with it (``Git.close``)."""
    directory = Path(tempfile.mkdtemp(prefix=f"bme-git-{os.getpid()}-"))  # whose it is, for an admin's eyes
    script = directory / "askpass"
    script.write_text(_ASKPASS)
    script.chmod(stat.S_IRWXU)
    return script


def _origin(url: str) -> tuple[str, str]:
    """The scheme and ``host[:port]`` of a URL, as git writes them in its credential prompts."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return parts.scheme, host + (f":{parts.port}" if parts.port is not None else "")


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

    def close(self) -> None:
        """Remove the askpass helper's private directory (the commands that used it have ended)."""
        if self._askpass is not None:
            shutil.rmtree(self._askpass.parent, ignore_errors=True)
            self._askpass = None

    def _environment(self, credentials: UserPassword | None, url: str | None) -> tuple[dict[str, str], str | None]:
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
        if url is None:
            raise ValueError("credentials go with the URL they are for")
        scheme, host = _origin(url)
        env["BME_GIT_SCHEME"], env["BME_GIT_HOST"], env["BME_GIT_ORIGIN"] = scheme, host, f"{scheme}://{host}"
        try:
            token = credentials.resolved_token() if isinstance(credentials, Credentials) else None
            password = credentials.resolved_password() if credentials.username is not None else None
        except ValueError as exc:
            raise FetchError("credentials", str(exc)) from None
        if token is not None:
            secret = token.get_secret_value()
            # Configuration from the environment (git 2.31+), so the header is on no command line.
            # Scoped to the configured URL (git's http.<url>.* keys): no other host is sent the header.
            env["GIT_CONFIG_COUNT"], env["GIT_CONFIG_KEY_0"] = "1", f"http.{url}.extraHeader"
            env["GIT_CONFIG_VALUE_0"] = f"Authorization: Bearer {secret}"
            return env, secret
        if credentials.username is None:
            return env, None
        secret = password.get_secret_value() if password is not None else ""
        env["BME_GIT_USERNAME"], env["BME_GIT_PASSWORD"] = credentials.username, secret
        return env, secret

    async def output(
        self, args: list[str], time_limit: float, credentials: UserPassword | None = None, url: str | None = None
    ) -> str:
        """git's standard output; FetchError with one of the reasons above. ``credentials``: a username with a
        password (through the askpass helper), or a token (``Credentials``, sent as a Bearer header), offered only to
        ``url``'s scheme, host and port."""
        if credentials is not None:
            token_file = credentials.token_file if isinstance(credentials, Credentials) else None
            await prepare(credentials.password_file, token_file)  # file reads off the event loop
        env, secret = self._environment(credentials, url)
        # A mirror volume owned by the syncer's user: reading it is safe, and git would refuse it otherwise.
        command = [self._git, "-c", "safe.directory=*", *NO_REDIRECTS, *args]
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
