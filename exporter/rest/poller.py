"""Background poll loops, one per target.

Prometheus' "Writing exporters" guide asks exporters to fetch on scrape, except where a fetch is slow or expensive
for the monitored system; a Bitbucket mirror's paged supportInfo endpoints are both, so this exporter polls in the
background on its own interval and every scrape renders the latest snapshot. Within a target, each source runs on
its own: one failing endpoint never blocks another, and a failed source keeps its last good value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from array import array
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from exporter.config import PRIMARY_TARGET
from exporter.drift import DriftReport, PrimaryRepo
from exporter.rest.api import MirrorApi, PrimaryApi
from exporter.rest.client import ClockReading, HttpSetup, Page
from exporter.rest.feed import ListingFeed
from exporter.rest.listing_work import (
    MIRROR,
    NEWER_PRIMARY_WALK,
    PRIMARY,
    CompareJob,
    ListingWalk,
    PrimaryPageRead,
    Projects,
    compare,
    digest,
    read_primary_page,
    walk_listing,
)
from exporter.rest.models import MirrorServer, MirrorStatus, SyncSettings
from exporter.rest.push_dating import PushDating
from exporter.rest.state import MirrorState, PrimaryState, RefQueue, RepoSyncSummary
from exporter.shards import ShardedMap
from exporter.sources import UNEXPECTED, FetchError, FirstCycle, free_later, run_source
from exporter.state import Policy
from exporter.steps import Steps
from exporter.workers import Worker, WorkerPool

log = logging.getLogger("exporter.poller")

# The primary's listing, by name in the workers (a mirror may not be named so: "(" is not in a target name).
PRIMARY_LISTING = "(primary)"

# A poll loop on the REST grid: ``loop(poll, polled_before)`` (exporter/rest/polling.py), so node loops started by a
# mirror's cycle meet the primary's cycles as the mirrors' own loops do.
GridLoop = Callable[[Callable[[], Awaitable[None]], bool], Coroutine[Any, Any, None]]


class NodeCycle(Protocol):
    """A mirror's nodes, read one by one (exporter/rest/nodes.py ``NodeFleet``): after the mirror's farm-wide
    sources, follow the node list and take the union of the nodes' cycles."""

    async def cycle(self, cycle_started: float) -> None: ...


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
        await self.wait_until(lambda: self.of_cycle(cycle_started), at_most)

    async def wait_until(self, done: Callable[[], bool], at_most: float) -> None:
        """Wait until ``done()`` holds, judged each time a cycle finishes, or ``at_most`` seconds have passed."""
        deadline = time.monotonic() + at_most
        while not done() and (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._finished.wait(), timeout=None if math.isinf(remaining) else remaining)


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


class ListingRead:
    """One cycle's read of a mirror's (or node's) listing, as a source: its pages go to the target's worker process
    as they come (exporter/rest/feed.py); calling it returns the listing's summary from the worker, which keeps the
    rows for this cycle's drift analysis (``take``: the listing's feed, to compare there)."""

    def __init__(self, api: MirrorApi, listing: ListingFeed) -> None:
        self._api = api
        self._listing = listing
        self._read = False

    async def __call__(self) -> RepoSyncSummary:
        setup = self._api.worker_http()
        summary = await (self._walk_here() if setup is None else self._walk_in_worker(setup))
        if not isinstance(summary, RepoSyncSummary):
            raise FetchError(UNEXPECTED, "the worker answered a listing's summary with something else")
        self._read = True
        return summary

    async def _walk_in_worker(self, setup: HttpSetup) -> RepoSyncSummary | None:
        """The whole walk in the worker: the HTTP exchange, hashing and decoding leave the event loop."""
        client = self._api.client
        url, credentials, affinity = self._api.repo_sync_status_location()
        job = ListingWalk(self._listing.target, str(url), credentials, dict(affinity.cookies), client.max_rows(), setup)
        outcome = await self._listing.worker.call(walk_listing, job)
        client.absorb(outcome.traffic, str(url), outcome.clock)
        affinity.cookies = dict(outcome.cookies)
        if outcome.error is not None:
            raise outcome.error
        return outcome.summary

    async def _walk_here(self) -> object:
        """The pages read on the loop, their bytes sent to the worker (exporter/rest/feed.py)."""
        walk = self._listing.start()
        try:
            async for page in self._api.repo_sync_status_raw_pages():
                await walk.add(page.body)
        except BaseException:
            walk.abandon()
            raise
        return await walk.finish()

    @property
    def ready(self) -> bool:
        """Whether this cycle's read succeeded, so the worker holds this cycle's rows."""
        return self._read

    def take(self) -> ListingFeed:
        if not self._read:
            raise RuntimeError("no rows to compare: the read failed")
        return self._listing


