"""Bitbucket's record of delivering the exporter's webhooks, as the real server keeps it (the fact sheet's section
8): the statistics summary keyed by event (204 before any delivery), the latest invocation per event and outcome,
the circuit breaker that skips a failing webhook and drops what it skips, "Test connection" that closes it, project
webhooks only from 8.10, and a request budget on large projects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter.simulator import Scenario, SimulatedFarm
from tests.conftest import Running, Samples, running_farm, value, wait_until
from tests.system.test_real_server import basic
from tests.system.test_webhooks import SECRET
from tests.system.test_webhooks_setup import cli

DELIVERIES = "bitbucket_mirror_webhook_deliveries"
LAST = "bitbucket_mirror_webhook_delivery_last_{}_timestamp_seconds"


def config_with_secret(tmp_path: Path, farm: SimulatedFarm, secret: str, name: str) -> Path:
    """A configuration for `webhooks apply|status` whose webhook secret is ``secret``."""
    import yaml

    secret_file = tmp_path / f"{name}-secret"
    secret_file.write_text(secret)
    config: dict[str, Any] = farm.exporter_config(interval_seconds=1.0)
    config["webhooks"] = {"secret_file": str(secret_file)}
    path = tmp_path / f"{name}.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def receiving(secret_file: Path) -> Any:
    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["webhooks"] = {
            "secret_file": str(secret_file),
            "statistics_projects": ["PRJ1"],
            "statistics_interval_seconds": 1,
        }

    return prepare


async def pushes(run: Running, count: int) -> None:
    for _ in range(count):
        await run.control("/sim/push", {"repository_ids": [1]})


async def test_statistics_breaker_and_test_connection_as_bitbucket_keeps_them(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    scenario = Scenario(repositories=3, projects=1, mirrors=1, webhook_first_skip_seconds=30.0)
    async with running_farm(scenario, ["9.x"], interval=0.5, prepare=receiving(secret_file)) as run:
        await run.wait_ready()
        url = run.url + "/webhooks/bitbucket"
        wrong = config_with_secret(tmp_path, run.farm, "not-the-exporters-secret", "wrong")
        right = config_with_secret(tmp_path, run.farm, SECRET, "right")
        code, out, err = await cli("status", "--config", str(right), "--project", "PRJ1")
        assert code == 0 and out.strip() == "PRJ1: none of the exporter's webhooks found", out + err

        # Set up with a secret that differs from the exporter's: every delivery is answered 401.
        code, out, err = await cli("apply", "--config", str(wrong), "--project", "PRJ1", "--url", url)
        assert code == 0 and "project webhook created" in out, out + err
        code, out, err = await cli("status", "--config", str(right), "--project", "PRJ1")
        assert code == 0 and out.strip() == f"PRJ1: {url}: no deliveries yet", out + err  # 204, not invalid_json
        samples = await run.metrics_until(
            lambda s: (
                value(s, "bitbucket_mirror_exporter_poll_success", target="primary", source="webhook_statistics") == 1.0
            ),
            "the statistics read",
        )
        assert not [k for k in samples if k[0] == DELIVERIES]

        # Five failures in a row open Bitbucket's breaker: what comes next is skipped and dropped.
        (target,) = run.farm.webhooks

        async def skipping() -> bool:
            await pushes(run, 1)
            return target.skipped > 0

        await wait_until(skipping, 20, "the breaker open")
        # Deliveries run side by side: a few may be under way when the fifth failure opens the breaker.
        failed = [i for i in target.invocations if i.outcome == "FAILURE"]
        assert len(failed) >= 5 and not any(i.outcome == "SUCCESS" for i in target.invocations)
        pushes_failed = sum(1 for i in failed if i.event == "repo:refs_changed")
        run.settle()  # the deliveries' answers are in: the next rendering counts them all
        refused = await run.metrics()
        assert value(refused, "bitbucket_mirror_webhook_requests_total", event="repo:refs_changed",
                     outcome="bad_signature") == pushes_failed  # fmt: skip
        code, out, _ = await cli("status", "--config", str(right), "--project", "PRJ1")
        assert "last success never; last failure 20" in out, out
        assert f"repo:refs_changed: 0 success, {pushes_failed} failure, 0 error in the window" in out, out

        def failing(s: Samples) -> bool:
            got = value(s, DELIVERIES, scope="PRJ1", url=url, event="repo:refs_changed", outcome="failure")
            return got == pushes_failed

        samples = await run.metrics_until(failing, "the failures in the window", 10)
        assert value(samples, LAST.format("failure"), scope="PRJ1", url=url, event="repo:refs_changed") is not None
        assert value(samples, LAST.format("success"), scope="PRJ1", url=url, event="repo:refs_changed") is None

        # The secret set right in Bitbucket: still skipped until "Test connection" closes the breaker.
        code, out, err = await cli("apply", "--config", str(right), "--project", "PRJ1", "--url", url)
        assert code == 0, err
        await pushes(run, 1)
        assert target.skip_until > 0
        test = f"{run.farm.primary_url}/rest/api/latest/projects/PRJ1/webhooks/test"
        admin = {"Authorization": basic(run.farm.scenario.username, run.farm.scenario.password)}
        async with run.http.post(test, params={"url": url}, headers=admin) as resp:
            assert resp.status == 200 and (await resp.json())["response"]["status"] == 200
        assert target.skip_until == 0.0

        async def delivered() -> bool:
            await pushes(run, 1)
            return any(i.outcome == "SUCCESS" and i.event == "repo:refs_changed" for i in target.invocations)

        await wait_until(delivered, 20, "a delivery after the test")
        samples = await run.metrics_until(
            lambda s: value(s, LAST.format("success"), scope="PRJ1", url=url, event="repo:refs_changed") is not None,
            "the success in the statistics",
        )
        assert (
            value(samples, DELIVERIES, scope="PRJ1", url=url, event="repo:refs_changed", outcome="success") or 0
        ) >= 1


async def test_before_8_10_apply_falls_back_to_repository_webhooks_on_404_and_status_reads_them(
    tmp_path: Path,
) -> None:
    scenario = Scenario(repositories=4, projects=2, mirrors=1, primary_version="8.9.0")
    async with running_farm(scenario, ["8.x"], interval=0.5) as run:
        config = config_with_secret(tmp_path, run.farm, SECRET, "old")
        url = "https://exporter.example.com/webhooks/bitbucket"
        code, out, err = await cli("apply", "--config", str(config), "--project", "PRJ1", "--url", url)
        assert code == 0, err
        assert out.strip().splitlines() == [
            "PRJ1: no project webhooks on this primary (before 8.10); per repository",
            f"PRJ1/repo-1: repository webhook created for {url} (repo:refs_changed, mirror:repo_synchronized)",
            f"PRJ1/repo-3: repository webhook created for {url} (repo:refs_changed, mirror:repo_synchronized)",
        ]
        code, out, err = await cli("status", "--config", str(config), "--project", "PRJ1")
        assert code == 0 and out.strip().splitlines() == [
            f"PRJ1/repo-1: {url}: no deliveries yet",
            f"PRJ1/repo-3: {url}: no deliveries yet",
        ], out + err


async def test_status_of_a_project_of_1000_repositories_stays_within_its_request_budget(tmp_path: Path) -> None:
    scenario = Scenario(repositories=1000, projects=1, mirrors=1)
    async with SimulatedFarm(scenario) as farm:
        config = config_with_secret(tmp_path, farm, SECRET, "big")
        url = "https://exporter.example.com/webhooks/bitbucket"

        def requests() -> int:
            return sum(farm.farm.primary_requests.values())

        # No exporter webhook at the project level yet: each repository's listing, until the budget is spent.
        before = requests()
        code, out, err = await cli("status", "--config", str(config), "--project", "PRJ1", "--max-requests", "50")
        assert code == 0, err
        assert out.strip().splitlines() == [
            "PRJ1: none of the exporter's webhooks found",
            # 1 request for the project's webhooks, 10 pages of repositories, then 39 repositories' webhooks.
            "PRJ1: 961 of 1000 repositories not read (request budget of 50 spent)",
        ]
        assert requests() - before <= 50
        code, out, err = await cli("apply", "--config", str(config), "--project", "PRJ1", "--url", url)
        assert code == 0 and "project webhook created" in out, err
        # With the project webhook: one listing of the project's webhooks and the webhook's statistics, whatever
        # the number of repositories.
        before = requests()
        code, out, err = await cli("status", "--config", str(config), "--project", "PRJ1")
        assert code == 0 and out.strip() == f"PRJ1: {url}: no deliveries yet", out + err
        assert requests() - before <= 3
