"""Bitbucket's webhooks end to end: the simulated primary posts signed repo:refs_changed and mirror:repo_synchronized
to the exporter over loopback HTTP; each push is timed to each mirror."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from exporter.simulator import Scenario, SimulatedFarm
from exporter.simulator.webhook_target import WebhookTarget
from tests.conftest import Running, Samples, running_farm, value

SECRET = "webhook-s3cret"
REPO = Path(__file__).resolve().parent.parent.parent
LATENCY = "bitbucket_mirror_push_to_sync_seconds"


def with_webhooks(secret_file: Path) -> Any:
    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["webhooks"] = {"secret_file": str(secret_file)}

    return prepare


@asynccontextmanager
async def webhook_farm(tmp_path: Path, scenario: Scenario) -> AsyncIterator[Running]:
    """A farm of 9.x and 8.x mirrors whose primary posts its webhooks to the exporter watching it."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    async with running_farm(scenario, ["9.x", "8.x"], interval=0.5, prepare=with_webhooks(secret_file)) as run:
        await run.wait_ready()
        listen(run)
        yield run


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
    async with webhook_farm(tmp_path, Scenario(repositories=6, mirrors=2, sync_delay_seconds=7.0)) as run:
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


async def run_wait(run: Running, *args: str, give_up: str = "30s") -> tuple[int, str, str]:
    """The real `wait` command in its own process, asking the running exporter over loopback HTTP."""
    command = [sys.executable, "-m", "exporter", "wait", "--exporter", run.url, *args, "--timeout", give_up]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_wait_returns_once_the_commit_is_on_the_mirror(tmp_path: Path) -> None:
    async with webhook_farm(tmp_path, Scenario(repositories=6, mirrors=2, sync_delay_seconds=3.0)) as run:
        await run.control("/sim/push", {"repository_ids": [4]})
        repo = run.farm.farm.repositories[4]
        commit, where = repo.commit(repo.content_version), f"{repo.project.key}/{repo.slug}"
        code, out, err = await run_wait(run, "--repository", where, "--commit", commit, "--interval", "0.2s")
        assert code == 0, out + err
        lines = out.strip().splitlines()
        # Each mirror first not yet, then on the mirror: one line per change of state.
        for mirror in ("sydney", "frankfurt"):
            mine = [line for line in lines if line.startswith(f"{mirror}: ")]
            assert mine[0].startswith(f"{mirror}: not yet") and mine[-1].startswith(f"{mirror}: on the mirror"), lines
            assert len(mine) == len(set(mine))
        status, body = await run.get(f"/api/v1/repositories/{where}/mirrors?commit={commit}")
        gate = json.loads(body)
        assert status == 200 and {m["by"] for m in gate["mirrors"]} <= {"webhook", "listing"}
        assert all(m["has_commit"] and m["synced_at"] is not None for m in gate["mirrors"])


async def test_wait_times_out_refuses_unknown_mirrors_and_works_from_listings_alone() -> None:
    scenario = Scenario(repositories=6, mirrors=1)
    async with running_farm(scenario, ["9.x"], interval=0.3) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [2]})
        repo = run.farm.farm.repositories[2]
        commit, where = repo.commit(repo.content_version), f"{repo.project.key}/{repo.slug}"
        code, out, _ = await run_wait(
            run, "--repository", where, "--commit", commit, "--interval", "0.2s", give_up="2s"
        )
        assert code == 1 and "timed out" in out and "sydney: not yet" in out
        code, _, err = await run_wait(run, "--repository", where, "--commit", commit, "--mirror", "nowhere")
        assert code == 2 and "--mirror nowhere" in err
        code, _, err = await run_wait(run, "--repository", "no-slash", "--commit", commit)
        assert code == 2 and "KEY/slug" in err.replace("PROJECTKEY", "KEY")
        # No webhooks: the mirror catches up, and a listing read after the wait began says so.
        await run.control("/sim/mirrors/sydney", {"frozen": False})
        code, out, err = await run_wait(run, "--repository", where, "--commit", commit, "--interval", "0.2s")
        assert code == 0 and "sydney: on the mirror (its listing is in sync)" in out, out + err


async def test_three_pushes_a_mirror_syncs_at_once_are_three_observations_and_none_unconfirmed(
    tmp_path: Path,
) -> None:
    # The mirrors take 2 s to pick up a change: three pushes within that are caught up by one sync per mirror, whose
    # event names only the newest commit (coalesced, as a busy mirror does).
    scenario = Scenario(repositories=6, mirrors=2, sync_delay_seconds=2.0)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)

    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["webhooks"] = {"secret_file": str(secret_file), "pending_timeout_seconds": 4}

    async with running_farm(scenario, ["9.x", "8.x"], interval=0.5, prepare=prepare) as run:
        await run.wait_ready()
        listen(run)
        for _ in range(3):
            await run.control("/sim/push", {"repository_ids": [5]})
        samples = await run.metrics_until(
            lambda s: all(synced(s, m, "snapshot")[0] == 3.0 for m in ("sydney", "frankfurt")), "3 pushes timed", 20
        )
        syncs = "bitbucket_mirror_webhook_requests_total"
        assert value(samples, syncs, event="mirror:repo_synchronized", outcome="accepted") == 2.0  # one per mirror
        # No push left pending, and none counted unconfirmed (each was timed from its own push).
        later = await run.metrics_until(
            lambda s: value(s, "bitbucket_mirror_webhook_pending_pushes") == 0.0, "no push pending", 10
        )
        for mirror in ("sydney", "frankfurt"):
            assert value(later, "bitbucket_mirror_push_unconfirmed_total", mirror=mirror) in (None, 0.0)