def scope_of(settings: SyncSettings | None) -> frozenset[str] | None:
    """The primary project ids a mirror carries (its sync settings); None: all."""
    if settings is not None and settings.mode.upper() == "SELECTED_PROJECTS":
        return frozenset(settings.project_ids)
    return None


@dataclass(frozen=True)
class DriftJob:
    """One drift analysis: a mirror's (or one node's) listing of this cycle against the primary's of this cycle,
    compared in the listing's worker process (exporter/rest/listing_work.py)."""

    primary: PrimaryPoller
    policy: Policy
    interval: float
    per_node: bool = False
    # Dates each divergence from its push (lag.from_push); None: lag from first sight only.
    dating: PushDating | None = None

    @property
    def workers(self) -> WorkerPool:
        return self.primary.workers

    async def run(
        self,
        listing: ListingFeed,
        mirror_read: float | None,
        previous: DriftReport | None,
        scope: frozenset[str] | None,
        cycle_started: float,
        mirror_clock: ClockReading | None = None,
        mirror_started: float | None = None,
    ) -> DriftReport | None:
        """The report, or None when there is no fresh primary listing to compare with (docs/metrics.md,
        "Freshness"), or the worker lost it: drift then stays unknown, never computed from old data."""
        # Bounded: a primary slower than an interval leaves this cycle with the latest listing, if still fresh.
        await self.primary.listings.wait_for_cycle(cycle_started, self.interval)
        if mirror_read is None:
            return None
        # A worker that restarted since the previous report lost its first-seen times: they travel once.
        previous_since = None
        if previous is not None and listing.compared_generation != listing.worker.generation:
            previous_since = dict(previous.diverged_since)
        generation = listing.worker.generation
        published = self.primary.walk_in(listing.worker)
        try:
            try:
                report = await self._compare(listing, published, mirror_read, mirror_started, scope, previous_since)
            except FetchError as exc:
                if exc.detail != NEWER_PRIMARY_WALK or published is None:
                    raise
                # The primary's next walk reached the worker while this mirror's was read (the interval is shorter
                # than a cycle): compared with that one once the loop has published when it was read (dated by this
                # walk's read, a new divergence would be seen earlier than it was).
                published = await self.primary.walk_after(listing.worker, published.walk, self.interval)
                report = await self._compare(listing, published, mirror_read, mirror_started, scope, previous_since)
        except FetchError as exc:
            self.primary.compared(listing.target, exc)
            return None
        if report is None:
            return None
        self.primary.compared(listing.target, None)
        listing.compared_generation = generation
        if self.dating is not None and (listing_now := self.primary.state.repositories.value) is not None:
            report = await self.dating.date(report, listing_now, mirror_clock)
        return report

    async def _compare(
        self,
        listing: ListingFeed,
        published: PublishedWalk | None,
        mirror_read: float,
        mirror_started: float | None,
        scope: frozenset[str] | None,
        previous_since: dict[str, float] | None,
    ) -> DriftReport | None:
        """The worker's comparison of the listing with the primary's walk ``published`` (None: no fresh one)."""
        if published is None or time.time() - published.read > self.policy.stale_after:
            return None
        rows_from = 0.0  # when both walks began; unknown: nothing is proven by this report
        if published.started is not None and mirror_started is not None:
            rows_from = min(published.started, mirror_started)
        job = CompareJob(
            listing.target,
            PRIMARY_LISTING,
            published.walk,
            scope,
            # A divergence first seen here began no later than the later read that shows it: lag is never overstated.
            max(published.read, mirror_read),
            min(published.read, mirror_read),
            rows_from,
            self.policy.keep_all,
            self.per_node,
            previous_since,
        )
        return await listing.worker.call(compare, job)


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
        # A farm's listings (its own, its nodes') all go to one worker: the farm's union is taken there.
        self.listing = ListingFeed(primary.workers.worker(state.name), state.name, MIRROR)
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
        read = ListingRead(api, self.listing)
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
                mirror.take_report(report, time.time())
        mirror.api_family = api.family
        mirror.clock = api.clock()
        if mirror.status.success and mirror.status.value is not None:
            mirror.states_seen.add(mirror.status.value.state)
        mirror.cycles += 1
        self.first_cycle.set()


