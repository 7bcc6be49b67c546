"""Lag dated from the push: which push began a divergence, and what the lookups cost (no sockets: a fake primary)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from exporter.drift import DriftReport, MirrorRepo, PrimaryRepo, RepoHealth, RepoState, analyse
from exporter.rest import push_dating
from exporter.rest.api import OLDEST_FIRST, UNKNOWN_ORDER, ActivityPage
from exporter.rest.client import ClockReading
from exporter.rest.config import LagConfig
from exporter.rest.push_dating import PushDating, offset_error, offset_of, push_start
from exporter.rest.state import PrimaryState
from exporter.sources import FetchError

A, B = "a" * 40, "b" * 40


def drifting(synced_at: float | None, state: RepoState = RepoState.CONTENT_DRIFT) -> RepoHealth:
    return RepoHealth("1", "PRJ", "repo-1", state, 0, 1000.0, synced_at=synced_at)


PAGE = ActivityPage((500.0, 400.0, 300.0, 100.0), complete=True)  # newest first; 100 is the creation


@pytest.mark.parametrize(
    ("repo", "page", "expected"),
    [
        (drifting(350.0), PAGE, 400.0),  # the first push after the last sync
        (drifting(50.0), PAGE, 100.0),
        (drifting(350.0), ActivityPage((500.0, 450.0), complete=False), 450.0),  # not back far enough: oldest listed
        (drifting(600.0), PAGE, 500.0),  # synced after every push (metadata): the newest, read low
        (drifting(None), PAGE, None),  # no sync date: the page cannot say
        (drifting(350.0), ActivityPage((), complete=True), None),
        (drifting(None, RepoState.MISSING), PAGE, 100.0),  # missing: the creation
        (drifting(None, RepoState.MISSING), ActivityPage((500.0,), complete=False), None),
    ],
)
def test_which_push_began_the_divergence(repo: RepoHealth, page: ActivityPage, expected: float | None) -> None:
    assert push_start(repo, page, mirror_minus_primary=0.0) == expected


OLDEST_PAGES = ActivityPage((300.0, 200.0, 100.0), complete=False, order=OLDEST_FIRST)  # the oldest three of many


@pytest.mark.parametrize(
    ("repo", "page", "expected"),
    [
        # Listed oldest first and cut short: the pages hold the oldest pushes, never the newest.
        (drifting(250.0), OLDEST_PAGES, 300.0),  # the sync lies within them: the first push after it is there
        (drifting(350.0), OLDEST_PAGES, None),  # every listed push is older: a newer one may lie beyond, unknown
        (drifting(None, RepoState.MISSING), OLDEST_PAGES, 100.0),  # the creation is the oldest listed
        (drifting(350.0), ActivityPage((300.0, 100.0), complete=False, order=UNKNOWN_ORDER), None),
        (drifting(350.0), ActivityPage((300.0, 100.0), complete=True, order=OLDEST_FIRST), 300.0),  # all of them
    ],
)
def test_pages_listed_oldest_first_never_read_the_lag_high(
    repo: RepoHealth, page: ActivityPage, expected: float | None
) -> None:
    assert push_start(repo, page, mirror_minus_primary=0.0) == expected


def test_the_mirrors_clock_is_brought_to_the_primarys() -> None:
    # The mirror's clock runs 100 s ahead: its last sync at 450 (its clock) is 350 on the primary's.
    assert push_start(drifting(450.0), PAGE, mirror_minus_primary=100.0) == 400.0


def test_an_offset_taken_as_zero_may_be_off_by_the_far_end_of_its_range() -> None:
    assert offset_error(None) == 0.0
    assert offset_error(ClockReading(20.0, 0.0, half_width_seconds=0.25)) == 0.25
    # 0.4 +- 0.5 holds zero, so 0 is used: the truth may be anywhere from -0.1 to 0.9.
    assert offset_of(ClockReading(0.4, 0.0)) == 0.0
    assert offset_error(ClockReading(0.4, 0.0)) == pytest.approx(0.9)


def test_a_push_at_the_moment_of_the_sync_is_not_taken_for_one_the_copy_lacks() -> None:
    # The copy synced the push of 400 at that very moment (its clock 100 s ahead, known only to 20 ms): brought to
    # the primary's clock with an offset 20 ms short, the sync falls just before that push. Within the clocks'
    # uncertainty it is the push synced, and the lag runs from the next one (it once ran from this one: seconds high).
    assert push_start(drifting(500.0), PAGE, mirror_minus_primary=100.02) == 400.0
    assert push_start(drifting(500.0), PAGE, mirror_minus_primary=100.02, uncertainty=0.05) == 500.0
    assert push_start(drifting(450.0), PAGE, mirror_minus_primary=100.0, uncertainty=0.05) == 400.0, "a clear one"


class FakePrimary:
    """Answers ref-change-activities from a table, counting requests; ids in ``denied`` answer 401."""

    def __init__(self, pages: dict[str, ActivityPage], denied: frozenset[str] = frozenset()) -> None:
        self.pages, self.denied = pages, denied
        self.asked: list[str] = []

    async def ref_change_activities(self, project_key: str, slug: str, limit: int, max_pages: int) -> ActivityPage:
        await asyncio.sleep(0)  # concurrent callers overlap
        self.asked.append(slug)
        if slug in self.denied:
            raise FetchError("http_401", "HTTP 401", status=401)
        if slug not in self.pages:
            raise FetchError("http_404", "HTTP 404: Repository not found", status=404)
        return self.pages[slug]


def listing(content: dict[str, str]) -> dict[str, PrimaryRepo]:
    return {repo_id: PrimaryRepo("1", "PRJ", f"repo-{repo_id}", hash_, hash_) for repo_id, hash_ in content.items()}


def report_for(primary: dict[str, PrimaryRepo], behind: list[str], first_seen: float = 900.0) -> DriftReport:
    rows = {
        r: MirrorRepo(p.content if r not in behind else "0" + "f" * 39, p.metadata, 0, 350.0)
        for r, p in primary.items()
    }
    return analyse(primary, None, rows, {}, first_seen)


def dating(api: FakePrimary, **config: object) -> tuple[PushDating, PrimaryState]:
    state = PrimaryState(url="https://primary.example.com")
    return PushDating(api, state, LagConfig(**config)), state  # type: ignore[arg-type]


async def test_a_repository_that_stays_behind_costs_one_lookup_for_every_mirror_and_cycle() -> None:
    primary = listing({"1": A, "2": A})
    api = FakePrimary({"repo-1": PAGE})
    service, state = dating(api)
    for cycle in range(3):
        state.cycles = cycle
        # Two mirrors behind on the same repository, analysed at once.
        reports = await asyncio.gather(*(service.date(report_for(primary, ["1"]), primary, None) for _ in range(2)))
        for report in reports:
            (repo,) = report.repositories
            assert repo.from_push and repo.diverged_since == 400.0
            assert report.laggard_since == 400.0 and report.lag_sources() == (1, 0)
    assert api.asked == ["repo-1"]
    # A new push changes the primary's hash: asked again, once.
    primary = listing({"1": B, "2": A})
    await service.date(report_for(primary, ["1"]), primary, None)
    assert api.asked == ["repo-1", "repo-1"]


async def test_no_divergence_no_request() -> None:
    primary = listing({"1": A})
    api = FakePrimary({})
    service, _ = dating(api)
    report = await service.date(report_for(primary, []), primary, None)
    assert api.asked == [] and report.lag_sources() == (0, 0)


async def test_the_budget_goes_to_the_longest_lagging_first_and_the_rest_follow_next_cycle() -> None:
    primary = listing({"1": A, "2": A, "3": A})
    api = FakePrimary({f"repo-{i}": PAGE for i in (1, 2, 3)})
    service, state = dating(api, lookups_per_cycle=2)
    first_seen = {"1": 800.0, "2": 700.0, "3": 900.0}  # repo-2 the longest behind, then repo-1
    rows = {r: MirrorRepo("0" + "f" * 39, A, 0, 350.0) for r in primary}
    report = analyse(primary, None, rows, first_seen, 950.0)
    dated = await service.date(report, primary, None)
    assert sorted(api.asked) == ["repo-1", "repo-2"]
    assert dated.lag_sources() == (2, 1)
    state.cycles += 1
    dated = await service.date(report, primary, None)
    assert api.asked[2:] == ["repo-3"] and dated.lag_sources() == (3, 0)


async def test_a_refused_lookup_falls_back_to_first_sight_and_waits_before_asking_again() -> None:
    primary = listing({"1": A})
    api = FakePrimary({}, denied=frozenset({"repo-1"}))
    service, state = dating(api, failure_backoff_cycles=3)
    for cycle in range(3):
        state.cycles = cycle
        report = await service.date(report_for(primary, ["1"]), primary, None)
        (repo,) = report.repositories
        assert not repo.from_push and repo.diverged_since == 900.0 and report.lag_sources() == (0, 1)
    assert api.asked == ["repo-1"]
    assert state.ref_change_activity.errors_total == {"http_401": 1}
    state.cycles = 3
    await service.date(report_for(primary, ["1"]), primary, None)
    assert api.asked == ["repo-1", "repo-1"]


async def test_a_repository_deleted_since_the_listing_is_dated_from_first_sight_and_is_no_failure() -> None:
    primary = listing({"1": A})
    api = FakePrimary({})  # repo-1: 404, deleted on the primary after its listing was read
    service, state = dating(api)
    report = await service.date(report_for(primary, ["1"]), primary, None)
    (repo,) = report.repositories
    assert not repo.from_push and report.lag_sources() == (0, 1)
    assert state.ref_change_activity.errors_total == {} and api.asked == ["repo-1"]


async def test_push_times_come_to_the_exporters_clock_when_the_primarys_is_off() -> None:
    primary = listing({"1": A})
    service, state = dating(FakePrimary({"repo-1": PAGE}))
    # The primary's clock runs 20 s ahead: its push at 400 happened at 380 on the exporter's; a half-second offset
    # is within what a Date header can tell, and left alone.
    state.clock = ClockReading(offset_seconds=20.0, at=1000.0)
    mirror = ClockReading(offset_seconds=20.0, at=1000.0)
    report = await service.date(report_for(primary, ["1"]), primary, mirror)
    assert report.repositories[0].diverged_since == 380.0
    service2, state2 = dating(FakePrimary({"repo-1": PAGE}))
    state2.clock = ClockReading(offset_seconds=0.4, at=1000.0)
    report = await service2.date(report_for(primary, ["1"]), primary, None)
    assert report.repositories[0].diverged_since == 400.0


async def test_lag_from_first_sight_when_switched_off() -> None:
    primary = listing({"1": A})
    api = FakePrimary({"repo-1": PAGE})
    service, _ = dating(api, from_push=False)
    report = await service.date(report_for(primary, ["1"]), primary, None)
    assert api.asked == [] and report.lag_sources() == (0, 1)


def test_a_copys_sync_date_is_read_as_seconds_only_where_it_diverges() -> None:
    primary = listing({"1": A, "2": A})
    synced = datetime(2026, 1, 1, tzinfo=UTC)
    rows = {"1": MirrorRepo("0" + "f" * 39, A, 0, synced), "2": MirrorRepo(A, A, 0, synced)}
    (repo,) = analyse(primary, None, rows, {}, 1000.0).repositories
    assert repo.repo_id == "1" and repo.synced_at == synced.timestamp()


class Passes:
    """Counts the passes of the running event loop (what a callback schedules with call_soon runs in the next one)."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._tick()

    def _tick(self) -> None:
        self.count += 1
        self._loop.call_soon(self._tick)


