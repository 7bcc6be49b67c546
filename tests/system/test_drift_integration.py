"""Drift and lag against the simulated farm's ground truth, over real loopback HTTP, in both API families."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import Running, Samples, running_farm, value, wait_until

FAMILIES = [["9.x"], ["8.x"], ["9.x", "8.x", "9.x"]]
COUNTS = {
    "bitbucket_mirror_repositories_in_sync": "in_sync",
    "bitbucket_mirror_repositories_missing": "missing",
    "bitbucket_mirror_repositories_hash_unknown": "hash_unknown",
    "bitbucket_mirror_repositories_extra": "extra",
}


def count_mismatches(samples: Samples, truth: dict[str, Any]) -> list[str]:
    wrong = []
    for name, mirror in truth["mirrors"].items():
        classes = mirror["classes"]
        expected: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {
            (metric, ()): len(classes[cls]) for metric, cls in COUNTS.items()
        }
        expected[("bitbucket_mirror_repositories_out_of_sync", (("hash", "content"),))] = len(classes["content_drift"])
        expected[("bitbucket_mirror_repositories_out_of_sync", (("hash", "metadata"),))] = len(
            classes["metadata_drift"]
        )
        for (metric, extra), want in expected.items():
            got = value(samples, metric, mirror=name, **dict(extra))
            if got != want:
                wrong.append(f"{metric}{{mirror={name}{extra}}}: exporter {got}, truth {want}")
    primary = value(samples, "bitbucket_mirror_primary_repositories")
    if primary != truth["repositories"]:
        wrong.append(f"bitbucket_mirror_primary_repositories: exporter {primary}, truth {truth['repositories']}")
    return wrong


async def wait_for_truth(run: Running, within: float = 10.0) -> dict[str, Any]:
    """Poll until every count equals the truth; the farm is static, so this is one or two poll cycles."""
    last: list[str] = []

    async def matches() -> bool:
        nonlocal last
        last = count_mismatches(await run.metrics(), await run.truth())
        return not last

    try:
        await wait_until(matches, within, "exporter counts to equal the simulated truth")
    except pytest.fail.Exception:
        pytest.fail("counts never matched the truth:\n" + "\n".join(last))
    return dict(await run.truth())


@pytest.mark.parametrize("families", FAMILIES, ids=lambda f: "+".join(f))
async def test_every_class_of_drift_equals_the_truth(families: list[str]) -> None:
    scenario = Scenario(
        seed=11,
        projects=4,
        repositories=48,
        failing_repositories=2,
        zero_hash_repositories=3,
        missing_repositories=2,
        metadata_sync_delay_seconds=3600,
        page_limit_cap=10,
    )
    names = ["sydney", "frankfurt", "saopaulo"][: len(families)]
    async with running_farm(scenario, families) as run:
        await run.wait_ready()
        await run.control(f"/sim/mirrors/{names[0]}", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [3, 4, 5, 3]})
        await run.control("/sim/push", {"repository_ids": [6, 7], "metadata_only": True})
        await run.control("/sim/delete", {"repository_ids": [8]})
        if len(names) > 1:
            await run.control(f"/sim/mirrors/{names[-1]}", {"selected_projects": [1, 2]})
        truth = await wait_for_truth(run)
    first = truth["mirrors"][names[0]]["classes"]
    # The scenario really exercises every class (zero-hash repositories may hide some of the pushed ones).
    assert first["content_drift"] and first["metadata_drift"] and first["missing"] and first["extra"] == [8]
    assert first["hash_unknown"] and first["in_sync"]
    if len(names) > 1:
        assert truth["mirrors"][names[-1]]["selected_projects"] == [1, 2]


def lag(samples: Samples, mirror: str) -> float:
    found = value(samples, "bitbucket_mirror_sync_lag_seconds", mirror=mirror)
    assert found is not None
    return found


async def test_lag_is_within_one_poll_interval_of_the_truth_and_keeps_growing() -> None:
    # Both API families in one farm: each mirror has its own silent laggard and its own failing repository.
    interval = 0.5
    scenario = Scenario(seed=3, repositories=12, sync_delay_seconds=0)
    async with running_farm(scenario, ["9.x", "8.x", "9.x"], interval=interval) as run:
        await run.wait_ready()
        names = list(run.farm.mirror_urls)[:2]
        # Repository 5 keeps failing to sync and has diverged longest; repository 2 falls behind silently (the
        # mirror stops syncing) while the primary keeps moving. Only repository 2 drives the mirror's lag.
        for name in names:
            await run.control(f"/sim/mirrors/{name}", {"failing_repositories": [5]})
        await run.control("/sim/push", {"repository_ids": [5]})
        await run.next_cycles(2)
        for name in names:
            await run.control(f"/sim/mirrors/{name}", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [2]})
        lags: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(3):
            await run.next_cycles(2)
            await run.control("/sim/push", {"repository_ids": [2]})
            samples = await run.metrics()
            truth = await run.truth()
            for name in names:
                since = truth["mirrors"][name]["diverged_since"]
                assert set(since) == {"2", "5"}
                truth_lag = truth["now"] - since["2"]
                exported = lag(samples, name)
                assert truth_lag - interval - 0.25 <= exported <= truth_lag + 0.05, (name, exported, truth_lag)
                repo_lag = value(
                    samples,
                    "bitbucket_mirror_repository_sync_lag_seconds",
                    mirror=name,
                    project="PRJ2",
                    repository="repo-2",
                )
                assert repo_lag == pytest.approx(exported, abs=0.05)
                # The timestamp beside it: when the divergence began (the push on the primary), for time() - it.
                began = value(samples, "bitbucket_mirror_sync_lag_first_seen_timestamp_seconds", mirror=name)
                assert began is not None and since["2"] - 0.3 <= began <= since["2"] + interval + 0.3, (began, since)
                repo_began = value(
                    samples,
                    "bitbucket_mirror_repository_sync_lag_first_seen_timestamp_seconds",
                    mirror=name,
                    project="PRJ2",
                    repository="repo-2",
                )
                assert repo_began == began
                failing_lag = value(
                    samples,
                    "bitbucket_mirror_repository_sync_lag_seconds",
                    mirror=name,
                    project="PRJ2",
                    repository="repo-5",
                )
                assert failing_lag is not None and failing_lag > exported  # per repository, not the mirror's lag
                lags[name].append(exported)
        for name in names:
            assert lags[name][0] < lags[name][1] < lags[name][2]
        assert lag(samples, list(run.farm.mirror_urls)[2]) == 0.0


async def test_a_push_shows_within_one_interval_at_every_scrape_even_when_the_primary_reads_slower() -> None:
    # The primary's listing takes three slow pages, the mirror's one quick page: the mirror always finishes first.
    # Each cycle's drift must still use that cycle's primary listing, or a push shows up to two intervals late.
    interval, page_latency, pages = 1.0, 0.1, 3
    scenario = Scenario(seed=5, repositories=30, page_limit_cap=10, primary_latency_seconds=page_latency)
    async with running_farm(scenario, ["9.x"], interval=interval, page_limit=100) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"frozen": True})
        # Each push lands as a cycle's primary walk begins: where reading the previous cycle's primary listing
        # would show it almost two intervals late. Found by the walk's first page arriving, not by sleeping.
        repos = [2, 3, 4]
        requests = run.farm.farm.primary_requests
        for repo_id in repos:
            walks_begun = -(-requests.get("repos", 0) // pages)

            async def next_walk_began(begun: int = walks_begun) -> bool:
                return requests.get("repos", 0) > begun * pages

            await wait_until(next_walk_began, 5 * interval, "the next cycle's primary walk")
            await run.control("/sim/push", {"repository_ids": [repo_id]})
        # How late a push may show: the rest of the interval it lands in, plus the primary's read of that cycle.
        bound = interval + pages * page_latency + 0.3
        checked = 0
        deadline = asyncio.get_running_loop().time() + 3 * interval
        while asyncio.get_running_loop().time() < deadline:
            samples = await run.metrics()
            truth = await run.truth()
            since = truth["mirrors"]["sydney"]["diverged_since"]
            for repo_id in repos:
                truth_lag = truth["now"] - since[str(repo_id)]
                seen = value(
                    samples,
                    "bitbucket_mirror_repository_sync_lag_seconds",
                    mirror="sydney",
                    project=f"PRJ{(repo_id - 1) % 3 + 1}",
                    repository=f"repo-{repo_id}",
                )
                exported = 0.0 if seen is None else seen
                assert exported <= truth_lag + 0.05, (repo_id, exported, truth_lag)
                assert exported >= truth_lag - bound, f"repo-{repo_id}: lag {exported:.2f}s, truth {truth_lag:.2f}s"
                checked += 1
            await asyncio.sleep(0.05)
        assert checked > 30


async def test_an_8x_mirror_with_selected_projects_reads_its_scope_from_settings() -> None:
    # 8.x keeps the sync scope at upstreamServers/{id}/settings; reading a path that does not exist there counted
    # every repository outside the scope as missing.
    async with running_farm(Scenario(repositories=12, projects=3), ["8.x"]) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"selected_projects": [1]})
        await wait_for_truth(run)
        samples = await run.metrics()
        truth = await run.truth()
    assert truth["mirrors"]["sydney"]["classes"]["missing"] == []
    assert value(samples, "bitbucket_mirror_repositories_missing", mirror="sydney") == 0
    assert value(samples, "bitbucket_mirror_repositories_in_sync", mirror="sydney") == 4
    assert value(samples, "bitbucket_mirror_exporter_poll_success", target="sydney", source="sync_settings") == 1.0
    assert run.farm.farm.mirrors["sydney"].requests.get("sync_settings", 0) > 0


@pytest.mark.parametrize("mirrors", [1, 3])
async def test_the_primary_is_asked_for_its_hashes_once_per_cycle_whatever_the_mirror_count(mirrors: int) -> None:
    scenario = Scenario(repositories=35, page_limit_cap=10)  # 4 pages of repositories
    async with running_farm(scenario, ["9.x"] * mirrors) as run:
        await run.wait_ready()
        await run.next_cycles(3)
        await run.exporter.stop()
        cycles = run.exporter.state.primary.cycles
        requests = run.farm.farm.primary_requests
    # A cycle cut short by the stop may have asked for some pages of one more fetch.
    assert 4 * cycles <= requests["repos"] <= 4 * (cycles + 1), (cycles, requests)
    assert cycles <= requests["mirror_servers"] <= cycles + 1


def per_repository_series(samples: Samples, mirror: str) -> int:
    return sum(
        1
        for (name, labels) in samples
        if name == "bitbucket_mirror_repository_sync_lag_seconds" and ("mirror", mirror) in labels
    )


@pytest.mark.parametrize(
    ("mode", "cap", "series", "dropped"),
    [("unhealthy", 500, 30, 0), ("unhealthy", 10, 10, 20), ("none", 10, 0, 0), ("all", 500, 60, 0)],
)
async def test_per_repository_series_are_bounded(mode: str, cap: int, series: int, dropped: int) -> None:
    def settings(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["per_repository_metrics"] = mode
        config["max_repository_series"] = cap
        farm.farm.mirrors["sydney"].frozen = True
        for repo_id in range(1, 31):
            farm.farm.push(repo_id)

    async with running_farm(Scenario(repositories=60), ["9.x"], prepare=settings) as run:
        await run.wait_ready()
        samples = await run.metrics()
    assert value(samples, "bitbucket_mirror_repositories_out_of_sync", mirror="sydney", hash="content") == 30
    assert per_repository_series(samples, "sydney") == series
    assert value(samples, "bitbucket_mirror_repository_series_dropped", mirror="sydney") == dropped


async def test_series_count_does_not_grow_with_repositories_by_default() -> None:
    counts = []
    for repositories in (20, 400):
        async with running_farm(Scenario(repositories=repositories, page_limit_cap=100), ["9.x", "8.x"]) as run:
            await run.wait_ready()
            samples = await run.metrics()
        counts.append(sum(1 for (name, _) in samples if name.startswith("bitbucket_mirror")))
    assert counts[0] == counts[1]


async def test_delayed_sync_where_the_version_has_it() -> None:
    scenario = Scenario(repositories=10, sync_tolerance_seconds=0)
    async with running_farm(scenario, ["9.x", "8.x"]) as run:
        await run.wait_ready()
        for name in ("sydney", "frankfurt"):
            await run.control(f"/sim/mirrors/{name}", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [1, 2, 3]})
        await run.next_cycles(2)
        samples = await run.metrics()
        truth = await run.truth()
        # 9.5+: delayed-sync.
        assert (
            value(samples, "bitbucket_mirror_delayed_sync_available", mirror="sydney", endpoint="delayed-sync") == 1.0
        )
        assert (
            value(samples, "bitbucket_mirror_delayed_sync_repositories", mirror="sydney")
            == len(truth["mirrors"]["sydney"]["delayed"])
            == 3
        )
        # 8.x with diagnostics off: 409, reported as unavailable, not as an error.
        assert (
            value(samples, "bitbucket_mirror_delayed_sync_available", mirror="frankfurt", endpoint="out-of-sync-repos")
            == 0.0
        )
        assert value(samples, "bitbucket_mirror_delayed_sync_repositories", mirror="frankfurt") is None
        assert (
            value(samples, "bitbucket_mirror_exporter_poll_success", target="frankfurt", source="delayed_sync") == 1.0
        )
        assert run.exporter.state.mirrors[1].delayed_sync.errors_total == {}
        await run.control("/sim/mirrors/frankfurt", {"diagnostics_enabled": True})
        await run.next_cycles(2)
        samples = await run.metrics()
        assert value(samples, "bitbucket_mirror_delayed_sync_repositories", mirror="frankfurt") == 3
        # The 8.x mirror is asked for delayed-sync once, then only for out-of-sync-repos.
        requests = run.farm.farm.mirrors["frankfurt"].requests
        assert requests["unmatched /rest/mirroring/latest/mirrorRepos/delayed-sync"] == 1


async def test_discovered_mirrors_are_monitored_and_configured_ones_win_by_url() -> None:
    def only_sydney(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["mirrors"] = [{"name": "syd", "url": farm.mirror_urls["sydney"]}]
        config["discover_mirrors"] = True

    async with running_farm(Scenario(repositories=5), ["9.x", "8.x"], prepare=only_sydney) as run:
        await run.wait_ready()

        async def discovered() -> bool:
            samples = await run.metrics()
            return value(samples, "bitbucket_mirror_repositories", mirror="frankfurt") == 5

        await wait_until(discovered, what="frankfurt discovered and polled")
        samples = await run.metrics()
        names = {dict(labels)["mirror"] for (name, labels) in samples if name == "bitbucket_mirror_up"}
        assert names == {"syd", "frankfurt"}
        assert (
            value(
                samples,
                "bitbucket_mirror_info",
                mirror="frankfurt",
                url=run.farm.mirror_urls["frankfurt"],
                api_family="8.x",
            )
            == 1.0
        )


async def test_repositories_deleted_on_the_primary_are_forgotten() -> None:
    async with running_farm(Scenario(repositories=6), ["9.x"]) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [4]})
        await run.next_cycles(2)
        assert per_repository_series(await run.metrics(), "sydney") == 1
        await run.control("/sim/delete", {"repository_ids": [4]})
        await run.next_cycles(2)
        samples = await run.metrics()
        drift = run.exporter.state.mirrors[0].drift
        assert drift is not None and drift.diverged_since == {}
        assert per_repository_series(samples, "sydney") == 0
        assert value(samples, "bitbucket_mirror_repositories_extra", mirror="sydney") == 1
        assert value(samples, "bitbucket_mirror_sync_lag_seconds", mirror="sydney") == 0.0
        assert not math.isnan(value(samples, "bitbucket_mirror_primary_repositories") or math.nan)
