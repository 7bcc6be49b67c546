"""`webhooks apply` and `webhooks status` as a user runs them, against the simulated primary's webhook REST API: the
webhook created once, updated (not duplicated) when run again, per repository where a project webhook cannot carry
mirror events, and then delivering to the exporter: set up without clicking."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import yaml

from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import Running, running_farm, value
from tests.system.test_webhooks import SECRET, with_webhooks

REPO = Path(__file__).resolve().parent.parent.parent


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", "webhooks", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def config_file(tmp_path: Path, farm: SimulatedFarm, secret_file: Path) -> Path:
    config: dict[str, Any] = farm.exporter_config(interval_seconds=1.0)
    config["webhooks"] = {"secret_file": str(secret_file)}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def store(run: Running) -> dict[int, dict[str, Any]]:
    return run.farm.webhook_store


def with_statistics(secret_file: Path) -> Any:
    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        with_webhooks(secret_file)(farm, config)
        config["webhooks"] |= {"statistics_projects": ["PRJ1"], "statistics_interval_seconds": 1}

    return prepare


async def test_apply_creates_then_updates_and_the_webhooks_deliver(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    scenario = Scenario(repositories=6, mirrors=1, sync_delay_seconds=1.0)
    async with running_farm(scenario, ["9.x"], interval=0.5, prepare=with_statistics(secret_file)) as run:
        await run.wait_ready()
        config = config_file(tmp_path, run.farm, secret_file)
        url = run.url + "/webhooks/bitbucket"
        code, out, err = await cli("apply", "--config", str(config), "--project", "PRJ1", "--url", url, "--dry-run")
        assert code == 0, err
        assert out.strip() == f"PRJ1: project webhook would be created for {url} (repo:refs_changed, " \
                              "mirror:repo_synchronized)" and not store(run)  # fmt: skip
        code, out, err = await cli("apply", "--config", str(config), "--project", "PRJ1", "--url", url)
        assert code == 0 and "project webhook created" in out, err
        code, out, err = await cli("apply", "--config", str(config), "--project", "PRJ1", "--url", url)
        assert code == 0 and "project webhook updated" in out, err
        (hook,) = store(run).values()
        assert set(hook["events"]) == {"repo:refs_changed", "mirror:repo_synchronized"}
        assert hook["configuration"]["secret"] == SECRET and SECRET not in out + err
        # Set up without clicking: a push now reaches the exporter, and the mirror's sync after it.
        await run.control("/sim/push", {"repository_ids": [1]})
        await run.metrics_until(
            lambda s: (
                value(s, "bitbucket_mirror_push_to_sync_seconds_count", mirror="sydney", sync="incremental") == 1.0
            ),
            "the push timed to sydney",
        )
        code, out, err = await cli("status", "--config", str(config), "--project", "PRJ1")
        assert code == 0 and f"PRJ1: {url}: last success 20" in out and SECRET not in out + err, out + err
        # The same statistics as metrics (webhooks.statistics_projects).
        last = "bitbucket_mirror_webhook_delivery_last_success_timestamp_seconds"
        event = {"scope": "PRJ1", "url": url, "event": "repo:refs_changed"}
        samples = await run.metrics_until(lambda s: value(s, last, **event) is not None, "stats")
        assert (
            value(samples, "bitbucket_mirror_exporter_poll_success", target="primary", source="webhook_statistics") == 1
        )
        # The counts of Bitbucket's window: the push (at least) delivered, nothing failed.
        delivered = value(samples, "bitbucket_mirror_webhook_deliveries", **event, outcome="success")
        assert delivered is not None and delivered >= 1
        assert value(samples, "bitbucket_mirror_webhook_deliveries", **event, outcome="failure") == 0.0


async def test_apply_falls_back_to_repository_webhooks_where_projects_cannot_carry_mirror_events(
    tmp_path: Path,
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    scenario = Scenario(repositories=6, projects=3, mirrors=1, project_webhook_mirror_events=False)
    async with running_farm(scenario, ["9.x"], prepare=with_webhooks(secret_file)) as run:
        config = config_file(tmp_path, run.farm, secret_file)
        url = run.url + "/webhooks/bitbucket"
        code, out, err = await cli("apply", "--config", str(config), "--project", "PRJ2", "--url", url)
        assert code == 0, err
        lines = out.strip().splitlines()
        assert lines == [
            "PRJ2: a project webhook cannot carry repo:refs_changed, mirror:repo_synchronized; per repository instead",
            "PRJ2/repo-2: repository webhook created for " + url + " (repo:refs_changed, mirror:repo_synchronized)",
            "PRJ2/repo-5: repository webhook created for " + url + " (repo:refs_changed, mirror:repo_synchronized)",
        ]
        assert {h["scopeType"] for h in store(run).values()} == {"repository"}
        code, _, err = await cli("apply", "--config", str(tmp_path / "nowhere.yml"), "--project", "PRJ2", "--url", url)
        assert code == 2 and "nowhere.yml" in err
