"""The pollers driven one cycle at a time against in-process fakes (no sockets): what a cycle records, logging once
per change of state, and the mirror API's family detection and delayed-sync memory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from exporter.config import Credentials, PollConfig
from exporter.drift import RepoState
from exporter.rest import listing_work
from exporter.rest.api import ApiFamily, DelayedSync, MirrorApi, PrimaryApi
from exporter.rest.client import Affinity, BitbucketClient, ClockReading, HttpSetup, Page, decode_envelope
from exporter.rest.listing_work import Projects
from exporter.rest.listings import (
    Hashes,
    PrimaryRepositoryRow,
    ProjectRow,
    RepositoryHashes,
    SyncStatusRow,
)
from exporter.rest.models import (
    ClusterNode,
    MirrorServer,
    MirrorStatus,
    RefSyncQueue,
    SyncProgress,
    SyncSettings,
    UpstreamServer,
)
from exporter.rest.poller import MirrorPoller, PrimaryPoller, PublishedWalk
from exporter.rest.state import MirrorState, PrimaryState
from exporter.sources import FetchError, run_source
from exporter.state import Policy
from exporter.workers import Worker, WorkerPool

A, B = "a" * 64, "b" * 64


class FakePrimary(PrimaryApi):
    def __init__(self, repositories: dict[int, str]) -> None:
        self.repositories = repositories
        self.fail: FetchError | None = None

    def clock(self) -> ClockReading | None:
        return ClockReading(0.0, 0.0)

    async def mirror_servers(self) -> list[MirrorServer]:
        return [MirrorServer(id="1", name="sydney", baseUrl="https://sydney.example.com", enabled=True)]

    async def _pages(self) -> AsyncIterator[list[PrimaryRepositoryRow]]:
        if self.fail is not None:
            raise self.fail
        yield [
            PrimaryRepositoryRow(i, f"r{i}", ProjectRow("PRJ", 1), RepositoryHashes(h, "m"))
            for i, h in self.repositories.items()
        ]

    def repository_pages(self) -> AsyncIterator[list[PrimaryRepositoryRow]]:
        return self._pages()

    def repository_raw_pages(
        self, envelope: Callable[[bytes], Page[bytes]] = decode_envelope
    ) -> AsyncIterator[Page[bytes]]:
        return as_bytes(self._pages(), envelope)


class FakeMirror(MirrorApi):
    def __init__(self, hashes: dict[int, str], fail: dict[str, FetchError] | None = None) -> None:
        self.hashes = hashes
        self.fail = fail or {}

    @property
    def family(self) -> ApiFamily | None:
        return ApiFamily.V9

    def clock(self) -> ClockReading | None:
        return None

    def worker_http(self) -> HttpSetup | None:
        return None  # the pages below are read here and sent to the worker as bytes

    def _maybe_fail(self, source: str) -> None:
        if source in self.fail:
            raise self.fail[source]

    async def status(self) -> MirrorStatus:
        self._maybe_fail("status")
        return MirrorStatus(state="SYNCHRONIZED", memberCount=2)

    async def upstream(self) -> UpstreamServer:
        return UpstreamServer(id="u", state="INSTALLED")

    async def progress(self) -> SyncProgress:
        return SyncProgress()

    async def farm_nodes(self) -> list[ClusterNode]:
        return [ClusterNode(id="n1")]

    async def sync_settings(self) -> SyncSettings:
        return SyncSettings()

    async def delayed_sync(self) -> DelayedSync:
        return DelayedSync(True, "delayed-sync", 0)

    async def ref_changes_queue_count(self) -> int:
        return 0

    async def ref_changes_queue(self) -> RefSyncQueue:
        return RefSyncQueue()

    async def _pages(self) -> AsyncIterator[list[SyncStatusRow]]:
        self._maybe_fail("repo_sync_status")
        yield [SyncStatusRow(str(i), 0, hashes=Hashes(h, "m")) for i, h in self.hashes.items()]

    def repo_sync_status_pages(self) -> AsyncIterator[list[SyncStatusRow]]:
        return self._pages()

    def repo_sync_status_raw_pages(self) -> AsyncIterator[Page[bytes]]:
        return as_bytes(self._pages())


async def as_bytes(
    pages: AsyncIterator[list[Any]], envelope: Callable[[bytes], Page[bytes]] = decode_envelope
) -> AsyncIterator[Page[bytes]]:
    """Each page as Bitbucket sends it (the decoders' field names), its paging fields read by ``envelope``, for the
    worker process to decode."""
    async for rows in pages:
        yield envelope(msgspec.json.encode({"values": rows, "isLastPage": True}))


def pollers(primary: FakePrimary, mirror: FakeMirror, workers: WorkerPool) -> tuple[PrimaryPoller, MirrorPoller]:
    primary_poller = PrimaryPoller(PrimaryState(url="https://b.example.com"), primary, 30, workers)
    state = MirrorState(name="sydney", url="https://sydney.example.com")
    return primary_poller, MirrorPoller(state, mirror, primary_poller, Policy(), interval=30)


async def test_one_cycle_records_every_source_and_the_drift_of_this_cycles_listings(workers: WorkerPool) -> None:
    primary, mirror = pollers(FakePrimary({1: A, 2: B, 3: A}), FakeMirror({1: A, 2: A}), workers)
    await asyncio.gather(primary.poll_once(), mirror.poll_once())
    state = mirror.state
    assert all(source.success for source in state.sources().values())
    assert state.repo_sync_status.value is not None and state.repo_sync_status.value.repositories == 2
    report = state.drift
    assert report is not None
    assert (
        report.count(RepoState.IN_SYNC),
        report.count(RepoState.CONTENT_DRIFT),
        report.count(RepoState.MISSING),
    ) == (1, 1, 1)
    # First seen when the later of the two listings was read, never later than that.
    assert primary.state.repositories.last_success_timestamp is not None
    assert report.diverged_since["2"] <= max(
        primary.state.repositories.last_success_timestamp, state.repo_sync_status.last_success_timestamp or 0
    )
    assert state.api_family is ApiFamily.V9 and state.cycles == 1 and "SYNCHRONIZED" in state.states_seen


async def test_a_failed_listing_keeps_the_last_report_and_counts_its_reason(workers: WorkerPool) -> None:
    fake = FakeMirror({1: A})
    primary, mirror = pollers(FakePrimary({1: A}), fake, workers)
    await asyncio.gather(primary.poll_once(), mirror.poll_once())
    first = mirror.state.drift
    fake.fail["repo_sync_status"] = FetchError("http_401", "HTTP 401", status=401)
    await asyncio.gather(primary.poll_once(), mirror.poll_once())
    assert mirror.state.drift is first  # rides over; the collector ages it out by its inputs' time
    assert mirror.state.repo_sync_status.errors_total == {"http_401": 1}
    assert mirror.state.repo_sync_status.success is False


async def test_a_failed_primary_walk_leaves_drift_compared_with_its_last_listing_while_fresh(
    workers: WorkerPool,
) -> None:
    """The primary's last good listing rides over a failed read, in the worker too: the mirror's next cycle is still
    compared with it (never with nothing, never called fresh past stale_after)."""
    fake = FakePrimary({1: A, 2: B})
    primary, mirror = pollers(fake, FakeMirror({1: A, 2: A}), workers)
    await asyncio.gather(primary.poll_once(), mirror.poll_once())
    first = mirror.state.drift
    fake.fail = FetchError("timeout", "the primary did not answer")
    await asyncio.gather(primary.poll_once(), mirror.poll_once())
    assert primary.state.repositories.success is False
    report = mirror.state.drift
    assert report is not None and report is not first, "compared again this cycle"
    assert report.count(RepoState.CONTENT_DRIFT) == 1
    assert report.inputs_at == primary.state.repositories.last_success_timestamp, "as old as the listing it used"


async def test_a_mirror_cycle_that_outlasts_the_primarys_next_walk_is_compared_with_that_walk(
    workers: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interval shorter than a cycle: the primary's next walk reaches the worker before the mirror's comparison
    (which asked for the walk it knew). The mirror is compared with the later walk once the loop has published when
    it was read, and the report is dated by that read (drift was never known at such intervals before)."""
    fake = FakePrimary({1: A, 2: B})
    primary, mirror = pollers(fake, FakeMirror({1: A, 2: A}), workers)
    await asyncio.gather(primary.poll_once(), mirror.poll_once())
    assert mirror.state.drift is not None and mirror.state.drift.count(RepoState.CONTENT_DRIFT) == 1
    publish_walks = primary._publish_walks
    monkeypatch.setattr(primary, "_publish_walks", lambda: None)  # the next walk reaches the worker, unpublished
    fake.repositories[2] = A
    await primary.poll_once()
    worker = mirror.listing.worker
    known = primary.walk_in(worker)
    assert known is not None and known.walk < (primary._listings[worker].held_walk() or 0)
    waited_after: list[int] = []
    walk_after = primary.walk_after

    async def publishing_later(asked: Worker, walk: int, at_most: float) -> PublishedWalk | None:
        waited_after.append(walk)

        def publish() -> None:
            publish_walks()
            primary.listings.publish(time.monotonic())

        asyncio.get_running_loop().call_later(0.05, publish)
        return await walk_after(asked, walk, at_most)

    monkeypatch.setattr(primary, "walk_after", publishing_later)
    await mirror.poll_once()
    report = mirror.state.drift
    assert waited_after == [known.walk], "asked again once, after the later walk was published"
    assert report is not None and report.count(RepoState.CONTENT_DRIFT) == 0, "compared with the later walk"
    read = primary.state.repositories.last_success_timestamp
    assert read is not None and report.inputs_at >= read > known.read, "dated by the later walk's read"


async def test_run_source_logs_once_per_change_of_state(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exporter.poller")
    state = MirrorState(name="m", url="https://m.example.com").status
    outcomes: list[Callable[[], Any]] = []

    async def fetch() -> MirrorStatus:
        return outcomes.pop(0)()  # type: ignore[no-any-return]

    def fail(reason: str) -> Callable[[], MirrorStatus]:
        def raise_it() -> MirrorStatus:
            raise FetchError(reason, reason)

        return raise_it

    ok: Callable[[], MirrorStatus] = lambda: MirrorStatus()  # noqa: E731
    outcomes += [ok, fail("timeout"), fail("timeout"), fail("http_503"), fail("http_503"), ok, ok]
    for _ in range(7):
        await run_source("m", "status", state, fetch)
    messages = [(r.getMessage(), getattr(r, "reason", getattr(r, "after", None))) for r in caplog.records]
    assert messages == [("poll failed", "timeout"), ("poll failed", "http_503"), ("poll recovered", "http_503")]
    assert state.errors_total == {"timeout": 2, "http_503": 2}


class CountingClient(BitbucketClient):
    """Answers from a table of path -> body or status; counts requests per path."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(None, PollConfig())  # type: ignore[arg-type]
        self.answers = answers
        self.asked: dict[str, int] = {}

    async def get(
        self,
        url: URL,
        credentials: Credentials,
        decode: Callable[[bytes], Any],
        params: Any = None,
        affinity: Affinity | None = None,
    ) -> Any:
        path = url.path.removeprefix("/rest/mirroring/latest/")
        self.asked[path] = self.asked.get(path, 0) + 1
        await asyncio.sleep(0)  # let concurrent callers overlap
        answer = self.answers.get(path, 404)
        if isinstance(answer, int):
            raise FetchError(f"http_{answer}", f"HTTP {answer}", status=answer)
        return answer

    async def pages(
        self, url: URL, credentials: Credentials, decode: Any, params: Any = None, affinity: Affinity | None = None
    ) -> Any:
        yield Page(await self.get(url, credentials, decode)).values


async def test_the_api_family_is_detected_once_for_concurrent_callers_and_again_after_a_404() -> None:
    client = CountingClient({"upstreamServer": {"id": "u"}, "progress": {}, "farmNodes": [], "syncSettings": {}})
    api = MirrorApi(client, "https://m.example.com", Credentials())
    await asyncio.gather(api.progress(), api.farm_nodes(), api.sync_settings())
    assert client.asked["upstreamServer"] == 1 and api.family is ApiFamily.V9
    # Upgraded (or downgraded) behind our back: a family-specific 404 makes the next call detect again.
    del client.answers["progress"]
    with pytest.raises(FetchError):
        await api.progress()
    assert api.family is None
    await api.farm_nodes()
    assert client.asked["upstreamServer"] == 2


async def test_an_8x_mirror_is_asked_for_delayed_sync_once_then_only_for_out_of_sync_repos() -> None:
    client = CountingClient({"supportInfo/out-of-sync-repos/content": "1,2"})
    api = MirrorApi(client, "https://m.example.com", Credentials())
    for _ in range(3):
        assert await api.delayed_sync() == DelayedSync(True, "out-of-sync-repos", 2)
    assert client.asked["mirrorRepos/delayed-sync"] == 1
    assert client.asked["supportInfo/out-of-sync-repos/content"] == 3


async def test_the_primarys_unchanged_pages_are_followed_by_their_kept_paging_fields(
    workers: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of the same bytes as the same page of the previous walk is not decoded again, not even for its paging
    fields; the walk still reaches the last page, and an insertion at the head (every page changed) is decoded, each
    page once."""
    rows = [(i, f"{i:040x}") for i in range(1, 11)]
    per_page = 3
    app = listing_app(rows, per_page, failing_starts=[])
    read = count_decoded(monkeypatch)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        client = BitbucketClient(session, PollConfig(retries=0, page_limit=per_page))
        api = PrimaryApi(client, str(server.make_url("/")), Credentials())
        primary = PrimaryPoller(PrimaryState(url="https://b.example.com"), api, 30, workers)
        await primary.poll_once()
        assert len(read) == 4 and primary.state.repositories.value is not None
        first = primary.state.repositories.value
        read.clear()
        await primary.poll_once()
        assert read == [], "every page the same bytes: none decoded, not even its paging fields"
        assert primary.state.repositories.value is first, "no page changed: the same snapshot"
        rows.insert(0, (99, "f" * 40))  # every page boundary moves
        await primary.poll_once()
        assert len(read) == 4
        listing = primary.state.repositories.value
        assert listing is not None and sorted(listing, key=int) == [str(i) for i in (*range(1, 11), 99)]


async def test_a_changed_page_alone_is_read_anew_and_the_snapshot_equals_a_whole_reading(
    workers: WorkerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push on one page: that page alone is decoded, the other rows are the previous snapshot's objects, and the
    snapshot equals the listing; a walk that fails after a changed page keeps the previous snapshot and counts no
    push, and the next whole walk counts it once."""
    rows = [(i, f"{i:040x}") for i in range(1, 11)]
    per_page = 3
    failing_starts: list[int] = []
    app = listing_app(rows, per_page, failing_starts)
    read = count_decoded(monkeypatch)

    def listed() -> dict[str, str | None]:
        listing = primary.state.repositories.value
        assert listing is not None
        return {repo_id: repo.content for repo_id, repo in listing.items()}

    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
        client = BitbucketClient(session, PollConfig(retries=0, page_limit=per_page))
        api = PrimaryApi(client, str(server.make_url("/")), Credentials())
        primary = PrimaryPoller(PrimaryState(url="https://b.example.com"), api, 30, workers)
        await primary.poll_once()
        first = primary.state.repositories.value
        assert first is not None and listed() == {str(i): h for i, h in rows}
        read.clear()
        rows[4] = (5, "e" * 40)  # the second page (4, 5, 6)
        await primary.poll_once()
        second = primary.state.repositories.value
        assert len(read) == 1 and second is not None and second is not first
        assert listed() == {str(i): h for i, h in rows}
        assert all(second[str(i)] is first[str(i)] for i, _ in rows if i != 5), "unchanged rows are shared"
        assert primary.state.content_changes == 1
        rows[1] = (2, "d" * 40)  # the first page changes, then the third page fails
        failing_starts.append(6)
        await primary.poll_once()
        assert primary.state.repositories.value is second and primary.state.repositories.success is False
        assert primary.state.content_changes == 1, "a failed walk counts nothing"
        failing_starts.clear()
        await primary.poll_once()
        assert listed() == {str(i): h for i, h in rows}
        assert primary.state.content_changes == 2


def listing_app(rows: list[tuple[int, str]], per_page: int, failing_starts: list[int]) -> web.Application:
    """The primary's ``repos``, ``rows`` (id, content hash) in their order, ``per_page`` a page; a page starting at
    one of ``failing_starts`` answers 500. Both lists are read at each request."""

    async def repos(request: web.Request) -> web.Response:
        start = int(request.query["start"])
        if start in failing_starts:
            return web.Response(status=500)
        chunk = rows[start : start + per_page]
        last = start + per_page >= len(rows)
        values = [
            {"id": i, "slug": f"r{i}", "project": {"key": "PRJ", "id": 1}, "properties": {"contentHash": h}}
            for i, h in chunk
        ]
        page: dict[str, object] = {"values": values, "isLastPage": last, "limit": per_page, "start": start}
        if not last:
            page["nextPageStart"] = start + per_page
        return web.json_response(page)

    app = web.Application()
    app.router.add_get("/rest/mirroring/latest/repos", repos)
    return app


def count_decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rows of each page of the primary's the poller decodes, as it decodes them: its rows are the ones not kept
    for comparing (``listing_work.read_primary_page``, which the workers call too, with ``compared``)."""
    read: list[int] = []
    real = listing_work.rows_of

    def counted(page: Page[PrimaryRepositoryRow], projects: Projects, compared: bool = True) -> Any:
        if not compared:
            read.append(len(page.values))
        return real(page, projects, compared)

    monkeypatch.setattr(listing_work, "rows_of", counted)
    return read
