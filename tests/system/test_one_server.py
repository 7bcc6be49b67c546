"""One HTTP server: aiohttp alone parses every request, so a request it refuses reaches nothing. Each input of the
request-smuggling pattern (bare LF hiding a Content-Length or Transfer-Encoding, a lone CR, a NUL byte, a bad header
name, no Host, two lengths) is sent raw over a socket, followed by a second request to ``POST /-/reload``; the one
answer is 400, the connection closes, and the reload handler behind basic auth is never called. With and without
basic auth; a well-formed pair shows the reload handler is reachable, so the check can fail."""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import bcrypt
import pytest
from prometheus_client import CollectorRegistry

from exporter.web.auth import BasicAuth
from exporter.web.landing import Landing
from exporter.web.server import Served, Server
from tests.conftest import LOOPBACK

USER, PASSWORD = "prometheus", "s3cret"
CREDENTIALS = b"Authorization: Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()) + b"\r\n"
RELOAD = b"POST /-/reload HTTP/1.1\r\nHost: x\r\n%bContent-Length: 0\r\n\r\n"

SMUGGLING = {
    "bare LF hiding a Content-Length": b"GET /metrics HTTP/1.1\r\nHost: x\n%bContent-Length: %d\r\n\r\n",
    "bare LF hiding a Transfer-Encoding": b"GET /metrics HTTP/1.1\r\nHost: x\n%bTransfer-Encoding: chunked\r\n\r\n",
    "a lone CR": b"GET /metrics HTTP/1.1\r\nHost: x\r%bContent-Length: %d\r\n\r\n",
    "a NUL byte": b"GET /metrics HTTP/1.1\r\nHost: x\x00y\r\n%b\r\n",
    "a bad header name": b"GET /metrics HTTP/1.1\r\nHost: x\r\nX(y): z\r\n%b\r\n",
    "a space before the colon": b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length : %d\r\n%b\r\n",
    "no Host": b"GET /metrics HTTP/1.1\r\n%b\r\n",
    "bare LF line endings only": b"GET /metrics HTTP/1.1\nHost: x\n%b\n",
    "two lengths": b"GET /metrics HTTP/1.1\r\nHost: x\r\n%bContent-Length: 0\r\nContent-Length: %d\r\n\r\n",
    "a length and chunked": b"GET /metrics HTTP/1.1\r\nHost: x\r\n%bContent-Length: %d\r\nTransfer-Encoding: "
    b"chunked\r\n\r\n0\r\n\r\n",
}


class NoState:
    """The pages' state of an exporter that watches nothing."""

    ready = True
    stale_after = 60.0

    def analyses(self) -> tuple[int, ...]:
        return ()

    def landing(self, now: float) -> Landing:
        raise AssertionError("not asked for here")

    def refs(self, now: float) -> list[dict[str, object]]:
        return []

    def behind(self, now: float, limit: int, mirror: str | None) -> dict[str, object] | None:
        return None

    def probe_node(self, mirror: str, node: str, now: float, max_lag: float) -> tuple[bool, str] | None:
        return None


class Reloads:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return True, "reloaded"


@asynccontextmanager
async def serving(auth: BasicAuth, reloads: Reloads) -> AsyncIterator[Server]:
    state = NoState()
    served = Served(state=lambda: state, registry=CollectorRegistry(), auth=auth, reload=reloads)
    server = Server(served, LOOPBACK, 0)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def exchange(port: int, data: bytes) -> bytes:
    """Sends ``data`` and reads until the server closes the connection (or 5 s pass)."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def statuses(answer: bytes) -> list[bytes]:
    return re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)


def smuggled(template: bytes, credentials: bytes) -> bytes:
    second = RELOAD % credentials
    filled = template.replace(b"%d", str(len(second)).encode()).replace(b"%b", credentials)
    return filled + second


@pytest.mark.parametrize("with_auth", [False, True], ids=["open", "basic-auth"])
async def test_every_smuggling_input_is_answered_400_by_the_one_server_and_reaches_nothing(with_auth: bool) -> None:
    users = {USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()} if with_auth else {}
    credentials = CREDENTIALS if with_auth else b""
    reloads = Reloads()
    async with serving(BasicAuth(users), reloads) as server:
        well_formed = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + credentials + b"\r\n" + RELOAD % credentials
        last = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = await asyncio.to_thread(exchange, server.port, well_formed + last)
        assert statuses(answer) == [b"200", b"200", b"200"] and reloads.calls == 1, "the check can see a reload"
        for name, template in SMUGGLING.items():
            answer = await asyncio.to_thread(exchange, server.port, smuggled(template, credentials))
            assert statuses(answer) == [b"400"], (name, answer[:300])
        assert reloads.calls == 1, "no smuggled request reached the reload handler"
        refused = server.served.refusals.counts
        assert sum(refused.values()) == len(SMUGGLING), refused