# Copying the previous snapshot into the new one, between two yields to the event loop (exporter/steps.py; counted in
# shards; copying rows one by one in Python, before, was a 20 ms step at 1% of 100,000 repositories pushed a cycle).
SNAPSHOT_STEP_SECONDS = 0.002


class PublishedWalk(NamedTuple):
    """A walk of the primary's listing a worker holds: its number, and when it was read (wall clock: finished, and
    began)."""

    walk: int
    read: float
    started: float | None


class KeptPage(NamedTuple):
    """A page of the primary's listing as the loop keeps it from one walk to the next: its digest, the ids it lists
    (a tuple of strings: the garbage collector never walks it), its paging fields as sent and its rows' hashes
    (``listing_work.rows_reused``: when the page changes, only rows of other bytes are decoded)."""

    digest: bytes
    ids: tuple[str, ...]
    paging: tuple[Any, Any, Any]
    row_hashes: array[int]


class _Snapshot:
    """The primary's new snapshot as a walk builds it: nothing until the walk meets a changed page (an unchanged
    listing keeps the previous snapshot); then a copy of the previous one, shard by shard in steps, which each changed
    page patches as it is read with its rows whose bytes changed; at the end, the ids that only pages changed or gone
    listed and no changed page lists now are dropped."""

    def __init__(self, previous: Mapping[str, PrimaryRepo] | None) -> None:
        self._previous: Mapping[str, PrimaryRepo] = previous or {}
        self._repositories: ShardedMap[str, PrimaryRepo] | None = None if previous else ShardedMap()
        # Of each changed page against the same page kept: the ids it no longer lists, and those it lists anew (all
        # of a page past the kept ones). Only these: a set of every id listed would hold a million at 1,000,000.
        self._left: set[str] = set()
        self._arrived: set[str] = set()
        self.changed = 0

    @property
    def started(self) -> bool:
        return self._repositories is not None

    async def start(self) -> None:
        """The previous snapshot copied, unless already: the rows of every page not changed so far, and after."""
        if self._repositories is not None:
            return
        previous = self._previous
        if not isinstance(previous, ShardedMap):  # a snapshot given whole (tests): copied at once
            copied = ShardedMap[str, PrimaryRepo]()
            for repo_id, row in previous.items():
                copied[repo_id] = row
            self._repositories = copied
            return
        shards: list[dict[str, PrimaryRepo]] = []
        steps = Steps(SNAPSHOT_STEP_SECONDS)
        for shard in previous.shards():
            shards.append(shard.copy())
            await steps.done_piece()
        self._repositories = ShardedMap.of_shards(shards)

    def add(self, rows: list[tuple[str, PrimaryRepo]], ids: Iterable[str], kept: tuple[str, ...] | None) -> None:
        """A changed page, after ``start``: the rows decoded of it, every id it lists, and those the same page listed
        before (None: no such page)."""
        assert self._repositories is not None
        repositories, previous = self._repositories, self._previous
        for repo_id, row in rows:
            # A row of other bytes that reads the same (a field not kept changed) keeps the previous object, so two
            # snapshots share most of their memory.
            old = previous.get(repo_id)
            if old is not None and old == row:
                row = old
            elif old is not None and old.content != row.content:
                self.changed += 1
            repositories[repo_id] = row
        if not previous:
            return  # nothing to drop: every id is new
        listed = set(ids)
        if kept is None:
            self._arrived |= listed
        else:
            before = set(kept)
            self._arrived |= listed - before
            self._left |= before - listed

    def take(self, vanished: Iterable[tuple[str, ...]] = ()) -> ShardedMap[str, PrimaryRepo]:
        """The snapshot, without the ids changed pages and ``vanished`` ones (kept pages past the walk's end) no
        longer list, where no changed page lists them anew (moved to a neighbour): the repositories deleted."""
        repositories, self._repositories = self._repositories or ShardedMap(), None
        left = self._left.union(*vanished) if self._previous else self._left
        for repo_id in left - self._arrived:
            repositories.pop(repo_id, None)
        return repositories


