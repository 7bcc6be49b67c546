"""The CI gate against the simulated farm: a commit that exists nowhere is said so at once (and `wait`
exits 3), an abbreviated one is expanded on the primary and dated from its ref change, and the gate counts what it
answered and how long pipelines waited."""

from __future__ import annotations

import asyncio
import json
import time

from exporter.simulator import Scenario
from tests.conftest import running_farm, value, wait_until
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


async def test_a_push_in_the_middle_of_a_walk_never_gets_a_false_yes_with_the_primarys_clock_behind() -> None:
    # 250 repositories in pages of 25: a walk of 10 pages, 0.2 s a page. Repository 1 is on the first page; it is
    # pushed once both walks (the primary's and the mirror's) have passed page 2, so both read it with the old hash,
    # and both walks end well over a second after the push: "in sync" by hashes, but no proof. The primary's clock runs
    # 20 s behind.
    scenario = Scenario(
        repositories=250, mirrors=1, nodes=1, page_limit_cap=25, primary_clock_skew_seconds=-20.0,
        primary_latency_seconds=0.2, mirror_latency_seconds=0.2,
    )  # fmt: skip
    async with running_farm(scenario, ["9.x"], interval=1.0, page_limit=25, timeout_seconds=5.0) as run:
        await run.wait_ready(within=30)
        await run.next_cycles(1, within=30)
        await run.control("/sim/mirrors/sydney", {"frozen": True})
        await run.control(
            "/sim/push_mid_walk", {"repository_ids": [1], "after_start": 50, "listings": ["repos", "repo_sync_status"]}
        )
        pushed_at: float | None = None

        async def pushed() -> bool:
            nonlocal pushed_at
            async with run.http.get(run.farm.primary_url + "/sim/push_mid_walk") as resp:
                pushed_at = (await resp.json())["pushed_at"]
            return pushed_at is not None

        await wait_until(pushed, 15, "the push in the middle of the walks")
        assert pushed_at is not None
        repo = run.farm.farm.repositories[1]
        version = repo.content_version
        gate = f"/api/v1/repositories/PRJ1/repo-1/mirrors?commit={repo.commit(version)}&since={pushed_at:.3f}"
        started = time.monotonic()
        answers: list[tuple[bool, str | None]] = []
        thawed = False
        while time.monotonic() - started < 20:  # every poll for 20 cycles
            if not thawed and time.monotonic() - started > 10:  # frozen for 10 cycles after the push
                await run.control("/sim/mirrors/sydney", {"frozen": False})
                thawed = True
            _, body = await run.get(gate)
            entry = json.loads(body)["mirrors"][0]
            has_it = run.farm.farm.mirrors["sydney"].repositories[1].content_version >= version
            assert not entry["on_mirror"] or has_it, f"a false yes: {entry}"
            answers.append((entry["on_mirror"], entry.get("reason")))
            await asyncio.sleep(0.1)
        reasons = {reason for on_mirror, reason in answers if not on_mirror}
        assert reasons <= {"listing_too_old", "not_synced", "stale"} and "not_synced" in reasons
        assert answers[-1] == (True, None)  # and once the mirror has it, the listing says so


async def test_refs_on_the_mirror_prove_a_commit_before_any_listing_does_and_only_when_they_show_it() -> None:
    # Listings every 30 s: after the push, none is begun for a while, so only the mirror's refs can prove it there.
    async with running_farm(Scenario(repositories=4, mirrors=2, nodes=1), ["9.x", "8.x"], interval=30.0) as run:
        await run.wait_ready(within=30)
        await run.control("/sim/mirrors/frankfurt", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [2]})
        repo = run.farm.farm.repositories[2]
        gate = f"/api/v1/repositories/{repo.project.key}/{repo.slug}/mirrors?commit={repo.commit(repo.content_version)}"
        status, body = await run.get(gate)
        assert status == 200
        answers = {m["mirror"]: m for m in json.loads(body)["mirrors"]}
        assert answers["sydney"]["on_mirror"] is True and answers["sydney"]["by"] == "refs"
        assert answers["frankfurt"]["on_mirror"] is False  # frozen: its refs still show the old head
        assert answers["frankfurt"]["reason"] == "listing_too_old"


async def test_read_node_by_node_each_node_is_answered_from_its_own_listing() -> None:
    async with running_farm(Scenario(repositories=4, mirrors=1, nodes=2), ["9.x"], interval=0.3, nodes=True) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney/nodes/sydney-node-2", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [1]})
        repo = run.farm.farm.repositories[1]
        gate = f"/api/v1/repositories/PRJ1/repo-1/mirrors?commit={repo.commit(repo.content_version)}"
        answer: dict[str, object] = {}

        async def node_1_proven() -> bool:
            nonlocal answer
            answer = json.loads((await run.get(gate))[1])["mirrors"][0]
            nodes = answer["nodes"]
            assert isinstance(nodes, dict)
            return bool(nodes["sydney-node-1"]["on_mirror"])

        await wait_until(node_1_proven, 15, "node 1's own listing, begun after the push, in sync")
        nodes = answer["nodes"]
        assert isinstance(nodes, dict)
        assert nodes["sydney-node-1"]["by"] == "listing"
        assert nodes["sydney-node-2"]["on_mirror"] is False and nodes["sydney-node-2"]["reason"] == "not_synced"
        # The farm: a clone may land on either node, so it is not on the mirror until every node has it.
        assert answer["on_mirror"] is False and answer["reason"] == "not_synced"
