"""Credentials never leave their host: a server that answers 302 to another host gets neither
git (verify_refs, git mirrors) nor the REST client to take a password or token there. The other host answers 401
with a Basic challenge, so a client that followed would offer what it holds: it records every request it gets."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from yarl import URL

from exporter.config import Credentials, PollConfig
from exporter.git.command import Git
from exporter.rest.client import BitbucketClient, parse_page
from exporter.sources import FetchError

PASSWORD, TOKEN = "s3cret-pa55word", "BBDC-token-0123456789"


class Elsewhere:
    """The other host: every request recorded, each answered 401 with a Basic challenge."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="elsewhere"'})


@asynccontextmanager
async def serve(handler: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def redirecting() -> AsyncIterator[tuple[str, Elsewhere]]:
    """A host that asks for Basic credentials on its first answer and redirects (302) every request to ``elsewhere``
    (same path and query) once it has them; and the other host."""
    elsewhere = Elsewhere()
    async with serve(elsewhere.handle) as other:
        elsewhere.url = other

        async def redirect(request: web.Request) -> web.Response:
            if "Authorization" not in request.headers:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="bitbucket"'})
            return web.Response(status=302, headers={"Location": other + request.path_qs})

        async with serve(redirect) as here:
            yield here, elsewhere


def credentials_seen(elsewhere: Elsewhere) -> list[str]:
    seen = []
    for headers in elsewhere.requests:
        value = headers.get("Authorization", "")
        if value.startswith("Basic "):
            value = base64.b64decode(value[6:]).decode(errors="replace")
        seen.append(value)
    return seen


@pytest.mark.parametrize(
    "credentials",
    [
        Credentials(username="monitor", password=SecretStr(PASSWORD)),
        Credentials(token=SecretStr(TOKEN)),
    ],
    ids=["password", "token"],
)
async def test_git_follows_no_redirect_and_offers_credentials_to_no_other_host(credentials: Credentials) -> None:
    async with redirecting() as (here, elsewhere):
        git = Git(concurrency=2)
        url = here + "/scm/prj/app.git"
        for _ in range(3):
            with pytest.raises(FetchError):
                await git.output(["ls-remote", url], 20, credentials, url)
        assert not any(PASSWORD in seen or TOKEN in seen for seen in credentials_seen(elsewhere)), elsewhere.requests
        assert elsewhere.requests == []  # not even asked


async def test_the_askpass_helper_answers_only_the_configured_host() -> None:
    # Even if a git were to ask about another host, the helper gives it nothing.
    async with serve(Elsewhere().handle) as other:
        git = Git(concurrency=1)
        credentials = Credentials(username="monitor", password=SecretStr(PASSWORD))
        env, _ = git._environment(credentials, "https://bitbucket.example.com:7990/scm/prj/app.git")
        import subprocess

        def ask(prompt: str) -> str:
            done = subprocess.run([env["GIT_ASKPASS"], prompt], env=env, capture_output=True, text=True, timeout=10)
            return done.stdout.strip()

        assert ask("Username for 'https://bitbucket.example.com:7990': ") == "monitor"
        assert ask("Password for 'https://monitor@bitbucket.example.com:7990': ") == PASSWORD
        assert ask(f"Username for '{other}': ") == ""
        assert ask(f"Password for 'http://monitor@{URL(other).host}:{URL(other).port}': ") == ""
        assert ask("Password for 'http://monitor@bitbucket.example.com:7990': ") == ""  # another scheme


async def test_the_rest_client_reports_a_redirect_on_every_path_and_never_follows_it() -> None:
    async with redirecting() as (here, elsewhere), aiohttp.ClientSession() as session:
        client = BitbucketClient(session, PollConfig(timeout_seconds=2.0, backoff_seconds=0.01, retries=1))
        for credentials in (
            Credentials(username="monitor", password=SecretStr(PASSWORD)),
            Credentials(token=SecretStr(TOKEN)),
        ):
            url = URL(here + "/rest/api/latest/projects")
            calls = [
                client.get_json(url, credentials),
                client.get_all(url, credentials),
                client.get(url, credentials, parse_page),
                client.send_json("POST", url, credentials, {"name": "x"}),
                client.send_json("PUT", url / "1", credentials, {"name": "x"}),
            ]
            for call in calls:
                with pytest.raises(FetchError) as refused:
                    await call
                assert refused.value.reason == "http_302" and refused.value.status == 302
        assert elsewhere.requests == []
