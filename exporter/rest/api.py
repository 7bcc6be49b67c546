"""The Bitbucket mirroring endpoints the exporter reads, for both API families.

Bitbucket 8.x puts mirror-side resources under ``mirroring/latest/upstreamServers/{upstreamId}/...``; 9.0 flattened
them (``mirroring/latest/upstreamServer``, ``progress``, ``farmNodes``). ``supportInfo`` and ``/status`` are the same
in both. The family is detected per mirror: 9.x first, 8.x when 9.x answers 404.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from exporter.config import Credentials
from exporter.rest.client import (
    ANONYMOUS,
    Affinity,
    BitbucketClient,
    ClockReading,
    HttpSetup,
    Page,
    as_int,
    decode_envelope,
    parse_json,
    parse_page,
    raw_page,
)
from exporter.rest.listings import PrimaryRepositoryRow, SyncStatusRow, decode_repository_page, decode_sync_status_page
from exporter.rest.models import (
    ClusterNode,
    DelayedSyncRepository,
    FarmSyncRequest,
    MirrorServer,
    MirrorStatus,
    RefSyncQueue,
    SyncProgress,
    SyncSettings,
    UpstreamServer,
    created_seconds,
    parse_count,
    parse_list,
    parse_model,
    parse_repository_ids,
)
from exporter.sources import INVALID_RESPONSE, FetchError

log = logging.getLogger("exporter.poller")

REST = "rest/mirroring/latest"
DELAYED_SYNC_LIMIT = 100  # the documented maximum
DELAYED_SYNC = "delayed-sync"
OUT_OF_SYNC_REPOS = "out-of-sync-repos"
QUEUE_SLICE = 100  # ref changes queue items validated between two turns of the event loop (200: 2-11 ms a slice)


def _as_sent(body: bytes) -> bytes:
    return body


class ApiFamily(StrEnum):
    V8 = "8.x"
    V9 = "9.x"


@dataclass(frozen=True)
class Layout:
    family: ApiFamily
    # 8.x only: the id that every mirror-side path is nested under.
    upstream_id: str | None = None


def normalize_url(url: str) -> str:
    """Base-URL comparison: a mirror's URL as configured and as the primary lists it rarely match to the letter, but
    scheme and host case, default ports and trailing slashes do not matter."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    port = parts.port
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = (parts.hostname or "").lower() + (f":{port}" if port and port != default else "")
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def rest_url(base_url: str, *path: str) -> URL:
    url = URL(base_url.rstrip("/") + "/" + REST)
    for part in path:
        url = url / part
    return url


@dataclass(frozen=True)
class DelayedSync:
    """Bitbucket's own list of repositories that missed the sync tolerance, where the version offers one."""

    available: bool
    endpoint: str  # "delayed-sync" (9.5+), "out-of-sync-repos" (8.x to 9.4, opt-in) or "" (neither)
    repositories: int | None = None


