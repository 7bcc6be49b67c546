"""Drift classification and lag bookkeeping, as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from exporter.drift import MirrorRepo, PrimaryRepo, RepoState, analyse, classify, hash_known

A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64
ZERO = "0" * 40


def primary(content: str | None = A, metadata: str | None = C, project: str = "1", slug: str = "r") -> PrimaryRepo:
    return PrimaryRepo(project, f"P{project}", slug, content, metadata)


def mirror(content: str | None = A, metadata: str | None = C, failed: int = 0) -> MirrorRepo:
    return MirrorRepo(content, metadata, failed)


@pytest.mark.parametrize(
    ("value", "known"), [(A, True), (ZERO, False), ("0" * 64, False), ("", False), (None, False), ("00a0", True)]
)
def test_hash_known(value: str | None, known: bool) -> None:
    assert hash_known(value) is known


@pytest.mark.parametrize(
    ("up", "down", "state"),
    [
        (primary(), mirror(), RepoState.IN_SYNC),
        (primary(), None, RepoState.MISSING),
        (primary(content=B), mirror(), RepoState.CONTENT_DRIFT),
        (primary(content=B, metadata=D), mirror(), RepoState.CONTENT_DRIFT),
        (primary(metadata=D), mirror(), RepoState.METADATA_DRIFT),
        (primary(content=ZERO), mirror(), RepoState.HASH_UNKNOWN),
        (primary(), mirror(content=ZERO), RepoState.HASH_UNKNOWN),
        (primary(content=None), mirror(), RepoState.HASH_UNKNOWN),
        (primary(), mirror(content=None), RepoState.HASH_UNKNOWN),
        # Content matches and metadata is unknown on one side: nothing says it drifted.
        (primary(metadata=ZERO), mirror(metadata=D), RepoState.IN_SYNC),
        (primary(), mirror(metadata=None), RepoState.IN_SYNC),
    ],
)
def test_classify(up: PrimaryRepo, down: MirrorRepo | None, state: RepoState) -> None:
    assert classify(up, down) is state


def test_counts_scope_and_extra() -> None:
    up = {
        "1": primary(project="1"),
        "2": primary(project="1", content=B),
        "3": primary(project="2"),  # out of scope below
        "4": primary(project="1", metadata=D),
        "5": primary(project="1"),
    }
    down = {"1": mirror(), "2": mirror(), "3": mirror(content=D), "4": mirror(), "99": mirror()}
    report = analyse(up, frozenset({"1"}), down, {}, now=100.0)
    assert report.counts == {
        RepoState.IN_SYNC: 1,
        RepoState.CONTENT_DRIFT: 1,
        RepoState.METADATA_DRIFT: 1,
        RepoState.MISSING: 1,
        RepoState.EXTRA: 1,
    }
    assert report.diverged_since == {"2": 100.0, "5": 100.0}
    assert {r.repo_id for r in report.repositories} == {"2", "4", "5"}


def test_lag_is_carried_while_diverged_and_forgotten_when_healed_or_gone() -> None:
    up = {"1": primary(content=B), "2": primary(content=B)}
    first = analyse(up, None, {"1": mirror(), "2": mirror()}, {}, now=100.0)
    assert first.sync_lag_seconds(now=130.0) == 30.0
    # The primary moves again while the mirror is still behind: the divergence is the same one.
    up["1"] = primary(content=D)
    second = analyse(up, None, {"1": mirror(), "2": mirror(content=B)}, first.diverged_since, now=160.0)
    assert second.diverged_since == {"1": 100.0}
    assert second.sync_lag_seconds(now=190.0) == 90.0
    # Deleted on the primary: forgotten, and counted as extra while the mirror still has it.
    del up["1"]
    third = analyse(up, None, {"1": mirror(), "2": mirror(content=B)}, second.diverged_since, now=220.0)
    assert third.diverged_since == {}
    assert third.sync_lag_seconds(now=230.0) == 0.0
    assert third.count(RepoState.EXTRA) == 1


def test_unhealthy_repositories_come_worst_first_and_keep_all_keeps_all() -> None:
    up = {str(i): primary(slug=f"r{i}") for i in range(6)}
    up["1"] = primary(content=B, slug="r1")
    up["2"] = primary(content=B, slug="r2")
    down = {str(i): mirror() for i in range(6) if i != 3}
    down["5"] = mirror(failed=4)
    report = analyse(up, None, down, {"2": 50.0}, now=100.0)
    # r2 diverged first (carried over), then r1 and the missing r3 (both new), then r5 failing without drift.
    assert [r.slug for r in report.repositories] == ["r2", "r1", "r3", "r5"]
    assert report.repositories[0].lag_seconds(now=110.0) == 60.0
    assert report.repositories[-1].lag_seconds(now=110.0) == 0.0
    everything = analyse(up, None, down, {}, now=100.0, keep_all=True)
    assert len(everything.repositories) == 6


def test_a_mirror_lag_counts_only_silent_laggards_not_missing_or_failing_repositories() -> None:
    # One cause, one alert: a missing repository (RepositoriesMissing) and a failing one (RepositorySyncFailing) keep
    # their per-repository lag, but only a repository that drifts without failing drives the mirror's lag.
    up = {"1": primary(content=B), "2": primary(content=B), "3": primary(content=B), "4": primary()}
    down = {"1": mirror(failed=2), "3": mirror(), "4": mirror()}  # 1 failing, 2 missing, 3 silently behind
    report = analyse(up, None, down, {"1": 10.0, "2": 20.0, "3": 50.0}, now=100.0)
    assert report.diverged_since == {"1": 10.0, "2": 20.0, "3": 50.0}
    assert report.sync_lag_seconds(now=110.0) == 60.0  # repository 3 only
    lags = {r.repo_id: r.lag_seconds(now=110.0) for r in report.repositories}
    assert lags == {"1": 100.0, "2": 90.0, "3": 60.0}
    alone = analyse(up, None, {"1": mirror(failed=2), "3": mirror(content=B), "4": mirror()}, {}, now=100.0)
    assert alone.sync_lag_seconds(now=500.0) == 0.0  # missing and failing alone: no mirror lag


def test_each_report_a_mirror_takes_counts_its_checks_for_the_freshness_slo() -> None:
    from exporter.drift import DriftReport, RepoHealth, RepoState
    from exporter.rest.state import MirrorState

    now = 10_000.0
    behind = [
        RepoHealth("1", "P", "a", RepoState.CONTENT_DRIFT, 0, now - 400),  # late past 60, 120 and 300
        RepoHealth("2", "P", "b", RepoState.MISSING, 0, now - 100),  # late past 60 only
        RepoHealth("3", "P", "c", RepoState.METADATA_DRIFT, 0, now - 5000),  # content in step: never late
    ]
    counts = {RepoState.IN_SYNC: 7, RepoState.CONTENT_DRIFT: 1, RepoState.MISSING: 1, RepoState.METADATA_DRIFT: 1}
    report = DriftReport({**counts, RepoState.EXTRA: 4}, {}, behind)
    mirror = MirrorState("sydney", "https://sydney")
    mirror.take_report(report, now)
    mirror.take_report(report, now)
    assert mirror.drift is report
    assert mirror.repository_checks == 2 * 10  # extra repositories are not in scope
    assert {over: mirror.late_repository_checks[over] for over in (60, 120, 300, 600)} == {
        60: 4,
        120: 2,
        300: 2,
        600: 0,
    }


@given(
    st.lists(st.tuples(st.sampled_from(list(RepoState)), st.one_of(st.none(), st.floats(0, 20_000))), max_size=40),
    st.sampled_from([60.0, 300.0, 3600.0]),
)
# Behind for exactly the bound is not late.
@example([(RepoState.CONTENT_DRIFT, 19_940.0), (RepoState.MISSING, 19_000.0)], 60.0)
def test_the_late_counts_by_bisection_are_the_late_repositories(
    rows: list[tuple[RepoState, float | None]], bound: float
) -> None:
    # lagging counts from the report's sorted divergence starts; late lists the repositories: the same definition.
    from exporter.drift import DriftReport, RepoHealth, lagging, late

    now = 20_000.0
    report = DriftReport({}, {}, [RepoHealth(str(i), "P", f"r{i}", s, 0, t) for i, (s, t) in enumerate(rows)])
    listed = late(report, now, bound)
    assert lagging(report, now)[int(bound)] == len(listed)
    starts = [r.diverged_since or 0.0 for r in listed]
    assert starts == sorted(starts)
