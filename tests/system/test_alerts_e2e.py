"""End to end: the simulated farm, the exporter, a real Prometheus evaluating the generated rules (with short
durations), a real Alertmanager, and a webhook receiver in the test. Break a mirror, see the alerts arrive; heal it,
see them resolve."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from alerts.rules import AlertConfig, render
from exporter.simulator import Scenario
from tests.conftest import running_farm, value, wait_until
from tests.monitoring_stack import alertmanager, prometheus, webhook

# Seconds instead of minutes: every `for` that matters here is 0, drift counts after one second of lag, and a healed
# mirror's alerts resolve at once.
FAST = AlertConfig(mirror_down_for="0s", out_of_sync_lag_seconds=1, out_of_sync_for="0s", lag_keep_firing_for="0s")


async def test_a_broken_mirror_alerts_through_alertmanager_and_resolves_when_healed(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(render(FAST))
    scenario = Scenario(repositories=8, mirrors=1, sync_delay_seconds=0.2)
    async with (
        running_farm(scenario, ["9.x"], interval=0.5) as run,
        webhook() as hook,
        alertmanager(tmp_path, hook.port) as am_port,
        prometheus(tmp_path, run.exporter.port, rules, am_port),
    ):
        await run.wait_ready()
        # Break it: /status fails, and the mirror stops syncing while the primary moves on.
        await run.control("/sim/mirrors/sydney", {"faults": {"status": "unavailable"}, "frozen": True})
        await run.control("/sim/push", {"repository_ids": [1, 2, 3]})

        async def firing() -> bool:
            return hook.seen("BitbucketMirrorDown", "firing", mirror="sydney", severity="critical") and hook.seen(
                "BitbucketMirrorRepositoriesOutOfSync", "firing", mirror="sydney", hash="content"
            )

        await wait_until(firing, 90, "BitbucketMirrorDown and BitbucketMirrorRepositoriesOutOfSync at the receiver")
        out_of_sync = next(
            a for a in hook.notifications if a["labels"]["alertname"] == "BitbucketMirrorRepositoriesOutOfSync"
        )
        assert out_of_sync["annotations"]["description"].startswith("3 repositories on mirror sydney differ")
        assert out_of_sync["annotations"]["runbook_url"].endswith("#bitbucketmirrorrepositoriesoutofsync")

        # Heal it: the mirror answers and catches up.
        await run.control("/sim/mirrors/sydney", {"faults": {}, "frozen": False})

        async def resolved() -> bool:
            return hook.seen("BitbucketMirrorDown", "resolved", mirror="sydney") and hook.seen(
                "BitbucketMirrorRepositoriesOutOfSync", "resolved", mirror="sydney"
            )

        await wait_until(resolved, 90, "both alerts resolved at the receiver")


# Every drift alert at once: no `for`, thresholds of a second, so only the rules' logic decides what fires.
EAGER = AlertConfig(
    drift_unknown_for="0s",
    poll_failing_for="0s",
    out_of_sync_lag_seconds=1,
    out_of_sync_for="0s",
    lag_warning_seconds=1,
    lag_critical_seconds=2,
    lag_for="0s",
    missing_for="0s",
    failed_syncs=1,
    repository_failing_for="0s",
    node_behind_lag_seconds=1,
    node_behind_for="0s",
    # Alerts here must resolve as soon as their cause goes (the restart case is tests/alerts/'s).
    lag_keep_firing_for="0s",
)
DRIFT_ALERTS = {
    "BitbucketMirrorRepositoriesOutOfSync",
    "BitbucketMirrorSyncLagHigh",
    "BitbucketMirrorRepositoriesMissing",
    "BitbucketMirrorRepositorySyncFailing",
    "BitbucketMirrorDriftUnknown",
    "BitbucketMirrorExporterPollFailing",
    "BitbucketMirrorNodeBehind",
}


async def firing(prometheus_port: int, state: str = "firing") -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{prometheus_port}/api/v1/alerts", timeout=aiohttp.ClientTimeout(total=5)) as resp,
    ):
        alerts: list[dict[str, Any]] = (await resp.json())["data"]["alerts"]
    return [a for a in alerts if a["state"] == state and a["labels"]["alertname"] in DRIFT_ALERTS]


async def evaluated_after(prometheus_port: int, since: float, rounds: int) -> None:
    """Wait until every rule group has been evaluated ``rounds`` times after ``since`` (1 s apart: the stack's
    evaluation_interval), read from Prometheus' own record of each group's last evaluation rather than slept."""
    url = f"http://127.0.0.1:{prometheus_port}/api/v1/rules"

    async def done() -> bool:
        async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            groups = (await resp.json())["data"]["groups"]
        last = [datetime.fromisoformat(group["lastEvaluation"].replace("Z", "+00:00")).timestamp() for group in groups]
        return bool(last) and min(last) >= since + rounds

    await wait_until(done, 30, f"{rounds} rule evaluations after {since:.0f}")


def names(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(a["labels"]["alertname"], a["labels"].get("repository", a["labels"].get("mirror", ""))) for a in alerts}


async def test_one_cause_raises_one_alert_against_a_real_prometheus(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(render(EAGER))
    scenario = Scenario(repositories=8, mirrors=1)
    async with (
        running_farm(scenario, ["9.x"], interval=0.5) as run,
        prometheus(tmp_path, run.exporter.port, rules) as port,
    ):
        await run.wait_ready()
        # One repository missing, another whose syncs keep failing while the primary moves on.
        await run.control("/sim/mirrors/sydney", {"missing_repositories": [3], "failing_repositories": [5]})
        await run.control("/sim/push", {"repository_ids": [5]})
        expected = {
            ("BitbucketMirrorRepositoriesMissing", "sydney"),
            ("BitbucketMirrorRepositorySyncFailing", "repo-5"),
        }
        seen: set[tuple[str, str]] = set()

        async def settled() -> bool:
            nonlocal seen
            seen = names(await firing(port))
            return seen == expected

        await wait_until(settled, 30, f"exactly {expected}")
        # Stays so: the missing and the failing repository's lag grow, yet no lag or out-of-sync alert joins them,
        # over three more evaluations of every rule group (and none is pending either).
        await evaluated_after(port, time.time(), rounds=3)
        assert names(await firing(port)) == expected
        assert names(await firing(port, state="pending")) == set()

        # A silent laggard is what the lag alerts are for.
        await run.control("/sim/mirrors/sydney", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [1]})

        async def lagging() -> bool:
            return {"BitbucketMirrorSyncLagHigh", "BitbucketMirrorRepositoriesOutOfSync"} <= {
                n for n, _ in names(await firing(port))
            }

        await wait_until(lagging, 30, "SyncLagHigh and RepositoriesOutOfSync for the silent laggard")

        # The listing now fails: one alert that names it, and the drift alerts go (drift is unknown, not stale).
        await run.control("/sim/mirrors/sydney", {"faults": {"repo_sync_status": "unauthorized"}})

        async def unknown() -> bool:
            return names(await firing(port)) == {("BitbucketMirrorDriftUnknown", "sydney")}

        await wait_until(unknown, 30, "DriftUnknown alone")
        (alert,) = await firing(port)
        assert alert["annotations"]["description"].endswith(" sydney repo_sync_status: http_401.")


async def rules_evaluated_after(prometheus_port: int, moment: float) -> bool:
    """Whether every rule group has been evaluated since ``moment`` (Unix seconds)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{prometheus_port}/api/v1/rules", timeout=aiohttp.ClientTimeout(total=5)) as resp,
    ):
        groups = (await resp.json())["data"]["groups"]
    return all(datetime.fromisoformat(g["lastEvaluation"]).timestamp() > moment for g in groups)


