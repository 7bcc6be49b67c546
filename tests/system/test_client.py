"""BitbucketClient against scripted servers on loopback: paging, retries, backoff, auth, errors, concurrency."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr
from yarl import URL

from exporter.config import Credentials, PollConfig
from exporter.rest.client import BitbucketClient, Page, parse_page
from exporter.sources import FetchError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    def __init__(self) -> None:
        self.requests: list[tuple[float, web.Request]] = []
        self.url = URL()


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[Server]:
    server = Server()

    async def record(request: web.Request) -> web.StreamResponse:
        server.requests.append((time.monotonic(), request))
        return await handler(request)

    app = web.Application()
    app.router.add_get("/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.url = URL(f"http://127.0.0.1:{runner.addresses[0][1]}/api")
    try:
        yield server
    finally:
        await runner.cleanup()


@asynccontextmanager
async def client(**poll: Any) -> AsyncIterator[BitbucketClient]:
    settings = {"timeout_seconds": 2.0, "backoff_seconds": 0.01, "max_backoff_seconds": 0.05, **poll}
    async with aiohttp.ClientSession() as session:
        yield BitbucketClient(session, PollConfig(**settings))


NOBODY = Credentials()


def page_handler(total: int, cap: int) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        start = int(request.query["start"])
        limit = min(int(request.query["limit"]), cap)
        values = list(range(start, min(start + limit, total)))
        last = start + limit >= total
        body: dict[str, Any] = {
            "values": values,
            "start": start,
            "limit": limit,
            "size": len(values),
            "isLastPage": last,
        }
        if not last:
            body["nextPageStart"] = start + len(values)
        return web.json_response(body)

    return handler


async def test_paging_follows_next_page_start_and_obeys_the_servers_limit() -> None:
    async with serve(page_handler(total=23, cap=5)) as server, client(page_limit=1000) as c:
        assert await c.get_all(server.url, NOBODY) == list(range(23))
    asked = [int(r.query["limit"]) for _, r in server.requests]
    assert asked == [1000, 5, 5, 5, 5]
    assert [int(r.query["start"]) for _, r in server.requests] == [0, 5, 10, 15, 20]


async def test_paging_stops_on_a_page_loop() -> None:
    async def loop(request: web.Request) -> web.Response:
        return web.json_response({"values": [1], "isLastPage": False, "nextPageStart": 0, "limit": 1})

    async with serve(loop) as server, client() as c:
        with pytest.raises(FetchError) as caught:
            await c.get_all(server.url, NOBODY)
    assert caught.value.reason == "page_loop"
    assert len(server.requests) == 1


async def test_paging_stops_past_the_page_cap() -> None:
    async with serve(page_handler(total=100, cap=10)) as server, client(max_pages=3) as c:
        with pytest.raises(FetchError) as caught:
            await c.get_all(server.url, NOBODY)
    assert caught.value.reason == "page_cap"
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    "body",
    [{"isLastPage": False, "values": [1]}, {"values": "nope"}, [1, 2, 3]],
    ids=["no-next-page-start", "values-not-a-list", "not-an-object"],
)
async def test_a_malformed_page_is_an_invalid_response(body: Any) -> None:
    async def bad(request: web.Request) -> web.Response:
        return web.json_response(body)

    async with serve(bad) as server, client() as c:
        with pytest.raises(FetchError) as caught:
            await c.get_all(server.url, NOBODY)
    assert caught.value.reason == "invalid_response"


def flaky(failures: list[web.Response]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return failures.pop(0) if failures else web.json_response({"ok": True})

    return handler


async def test_5xx_is_retried_with_backoff_until_success() -> None:
    failures = [web.json_response({}, status=502), web.json_response({}, status=500)]
    async with serve(flaky(failures)) as server, client(retries=2) as c:
        assert await c.get_json(server.url, NOBODY) == {"ok": True}
    assert len(server.requests) == 3


async def test_retries_give_up_with_the_last_reason() -> None:
    async def always_503(request: web.Request) -> web.Response:
        return web.json_response({"errors": [{"message": "Service is starting"}]}, status=503)

    async with serve(always_503) as server, client(retries=3) as c:
        with pytest.raises(FetchError) as caught:
            await c.get_json(server.url, NOBODY)
    assert caught.value.reason == "http_503"
    assert "Service is starting" in caught.value.detail
    assert len(server.requests) == 4


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
async def test_other_4xx_is_not_retried(status: int) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"errors": []}, status=status)

    async with serve(refuse) as server, client(retries=3) as c:
        with pytest.raises(FetchError) as caught:
            await c.get_json(server.url, NOBODY)
    assert caught.value.reason == f"http_{status}"
    assert caught.value.status == status
    assert len(server.requests) == 1


async def test_retry_after_is_honoured() -> None:
    failures = [web.Response(status=429, headers={"Retry-After": "0.3"})]
    async with serve(flaky(failures)) as server, client(retries=1, max_backoff_seconds=1.0) as c:
        assert await c.get_json(server.url, NOBODY) == {"ok": True}
    (first, _), (second, _) = server.requests
    assert second - first >= 0.3


async def test_a_retry_after_longer_than_the_backoff_cap_ends_the_poll_instead_of_waiting() -> None:
    failures = [web.Response(status=503, headers={"Retry-After": "120"})]
    async with serve(flaky(failures)) as server, client(retries=3, max_backoff_seconds=1.0) as c:
        with pytest.raises(FetchError) as caught:
            await c.get_json(server.url, NOBODY)
    assert caught.value.reason == "http_503"
    assert len(server.requests) == 1


async def test_a_timeout_is_retried_then_reported() -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    async with serve(slow) as server, client(retries=1, timeout_seconds=0.2) as c:
        with pytest.raises(FetchError) as caught:
            await c.get_json(server.url, NOBODY)
    assert caught.value.reason == "timeout"
    assert len(server.requests) == 2


async def test_a_refused_connection_is_a_connection_error() -> None:
    async with serve(flaky([])) as server:
        url = server.url
    async with client(retries=1) as c:
        with pytest.raises(FetchError) as caught:
            await c.get_json(url, NOBODY)
    assert caught.value.reason == "connection"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (
            lambda: web.Response(text="<html><body>Log in</body></html>", content_type="text/html"),
            "html_response",
        ),
        (lambda: web.Response(text="  <!DOCTYPE html>", content_type="application/json"), "html_response"),
        (lambda: web.Response(text='{"values": [', content_type="application/json"), "invalid_json"),
        (lambda: web.Response(body=b"\xff\xfe\x00", content_type="application/json"), "invalid_json"),
    ],
    ids=["login-page", "html-labelled-json", "truncated", "not-utf8"],
)
async def test_a_body_that_is_not_json_has_its_own_reason(response: Callable[[], web.Response], reason: str) -> None:
    async def handler(request: web.Request) -> web.Response:
        return response()

    async with serve(handler) as server, client(retries=2) as c:
        with pytest.raises(FetchError) as caught:
            await c.get_json(server.url, NOBODY)
    assert caught.value.reason == reason
    assert len(server.requests) == 1


async def test_basic_and_bearer_auth_headers() -> None:
    async with serve(flaky([])) as server, client() as c:
        await c.get_json(server.url, Credentials(username="admin", password=SecretStr("pa:ss")))
        await c.get_json(server.url, Credentials(token=SecretStr("tok123")))
        await c.get_json(server.url, NOBODY)
    headers = [r.headers.get("Authorization") for _, r in server.requests]
    assert headers[0] == "Basic " + base64.b64encode(b"admin:pa:ss").decode()
    assert headers[1] == "Bearer tok123"
    assert headers[2] is None


async def test_password_file_is_read_again_within_a_second_of_a_change(tmp_path: Any) -> None:
    from exporter.secret_files import RECHECK_SECONDS

    secret = tmp_path / "password"
    secret.write_text("first\n")
    credentials = Credentials(username="admin", password_file=secret)
    async with serve(flaky([])) as server, client() as c:
        await c.get_json(server.url, credentials)
        secret.write_text("second\n")
        await c.get_json(server.url, credentials)  # looked at less than a second ago: the cached one still
        await asyncio.sleep(RECHECK_SECONDS + 0.1)
        await c.get_json(server.url, credentials)
    decoded = [base64.b64decode(r.headers["Authorization"][6:]).decode() for _, r in server.requests]
    assert decoded == ["admin:first", "admin:first", "admin:second"]


async def test_concurrency_per_host_is_limited() -> None:
    in_flight = 0
    peak = 0

    async def slowish(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.json_response({})

    async with serve(slowish) as server, client(concurrency_per_host=3) as c:
        await asyncio.gather(*(c.get_json(server.url / str(i), NOBODY) for i in range(12)))
    assert peak == 3
    assert c.stats.requests[f"127.0.0.1:{server.url.port}"] == 12


async def test_a_page_of_a_million_tiny_rows_is_refused_before_it_is_decoded() -> None:
    # 1.2 M rows of {} in one 2.4 MB page, asked for 1000: not a page Bitbucket would send.
    flood = b'{"isLastPage": true, "values": [' + b",".join([b"{}"] * 1_200_000) + b"]}"

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=flood, content_type="application/json")

    decoded: list[bytes] = []

    def decode(body: bytes) -> Page[Any]:
        decoded.append(body)
        return parse_page(body)

    async with serve(handler) as server, client(page_limit=1000) as c:
        with pytest.raises(FetchError) as refused:
            async for _ in c.pages(server.url, NOBODY, decode):
                pass
    assert refused.value.reason == "too_many_rows" and decoded == []


async def test_a_walk_past_max_rows_is_refused_and_counts_as_a_failure() -> None:
    async with serve(page_handler(total=5000, cap=1000)) as server, client(page_limit=1000, max_rows=2000) as c:
        seen = 0
        with pytest.raises(FetchError) as refused:
            async for page in c.pages(server.url, NOBODY, parse_page):
                seen += len(page)
    assert refused.value.reason == "too_many_rows" and "poll.max_rows=2000" in refused.value.detail
    assert seen == 2000  # what came before the cap was handed on; the caller's walk fails as a whole
