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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from sys import intern
from typing import Any, Protocol

from exporter.config import PRIMARY_TARGET
from exporter.drift import Analysis, DriftReport, MirrorRepo, PrimaryRepo
from exporter.rest.api import MirrorApi, PrimaryApi
from exporter.rest.client import ClockReading
from exporter.rest.listings import sync_seconds
from exporter.rest.models import MirrorServer, MirrorStatus, SyncSettings
from exporter.rest.push_dating import PushDating
from exporter.rest.state import MirrorState, PrimaryState, RefQueue, RepoSyncSummary
from exporter.sources import FetchError, FirstCycle, free_later, run_source
from exporter.state import Policy

# A poll loop on the REST grid: ``loop(poll, polled_before)`` (exporter/rest/polling.py), so node loops started by a
# mirror's cycle meet the primary's cycles as the mirrors' own loops do.
GridLoop = Callable[[Callable[[], Awaitable[None]], bool], Coroutine[Any, Any, None]]


class NodeCycle(Protocol):
    """A mirror's nodes, read one by one (exporter/rest/nodes.py ``NodeFleet``): after the mirror's farm-wide
    sources, follow the node list and take the union of the nodes' cycles."""

    async def cycle(self, cycle_started: float) -> None: ...


# Repositories classified between two yields to the event loop: about a millisecond of work.
ANALYSIS_CHUNK = 1000


class CycleHandoff:
    """Hands the outcome of one poller's cycle to pollers of the same cycle: the primary's listing to the mirrors,
    each node's listing to its mirror's union.

    A mirror that finished reading before the primary must compare against the primary's listing of this cycle, not
    the previous one, or a push would show up to two intervals late. Cycles of every REST poller start together
    (``poll_forever`` with one anchor), so "this cycle's" outcome is one whose cycle began at most ``slack`` seconds
    before the waiting poller's did."""

    def __init__(self, slack: float) -> None:
        self._slack = slack
        self._started = -math.inf  # monotonic start of the latest finished cycle
        self._finished = asyncio.Event()

    def publish(self, started: float) -> None:
        self._started = started
        self._finished.set()
        self._finished = asyncio.Event()

    def of_cycle(self, cycle_started: float) -> bool:
        """Whether the latest published cycle is the one that began with ``cycle_started`` (or a later one)."""
        return self._started >= cycle_started - self._slack

    async def wait_for_cycle(self, cycle_started: float, at_most: float) -> None:
        """Wait until a cycle that began with the one that began at ``cycle_started`` has finished (successfully or
        not), or ``at_most`` seconds have passed."""
        deadline = time.monotonic() + at_most
        while not self.of_cycle(cycle_started) and (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), timeout=remaining)


def cycle_slack(interval: float) -> float:
    """How far apart cycles of one grid point may start: a fraction of the interval."""
    return min(interval / 2, 1.0)


async def read_status(api: MirrorApi, states_seen: set[str]) -> MirrorStatus:
    """``/status`` of a mirror or one of its nodes."""
    try:
        return await api.status()
    except FetchError as exc:
        # A starting mirror answers 503 with its state; keep the state, the poll still counts as failed.
        if isinstance(exc.body, dict) and isinstance(exc.body.get("state"), str):
            states_seen.add(exc.body["state"])
            exc.learned = MirrorStatus(state=exc.body["state"])
        raise


async def read_repo_sync_status(api: MirrorApi) -> tuple[RepoSyncSummary, dict[str, MirrorRepo]]:
    """The summary for the state, and the hashes for this cycle's drift analysis (the bulk of the memory, held only
    until the analysis has read them).

    Ids and hashes are interned, as the primary's are: the copies of an in-step farm (every node of every mirror,
    read side by side) then hold one string per repository and hash between them, not one each."""
    failed_by_repo: dict[str, int] = {}
    # ISO dates and numeric ones apart: comparing datetimes needs no conversion per row (sync_seconds at the end).
    newest: datetime | None = None
    newest_number: float | None = None
    rows: dict[str, MirrorRepo] = {}
    async for page in api.repo_sync_status_pages():
        for repo in page:
            if repo.failed_sync_count > 0:
                failed_by_repo[repo.external_repo_id] = repo.failed_sync_count
            when = repo.last_sync_date
            if type(when) is float:
                if newest_number is None or when > newest_number:
                    newest_number = when
            elif when is not None and (newest is None or when > newest):  # type: ignore[operator]
                newest = when  # type: ignore[assignment]
            hashes = repo.hashes
            content = intern(hashes.content) if hashes and hashes.content is not None else None
            metadata = intern(hashes.metadata) if hashes and hashes.metadata is not None else None
            rows[intern(repo.external_repo_id)] = MirrorRepo(
                content, metadata, repo.failed_sync_count, repo.synced_at()
            )
    newest_seconds = max((sync_seconds(when) for when in (newest, newest_number) if when is not None), default=None)
    summary = RepoSyncSummary(
        len(rows), len(failed_by_repo), sum(failed_by_repo.values()), newest_seconds, failed_by_repo
    )
    return summary, rows


