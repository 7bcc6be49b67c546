"""Background poll loops, one per target.

Prometheus' "Writing exporters" guide asks exporters to fetch on scrape, except where a fetch is slow or expensive
for the monitored system; a Bitbucket mirror's paged supportInfo endpoints are both, so this exporter polls in the
background on its own interval and every scrape renders the latest snapshot. Within a target, each source runs on
its own: one failing endpoint never blocks another, and a failed source keeps its last good value.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from datetime import datetime

from exporter.config import PRIMARY_TARGET
from exporter.drift import Analysis, MirrorRepo, PrimaryRepo
from exporter.rest.api import MirrorApi, PrimaryApi
from exporter.rest.listings import sync_seconds
from exporter.rest.models import MirrorServer, MirrorStatus
from exporter.sources import FetchError, FirstCycle, free_later, run_source
from exporter.state import MirrorState, Policy, PrimaryState, RefQueue, RepoSyncSummary

# Repositories classified between two yields to the event loop: about a millisecond of work.
ANALYSIS_CHUNK = 1000


class PrimaryListings:
    """Hands each cycle's primary listing to the mirrors of the same cycle.

    A mirror that finished reading before the primary must compare against the primary's listing of this cycle, not
    the previous one, or a push would show up to two intervals late. Cycles of the primary and of every mirror start
    together (``poll_forever`` with one anchor), so "this cycle's" listing is one whose read began at most ``slack``
    seconds before the mirror's cycle did."""

    def __init__(self, slack: float) -> None:
        self._slack = slack
        self._started = -math.inf  # monotonic start of the latest finished read
        self._finished = asyncio.Event()

    def publish(self, started: float) -> None:
        self._started = started
        self._finished.set()
        self._finished = asyncio.Event()

    async def wait_for_cycle(self, cycle_started: float, at_most: float) -> None:
        """Wait until a read that began with the cycle that began at ``cycle_started`` has finished (successfully or
        not), or ``at_most`` seconds have passed."""
        deadline = time.monotonic() + at_most
        while self._started < cycle_started - self._slack and (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), timeout=remaining)


class MirrorPoller:
    def __init__(
        self,
        state: MirrorState,
        api: MirrorApi,
        primary: PrimaryPoller,
        policy: Policy,
        interval: float = 30.0,
    ) -> None:
        self.state = state
        self.first_cycle = FirstCycle(interval)
        self._api = api
        self._primary = primary
        self._policy = policy
        self._interval = interval

    async def _status(self) -> MirrorStatus:
        try:
            return await self._api.status()
        except FetchError as exc:
            # A starting mirror answers 503 with its state; keep the state, the poll still counts as failed.
            if isinstance(exc.body, dict) and isinstance(exc.body.get("state"), str):
                self.state.states_seen.add(exc.body["state"])
                self.state.status.value = MirrorStatus(state=exc.body["state"])
                self.state.status.value_timestamp = time.time()
            raise

    async def _ref_changes_queue(self) -> RefQueue:
        length, queue = await asyncio.gather(self._api.ref_changes_queue_count(), self._api.ref_changes_queue())
        by_type: dict[str, int] = {}
        for item in queue.values:
            kind = (item.type or "unknown").lower()
            by_type[kind] = by_type.get(kind, 0) + 1
        return RefQueue(length=length, items_by_type=by_type)

    async def _repo_sync_status(self) -> tuple[RepoSyncSummary, dict[str, MirrorRepo]]:
        """The summary for the state, and the mirror's hashes for this cycle's drift analysis (the bulk of the
        memory, held only until the analysis has read them)."""
        failing = failed_syncs = 0
        # ISO dates and numeric ones apart: comparing datetimes needs no conversion per row (sync_seconds at the end).
        newest: datetime | None = None
        newest_number: float | None = None
        rows: dict[str, MirrorRepo] = {}
        async for page in self._api.repo_sync_status_pages():
            for repo in page:
                if repo.failed_sync_count > 0:
                    failing += 1
                    failed_syncs += repo.failed_sync_count
                when = repo.last_sync_date
                if type(when) is float:
                    if newest_number is None or when > newest_number:
                        newest_number = when
                elif when is not None and (newest is None or when > newest):  # type: ignore[operator]
                    newest = when  # type: ignore[assignment]
                hashes = repo.hashes
                rows[repo.external_repo_id] = MirrorRepo(
                    hashes.content if hashes else None, hashes.metadata if hashes else None, repo.failed_sync_count
                )
        newest_seconds = max((sync_seconds(when) for when in (newest, newest_number) if when is not None), default=None)
        return RepoSyncSummary(len(rows), failing, failed_syncs, newest_seconds), rows

    def _scope(self) -> frozenset[str] | None:
        settings = self.state.sync_settings.value
        if settings is not None and settings.mode.upper() == "SELECTED_PROJECTS":
            return frozenset(settings.project_ids)
        return None

    async def _analyse_drift(self, rows: dict[str, MirrorRepo] | None, cycle_started: float) -> None:
        """Join this cycle's mirror hashes with this cycle's primary ones (docs/metrics.md, "Freshness")."""
        if rows is None:
            return  # this cycle's listing failed: the last report rides over until its inputs are stale
        mirror_read = self.state.repo_sync_status.last_success_timestamp
        # Bounded: a primary slower than an interval leaves this cycle with the latest listing, if still fresh.
        await self._primary.listings.wait_for_cycle(cycle_started, self._interval)
        listing = self._primary.state.repositories
        primary, primary_read = listing.value, listing.last_success_timestamp
        if primary is None or primary_read is None or mirror_read is None:
            return
        if time.time() - primary_read > self._policy.stale_after:
            return  # no fresh primary listing: drift stays unknown (the report ages out), never computed from old data
        previous = self.state.drift.diverged_since if self.state.drift is not None else {}
        # A divergence first seen here began no later than the later read that shows it: lag is never overstated.
        seen_at = max(primary_read, mirror_read)
        analysis = Analysis(primary, self._scope(), rows, previous, seen_at, self._policy.keep_all)
        del rows, primary  # the analysis holds them now, and is freed off the event loop
        # Let scrapes in between chunks: a large primary takes tens of milliseconds per mirror.
        while not analysis.step(ANALYSIS_CHUNK):  # noqa: ASYNC110 (yielding, not waiting for a condition)
            await asyncio.sleep(0)
        self.state.drift = analysis.report(inputs_at=min(primary_read, mirror_read))
        free_later(analysis)
        del analysis

    async def poll_once(self) -> None:
        s, name, api = self.state, self.state.name, self._api
        cycle_started = time.monotonic()
        rows: dict[str, MirrorRepo] | None = None

        async def repo_sync_status() -> RepoSyncSummary:
            nonlocal rows
            summary, rows = await self._repo_sync_status()
            return summary

        await asyncio.gather(
            run_source(name, "status", s.status, self._status),
            run_source(name, "upstream", s.upstream, api.upstream),
            run_source(name, "progress", s.progress, api.progress),
            run_source(name, "farm_nodes", s.farm_nodes, api.farm_nodes),
            run_source(name, "ref_changes_queue", s.ref_changes_queue, self._ref_changes_queue),
            run_source(name, "repo_sync_status", s.repo_sync_status, repo_sync_status),
            run_source(name, "sync_settings", s.sync_settings, api.sync_settings),
            run_source(name, "delayed_sync", s.delayed_sync, api.delayed_sync),
        )
        await self._analyse_drift(rows, cycle_started)
        s.api_family = api.family
        s.clock = api.clock()
        if s.status.success and s.status.value is not None:
            s.states_seen.add(s.status.value.state)
        s.cycles += 1
        self.first_cycle.set()


