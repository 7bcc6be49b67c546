"""Real git for the tests: bare repositories made with the real `git`, and Git's own `git http-backend` served over
HTTP on 127.0.0.1 behind Basic auth (a small CGI bridge), as a Bitbucket or any git host would serve them."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from tests.tools import binary

HTTP_BACKEND = Path("/usr/lib/git-core/git-http-backend")
ENV = {"GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com", "LC_ALL": "C"}  # fmt: skip


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [binary("git", "git"), "-c", "init.defaultBranch=main", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, env={**os.environ, **ENV},
    )  # fmt: skip
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


class Remote:
    """A bare repository with a working clone to push from."""

    def __init__(self, root: Path, name: str = "app") -> None:
        self.bare = root / f"{name}.git"
        self.work = root / f"{name}-work"
        git("init", "--bare", str(self.bare))
        git("init", str(self.work))
        git("remote", "add", "origin", str(self.bare), cwd=self.work)
        self.commit("first")
        git("push", "origin", "main", cwd=self.work)

    def commit(self, message: str, branch: str = "main") -> str:
        git("checkout", "-q", "-B", branch, cwd=self.work)
        (self.work / "file.txt").write_text(message)
        git("add", "file.txt", cwd=self.work)
        git("commit", "-q", "-m", message, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work).strip()

    def push(self, *refspecs: str) -> None:
        git("push", "-q", "origin", *refspecs, cwd=self.work)

    def refs(self) -> dict[str, str]:
        out = git("for-each-ref", "--format=%(objectname) %(refname)", cwd=self.bare)
        return {ref: value for value, ref in (line.split() for line in out.splitlines())}


def mirror_of(remote: Remote, path: Path) -> Path:
    """What a reposyncer pod keeps: `git clone --mirror`, refreshed by `fetch --prune` (``sync``)."""
    git("clone", "-q", "--mirror", str(remote.bare), str(path))
    return path


def sync(mirror: Path) -> None:
    git("fetch", "-q", "--prune", "origin", cwd=mirror)


@asynccontextmanager
async def http_backend(root: Path, user: str, password: str) -> AsyncIterator[str]:
    """Serves every bare repository under ``root`` with `git http-backend`; yields the base URL."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="git"'})
        env = {
            **ENV,
            "GIT_PROJECT_ROOT": str(root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": request.path,
            "QUERY_STRING": request.query_string,
            "REQUEST_METHOD": request.method,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "REMOTE_USER": user,
            "REMOTE_ADDR": "127.0.0.1",
        }
        body = await request.read()
        env["CONTENT_LENGTH"] = str(len(body))
        process = await asyncio.create_subprocess_exec(
            str(HTTP_BACKEND), env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(process.communicate(body), 30)
        head, _, payload = out.partition(b"\r\n\r\n")
        response = web.Response(body=payload)
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(": ")
            if name.lower() == "status":
                response.set_status(int(value.split()[0]))
            elif name:
                response.headers[name] = value
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
