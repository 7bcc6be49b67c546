"""End to end: the simulated farm, the exporter, a real Prometheus evaluating the generated rules (with short
durations), a real Alertmanager, and a webhook receiver in the test. Break a mirror, see the alerts arrive; heal it,
see them resolve."""

from __future__ import annotations

from pathlib import Path

from alerts.rules import AlertConfig, render
from exporter.simulator import Scenario
from tests.conftest import running_farm, wait_until
from tests.monitoring_stack import alertmanager, prometheus, webhook

# Seconds instead of minutes: every `for` that matters here is 0, and drift counts after one second of lag.
FAST = AlertConfig(mirror_down_for="0s", out_of_sync_lag_seconds=1, out_of_sync_for="0s")


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