class ListingRead:
    """One cycle's read of a mirror's (or node's) listing, as a source: calling it returns the summary for the state
    and keeps the rows for this cycle's drift analysis, which takes them (``take``)."""

    def __init__(self, api: MirrorApi) -> None:
        self._api = api
        self._rows: dict[str, MirrorRepo] | None = None

    async def __call__(self) -> RepoSyncSummary:
        summary, self._rows = await read_repo_sync_status(self._api)
        return summary

    @property
    def ready(self) -> bool:
        """Whether this cycle's read succeeded and its rows are still here to take."""
        return self._rows is not None

    def take(self) -> dict[str, MirrorRepo]:
        """The rows (only when ``ready``); the reader keeps no reference. Pass them straight on: the analysis frees
        them off the event loop, which it cannot do while a caller still holds them."""
        rows, self._rows = self._rows, None
        if rows is None:
            raise RuntimeError("no rows to take: the read failed or they were taken")
        return rows


def scope_of(settings: SyncSettings | None) -> frozenset[str] | None:
    """The primary project ids a mirror carries (its sync settings); None: all."""
    if settings is not None and settings.mode.upper() == "SELECTED_PROJECTS":
        return frozenset(settings.project_ids)
    return None


@dataclass(frozen=True)
class DriftJob:
    """One drift analysis: a mirror's (or one node's) hashes of this cycle against the primary's of this cycle."""

    primary: PrimaryPoller
    policy: Policy
    interval: float
    per_node: bool = False
    # Dates each divergence from its push (lag.from_push); None: lag from first sight only.
    dating: PushDating | None = None

    async def run(
        self,
        rows: dict[str, MirrorRepo],
        mirror_read: float | None,
        previous: DriftReport | None,
        scope: frozenset[str] | None,
        cycle_started: float,
        mirror_clock: ClockReading | None = None,
        mirror_started: float | None = None,
    ) -> DriftReport | None:
        """The report, or None when there is no fresh primary listing to compare with (docs/metrics.md,
        "Freshness"): drift then stays unknown, never computed from old data."""
        # Bounded: a primary slower than an interval leaves this cycle with the latest listing, if still fresh.
        await self.primary.listings.wait_for_cycle(cycle_started, self.interval)
        listing = self.primary.state.repositories
        primary, primary_read = listing.value, listing.last_success_timestamp
        primary_started = listing.value_started_timestamp
        if primary is None or primary_read is None or mirror_read is None:
            return None
        if time.time() - primary_read > self.policy.stale_after:
            return None
        since = previous.diverged_since if previous is not None else {}
        # A divergence first seen here began no later than the later read that shows it: lag is never overstated.
        seen_at = max(primary_read, mirror_read)
        analysis = Analysis(primary, scope, rows, since, seen_at, self.policy.keep_all, self.per_node)
        del rows, primary  # the analysis holds them now, and is freed off the event loop
        # Let scrapes in between chunks: a large primary takes tens of milliseconds per mirror.
        while not analysis.step(ANALYSIS_CHUNK):  # noqa: ASYNC110 (yielding, not waiting for a condition)
            await asyncio.sleep(0)
        rows_from = 0.0  # when both walks began; unknown: nothing is proven by this report
        if primary_started is not None and mirror_started is not None:
            rows_from = min(primary_started, mirror_started)
        report = analysis.report(inputs_at=min(primary_read, mirror_read), rows_from=rows_from)
        free_later(analysis)
        del analysis
        if self.dating is not None and (listing_now := self.primary.state.repositories.value) is not None:
            report = await self.dating.date(report, listing_now, mirror_clock)
        return report


