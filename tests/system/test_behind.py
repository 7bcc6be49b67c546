"""``/api/v1/behind`` against the simulator's ground truth: the repositories whose content lags longest, longest
first, with the hashes compared and the push their lag is dated from; a target whose inputs went stale gives no rows
and says it does not know; the landing page links it (in a real browser)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exporter.simulator import Scenario
from tests.browser import dom
from tests.conftest import Running, running_farm, wait_until

INTERVAL = 0.2


async def behind(run: Running, query: str = "") -> dict[str, Any]:
    status, body = await run.get(f"/api/v1/behind{query}")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def target(answer: dict[str, Any], mirror: str) -> dict[str, Any]:
    return next(t for t in answer["targets"] if t["mirror"] == mirror)


async def test_the_most_behind_repositories_come_longest_first_with_the_hashes_compared(tmp_path: Path) -> None:
    # Values stay fresh for 2 s (10 intervals) so a loaded machine does not make the list "unknown" mid-test.
    scenario = Scenario(repositories=6)
    async with running_farm(scenario, ["9.x", "8.x"], interval=INTERVAL, stale_after_seconds=2.0) as run:
        await run.wait_ready()
        await run.leave_behind("sydney", [2])
        await run.next_cycles(2)
        await run.control("/sim/push", {"repository_ids": [4]})

        async def both_behind() -> bool:
            rows = (await behind(run, "?mirror=sydney"))["repositories"]
            return [r["repository_id"] for r in rows] == ["2", "4"]

        await wait_until(both_behind, 10, "repositories 2 and 4 behind on sydney")
        answer = await behind(run, "?mirror=sydney")
        truth = (await run.truth())["mirrors"]["sydney"]
        assert sorted(truth["classes"]["content_drift"]) == [2, 4]
        farm = run.farm.farm
        mirror = farm.mirrors["sydney"]
        first, second = answer["repositories"]
        for row in (first, second):
            repo_id = int(row["repository_id"])
            repo = farm.repositories[repo_id]
            assert (row["mirror"], row["node"], row["state"]) == ("sydney", None, "content_drift")
            assert (row["project"], row["repository"]) == (repo.project.key, repo.slug)
            assert row["missing"] is False and row["failing"] is False
            # The hashes the exporter compared: the primary's now, the mirror's frozen copy.
            assert row["primary_hash"] == repo.content_hash()
            assert row["mirror_hash"] == repo.content_hash(mirror.repositories[repo_id].content_version)
            assert row["primary_hash"] != row["mirror_hash"]
            # Dated from the push on the primary (the simulator's clock is the exporter's here).
            assert row["lag_source"] == "push"
            assert abs(row["diverged_since"] - truth["pushed_since"][str(repo_id)]) < 1.0
            assert row["first_seen"] >= row["diverged_since"]
        assert first["lag_seconds"] > second["lag_seconds"] > 0
        assert target(answer, "sydney") == {
            "mirror": "sydney",
            "node": None,
            "drift_known": True,
            "as_of": target(answer, "sydney")["as_of"],
        }
        assert [t["mirror"] for t in answer["targets"]] == ["sydney"]

        # The longest first, cut at the limit; the limit and the mirror are checked.
        assert [r["repository_id"] for r in (await behind(run, "?limit=1&mirror=sydney"))["repositories"]] == ["2"]
        for bad in ("?limit=0", "?limit=1001", "?limit=ten"):
            assert (await run.get(f"/api/v1/behind{bad}"))[0] == 400
        assert (await run.get("/api/v1/behind?mirror=nowhere"))[0] == 404
        everything = await behind(run, "?limit=1000")
        assert {t["mirror"] for t in everything["targets"]} == {"sydney", "frankfurt"}
        lags = [r["lag_seconds"] for r in everything["repositories"]]
        assert lags == sorted(lags, reverse=True)

        # The landing page links the list, in a browser.
        assert 'href="api/v1/behind"' in await dom(run.url + "/", tmp_path)

        # sydney's listing answers 401: once its drift is stale, none of its rows is served as if current.
        await run.control("/sim/mirrors/sydney", {"faults": {"repo_sync_status": "unauthorized"}})

        async def unknown() -> bool:
            return target(await behind(run), "sydney")["drift_known"] is False

        await wait_until(unknown, 15, "sydney's drift unknown")
        answer = await behind(run)
        assert target(answer, "sydney")["as_of"] is None
        assert all(r["mirror"] != "sydney" for r in answer["repositories"])


async def test_a_farm_read_node_by_node_lists_each_nodes_rows() -> None:
    async with running_farm(Scenario(repositories=6, mirrors=1), ["9.x"], interval=INTERVAL, nodes=True) as run:
        await run.wait_ready()
        truth = (await run.truth())["mirrors"]["sydney"]
        nodes = sorted(truth["per_node"])
        behind_node = nodes[-1]
        await run.control(f"/sim/mirrors/sydney/nodes/{behind_node}", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [3]})

        async def on_that_node() -> bool:
            rows = (await behind(run))["repositories"]
            return [(r["node"], r["repository_id"]) for r in rows] == [(behind_node, "3")]

        await wait_until(on_that_node, 10, f"repository 3 behind on {behind_node} alone")
        answer = await behind(run)
        assert [(t["mirror"], t["node"]) for t in answer["targets"]] == [("sydney", n) for n in nodes]
        assert all(t["drift_known"] for t in answer["targets"])