async def test_one_node_behind_its_peers_raises_node_behind_alone(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(render(EAGER))
    scenario = Scenario(repositories=8, mirrors=1)
    async with (
        running_farm(scenario, ["9.x"], interval=0.5, nodes=True) as run,
        prometheus(tmp_path, run.exporter.port, rules) as port,
    ):
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney/nodes/sydney-node-2", {"held_repositories": [2]})
        await run.control("/sim/push", {"repository_ids": [2]})
        expected = {("BitbucketMirrorNodeBehind", "sydney")}
        seen: set[tuple[str, str]] = set()

        async def only_node_behind() -> bool:
            nonlocal seen
            seen = names(await firing(port))
            return seen == expected

        await wait_until(only_node_behind, 30, f"exactly {expected}")
        (alert,) = await firing(port)
        assert alert["labels"]["node"] == "sydney-node-2" and alert["value"].startswith("1")
        # Still alone once the mirror's lag (its worst node's) is past every lag threshold and the rules have seen it.
        await run.metrics_until(
            lambda s: (value(s, "bitbucket_mirror_sync_lag_seconds", mirror="sydney") or 0) > 3, "lag past 3 s"
        )
        crossed = time.time() + 1.5  # Prometheus scrapes every second: a scrape after this moment has seen it
        await wait_until(lambda: rules_evaluated_after(port, crossed), 10, "the rules evaluated on it")
        assert names(await firing(port)) == expected
