"""Scrapes served by threads of their own over real loopback HTTP (exporter/web/scrape_thread.py): they are answered
while the event loop is busy, every other request still reaches aiohttp (on the same connection too), credentials
are checked on the loop once, and stopping leaves no thread and no listening socket behind."""

from __future__ import annotations

import asyncio
import base64
import http.client
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import bcrypt
import pytest
from prometheus_client import CollectorRegistry

from exporter.app import ExporterState, MirrorFarmCollector
from exporter.rest.state import MirrorState, PrimaryState
from exporter.web import scrape_thread
from exporter.web.auth import BasicAuth
from exporter.web.scrape_thread import ScrapeThreads
from exporter.web.server import Served, Server
from tests.unit.scenario import NOW, seeded_state

TIMEOUT = 10.0


@asynccontextmanager
async def serving(auth: BasicAuth | None = None) -> AsyncIterator[tuple[Server, ScrapeThreads]]:
    state = seeded_state()
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: state, clock=lambda: NOW))
    server = Server(Served(lambda: state, registry, auth or BasicAuth({}), clock=lambda: NOW), "127.0.0.1", 0)
    await server.start()
    assert server.scrape_threads is not None
    try:
        yield server, server.scrape_threads
    finally:
        await server.stop()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", path, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


async def test_a_scrape_is_answered_while_the_event_loop_is_busy() -> None:
    async with serving() as (server, threads):
        status, first = await asyncio.to_thread(get, server.port, "/metrics")
        assert status == 200 and b'bitbucket_mirror_sync_lag_seconds{mirror="sydney"} 600.0' in first
        answered = threading.Event()
        result: list[tuple[int, bytes]] = []

        def scrape() -> None:
            result.append(get(server.port, "/metrics"))
            answered.set()

        scraper = threading.Thread(target=scrape)
        scraper.start()
        # The loop does nothing else until the scrape is answered (or TIMEOUT passes and the test fails).
        assert answered.wait(TIMEOUT), "the scrape waited for the event loop"
        scraper.join(TIMEOUT)
        assert result == [(200, first)]
        assert threads.served_here == 2 and threads.handed_over == 0


async def test_everything_but_scrapes_reaches_aiohttp_on_the_same_connection_too() -> None:
    async with serving() as (server, threads):

        def one_connection() -> list[tuple[int, bytes]]:
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
            answers = []
            try:
                for path in ("/metrics", "/metrics", "/-/healthy", "/metrics"):
                    connection.request("GET", path)
                    answer = connection.getresponse()
                    answers.append((answer.status, answer.read()))
            finally:
                connection.close()
            return answers

        answers = await asyncio.to_thread(one_connection)
        assert [status for status, _ in answers] == [200, 200, 200, 200]
        assert answers[2][1] == b"OK\n" and answers[0][1] == answers[1][1] == answers[3][1]
        assert threads.served_here == 2, "the connection is aiohttp's once handed over"
        assert threads.handed_over == 1
        status, _ = await asyncio.to_thread(get, server.port, "/runbooks")
        assert status == 200 and threads.handed_over == 2


async def test_connections_beyond_the_threads_and_http_1_0_scrapes_are_served_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scrape_thread, "MAX_THREADS", 2)
    async with serving() as (server, threads):
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) for _ in range(2)]
        try:
            await wait_for(lambda: len(scrape_threads_alive()) == 3, "two idle connections on their threads")
            status, body = await asyncio.to_thread(get, server.port, "/metrics")
            assert status == 200 and b"bitbucket_mirror_up" in body
            assert (threads.served_here, threads.handed_over) == (0, 1), "the loop served the third connection"
        finally:
            for conn in idle:
                conn.close()

        def http_1_0() -> bytes:
            with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as conn:
                conn.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                answer = b""
                while chunk := conn.recv(65536):  # the server closes: HTTP/1.0 without keep-alive
                    answer += chunk
                return answer

        await wait_for(lambda: len(scrape_threads_alive()) == 1, "the idle connections' threads ended")
        answer = await asyncio.to_thread(http_1_0)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close\r\n" in answer
        assert answer.endswith(body) and threads.served_here == 1


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_credentials_are_checked_on_the_loop_once_then_scrapes_are_served_off_it() -> None:
    auth = BasicAuth({"prometheus": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()})
    good = {"Authorization": "Basic " + base64.b64encode(b"prometheus:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"prometheus:wrong").decode()}
    async with serving(auth) as (server, threads):
        assert (await asyncio.to_thread(get, server.port, "/metrics"))[0] == 401
        assert (await asyncio.to_thread(get, server.port, "/metrics", bad))[0] == 401
        assert (threads.served_here, threads.handed_over) == (0, 2)
        assert (await asyncio.to_thread(get, server.port, "/metrics", good))[0] == 200
        assert (threads.served_here, threads.handed_over) == (0, 3)
        assert (await asyncio.to_thread(get, server.port, "/metrics", good))[0] == 200
        assert (await asyncio.to_thread(get, server.port, "/metrics", bad))[0] == 401
        assert (threads.served_here, threads.handed_over) == (1, 4)


async def test_once_ready_says_ready_the_next_scrape_shows_the_polls_that_made_it_so() -> None:
    current = ExporterState(PrimaryState(url="https://b.example.com"), [MirrorState("sydney", "https://s.example.com")])
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: current))
    server = Server(Served(lambda: current, registry), "127.0.0.1", 0)
    await server.start()
    try:
        assert (await asyncio.to_thread(get, server.port, "/-/ready"))[0] == 503
        _, before = await asyncio.to_thread(get, server.port, "/metrics")
        assert b'bitbucket_mirror_up{mirror="sydney"} 0.0' in before
        current.primary.cycles = current.mirrors[0].cycles = 1
        current.mirrors[0].status.success = True
        assert (await asyncio.to_thread(get, server.port, "/-/ready"))[0] == 200
        _, after = await asyncio.to_thread(get, server.port, "/metrics")
        assert b'bitbucket_mirror_up{mirror="sydney"} 1.0' in after, "not a rendering from before ready"
    finally:
        await server.stop()


async def test_a_bug_while_serving_one_scrape_ends_that_connection_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failures = [RuntimeError("a bug")]

    def is_scrape(head: scrape_thread.Head, auth: BasicAuth) -> bool:
        if failures:
            raise failures.pop()
        return True

    monkeypatch.setattr(scrape_thread, "is_scrape", is_scrape)
    async with serving() as (server, threads):
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            await asyncio.to_thread(get, server.port, "/metrics")
        assert (await asyncio.to_thread(get, server.port, "/metrics"))[0] == 200
        assert threads.served_here == 1
    assert "serving a scrape failed" in caplog.text


def scrape_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in ("scrape", "scrape-acceptor")]


async def test_stopping_leaves_no_thread_and_no_listening_socket() -> None:
    async with serving() as (server, _):
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)  # a keep-alive scraper, idle
        status, _ = await asyncio.to_thread(get, server.port, "/metrics")
        assert status == 200 and scrape_threads_alive()
    port = server.port
    assert scrape_threads_alive() == []
    assert idle.recv(1) == b"", "the idle connection was closed"
    idle.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