class PrimaryPoller:
    def __init__(
        self,
        state: PrimaryState,
        api: PrimaryApi,
        interval: float,
        on_mirror_servers: Callable[[list[MirrorServer]], None] | None = None,
    ) -> None:
        self.state = state
        self._api = api
        # A mirror waits for this cycle's listing; cycles start together within a fraction of the interval.
        self.listings = PrimaryListings(slack=min(interval / 2, 1.0))
        self._on_mirror_servers = on_mirror_servers

    async def _published_repositories(self) -> None:
        started = time.monotonic()
        try:
            await run_source(PRIMARY_TARGET, "repositories", self.state.repositories, self._repositories)
        finally:
            self.listings.publish(started)

    async def _repositories(self) -> dict[str, PrimaryRepo]:
        repositories: dict[str, PrimaryRepo] = {}
        # Unchanged repositories keep their object from the previous snapshot, so two snapshots share most of their
        # memory while this one is built (at 100,000 repositories, tens of MB).
        previous = self.state.repositories.value or {}
        # One (id, key) pair of strings per project, shared by its repositories rather than one copy each.
        projects: dict[tuple[int | None, str], tuple[str | None, str]] = {}
        async for page in self._api.repository_pages():
            for repo in page:
                hashes = repo.properties
                project = (repo.project.id, repo.project.key)
                if project not in projects:
                    projects[project] = (str(project[0]) if project[0] is not None else None, project[1])
                project_id, project_key = projects[project]
                repo_id = str(repo.id)
                row = PrimaryRepo(
                    project_id,
                    project_key,
                    repo.slug,
                    hashes.content_hash if hashes else None,
                    hashes.metadata_hash if hashes else None,
                )
                kept = previous.get(repo_id)
                repositories[repo_id] = kept if kept == row else row
        return repositories

    async def poll_once(self) -> None:
        s = self.state
        await asyncio.gather(
            run_source(PRIMARY_TARGET, "mirror_servers", s.mirror_servers, self._api.mirror_servers),
            self._published_repositories(),
        )
        s.clock = self._api.clock()
        s.cycles += 1
        if self._on_mirror_servers is not None and s.mirror_servers.success and s.mirror_servers.value is not None:
            self._on_mirror_servers(s.mirror_servers.value)