async def test_reports_that_arrive_together_are_dated_each_in_a_pass_of_the_loop_of_its_own() -> None:
    # A farm's node reports come back from the worker at once; dated in one pass of the event loop, they held it for
    # tens of milliseconds at scale (every scrape waiting). Each is dated in a pass of its own.
    primary = listing({"1": A, "2": A})
    service, _ = dating(FakePrimary({"repo-1": PAGE}))
    await service.date(report_for(primary, ["1"]), primary, None)  # the page cached: no lookup to wait on below
    passes = Passes()
    dated_in: list[int] = []
    dated = service._dated

    async def counted(*args: object, **kwargs: object) -> DriftReport:
        dated_in.append(passes.count)
        return await dated(*args, **kwargs)  # type: ignore[arg-type]

    service._dated = counted  # type: ignore[method-assign]
    reports = await asyncio.gather(*(service.date(report_for(primary, ["1"]), primary, None) for _ in range(5)))
    assert all(report.repositories[0].from_push for report in reports)
    assert len(dated_in) == 5 and len(set(dated_in)) == 5, dated_in


async def test_a_large_report_is_dated_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1% of 1,000,000 repositories is 10,000 diverging in one report: dated in one step, that held the loop 44 ms.
    monkeypatch.setattr(push_dating, "DATING_SLICE", 2)
    primary = listing({str(i): A for i in range(1, 7)})
    service, _ = dating(FakePrimary({f"repo-{i}": PAGE for i in range(1, 7)}))
    behind = [str(i) for i in range(1, 7)]
    await service.date(report_for(primary, behind), primary, None)  # every page cached
    passes = Passes()
    started_in: list[int] = []
    real = push_dating.push_start

    def counted(*args: Any) -> float | None:
        started_in.append(passes.count)
        return real(*args)

    monkeypatch.setattr(push_dating, "push_start", counted)
    report = await service.date(report_for(primary, behind), primary, None)
    assert report.lag_sources() == (6, 0)
    assert len(started_in) == 6 and len(set(started_in)) == 3, started_in


async def test_lookups_begun_together_start_a_few_a_pass_of_the_loop() -> None:
    # Fifty lookups a cycle, all started in one pass of the event loop, held it 5-7 ms at 100k x 3 x 3.
    primary = listing({str(i): A for i in range(1, 21)})
    service, _ = dating(FakePrimary({f"repo-{i}": PAGE for i in range(1, 21)}), lookups_per_cycle=20)
    passes = Passes()
    entered_in: list[int] = []
    lookup = service._lookup

    async def counted(*args: Any) -> None:
        entered_in.append(passes.count)
        await lookup(*args)

    service._lookup = counted  # type: ignore[method-assign, assignment]
    report = await service.date(report_for(primary, [str(i) for i in range(1, 21)]), primary, None)
    assert report.lag_sources() == (20, 0)
    # Four a pass (steps.STARTS_PER_PASS): twenty take at least five passes.
    assert len(entered_in) == 20 and len(set(entered_in)) >= 5, entered_in