class MirrorApi:
    """One mirror's endpoints. It owns the API family: detected once (one detection in flight, shared by concurrent
    callers, so a down mirror costs one attempt per cycle), detected again after a 404 from a family-specific path
    (an upgrade across 9.0, a new upstream), and it remembers whether delayed-sync exists (9.5+)."""

    def __init__(self, client: BitbucketClient, base_url: str, credentials: Credentials, target: str = "") -> None:
        self._client = client
        self._base_url = base_url
        self._credentials = credentials
        self._target = target or base_url
        self._layout: Layout | None = None
        # The family before a 404 made it detect again.
        self._previous_family: ApiFamily | None = None
        self._detecting: asyncio.Future[Layout] | None = None
        self._delayed_sync_missing = False
        # Every request through the farm's load balancer keeps its affinity cookie: one node answers them all.
        self._affinity = Affinity()

    @property
    def family(self) -> ApiFamily | None:
        return self._layout.family if self._layout is not None else None

    async def _get(self, *path: str, params: dict[str, str | int] | None = None) -> Any:
        return await self._client.get_json(rest_url(self._base_url, *path), self._credentials, params, self._affinity)

    async def _get_body(self, *path: str) -> bytes:
        """The answer's bytes as sent, for a caller that reads them in pieces."""
        return await self._client.get(
            rest_url(self._base_url, *path), self._credentials, _as_sent, None, self._affinity
        )

    def clock(self) -> ClockReading | None:
        """The mirror's clock, from the Date header of its latest answer."""
        return self._client.clock(self._base_url)

    async def status(self) -> MirrorStatus:
        url = URL(self._base_url.rstrip("/") + "/status")
        # Public, and outside /rest: credentials there are refused and can lock the account (client.ANONYMOUS).
        body = await self._client.get_json(url, ANONYMOUS, affinity=self._affinity)
        return parse_model(MirrorStatus, body, "status")

    async def _detect(self) -> Layout:
        try:
            await self._get("upstreamServer")
            return Layout(ApiFamily.V9)
        except FetchError as exc:
            if exc.status != 404:
                raise
        servers = await self._client.get_all(
            rest_url(self._base_url, "upstreamServers"), self._credentials, affinity=self._affinity
        )
        upstreams = parse_list(UpstreamServer, servers, "upstreamServers")
        if not upstreams:
            raise FetchError(INVALID_RESPONSE, "upstreamServers: the mirror has no upstream server")
        return Layout(ApiFamily.V8, upstreams[0].id)

    async def layout(self) -> Layout:
        if self._layout is not None:
            return self._layout
        if self._detecting is None:
            self._detecting = asyncio.ensure_future(self._detect())
        detecting = self._detecting
        try:
            layout = await asyncio.shield(detecting)
        finally:
            if detecting.done() and self._detecting is detecting:
                self._detecting = None  # a failed detection is tried again by the next call, not cached
        if self._layout is None:
            if self._previous_family not in (None, layout.family):
                self._delayed_sync_missing = False  # upgraded across 9.5 perhaps: delayed-sync may exist now
            self._layout = layout
            log.info("mirror API detected", extra={"target": self._target, "family": layout.family})
        return layout

    async def _family_path(self, *path: str) -> Any:
        """GET a family-specific path: 8.x nests it under upstreamServers/{id}; a 404 there means detect again."""
        layout = await self.layout()
        if layout.family is ApiFamily.V8:
            assert layout.upstream_id is not None
            path = ("upstreamServers", layout.upstream_id, *path)
        try:
            return await self._get(*path)
        except FetchError as exc:
            if exc.status == 404 and self._layout is layout:
                self._previous_family = layout.family
                self._layout = None
            raise

    async def upstream(self) -> UpstreamServer:
        layout = await self.layout()
        path = () if layout.family is ApiFamily.V8 else ("upstreamServer",)
        return parse_model(UpstreamServer, await self._family_path(*path), "upstream server")

    async def progress(self) -> SyncProgress:
        return parse_model(SyncProgress, await self._family_path("progress"), "progress")

    async def farm_nodes(self) -> list[ClusterNode]:
        return parse_list(ClusterNode, await self._family_path("farmNodes"), "farmNodes")

    async def sync_settings(self) -> SyncSettings:
        """Which projects the mirror carries (RestUpstreamSettings): 9.x ``syncSettings``; 8.x
        ``upstreamServers/{id}/settings`` (the 8.19 spec; there is no ``syncSettings`` on 8.x)."""
        layout = await self.layout()
        path = "syncSettings" if layout.family is ApiFamily.V9 else "settings"
        return parse_model(SyncSettings, await self._family_path(path), "sync settings")

    async def delayed_sync(self) -> DelayedSync:
        """Bitbucket's own delayed list: 9.5+ delayed-sync, else the opt-in out-of-sync-repos of 8.x to 9.4."""
        if not self._delayed_sync_missing:
            try:
                return DelayedSync(True, DELAYED_SYNC, len(await self._delayed_sync_repositories()))
            except FetchError as exc:
                if exc.status != 404:
                    raise
                # Before 9.5: remember, so an 8.x mirror is not asked for delayed-sync every cycle.
                self._delayed_sync_missing = True
        try:
            return DelayedSync(True, OUT_OF_SYNC_REPOS, len(await self.out_of_sync_repositories()))
        except FetchError as exc:
            if exc.status == 409:
                # Opt-in (plugin.mirroring.repository.diagnostics.sync.enabled) and off: not an error.
                return DelayedSync(False, OUT_OF_SYNC_REPOS)
            if exc.status == 404:
                return DelayedSync(False, "")
            raise

    async def _delayed_sync_repositories(self) -> list[DelayedSyncRepository]:
        """9.5+: repositories some node has not synced within plugin.mirroring.repository.diagnostics.sync.tolerance.
        The server returns at most 100."""
        body = await self._get("mirrorRepos", "delayed-sync", params={"limit": DELAYED_SYNC_LIMIT})
        return parse_list(DelayedSyncRepository, body, "delayed-sync")

    async def out_of_sync_repositories(self) -> list[str]:
        """8.x to 9.4, opt-in: answers 409 unless plugin.mirroring.repository.diagnostics.sync.enabled=true."""
        body = await self._get("supportInfo", "out-of-sync-repos", "content")
        try:
            return parse_repository_ids(body)
        except ValueError as exc:
            raise FetchError(INVALID_RESPONSE, f"out-of-sync-repos: {exc}") from None

    async def ref_changes_queue_count(self) -> int:
        body = await self._get("supportInfo", "refChangesQueue", "count")
        try:
            return parse_count(body)
        except ValueError as exc:
            raise FetchError(INVALID_RESPONSE, f"refChangesQueue/count: {exc}") from None

    async def ref_changes_queue(self) -> RefSyncQueue:
        body = await self._get_body("supportInfo", "refChangesQueue")
        raw = raw_page(body)
        if raw is None or len(raw.values) <= QUEUE_SLICE:
            return parse_model(RefSyncQueue, parse_json(body), "refChangesQueue")
        # A mirror that is far behind queues thousands of items: parsed and validated at once, they would hold the
        # event loop (and every scrape) for tens of milliseconds (json.loads alone took 3-8 ms for 2,000 items at
        # 100k x 3 x 3). Split undecoded first (msgspec, a tenth of that), then read in slices, scrapes in between.
        items: list[FarmSyncRequest] = []
        for start in range(0, len(raw.values), QUEUE_SLICE):
            part = {"values": parse_json(b"[" + b",".join(raw.values[start : start + QUEUE_SLICE]) + b"]")}
            try:
                items += parse_model(RefSyncQueue, part, "refChangesQueue").values
            except FetchError:
                # The error, with the item's real index.
                return parse_model(RefSyncQueue, parse_json(body), "refChangesQueue")
            await asyncio.sleep(0)
        return RefSyncQueue(values=items)

    def repo_sync_status_pages(self) -> AsyncIterator[list[SyncStatusRow]]:
        """Decoded one page at a time, so a large mirror's raw JSON is never all held at once."""
        url = rest_url(self._base_url, "supportInfo", "repoSyncStatus")
        return self._client.pages(url, self._credentials, decode_sync_status_page, affinity=self._affinity)

    def repo_sync_status_raw_pages(self) -> AsyncIterator[Page[bytes]]:
        """The same pages as bytes, for a worker process to decode (exporter/rest/listing_work.py)."""
        url, credentials, affinity = self.repo_sync_status_location()
        return self._client.raw_pages(url, credentials, affinity=affinity)

    def repo_sync_status_location(self) -> tuple[URL, Credentials, Affinity]:
        """Where the node-local listing is read, with which credentials, and the affinity its walk keeps: for a
        worker process that walks it (exporter/rest/listing_work.py ``walk_listing``)."""
        return rest_url(self._base_url, "supportInfo", "repoSyncStatus"), self._credentials, self._affinity

    @property
    def client(self) -> BitbucketClient:
        return self._client

    def worker_http(self) -> HttpSetup | None:
        """How a worker process builds its session to walk the listing; None: the loop walks it."""
        return self._client.worker_http


