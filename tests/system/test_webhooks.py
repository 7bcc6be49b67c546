"""Bitbucket's webhooks end to end: the simulated primary posts signed repo:refs_changed and mirror:repo_synchronized
to the exporter over loopback HTTP; each push is timed to each mirror."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.simulator import Scenario, SimulatedFarm
from exporter.simulator.webhook_target import WebhookTarget
from tests.conftest import Running, Samples, running_farm, value

SECRET = "webhook-s3cret"
LATENCY = "bitbucket_mirror_push_to_sync_seconds"


def with_webhooks(secret_file: Path) -> Any:
    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["webhooks"] = {"secret_file": str(secret_file)}

    return prepare


def listen(run: Running, secret: str = SECRET, **delivery: Any) -> None:
    run.farm.add_webhook(WebhookTarget(run.url + "/webhooks/bitbucket", secret, **delivery))


def synced(samples: Samples, mirror: str, sync: str = "incremental") -> tuple[float | None, float | None]:
    return (
        value(samples, LATENCY + "_count", mirror=mirror, sync=sync),
        value(samples, LATENCY + "_sum", mirror=mirror, sync=sync),
    )


async def test_a_push_and_a_mirror_syncing_seven_seconds_later_is_one_observation_of_about_seven(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    scenario = Scenario(repositories=6, mirrors=2, sync_delay_seconds=7.0)
    async with running_farm(scenario, ["9.x", "8.x"], interval=0.5, prepare=with_webhooks(secret_file)) as run:
        await run.wait_ready()
        listen(run)
        await run.control("/sim/push", {"repository_ids": [3]})
        samples = await run.metrics_until(
            lambda s: synced(s, "sydney")[0] == 1.0 and synced(s, "frankfurt")[0] == 1.0, "both mirrors synced", 20
        )
        for mirror in ("sydney", "frankfurt"):
            count, total = synced(samples, mirror)
            assert count == 1.0 and total is not None and 6.0 <= total <= 8.0, (mirror, total)
            assert value(samples, LATENCY + "_bucket", mirror=mirror, sync="incremental", le="5") == 0.0
            assert value(samples, LATENCY + "_bucket", mirror=mirror, sync="incremental", le="10") == 1.0
        requests = "bitbucket_mirror_webhook_requests_total"
        assert value(samples, requests, event="repo:refs_changed", outcome="accepted") == 1.0
        assert value(samples, requests, event="mirror:repo_synchronized", outcome="accepted") == 2.0