class MirrorPoller:
    def __init__(
        self,
        state: MirrorState,
        api: MirrorApi,
        primary: PrimaryPoller,
        policy: Policy,
        interval: float = 30.0,
        nodes: NodeCycle | None = None,
        dating: PushDating | None = None,
    ) -> None:
        self.state = state
        self.first_cycle = FirstCycle(interval)
        self._api = api
        self._drift = DriftJob(primary, policy, interval, dating=dating)
        self._interval = interval
        # With nodes configured, the node-local listing is read at each node (rest/nodes.py), not at the farm URL.
        self._nodes = nodes
        state.by_node = nodes is not None
        if nodes is None:
            state.nodes = {}  # a reload that dropped the nodes block: their series go

    async def _ref_changes_queue(self) -> RefQueue:
        length, queue = await asyncio.gather(self._api.ref_changes_queue_count(), self._api.ref_changes_queue())
        by_type: dict[str, int] = {}
        for item in queue.values:
            kind = (item.type or "unknown").lower()
            by_type[kind] = by_type.get(kind, 0) + 1
        return RefQueue(length=length, items_by_type=by_type)

    async def poll_once(self) -> None:
        mirror, name, api = self.state, self.state.name, self._api
        cycle_started = time.monotonic()
        read = ListingRead(api)
        # Without nodes, the farm URL's listing: one node's, held by the load balancer's affinity cookie.
        listing = () if self._nodes is not None else (read,)
        await asyncio.gather(
            run_source(name, "status", mirror.status, lambda: read_status(api, mirror.states_seen)),
            run_source(name, "upstream", mirror.upstream, api.upstream),
            run_source(name, "progress", mirror.progress, api.progress),
            run_source(name, "farm_nodes", mirror.farm_nodes, api.farm_nodes),
            run_source(name, "ref_changes_queue", mirror.ref_changes_queue, self._ref_changes_queue),
            run_source(name, "sync_settings", mirror.sync_settings, api.sync_settings),
            run_source(name, "delayed_sync", mirror.delayed_sync, api.delayed_sync),
            *(run_source(name, "repo_sync_status", mirror.repo_sync_status, fetch) for fetch in listing),
        )
        if self._nodes is not None:
            await self._nodes.cycle(cycle_started)
        elif read.ready:  # this cycle's listing failed: the last report rides over until its inputs are stale
            listing_state = mirror.repo_sync_status
            mirror_read, walk_began = listing_state.last_success_timestamp, listing_state.value_started_timestamp
            scope = scope_of(mirror.sync_settings.value)
            report = await self._drift.run(
                read.take(), mirror_read, mirror.drift, scope, cycle_started, api.clock(), walk_began
            )
            if report is not None:
                mirror.drift = report
        mirror.api_family = api.family
        mirror.clock = api.clock()
        if mirror.status.success and mirror.status.value is not None:
            mirror.states_seen.add(mirror.status.value.state)
        mirror.cycles += 1
        self.first_cycle.set()


class PrimaryPoller:
    def __init__(
        self,
        state: PrimaryState,
        api: PrimaryApi,
        interval: float,
        on_mirror_servers: Callable[[list[MirrorServer]], Awaitable[None]] | None = None,
    ) -> None:
        self.state = state
        self._api = api
        # A mirror waits for this cycle's listing; cycles start together within a fraction of the interval.
        self.listings = CycleHandoff(cycle_slack(interval))
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
        changed = 0
        async for page in self._api.repository_pages():
            for repo in page:
                hashes = repo.properties
                project = (repo.project.id, repo.project.key)
                if project not in projects:
                    projects[project] = (str(project[0]) if project[0] is not None else None, project[1])
                project_id, project_key = projects[project]
                repo_id = intern(str(repo.id))
                content = hashes.content_hash if hashes else None
                metadata = hashes.metadata_hash if hashes else None
                old = previous.get(repo_id)
                if old is not None and (old.content, old.metadata, old.slug, old.project_id, old.project_key) == (
                    content,
                    metadata,
                    repo.slug,
                    project_id,
                    project_key,
                ):
                    row = old
                else:
                    # Interned like the mirrors' hashes: a mirror in step shares these strings.
                    row = PrimaryRepo(
                        project_id,
                        project_key,
                        repo.slug,
                        intern(content) if content is not None else None,
                        intern(metadata) if metadata is not None else None,
                    )
                    if old is not None and old.content != content:
                        changed += 1
                repositories[repo_id] = row
        # Pushes the polling saw (a repository pushed twice between two listings counts once); counted only once
        # the whole listing was read, so a failed read counts nothing twice.
        self.state.content_changes += changed
        return repositories

    async def poll_once(self) -> None:
        primary = self.state
        await asyncio.gather(
            run_source(PRIMARY_TARGET, "mirror_servers", primary.mirror_servers, self._api.mirror_servers),
            self._published_repositories(),
        )
        primary.clock = self._api.clock()
        primary.cycles += 1
        if (
            self._on_mirror_servers is not None
            and primary.mirror_servers.success
            and primary.mirror_servers.value is not None
        ):
            await self._on_mirror_servers(primary.mirror_servers.value)
