"""Dates each divergence from the push that began it, so lag is the same after a restart and from any replica.

A repository whose content differs on a mirror (or node) began to diverge at the first push on the primary after the
copy last synced (``lastSyncDate``, else ``initialSyncDate``); one the mirror does not have, at its creation. The
primary's ref change activity (newest first, ``createdDate`` on the primary's clock) says when each push arrived.

The cost is bounded: only diverging repositories are looked up, at most ``lag.lookups_per_cycle`` pages a cycle over
all mirrors and nodes (each analysis asks for its longest-lagging first), one page of ``lag.page_limit`` each, cached
per (repository, primary content hash) so a repository that stays behind costs one lookup, and shared by every
mirror and node. A failed lookup is not asked again for ``lag.failure_backoff_cycles`` cycles unless the repository's
content changes first. Where no page dates a divergence, its lag counts from the exporter's first sight of it, and
``bitbucket_mirror_sync_lag_source`` says how many are so.

Clocks: a push's time is on the primary's clock and a copy's last sync on its mirror's; both are brought to the
exporter's clock with the offsets read from the ``Date`` headers of answers already fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from exporter.config import PRIMARY_TARGET
from exporter.drift import DIVERGED, DriftReport, PrimaryRepo, RepoHealth, RepoState
from exporter.rest.api import UNKNOWN_ORDER, ActivityPage, PrimaryApi
from exporter.rest.client import ClockReading
from exporter.rest.config import LagConfig
from exporter.rest.state import PrimaryState
from exporter.sources import FetchError, run_source
from exporter.steps import starts

Key = tuple[str, str | None]  # (repository id, the primary's content hash)
# Between two reports' turns of dating (a few milliseconds each at 1,000 diverging repositories): a scrape that comes
# meanwhile waits for one turn at most, not one turn per pass of the loop it takes.
TURN_GAP_SECONDS = 0.002
# Diverging repositories dated between two yields to the loop within a turn: a millisecond or two (a report of 10,000,
# 1% of 1,000,000 repositories, held the loop 44 ms in one step; slices of 1,000 held it 4-8 ms at 100k x 3 x 3).
DATING_SLICE = 250


def offset_of(clock: ClockReading | None) -> float:
    """A host's clock minus the exporter's, where its Date headers tell it from zero: clocks that may agree are taken
    as agreeing (NTP), rather than adding up to half a second of error to every push time."""
    if clock is None or clock.contains(0.0):
        return 0.0
    return clock.offset_seconds


def offset_error(clock: ClockReading | None) -> float:
    """How far ``offset_of(clock)`` may be from the truth: the range's half width, or its farther end where the offset
    is taken as zero (the truth may lie anywhere in the range)."""
    if clock is None:
        return 0.0
    if clock.contains(0.0):
        return max(-clock.earliest, clock.latest)
    return clock.half_width_seconds


@dataclass(frozen=True)
class _Failed:
    """A lookup that failed; asked again from this primary cycle on (or once the content hash changes)."""

    retry_from_cycle: int


def push_start(
    repo: RepoHealth, page: ActivityPage, mirror_minus_primary: float, uncertainty: float = 0.0
) -> float | None:
    """When the divergence began, on the primary's clock; None when the page cannot say.

    Content drift: the first push after the copy's last sync (its clock brought to the primary's), by more than
    ``uncertainty`` (how far either clock's offset may be off): a push within that of the sync, as the push the copy
    synced last may be, is not taken for one it lacks, which would date the lag from it (too early). Pages that do not
    reach back that far give their oldest push, and a copy that synced after every listed push (a metadata sync after
    the push it lacks) the newest push, when the newest is listed: both read the lag low, never high, whatever order
    the server lists in (None where the pages cannot tell). Missing: the creation, the oldest ref change, when the
    pages reach it."""
    if repo.state is RepoState.MISSING:
        return page.pushed[-1] if page.has_oldest and page.pushed else None
    if repo.synced_at is None or not page.pushed:
        return None
    synced = repo.synced_at - mirror_minus_primary
    after = [pushed for pushed in page.pushed if pushed > synced + uncertainty]
    if after:
        # The pages are a contiguous run of the listing: the first push after the sync is among them, or earlier
        # than all of them (then the oldest listed reads the lag low, never high).
        return min(after)
    # Every listed push is older than the sync: the newest push explains the divergence only if it is listed (the
    # server listed newest first, or the pages reached the end); else a newer one may lie beyond them.
    return page.pushed[0] if page.has_newest else None


class PushDating:
    """Shared by every mirror's and node's drift analysis: the cache of activity pages and the per-cycle budget."""

    def __init__(self, api: PrimaryApi, primary: PrimaryState, config: LagConfig) -> None:
        self._api = api
        self._primary = primary
        self._config = config
        self._pages: OrderedDict[Key, ActivityPage | _Failed] = OrderedDict()
        # Enough for every diverging repository of a large farm over a few cycles, and bounded.
        self._cache_size = max(1000, 20 * config.lookups_per_cycle)
        self._in_flight: dict[Key, asyncio.Task[None]] = {}
        self._cycle = -1
        self._remaining = 0
        # One report dated at a time: a farm's node reports arrive from the worker together, and dating each is a few
        # milliseconds on the event loop; taken one after another in one pass of the loop they held it 20-35 ms
        # (100,000 repositories x 3 x 3, 1,000 diverging), a wait for every scrape. Each now runs in a step of its
        # own, the loop free in between.
        self._one_at_a_time = asyncio.Lock()
        self.lookups = 0  # pages asked since start (bench/scale.py reports them per cycle)

    def _start_cycle(self) -> None:
        if self._primary.cycles != self._cycle:
            self._cycle, self._remaining = self._primary.cycles, self._config.lookups_per_cycle

    def _cached(self, key: Key) -> ActivityPage | _Failed | None:
        entry = self._pages.get(key)
        if isinstance(entry, _Failed) and entry.retry_from_cycle <= self._cycle:
            del self._pages[key]
            return None
        if entry is not None:
            self._pages.move_to_end(key)
        return entry

    async def _lookup(self, key: Key, repo: RepoHealth) -> None:
        try:
            await self._ask(key, repo)
        finally:
            self._in_flight.pop(key, None)

    async def _ask(self, key: Key, repo: RepoHealth) -> None:
        page: ActivityPage | None = None

        async def fetch() -> ActivityPage:
            nonlocal page
            try:
                page = await self._api.ref_change_activities(
                    repo.project_key, repo.slug, self._config.page_limit, self._config.max_pages
                )
            except FetchError as exc:
                if exc.status != 404:
                    raise
                # Deleted on the primary since its listing was read: nothing to date (its lag counts from first
                # sight, and says so), and no failure of the primary's.
                page = ActivityPage((), complete=False, order=UNKNOWN_ORDER)
            return page

        self.lookups += 1
        state = self._primary.ref_change_activity
        await run_source(PRIMARY_TARGET, "ref_change_activity", state, fetch)
        self._pages[key] = page if page is not None else _Failed(self._cycle + self._config.failure_backoff_cycles)
        while len(self._pages) > self._cache_size:
            self._pages.popitem(last=False)

    async def _wanted(
        self, diverging: list[RepoHealth], primary: Mapping[str, PrimaryRepo]
    ) -> list[asyncio.Task[None]]:
        """Tasks for the pages this analysis waits on: lookups in flight for others, and new ones within budget."""
        waits: list[asyncio.Task[None]] = []
        for index, repo in enumerate(diverging):  # worst first: the report is sorted so
            if index and index % DATING_SLICE == 0:
                await asyncio.sleep(0)
            upstream = primary.get(repo.repo_id)
            if upstream is None:
                continue
            key = (repo.repo_id, upstream.content)
            if key in self._in_flight:
                waits.append(self._in_flight[key])
            elif self._cached(key) is None and self._remaining > 0:
                self._remaining -= 1
                # Started a few a pass of the loop (steps.starts): fifty first steps in one pass held it 5-7 ms.
                await starts().turn()
                task = asyncio.create_task(self._lookup(key, repo))
                self._in_flight[key] = task
                waits.append(task)
        return waits

    async def date(
        self, report: DriftReport, primary: Mapping[str, PrimaryRepo], mirror_clock: ClockReading | None
    ) -> DriftReport:
        """``report`` with every divergence a page can date dated from its push (on the exporter's clock)."""
        if not self._config.from_push:
            return report
        self._start_cycle()
        async with self._turn():
            diverging = [r for r in report.repositories if r.state in DIVERGED]
            waits = await self._wanted(diverging, primary)
        if not diverging:
            return report
        if waits:
            await asyncio.gather(*waits)
        async with self._turn():
            return await self._dated(report, diverging, primary, mirror_clock)

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """One report's work at a time, each turn in a pass of the event loop of its own."""
        async with self._one_at_a_time:
            yield
            # Held a moment after the work: the reports that arrived with this one wait for the lock, and the loop
            # has passes with no turn in them, where a scrape (two or three passes of the loop) is served whole.
            await asyncio.sleep(TURN_GAP_SECONDS)

    async def _dated(
        self,
        report: DriftReport,
        diverging: list[RepoHealth],
        primary: Mapping[str, PrimaryRepo],
        mirror_clock: ClockReading | None,
    ) -> DriftReport:
        primary_offset = offset_of(self._primary.clock)
        mirror_offset = offset_of(mirror_clock) if mirror_clock is not None else primary_offset
        # How far the two offsets may be off together (a millisecond more for the dates' precision).
        uncertainty = 0.001 + offset_error(self._primary.clock) + offset_error(mirror_clock)
        push_starts: dict[str, float] = {}
        for index, repo in enumerate(diverging):
            if index and index % DATING_SLICE == 0:
                await asyncio.sleep(0)
            upstream = primary.get(repo.repo_id)
            page = self._pages.get((repo.repo_id, upstream.content)) if upstream is not None else None
            if isinstance(page, ActivityPage):
                start = push_start(repo, page, mirror_offset - primary_offset, uncertainty)
                if start is not None:
                    push_starts[repo.repo_id] = start - primary_offset  # to the exporter's clock
        return report.dated(push_starts)