NEWEST_FIRST, OLDEST_FIRST, UNKNOWN_ORDER = "newest_first", "oldest_first", "unknown"


@dataclass(frozen=True)
class ActivityPage:
    """When a repository's ref changes reached the primary, in seconds on the primary's clock, sorted newest first by
    the exporter (nothing published says in which order the server lists them): the pages read, contiguous in the
    server's order. ``complete`` when they hold every ref change (the oldest is the repository's creation);
    ``order`` as the first page showed it, which says whether the newest or the oldest ref change is among them."""

    pushed: tuple[float, ...]
    complete: bool
    order: str = NEWEST_FIRST

    @property
    def has_newest(self) -> bool:
        return self.complete or self.order == NEWEST_FIRST

    @property
    def has_oldest(self) -> bool:
        return self.complete or self.order == OLDEST_FIRST


def listed_order(dates: list[float]) -> str:
    """The order a page lists its ref changes in, from its first and last dates."""
    if len(dates) >= 2 and dates[0] > dates[-1]:
        return NEWEST_FIRST
    if len(dates) >= 2 and dates[0] < dates[-1]:
        return OLDEST_FIRST
    return UNKNOWN_ORDER


class PrimaryApi:
    def __init__(self, client: BitbucketClient, base_url: str, credentials: Credentials) -> None:
        self._client = client
        self._base_url = base_url
        self._credentials = credentials

    def clock(self) -> ClockReading | None:
        return self._client.clock(self._base_url)

    def repository_pages(self) -> AsyncIterator[list[PrimaryRepositoryRow]]:
        """The primary's repositories with content and metadata hashes, a page at a time."""
        url = rest_url(self._base_url, "repos")
        return self._client.pages(url, self._credentials, decode_repository_page)

    def repository_raw_pages(
        self, envelope: Callable[[bytes], Page[bytes]] = decode_envelope
    ) -> AsyncIterator[Page[bytes]]:
        """The same pages as bytes, decoded here and by the worker processes; ``envelope`` reads a page's paging
        fields (``decode_envelope``, or one that knows them already for bytes it has seen)."""
        url = rest_url(self._base_url, "repos")
        return self._client.walk(url, self._credentials, envelope)

    async def ref_change_activities(self, project_key: str, slug: str, limit: int, max_pages: int = 1) -> ActivityPage:
        """A repository's ref changes (REPO_ADMIN): when each push reached the primary. One page of ``limit`` when
        it lists the newest first; else read on (at most ``max_pages``) towards the newest, so the pages hold the
        newest push whenever the listing ends within them."""
        # Its own walk, not ``BitbucketClient.pages``: it stops after the first page when that lists newest first, and
        # must still know whether the page was the last (then the creation is among the dates).
        url = self._repository(project_key, slug)
        dates: list[float] = []
        order = UNKNOWN_ORDER
        complete = False
        start = 0
        for _ in range(max(1, max_pages)):
            params: dict[str, str | int] = {"limit": limit, "start": start}
            page = await self._client.get(url / "ref-change-activities", self._credentials, parse_page, params)
            try:
                listed = [created_seconds(value) for value in page.values]
            except ValueError as exc:
                raise FetchError(INVALID_RESPONSE, f"ref-change-activities: {exc}") from None
            if not dates:
                order = listed_order(listed)
            dates += listed
            next_start = as_int(page.next_page_start)
            if page.is_last_page is True or next_start is None or next_start <= start:
                complete = page.is_last_page is True
                break
            if order == NEWEST_FIRST:
                break  # the newest are on the first page: what the lag needs
            start = next_start
        return ActivityPage(tuple(sorted(dates, reverse=True)), complete, order)

    def _repository(self, project_key: str, slug: str) -> URL:
        return URL(self._base_url.rstrip("/") + "/rest/api/latest/projects") / project_key / "repos" / slug

    async def commit(self, project_key: str, slug: str, commit_id: str) -> str | None:
        """The full id of a commit of the repository (``commit_id`` may be abbreviated), None when the primary has
        no such commit (404)."""
        try:
            found = await self._client.get_json(self._repository(project_key, slug) / "commits" / commit_id,
                                                self._credentials)  # fmt: skip
        except FetchError as exc:
            if exc.status == 404:
                return None
            raise
        full = found.get("id") if isinstance(found, dict) else None
        if not isinstance(full, str) or not full.lower().startswith(commit_id.lower()):
            raise FetchError(INVALID_RESPONSE, "commits/{id}: no id, or another commit's")
        return full.lower()

    async def first_pushed(
        self, project_key: str, slug: str, commit_id: str, limit: int, max_pages: int
    ) -> float | None:
        """When a ref change first named ``commit_id`` as its new hash (the primary's clock, seconds): its push. None
        when the pages read (at most ``max_pages``, in whatever order the server lists) do not name it."""
        url = self._repository(project_key, slug) / "ref-change-activities"
        found: list[float] = []
        read = 0
        async for values in self._client.pages(url, self._credentials, parse_page, {"limit": limit}):
            for value in values:
                change = value.get("refChange") if isinstance(value, dict) else None
                if isinstance(change, dict) and str(change.get("toHash", "")).lower() == commit_id:
                    try:
                        found.append(created_seconds(value))
                    except ValueError:
                        continue
            read += 1
            if read >= max_pages:
                break
        return min(found) if found else None

    async def mirror_servers(self) -> list[MirrorServer]:
        values = await self._client.get_all(rest_url(self._base_url, "mirrorServers"), self._credentials)
        return parse_list(MirrorServer, values, "mirrorServers")
