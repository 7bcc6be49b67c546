"""The Bitbucket mirroring endpoints the exporter reads, for both API families.

Bitbucket 8.x puts mirror-side resources under ``mirroring/latest/upstreamServers/{upstreamId}/...``; 9.0 flattened
them (``mirroring/latest/upstreamServer``, ``progress``, ``farmNodes``). ``supportInfo`` and ``/status`` are the same
in both. The family is detected per mirror: 9.x first, 8.x when 9.x answers 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from yarl import URL

from exporter.config import Credentials
from exporter.rest.client import BitbucketClient, ClockReading
from exporter.rest.listings import PrimaryRepositoryRow, SyncStatusRow, decode_repository_page, decode_sync_status_page
from exporter.rest.models import (
    ClusterNode,
    DelayedSyncRepository,
    MirrorServer,
    MirrorStatus,
    RefSyncQueue,
    SyncProgress,
    SyncSettings,
    UpstreamServer,
    parse_count,
    parse_list,
    parse_model,
    parse_repository_ids,
)
from exporter.sources import INVALID_RESPONSE, FetchError

REST = "rest/mirroring/latest"
DELAYED_SYNC_LIMIT = 100  # the documented maximum


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


class MirrorApi:
    def __init__(self, client: BitbucketClient, base_url: str, credentials: Credentials) -> None:
        self._client = client
        self._base_url = base_url
        self._credentials = credentials

    async def _get(self, *path: str, params: dict[str, str | int] | None = None) -> Any:
        return await self._client.get_json(rest_url(self._base_url, *path), self._credentials, params)

    def clock(self) -> ClockReading | None:
        """The mirror's clock, from the Date header of its latest answer."""
        return self._client.clock(self._base_url)

    async def status(self) -> MirrorStatus:
        url = URL(self._base_url.rstrip("/") + "/status")
        return parse_model(MirrorStatus, await self._client.get_json(url, self._credentials), "status")

    async def detect_layout(self) -> Layout:
        try:
            await self._get("upstreamServer")
            return Layout(ApiFamily.V9)
        except FetchError as exc:
            if exc.status != 404:
                raise
        servers = await self._client.get_all(rest_url(self._base_url, "upstreamServers"), self._credentials)
        upstreams = parse_list(UpstreamServer, servers, "upstreamServers")
        if not upstreams:
            raise FetchError(INVALID_RESPONSE, "upstreamServers: the mirror has no upstream server")
        return Layout(ApiFamily.V8, upstreams[0].id)

    def _mirror_path(self, layout: Layout, *path: str) -> tuple[str, ...]:
        if layout.family is ApiFamily.V8:
            assert layout.upstream_id is not None
            return ("upstreamServers", layout.upstream_id, *path)
        return path

    async def upstream(self, layout: Layout) -> UpstreamServer:
        path = self._mirror_path(layout) if layout.family is ApiFamily.V8 else ("upstreamServer",)
        return parse_model(UpstreamServer, await self._get(*path), "upstream server")

    async def progress(self, layout: Layout) -> SyncProgress:
        return parse_model(SyncProgress, await self._get(*self._mirror_path(layout, "progress")), "progress")

    async def farm_nodes(self, layout: Layout) -> list[ClusterNode]:
        return parse_list(ClusterNode, await self._get(*self._mirror_path(layout, "farmNodes")), "farmNodes")

    async def sync_settings(self, layout: Layout) -> SyncSettings:
        """Which projects the mirror carries (RestUpstreamSettings): 9.x ``syncSettings``; 8.x
        ``upstreamServers/{id}/settings`` (the 8.19 spec; there is no ``syncSettings`` on 8.x)."""
        path = ("syncSettings",) if layout.family is ApiFamily.V9 else self._mirror_path(layout, "settings")
        return parse_model(SyncSettings, await self._get(*path), "sync settings")

    async def delayed_sync(self) -> list[DelayedSyncRepository]:
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
        return parse_model(RefSyncQueue, await self._get("supportInfo", "refChangesQueue"), "refChangesQueue")

    def repo_sync_status_pages(self) -> AsyncIterator[list[SyncStatusRow]]:
        """Decoded one page at a time, so a large mirror's raw JSON is never all held at once."""
        url = rest_url(self._base_url, "supportInfo", "repoSyncStatus")
        return self._client.pages(url, self._credentials, decode_sync_status_page)


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

    async def mirror_servers(self) -> list[MirrorServer]:
        values = await self._client.get_all(rest_url(self._base_url, "mirrorServers"), self._credentials)
        return parse_list(MirrorServer, values, "mirrorServers")
