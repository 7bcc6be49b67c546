"""The CI gate against the simulated farm (issue 30): a commit that exists nowhere is said so at once (and `wait`
exits 3), an abbreviated one is expanded on the primary and dated from its ref change, and the gate counts what it
answered and how long pipelines waited."""

from __future__ import annotations

import json

from exporter.simulator import Scenario
from tests.conftest import running_farm, value
from tests.system.test_webhooks import run_wait


async def test_a_commit_that_exists_nowhere_is_unknown_at_once_and_wait_exits_3() -> None:
    async with running_farm(Scenario(repositories=4, mirrors=1), ["9.x"], interval=0.3) as run:
        await run.wait_ready()
        await run.next_cycles(1)
        typo = "deadbeef" * 5
        status, body = await run.get(f"/api/v1/repositories/PRJ1/repo-1/mirrors?commit={typo}")
        gate = json.loads(body)
        assert status == 200 and gate["commit_exists"] is False
        assert [(m["on_mirror"], m["reason"]) for m in gate["mirrors"]] == [(False, "unknown_commit")]
        code, out, err = await run_wait(run, "--repository", "PRJ1/repo-1", "--commit", typo, "--interval", "0.2s")
        assert code == 3 and "commit not found on the primary" in out, out + err
        samples = await run.metrics_until(
            lambda s: (value(s, "bitbucket_mirror_gate_requests_total", outcome="unknown_commit") or 0) >= 2, "counted"
        )
        assert value(samples, "bitbucket_mirror_gate_requests_total", outcome="on_mirror") == 0.0


async def test_an_abbreviated_commit_is_expanded_dated_from_its_push_and_proven_by_the_listing() -> None:
    async with running_farm(Scenario(repositories=4, mirrors=1), ["9.x"], interval=0.3) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [1]})
        repo = run.farm.farm.repositories[1]
        full = repo.commit(repo.content_version)
        short = full[:12]
        status, body = await run.get(f"/api/v1/repositories/PRJ1/repo-1/mirrors?commit={short}")
        gate = json.loads(body)
        assert status == 200 and gate["commit_exists"] is True and gate["commit"] == full
        assert gate["mirrors"][0]["on_mirror"] is False
        await run.control("/sim/mirrors/sydney", {"frozen": False})
        code, out, err = await run_wait(run, "--repository", "PRJ1/repo-1", "--commit", short, "--interval", "0.2s")
        assert code == 0 and "sydney: on the mirror (its listing is in sync)" in out, out + err
        samples = await run.metrics_until(
            lambda s: value(s, "bitbucket_mirror_gate_wait_seconds_count") == 1.0, "the wait observed once"
        )
        waited = value(samples, "bitbucket_mirror_gate_wait_seconds_sum")
        assert waited is not None and waited > 0