class PrimaryPoller:
    def __init__(
        self,
        state: PrimaryState,
        api: PrimaryApi,
        interval: float,
        workers: WorkerPool,
        on_mirror_servers: Callable[[list[MirrorServer]], Awaitable[None]] | None = None,
    ) -> None:
        self.state = state
        self._api = api
        self.workers = workers
        # The primary's listing goes to every worker that has a farm: each compares its farms' listings with it.
        self._listings: dict[Worker, ListingFeed] = {}
        # A mirror waits for this cycle's listing; cycles start together within a fraction of the interval.
        self.listings = CycleHandoff(cycle_slack(interval))
        self._on_mirror_servers = on_mirror_servers
        # Why each target's latest comparison failed (None: it did not), so a failure is logged once per change.
        self._compare_failures: dict[str, str | None] = {}
        # Each worker's latest walk of the listing as published once read (``walk_in``).
        self._published: dict[Worker, PublishedWalk] = {}
        # The previous successful walk's pages: an unchanged page is not decoded again, not even its paging fields,
        # and its rows are the previous snapshot's.
        self._pages: list[KeptPage] = []

    def walk_in(self, worker: Worker) -> PublishedWalk | None:
        """The latest walk of the primary's listing published for ``worker``, while the worker still holds a walk
        (None: drift unknown). The worker may already hold a later one, not yet published (``NEWER_PRIMARY_WALK``)."""
        listing = self._listings.get(worker)
        published = self._published.get(worker)
        held = listing.held_walk() if listing is not None else None
        return published if held is not None and published is not None and held >= published.walk else None

    async def walk_after(self, worker: Worker, walk: int, at_most: float) -> PublishedWalk | None:
        """The walk published for ``worker`` after ``walk``, waiting at most ``at_most`` seconds for it."""

        def later() -> bool:
            published = self.walk_in(worker)
            return published is None or published.walk > walk

        await self.listings.wait_until(later, at_most)
        published = self.walk_in(worker)
        return published if published is not None and published.walk > walk else None

    def compared(self, target: str, failure: FetchError | None) -> None:
        reason = failure.reason if failure is not None else None
        if self._compare_failures.get(target) != reason:
            if failure is not None:
                log.warning("drift comparison failed", extra={"target": target, "reason": reason,
                                                              "detail": failure.detail})  # fmt: skip
            self._compare_failures[target] = reason

    async def _published_repositories(self) -> None:
        started = time.monotonic()
        try:
            await run_source(PRIMARY_TARGET, "repositories", self.state.repositories, self._repositories)
        finally:
            self._publish_walks()
            self.listings.publish(started)

    def _publish_walks(self) -> None:
        """Each worker's walk of the listing, with when it was read, as a comparison dates its rows: a walk the
        worker took whole in a read that succeeded. A failed read publishes nothing: the last walk published stays
        while the worker still holds it (``walk_in``), compared while fresh."""
        state = self.state.repositories
        read = state.last_success_timestamp
        if not state.success or read is None:
            return
        for worker, listing in self._listings.items():
            held = listing.held_walk()
            if held is None:
                self._published.pop(worker, None)
            else:
                self._published[worker] = PublishedWalk(held, read, state.value_started_timestamp)

    async def _repositories(self) -> Mapping[str, PrimaryRepo]:
        """The listing, decoded here too (the CI gate, push dating and the landing page read it) while its pages go
        to every worker that has a farm. A page whose digest is the same page's of the previous walk is not decoded
        again and its rows are the previous snapshot's; when no page changed, the previous snapshot itself is the
        new one. Otherwise, at the first changed page, the previous snapshot is copied (shard by shard, in steps) and
        each changed page patches it as the walk reads it, with only its rows whose bytes changed (the others found
        among the kept page's by their hashes), so no page's rows outlive its step (a million decoded rows held until
        the walk ended made each full collection of the first walk at 1,000,000 repositories 20-60 ms); the ids that
        only changed or vanished pages listed, and no changed page lists now, go at the end."""
        previous = self.state.repositories.value
        kept_pages = self._pages if previous is not None else []
        projects: Projects = {}
        pages: list[KeptPage] = []
        decoded: list[PrimaryPageRead] = []  # the page just read, when it changed
        digests: list[bytes] = []  # each page's, as the walk reads it
        snapshot = _Snapshot(previous)

        def envelope(body: bytes) -> Page[bytes]:
            """The paging fields: a page of the same bytes as the same page of the previous walk has its fields; any
            other is decoded once, only its rows of other bytes than the kept page's where most are the same (the
            rows kept without metadata hashes: only the workers compare them)."""
            index, page_digest = len(digests), digest(body)
            digests.append(page_digest)
            kept = kept_pages[index] if index < len(kept_pages) else None
            if kept is not None and kept.digest == page_digest:
                return Page([], *kept.paging, body=body, row_count=len(kept.ids))
            hashes, ids = (kept.row_hashes, kept.ids) if kept is not None else (array("q"), ())
            read = read_primary_page(body, hashes, ids, projects, compared=False)
            decoded.append(read)
            return Page([], *read.paging, body, len(read.ids))

        for worker in self.workers.assigned():
            if worker not in self._listings:  # a farm was given a worker of its own since (discovery, a reload)
                self._listings[worker] = ListingFeed(worker, PRIMARY_LISTING, PRIMARY)
        walks = [listing.start() for listing in self._listings.values()]
        try:
            async for raw in self._api.repository_raw_pages(envelope):
                index = len(pages)
                page_digest = digests[index]
                for walk in list(walks):
                    try:
                        await walk.add(raw.body, page_digest)
                    except FetchError:
                        # That worker died or refused a page: it compares nothing this cycle (walk_in says so),
                        # and the primary's own listing, read here, goes on.
                        walk.abandon()
                        walks.remove(walk)
                if decoded:
                    read = decoded.pop()
                    await snapshot.start()
                    kept = kept_pages[index].ids if index < len(kept_pages) else None
                    snapshot.add(read.rows, read.ids, kept)
                    pages.append(KeptPage(page_digest, tuple(read.ids), read.paging, read.row_hashes))
                else:
                    pages.append(kept_pages[index])  # the same bytes as the previous walk's page
        except BaseException:
            for walk in walks:
                walk.abandon()
            if snapshot.started:
                free_later(snapshot.take())
            raise
        for walk in walks:
            # A worker that could not take the listing compares nothing with it this cycle (walk_in says so).
            with contextlib.suppress(FetchError):
                await walk.finish()
        if previous is not None and not snapshot.started and len(pages) == len(kept_pages):
            self._pages = pages
            return previous
        await snapshot.start()
        repositories = snapshot.take(kept.ids for kept in kept_pages[len(pages) :])
        # The pages kept change only with the snapshot they describe (a walk cancelled before this point leaves both).
        self._pages = pages
        # Pushes the polling saw (a repository pushed twice between two listings counts once); counted only once
        # the whole listing was read, so a failed read counts nothing twice.
        self.state.content_changes += snapshot.changed
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
