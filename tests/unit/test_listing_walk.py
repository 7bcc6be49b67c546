"""A node's listing walked in the worker (exporter/rest/listing_work.py ``walk_listing``), called in this process
against a real HTTP server on loopback: what the loop gets back (summary, traffic, clock, affinity cookies), pages
that did not change followed without being decoded again, counts true after an insertion at the head, and a walk
that fails leaving the listing held before it untouched."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter.config import Credentials, PollConfig, TlsConfig
from exporter.rest import listing_work
from exporter.rest.client import HttpSetup
from exporter.rest.listing_work import ListingWalk, WalkOutcome, walk_listing
from exporter.rest.state import RepoSyncSummary

TARGET = "sydney/node-1"
PASSWORD = "walk-secret"
PAGE = 3


pytestmark = pytest.mark.usefixtures("store")


@dataclass
class Node:
    """A node's repoSyncStatus, ``PAGE`` rows a page, behind basic auth; sets an affinity cookie on the first answer
    and records the cookies it is sent; ``fail_from``: pages from that start on answer 500."""

    rows: list[tuple[str, str, int]]
    fail_from: int | None = None
    requests: int = 0
    cookies_seen: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        expected = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"errors": [{"message": "no"}]}, status=401)
        self.cookies_seen.append(request.headers.get("Cookie", ""))
        start = int(request.query.get("start", "0"))
        if self.fail_from is not None and start >= self.fail_from:
            return web.json_response({"errors": [{"message": "boom"}]}, status=500)
        chunk = self.rows[start : start + PAGE]
        last = start + PAGE >= len(self.rows)
        values = [
            {"externalRepoId": repo_id, "failedSyncCount": failed, "hashes": {"content": content}}
            for repo_id, content, failed in chunk
        ]
        body: dict[str, object] = {"values": values, "isLastPage": last, "limit": PAGE, "start": start}
        if not last:
            body["nextPageStart"] = start + PAGE
        response = web.Response(body=msgspec.json.encode(body), content_type="application/json")
        if start == 0:
            response.set_cookie("AWSALB", "node-1")
        return response


@pytest.fixture
async def node() -> AsyncIterator[tuple[Node, str]]:
    served = Node([(str(i), f"h{i}", 1 if i == 4 else 0) for i in range(10)])
    app = web.Application()
    app.router.add_get("/rest/mirroring/latest/supportInfo/repoSyncStatus", served.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield served, str(server.make_url("/rest/mirroring/latest/supportInfo/repoSyncStatus"))
    finally:
        await server.close()
        if listing_work._http is not None:
            await listing_work._http[1].close()
            listing_work._http = None


def job(url: str, cookies: dict[str, str] | None = None) -> ListingWalk:
    poll = PollConfig(retries=0, page_limit=PAGE)
    setup = HttpSetup(poll, TlsConfig())
    credentials = Credentials(username="admin", password=PASSWORD)
    return ListingWalk(TARGET, url, credentials, cookies or {}, 1000, setup)


def decodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The pages the walk decodes (the rest it follows by their kept paging fields)."""
    decoded: list[bytes] = []
    real = listing_work._mirror_page

    def counting(
        page_digest: bytes,
        body: bytes,
        kept: listing_work.StoredPage | None = None,
        listing: listing_work.MirrorColumns | None = None,
    ) -> tuple[listing_work.StoredPage, listing_work.PageColumns]:
        decoded.append(body)
        return real(page_digest, body, kept, listing)

    monkeypatch.setattr(listing_work, "_mirror_page", counting)
    return decoded


async def test_a_walk_answers_the_summary_its_traffic_the_clock_and_the_cookies(node: tuple[Node, str]) -> None:
    served, url = node
    outcome = await walk_listing(job(url))
    assert outcome.error is None
    assert outcome.summary == RepoSyncSummary(10, 1, 1, None, {"4": 1})
    host = url.split("/")[2]
    assert outcome.traffic.requests == {host: 4} and served.requests == 4, "10 rows, 3 a page"
    assert outcome.traffic.response_bytes[host] > 0
    assert outcome.clock is not None, "read from the answers' Date header"
    assert outcome.cookies == {"AWSALB": "node-1"}
    assert served.cookies_seen[1:] == ["AWSALB=node-1"] * 3, "the walk keeps the affinity it was given"
    assert sorted(listing_work.STORE.listings[TARGET].rows) == sorted(str(i) for i in range(10))
    assert PASSWORD not in repr(outcome), "nothing the loop gets back carries the secret"


async def test_unchanged_pages_are_followed_without_decoding_and_an_insert_at_the_head_keeps_counts_true(
    node: tuple[Node, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served, url = node
    decoded = decodes(monkeypatch)
    await walk_listing(job(url))
    assert len(decoded) == 4
    decoded.clear()
    again = await walk_listing(job(url))
    assert decoded == [], "every page the same bytes: none decoded again"
    assert again.summary is not None and again.summary.repositories == 10
    served.rows.insert(0, ("new", "hn", 2))  # shifts every page boundary
    shifted = await walk_listing(job(url))
    assert len(decoded) == 4, "every page changed"
    assert shifted.summary == RepoSyncSummary(11, 2, 3, None, {"4": 1, "new": 2})
    assert sorted(listing_work.STORE.listings[TARGET].rows) == sorted(["new", *(str(i) for i in range(10))])


async def test_a_failed_walk_answers_its_error_and_leaves_the_listing_held_before(node: tuple[Node, str]) -> None:
    served, url = node
    await walk_listing(job(url))
    held = listing_work.STORE.listings[TARGET]
    served.fail_from = PAGE
    served.rows[0] = ("0", "changed", 0)
    outcome: WalkOutcome = await walk_listing(job(url, {"AWSALB": "node-1"}))
    assert outcome.summary is None and outcome.error is not None
    assert outcome.error.reason == "http_500"
    assert sum(outcome.traffic.requests.values()) == 2, "the failed walk's requests are counted too"
    assert listing_work.STORE.listings[TARGET] is held, "the listing before the walk, untouched"
    assert held.rows["0"].content == "h0"
    assert TARGET not in listing_work.STORE.walks, "the failed walk is not kept"


async def test_a_changed_http_setup_builds_a_new_session(node: tuple[Node, str]) -> None:
    _, url = node
    await walk_listing(job(url))
    assert listing_work._http is not None
    first = listing_work._http[1]
    await walk_listing(job(url))
    assert listing_work._http[1] is first, "the same setup keeps its session (and its connections)"
    changed = job(url)
    other = ListingWalk(
        changed.target,
        changed.url,
        changed.credentials,
        {},
        1000,
        HttpSetup(PollConfig(retries=0, page_limit=PAGE, timeout_seconds=5), TlsConfig()),
    )
    outcome = await walk_listing(other)
    assert outcome.error is None
    assert listing_work._http[1] is not first, "a reload's new poll settings: a new session"
