"""Truth first: no number computed from stale or partial inputs is served as current.

A source's values ride over a short failure (up to poll.stale_after_seconds), then are left out; drift and lag need
both listings fresh (bitbucket_mirror_drift_fresh); first-seen times survive a stale period; the clock skew comes from
the Date headers of answers already fetched. All against the simulated farm's ground truth over loopback HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import Samples, running_farm, value

INTERVAL = 0.2
STALE = 3 * INTERVAL  # the default, poll.stale_after_seconds = 3 x interval
DRIFT_SERIES = (
    "bitbucket_mirror_repositories_in_sync",
    "bitbucket_mirror_repositories_missing",
    "bitbucket_mirror_repositories_hash_unknown",
    "bitbucket_mirror_repositories_extra",
    "bitbucket_mirror_sync_lag_seconds",
    "bitbucket_mirror_repository_series_dropped",
    # The freshness SLI's gauges (the SLO's counters stay: they count checks that happened).
    "bitbucket_mirror_repositories_in_scope",
    "bitbucket_mirror_repositories_lagging",
)


def drift_series(samples: Samples, mirror: str) -> list[str]:
    """Every drift or lag series of the mirror (mirror-level and per-repository) that is served."""
    return sorted(
        name
        for (name, labels) in samples
        if ("mirror", mirror) in labels
        and (name in DRIFT_SERIES or name.startswith("bitbucket_mirror_repository_") or "out_of_sync" in name)
    )


async def test_a_failing_mirror_listing_rides_over_then_its_drift_is_left_out_and_comes_back_with_its_lag() -> None:
    async with running_farm(Scenario(repositories=8), ["9.x", "8.x"], interval=INTERVAL) as run:
        await run.wait_ready()
        # A silent laggard on sydney: its lag must survive the stale period, since the divergence does.
        await run.control("/sim/mirrors/sydney", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [3]})
        await run.next_cycles(2)
        before = await run.metrics()
        diverged_at = (await run.truth())["mirrors"]["sydney"]["diverged_since"]["3"]
        assert value(before, "bitbucket_mirror_drift_fresh", mirror="sydney") == 1.0
        assert value(before, "bitbucket_mirror_repositories_out_of_sync", mirror="sydney", hash="content") == 1.0

        # The mirror's repoSyncStatus now answers 401 (a rotated password).
        await run.control("/sim/mirrors/sydney", {"faults": {"repo_sync_status": "unauthorized"}})
        stale = await run.metrics_until(
            lambda s: value(s, "bitbucket_mirror_drift_fresh", mirror="sydney") == 0.0, "sydney's drift stale"
        )
        assert drift_series(stale, "sydney") == []
        assert value(stale, "bitbucket_mirror_repositories", mirror="sydney") is None
        assert value(stale, "bitbucket_mirror_repositories_failing", mirror="sydney") is None
        assert (
            value(
                stale,
                "bitbucket_mirror_drift_input_stale",
                mirror="sydney",
                target="sydney",
                source="repo_sync_status",
                reason="http_401",
            )
            == 1.0
        )
        # Everything else goes on: the mirror is up, frankfurt's drift is fresh and true.
        assert value(stale, "bitbucket_mirror_up", mirror="sydney") == 1.0
        assert value(stale, "bitbucket_mirror_drift_fresh", mirror="frankfurt") == 1.0
        assert value(stale, "bitbucket_mirror_repositories_in_sync", mirror="frankfurt") == 8.0
        assert drift_series(stale, "frankfurt") != []

        await run.control("/sim/mirrors/sydney", {"faults": {}})
        back = await run.metrics_until(
            lambda s: value(s, "bitbucket_mirror_drift_fresh", mirror="sydney") == 1.0, "sydney's drift back"
        )
        truth = await run.truth()
        # The divergence lasted through the stale period, so its first-seen time was kept: lag is the whole time.
        lag = value(back, "bitbucket_mirror_sync_lag_seconds", mirror="sydney")
        assert lag is not None and truth["now"] - diverged_at - INTERVAL - 0.3 <= lag <= truth["now"] - diverged_at
        assert value(back, "bitbucket_mirror_drift_input_stale", mirror="sydney", target="sydney",
                     source="repo_sync_status", reason="http_401") is None  # fmt: skip


async def test_a_short_failure_keeps_the_last_values(tmp_path: Path) -> None:
    # One failed poll within stale_after_seconds: the values stay (a graph keeps its line, an alert its `for`).
    async with running_farm(Scenario(repositories=5), ["9.x"], interval=INTERVAL, stale_after_seconds=30) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"faults": {"repo_sync_status": "unauthorized"}})
        failing = await run.metrics_until(
            lambda s: (
                value(s, "bitbucket_mirror_exporter_poll_success", target="sydney", source="repo_sync_status") == 0.0
            ),
            "the failure seen",
        )
        await run.next_cycles(3)
        later = await run.metrics()
        for samples in (failing, later):
            assert value(samples, "bitbucket_mirror_repositories", mirror="sydney") == 5.0
            assert value(samples, "bitbucket_mirror_drift_fresh", mirror="sydney") == 1.0
            assert value(samples, "bitbucket_mirror_repositories_in_sync", mirror="sydney") == 5.0


async def test_a_primary_listing_that_fails_leaves_every_mirror_drift_unknown_and_never_grows_lag(
    tmp_path: Path,
) -> None:
    password = tmp_path / "primary-password"
    password.write_text("admin")

    def primary_from_file(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        # The mirrors have credentials of their own; only the primary's password file is rotated badly.
        del config["primary"]["password"]
        config["primary"]["password_file"] = str(password)
        for mirror in config["mirrors"]:
            mirror.update(username="admin", password="admin")

    async with running_farm(
        Scenario(repositories=6), ["9.x", "8.x"], interval=INTERVAL, prepare=primary_from_file
    ) as run:
        await run.wait_ready()
        await run.next_cycles(1)
        assert value(await run.metrics(), "bitbucket_mirror_sync_lag_seconds", mirror="sydney") == 0.0
        password.write_text("rotated-elsewhere")
        # Meanwhile the primary moves on and the mirrors follow; stale drift would now be wrong either way.
        await run.control("/sim/push", {"repository_ids": [1, 2]})

        def both_unknown(s: Samples) -> bool:
            return all(value(s, "bitbucket_mirror_drift_fresh", mirror=m) == 0.0 for m in ("sydney", "frankfurt"))

        stale = await run.metrics_until(both_unknown, "every mirror's drift unknown")
        for mirror in ("sydney", "frankfurt"):
            assert drift_series(stale, mirror) == []
            assert (
                value(
                    stale,
                    "bitbucket_mirror_drift_input_stale",
                    mirror=mirror,
                    target="primary",
                    source="repositories",
                    reason="http_401",
                )
                == 1.0
            )
        assert value(stale, "bitbucket_mirror_primary_repositories") is None
        # The mirrors' own sources are fresh.
        assert value(stale, "bitbucket_mirror_repositories", mirror="sydney") == 6.0

        password.write_text("admin")
        back = await run.metrics_until(
            lambda s: not both_unknown(s) and value(s, "bitbucket_mirror_drift_fresh", mirror="frankfurt") == 1.0,
            "drift back",
        )
        await run.next_cycles(2)
        back = await run.metrics()
        for mirror in ("sydney", "frankfurt"):
            assert value(back, "bitbucket_mirror_drift_fresh", mirror=mirror) == 1.0
            assert value(back, "bitbucket_mirror_sync_lag_seconds", mirror=mirror) == 0.0  # they kept up


@pytest.mark.parametrize(("mirror_skew", "primary_skew"), [(20.0, 0.0), (-7.0, 5.0), (0.0, 0.0)])
async def test_clock_skew_from_date_headers_equals_the_truth(mirror_skew: float, primary_skew: float) -> None:
    scenario = Scenario(repositories=3, primary_clock_skew_seconds=primary_skew)
    async with running_farm(scenario, ["9.x", "8.x"], interval=INTERVAL) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"clock_skew_seconds": mirror_skew})
        requests_before = dict(run.farm.farm.mirrors["sydney"].requests)
        truth = (await run.truth())["mirrors"]
        want = truth["sydney"]["clock_skew_seconds"]
        assert want == mirror_skew - primary_skew

        def close(s: Samples) -> bool:
            got = value(s, "bitbucket_mirror_clock_skew_seconds", mirror="sydney")
            return got is not None and abs(got - want) <= 1.0

        samples = await run.metrics_until(close, f"clock skew {want}")
        # Resolution 1 s: whole seconds; and frankfurt, on the true clock, is as far off as the primary is.
        assert value(samples, "bitbucket_mirror_clock_skew_seconds", mirror="sydney") in (want - 1, want, want + 1)
        other = value(samples, "bitbucket_mirror_clock_skew_seconds", mirror="frankfurt")
        assert other is not None and abs(other - truth["frankfurt"]["clock_skew_seconds"]) <= 1.0
        # No request of its own: the skew comes from answers the exporter fetched anyway.
        assert set(run.farm.farm.mirrors["sydney"].requests) == set(requests_before)
