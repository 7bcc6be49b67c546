"""Lag dated from the push, against the simulated farm whose pushes carry their times: as precise as the clocks allow,
the same after a restart, the same from a second exporter, and from first sight where the activity is refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from exporter.app import Exporter, ListenAddress, settings_from_mapping
from exporter.simulator import Scenario
from tests.conftest import LOOPBACK, Running, Samples, parse_metrics, running_farm, value, wait_until

INTERVAL = 0.5
LAG = "bitbucket_mirror_sync_lag_seconds"
SOURCE = "bitbucket_mirror_sync_lag_source"


def dated(samples: Samples) -> bool:
    return value(samples, SOURCE, mirror="sydney", source="push") == 1.0


@asynccontextmanager
async def another_exporter(run: Running) -> AsyncIterator[str]:
    """A second exporter on the same farm, with the same configuration; yields its /metrics URL."""
    config = run.farm.exporter_config(interval_seconds=INTERVAL, timeout_seconds=2.0)
    exporter = Exporter(settings_from_mapping(config), ListenAddress(LOOPBACK, 0), max_rendering_age=0)
    await exporter.start()
    try:
        yield f"http://{LOOPBACK}:{exporter.port}/metrics"
    finally:
        await exporter.stop()


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return parse_metrics(await resp.text())


async def behind_since_a_push(run: Running) -> float:
    """sydney stops syncing and repository 3 is pushed: the truth of when its divergence began."""
    await run.wait_ready()
    await run.control("/sim/mirrors/sydney", {"frozen": True})
    await run.control("/sim/push", {"repository_ids": [3]})
    truth = await run.truth()
    since: float = truth["mirrors"]["sydney"]["pushed_since"]["3"]
    return since


async def test_lag_from_the_push_is_within_a_second_and_a_half_of_the_truth_even_with_the_primarys_clock_off() -> None:
    scenario = Scenario(repositories=8, mirrors=1, primary_clock_skew_seconds=20.0)
    async with running_farm(scenario, ["9.x"], interval=INTERVAL) as run:
        pushed = await behind_since_a_push(run)
        await run.metrics_until(dated, "repo-3's lag dated from its push")
        for _ in range(4):  # at any scrape, cycles apart
            await run.next_cycles(1)
            samples = await run.metrics()
            exported = value(samples, LAG, mirror="sydney")
            assert exported is not None and abs(exported - (time.time() - pushed)) <= 1.5, exported


async def test_a_restarted_exporter_and_a_second_one_report_the_same_lag() -> None:
    async with running_farm(Scenario(repositories=8, mirrors=1), ["9.x"], interval=INTERVAL) as run:
        await behind_since_a_push(run)
        # Let the lag grow well past an interval, so a count from first sight would differ clearly.
        await run.metrics_until(lambda s: dated(s) and (value(s, LAG, mirror="sydney") or 0) > 3, "lag past 3 s")
        before, at = value(await run.metrics(), LAG, mirror="sydney"), time.time()
        assert before is not None
        await run.exporter.stop()  # the first exporter goes (a restart); a new process takes over
        async with another_exporter(run) as url:
            samples = await _until_dated(url)
            after, later = value(samples, LAG, mirror="sydney"), time.time()
            assert after is not None and abs(after - (before + later - at)) <= INTERVAL + 1.0
        await run.exporter.start()  # two at once: a replica pair
        async with another_exporter(run) as url:
            await run.metrics_until(dated, "the first exporter dated again")
            one, other = (
                value(await run.metrics(), LAG, mirror="sydney"),
                value(await _until_dated(url), LAG, mirror="sydney"),
            )
            assert one is not None and other is not None and abs(one - other) <= INTERVAL + 1.0


async def _until_dated(url: str) -> Samples:
    found: Samples = {}

    async def ready() -> bool:
        nonlocal found
        found = await scrape(url)
        return dated(found)

    await wait_until(ready, 15, f"{url} dates the lag from the push")
    return found


async def test_without_repo_admin_the_lag_counts_from_first_sight_and_says_so() -> None:
    async with running_farm(Scenario(repositories=8, mirrors=1), ["9.x"], interval=INTERVAL) as run:
        await run.control("/sim/scenario", {"activity_permission": False})
        await behind_since_a_push(run)
        samples = await run.metrics_until(
            lambda s: value(s, SOURCE, mirror="sydney", source="first_seen") == 1.0, "lag from first sight"
        )
        assert value(samples, SOURCE, mirror="sydney", source="push") == 0.0
        errors = "bitbucket_mirror_exporter_poll_errors_total"
        assert value(samples, errors, target="primary", source="ref_change_activity", reason="http_401") == 1.0
        # Backed off: the refusal is not asked again every cycle.
        await run.next_cycles(3)
        again = await run.metrics()
        assert value(again, errors, target="primary", source="ref_change_activity", reason="http_401") == 1.0


async def test_a_missing_repository_is_behind_since_its_creation() -> None:
    async with running_farm(Scenario(repositories=8, mirrors=1), ["9.x"], interval=INTERVAL) as run:
        await run.wait_ready()
        await run.next_cycles(2)
        await run.control("/sim/mirrors/sydney", {"missing_repositories": [4]})
        truth: dict[str, Any] = (await run.truth())["mirrors"]["sydney"]
        created = truth["pushed_since"]["4"]
        samples = await run.metrics_until(dated, "the missing repository dated from its creation")
        repo_lag = value(samples, "bitbucket_mirror_repository_sync_lag_seconds", mirror="sydney", project="PRJ1",
                         repository="repo-4")  # fmt: skip
        assert repo_lag is not None and abs(repo_lag - (time.time() - created)) <= 1.5


@pytest.mark.parametrize("order", ["newest_first", "oldest_first"])
async def test_lag_is_dated_from_the_push_whatever_order_the_primary_lists_ref_changes_in(order: str) -> None:
    # 30 pushes the mirror synced, more than a page of 25, then one it does not: listed oldest first, the first page
    # holds only old pushes, and reading it as newest first would date the lag from the repository's creation.
    scenario = Scenario(repositories=8, mirrors=1, activity_order=order)
    async with running_farm(scenario, ["9.x"], interval=INTERVAL) as run:
        await run.wait_ready()
        await run.control("/sim/push", {"repository_ids": [3] * 30})
        await run.next_cycles(1)
        pushed = await behind_since_a_push(run)
        samples = await run.metrics_until(dated, "repo-3's lag dated from its push")
        exported = value(samples, LAG, mirror="sydney")
        assert exported is not None and abs(exported - (time.time() - pushed)) <= 1.5, exported
        asked = (await run.truth())["primary_requests"]["ref_change_activities"]
        assert asked == (1 if order == "newest_first" else 2)  # one page, or read on to the newest
