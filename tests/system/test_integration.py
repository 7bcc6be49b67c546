"""The exporter against the simulated farm over real loopback HTTP, in both API families."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import running_farm, value

FAMILIES = [["9.x"], ["8.x"], ["9.x", "8.x", "9.x"]]


@pytest.mark.parametrize("families", FAMILIES, ids=lambda f: "+".join(f))
async def test_metrics_match_the_simulated_truth(families: list[str]) -> None:
    scenario = Scenario(
        seed=7, repositories=57, projects=4, failing_repositories=3, failed_sync_count=4, page_limit_cap=10
    )
    async with running_farm(scenario, families) as run:
        # Nodes and a pending queue item differ per mirror, so a mix-up between mirrors would show.
        for i, name in enumerate(run.farm.mirror_urls):
            await run.control(f"/sim/mirrors/{name}", {"nodes": i + 1})
        await run.control("/sim/mirrors/" + next(iter(run.farm.mirror_urls)), {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [5, 5, 9]})
        await run.wait_ready()
        await run.next_cycles(1)
        truth = await run.truth()
        samples = await run.metrics()
        for name, mirror in truth["mirrors"].items():
            m = {"mirror": name}
            assert value(samples, "bitbucket_mirror_up", **m) == 1.0
            assert value(samples, "bitbucket_mirror_state", **m, state="SYNCHRONIZED") == 1.0
            assert value(samples, "bitbucket_mirror_state", **m, state="BOOTSTRAPPED") == 0.0
            assert value(samples, "bitbucket_mirror_farm_nodes", **m) == mirror["nodes"]
            assert value(samples, "bitbucket_mirror_status_members", **m) == mirror["nodes"]
            assert value(samples, "bitbucket_mirror_repositories", **m) == mirror["repositories"] == 57
            assert value(samples, "bitbucket_mirror_repositories_failing", **m) == mirror["repositories_failing"] == 3
            assert value(samples, "bitbucket_mirror_failed_syncs", **m) == mirror["failed_syncs"] == 12
            assert (
                value(samples, "bitbucket_mirror_ref_changes_queue_length", **m) == mirror["ref_changes_queue_length"]
            )
            last_sync = value(samples, "bitbucket_mirror_last_sync_timestamp_seconds", **m)
            assert last_sync == pytest.approx(mirror["newest_last_sync"], abs=0.001)
            assert value(samples, "bitbucket_mirror_server_enabled", **m) == 1.0
            assert value(samples, "bitbucket_mirror_sync_discovering", **m) == 0.0
            assert value(samples, "bitbucket_mirror_upstream_state", **m, state="INSTALLED") == 1.0
            assert (
                value(
                    samples,
                    "bitbucket_mirror_info",
                    **m,
                    url=mirror["base_url"],
                    api_family=mirror["api_family"],
                )
                == 1.0
            )
            for source in (
                "status",
                "upstream",
                "progress",
                "farm_nodes",
                "ref_changes_queue",
                "repo_sync_status",
            ):
                assert value(samples, "bitbucket_mirror_exporter_poll_success", target=name, source=source) == 1.0
        frozen = next(iter(truth["mirrors"].values()))
        # Repository 5 was pushed twice (a snapshot) and 9 once (incremental) while the mirror was frozen.
        assert frozen["ref_changes_queue_length"] == 2
        first = next(iter(truth["mirrors"]))
        assert value(samples, "bitbucket_mirror_ref_changes_queue_items", mirror=first, sync="snapshot") == 1.0
        assert value(samples, "bitbucket_mirror_ref_changes_queue_items", mirror=first, sync="incremental") == 1.0
        assert value(samples, "bitbucket_mirror_exporter_build_info", version="0.1.0") == 1.0


async def test_repo_sync_status_follows_every_capped_page() -> None:
    scenario = Scenario(repositories=95, page_limit_cap=7)
    async with running_farm(scenario, ["9.x"]) as run:
        await run.wait_ready()
        samples = await run.metrics()
        assert value(samples, "bitbucket_mirror_repositories", mirror="sydney") == 95
        truth = await run.truth()
        # ceil(95 / 7) pages per cycle, whatever limit the exporter asked for.
        cycles = run.exporter.state.mirrors[0].cycles
        assert truth["mirrors"]["sydney"]["requests"]["repo_sync_status"] == 14 * cycles


async def test_a_starting_mirror_reports_its_state_but_is_not_up() -> None:
    async with running_farm(Scenario(repositories=3), ["9.x"], retries=0) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"state": "STARTING"})
        await run.next_cycles(1)
        samples = await run.metrics()
        assert value(samples, "bitbucket_mirror_up", mirror="sydney") == 0.0
        assert value(samples, "bitbucket_mirror_state", mirror="sydney", state="STARTING") == 1.0
        assert value(samples, "bitbucket_mirror_state", mirror="sydney", state="SYNCHRONIZED") == 0.0


async def test_unknown_states_are_kept_and_exported() -> None:
    async with running_farm(Scenario(repositories=3), ["8.x"]) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"state": "SOMETHING_NEW", "upstream_state": "REMOVED"})
        await run.next_cycles(1)
        samples = await run.metrics()
        assert value(samples, "bitbucket_mirror_state", mirror="sydney", state="SOMETHING_NEW") == 1.0
        assert value(samples, "bitbucket_mirror_state", mirror="sydney", state="SYNCHRONIZED") == 0.0
        assert value(samples, "bitbucket_mirror_upstream_state", mirror="sydney", state="REMOVED") == 1.0


async def test_ready_waits_for_every_target_and_metrics_never_wait_on_bitbucket() -> None:
    def hang_status(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        farm.farm.mirrors["sydney"].faults = {"status": "hang"}

    async with running_farm(
        Scenario(repositories=3), ["9.x"], prepare=hang_status, timeout_seconds=3.0, retries=0
    ) as run:
        assert (await run.get("/-/ready"))[0] == 503
        assert (await run.get("/-/healthy"))[0] == 200
        # A hanging mirror does not hold up /metrics.
        assert (await run.get("/metrics"))[0] == 200
        await run.wait_ready(within=10)
        samples = await run.metrics()
        assert (
            value(
                samples,
                "bitbucket_mirror_exporter_poll_errors_total",
                target="sydney",
                source="status",
                reason="timeout",
            )
            == 1.0
        )


async def test_wrong_credentials_are_http_401_and_secrets_stay_out_of_every_page() -> None:
    def wrong_password(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["primary"]["password"] = "hunter2-not-the-password"

    async with running_farm(Scenario(repositories=3), ["9.x"], prepare=wrong_password) as run:
        await run.wait_ready()
        # /metrics shows the state as of at most a second ago (exporter/web/exposition.py).
        samples = await run.metrics_until(
            lambda s: (
                value(s, "bitbucket_mirror_exporter_poll_success", target="sydney", source="repo_sync_status")
                is not None
            ),
            "the first poll of sydney's listing",
        )
        # One count per failed poll; at a 0.2 s interval another cycle may have ended since ready. Which requests
        # meet the account's CAPTCHA lock (the simulator's, after a few 401s, as Bitbucket's) depends on their order:
        # the listing, walked in a worker process, may ask after the loop's own requests locked the account.
        refused = [
            value(samples, "bitbucket_mirror_exporter_poll_errors_total", target="sydney", source="repo_sync_status",
                  reason=reason)
            for reason in ("http_401", "captcha")
        ]  # fmt: skip
        assert sum(count or 0 for count in refused) >= 1.0
        success = value(samples, "bitbucket_mirror_exporter_poll_success", target="sydney", source="repo_sync_status")
        assert success == 0.0
        assert value(samples, "bitbucket_mirror_up", mirror="sydney") == 1.0  # /status needs no login
        for path in ("/metrics", "/", "/-/ready"):
            _, body = await run.get(path)
            assert "hunter2" not in body


async def test_the_primary_names_mirrors_by_configured_url_else_by_its_own_name() -> None:
    def only_sydney(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        # Another spelling of the same base URL; frankfurt is not configured at all.
        url = farm.mirror_urls["sydney"].replace("http://", "HTTP://") + "/"
        config["mirrors"] = [{"name": "syd", "url": url}]
        farm.farm.mirrors["frankfurt"].enabled = False

    async with running_farm(Scenario(repositories=3), ["9.x", "8.x"], prepare=only_sydney) as run:
        await run.wait_ready()
        samples = await run.metrics()
        assert value(samples, "bitbucket_mirror_server_enabled", mirror="syd") == 1.0
        assert value(samples, "bitbucket_mirror_server_enabled", mirror="frankfurt") == 0.0
        truth = await run.truth()
        seen = value(samples, "bitbucket_mirror_server_last_seen_timestamp_seconds", mirror="frankfurt")
        assert seen is not None and seen <= truth["now"]


async def test_landing_page_lists_mirrors() -> None:
    async with running_farm(Scenario(repositories=3), ["9.x", "8.x"]) as run:
        await run.wait_ready()
        status, body = await run.get("/")
        assert status == 200
        assert "sydney" in body and "frankfurt" in body and 'href="metrics"' in body
        assert "8.x" in body and "9.x" in body


async def test_failures_are_logged_once_per_change_of_state(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="exporter.poller")
    async with running_farm(Scenario(repositories=3), ["9.x"], retries=0) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"faults": {"progress": "error"}})
        await run.next_cycles(3)
        await run.control("/sim/mirrors/sydney", {"faults": {"progress": "html"}})
        await run.next_cycles(3)
        await run.control("/sim/mirrors/sydney", {"faults": {}})
        await run.next_cycles(2)
    progress = [r for r in caplog.records if getattr(r, "source", None) == "progress"]
    assert [(r.getMessage(), getattr(r, "reason", None)) for r in progress] == [
        ("poll failed", "http_500"),
        ("poll failed", "html_response"),
        ("poll recovered", None),
    ]


@pytest.mark.parametrize("family", ["9.x", "8.x"])
async def test_a_mirror_down_from_the_start_costs_one_api_detection_per_cycle(family: str) -> None:
    def down(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        farm.farm.mirrors["sydney"].faults = {"*": "unavailable"}

    async with running_farm(Scenario(repositories=3), [family], prepare=down, retries=0) as run:
        await run.next_cycles(3)
        await run.exporter.stop()
        requests = run.farm.farm.mirrors["sydney"].requests
        # Detection asks upstreamServer first: a route of its own on 9.x mirrors, an unknown path on 8.x ones.
        probe = "unmatched /rest/mirroring/latest/upstreamServer"
        detections = sum(requests.get(route, 0) for route in ("upstream", "upstream_servers", probe))
        # /status is asked once per cycle; a cycle cut short by the stop may have asked one and not the other.
        assert requests["status"] >= 3
        assert abs(detections - requests["status"]) <= 1, requests
        mirror = run.exporter.state.mirrors[0]
        for source in (mirror.upstream, mirror.progress, mirror.farm_nodes):
            # Every cycle that finished counted its failure once per source.
            assert source.errors_total["http_503"] >= mirror.cycles
