"""Node by node: each farm node's own listing, against the simulated farm's ground truth per node.

The simulated farm keeps a copy per node; its farm URL balances requests over the nodes like nginx-ingress with cookie
affinity. With nodes configured the exporter reads each node at its own URL; without, it keeps the balancer's cookie
so one node answers every walk, cycle after cycle."""

from __future__ import annotations

from typing import Any

from exporter.simulator import Scenario
from tests.conftest import Samples, running_farm, value, wait_until

INTERVAL = 0.2
NODE_1, NODE_2 = "sydney-node-1", "sydney-node-2"


def node_value(samples: Samples, name: str, node: str, **labels: str) -> float | None:
    return value(samples, name, mirror="sydney", node=node, **labels)


async def test_one_lagging_node_is_found_by_name_and_the_mirror_is_the_union_of_its_nodes() -> None:
    async with running_farm(Scenario(repositories=12, mirrors=1), ["9.x"], interval=INTERVAL, nodes=True) as run:
        await run.wait_ready()
        await run.control(f"/sim/mirrors/sydney/nodes/{NODE_2}", {"frozen": True})
        await run.control(f"/sim/mirrors/sydney/nodes/{NODE_1}", {"missing_repositories": [7]})
        await run.control("/sim/push", {"repository_ids": [3, 5]})

        def node_2_behind(s: Samples) -> bool:
            content = node_value(s, "bitbucket_mirror_node_repositories_out_of_sync", NODE_2, hash="content")
            return content == 2.0 and node_value(s, "bitbucket_mirror_node_repositories_missing", NODE_1) == 1.0

        await run.metrics_until(node_2_behind, "node 2 behind on two repositories, node 1 missing one")
        await run.next_cycles(1)
        samples, everything = await run.metrics(), await run.truth()
        truth = everything["mirrors"]["sydney"]
        for node in (NODE_1, NODE_2):
            classes = truth["per_node"][node]["classes"]
            assert node_value(samples, "bitbucket_mirror_node_up", node) == 1.0
            got = node_value(samples, "bitbucket_mirror_node_repositories_out_of_sync", node, hash="content")
            assert got == len(classes["content_drift"]), node
            assert node_value(samples, "bitbucket_mirror_node_repositories_missing", node) == len(classes["missing"])
        assert truth["per_node"][NODE_2]["classes"]["content_drift"] == [3, 5]
        assert truth["per_node"][NODE_1]["classes"]["content_drift"] == []
        # The mirror is the union: what any node lacks or has stale, with the worst node's lag.
        union = truth["classes"]
        assert value(samples, "bitbucket_mirror_repositories_out_of_sync", mirror="sydney", hash="content") == len(
            union["content_drift"]
        )
        assert value(samples, "bitbucket_mirror_repositories_missing", mirror="sydney") == len(union["missing"]) == 1
        assert value(samples, "bitbucket_mirror_repositories_in_sync", mirror="sydney") == len(union["in_sync"])
        assert value(samples, "bitbucket_mirror_nodes_polled", mirror="sydney") == 2.0
        assert value(samples, "bitbucket_mirror_farm_nodes", mirror="sydney") == 2.0
        for repo in ("repo-3", "repo-5", "repo-7"):
            behind = value(samples, "bitbucket_mirror_repository_nodes_behind", mirror="sydney", project="PRJ" +
                           str(int(repo.split("-")[1]) % 3 or 3), repository=repo)  # fmt: skip
            assert behind == 1.0, repo
        # Lag: node 2's, from the push (first seen by the exporter within an interval or two of it).
        pushed = min(truth["per_node"][NODE_2]["diverged_since"].values())
        node_lag = node_value(samples, "bitbucket_mirror_node_sync_lag_seconds", NODE_2)
        mirror_lag = value(samples, "bitbucket_mirror_sync_lag_seconds", mirror="sydney")
        assert node_lag is not None and mirror_lag == node_lag
        assert 0 < node_lag <= everything["now"] - pushed + 1.0
        assert node_value(samples, "bitbucket_mirror_node_sync_lag_seconds", NODE_1) == 0.0


async def test_a_node_down_is_reported_without_hiding_its_peers_and_a_node_that_leaves_loses_its_series() -> None:
    async with running_farm(Scenario(repositories=6, mirrors=1), ["8.x"], interval=INTERVAL, nodes=True) as run:
        await run.wait_ready()
        await run.control(f"/sim/mirrors/sydney/nodes/{NODE_2}", {"down": True})

        def node_2_gone_stale(s: Samples) -> bool:
            return (
                node_value(s, "bitbucket_mirror_node_up", NODE_2) == 0.0
                and node_value(s, "bitbucket_mirror_node_repositories_missing", NODE_2) is None
            )

        samples = await run.metrics_until(node_2_gone_stale, "node 2 down, its drift series gone once stale")
        assert node_value(samples, "bitbucket_mirror_node_up", NODE_1) == 1.0
        assert node_value(samples, "bitbucket_mirror_node_repositories_missing", NODE_1) == 0.0
        assert value(samples, "bitbucket_mirror_nodes_polled", mirror="sydney") == 1.0
        assert value(samples, "bitbucket_mirror_drift_fresh", mirror="sydney") == 1.0
        assert value(samples, "bitbucket_mirror_repositories_in_sync", mirror="sydney") == 6.0
        failed = value(
            samples, "bitbucket_mirror_exporter_poll_success", target="sydney", node=NODE_2, source="repo_sync_status"
        )
        assert failed == 0.0
        # The farm shrinks to one node: the other's series go with it.
        await run.control("/sim/mirrors/sydney", {"nodes": 1})
        samples = await run.metrics_until(
            lambda s: node_value(s, "bitbucket_mirror_node_up", NODE_2) is None, "node 2 left farmNodes"
        )
        assert not [key for key in samples if ("node", NODE_2) in key[1]]


async def test_without_node_urls_the_farm_url_answers_from_one_node_cycle_after_cycle() -> None:
    async with running_farm(Scenario(repositories=10, mirrors=1), ["9.x"], interval=INTERVAL) as run:
        await run.wait_ready()
        # The two nodes disagree: read through a balancer that alternates, the counts would flap every cycle.
        await run.control(f"/sim/mirrors/sydney/nodes/{NODE_2}", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [1, 2, 3]})
        await run.next_cycles(2)
        seen = set()
        for _ in range(6):
            await run.next_cycles(1)
            samples = await run.metrics()
            seen.add(value(samples, "bitbucket_mirror_repositories_out_of_sync", mirror="sydney", hash="content"))
        assert len(seen) == 1, seen
        truth = (await run.truth())["mirrors"]["sydney"]["per_node"]
        pinned = [node for node, t in truth.items() if t["classes"]["content_drift"] == [1, 2, 3]]
        assert seen in ({0.0}, {3.0}) and pinned == [NODE_2]


async def test_the_primary_is_read_once_per_cycle_whatever_the_number_of_nodes() -> None:
    scenario = Scenario(repositories=10, mirrors=2)
    async with running_farm(scenario, ["9.x", "8.x"], interval=INTERVAL, nodes=True) as run:
        await run.wait_ready()
        await run.control("/sim/mirrors/sydney", {"nodes": 2})
        before = (await run.truth())["primary_requests"].get("repos", 0)
        cycles = run.exporter.state.primary.cycles
        await run.next_cycles(4)
        after = (await run.truth())["primary_requests"].get("repos", 0)
        done = run.exporter.state.primary.cycles - cycles
        # One page of repositories per cycle. A cycle in flight at either end of the window may have its request on
        # one side and its end on the other (the end comes after the worker takes the listing): one either way.
        assert done - 1 <= after - before <= done + 1
        for mirror in ("sydney", "frankfurt"):
            assert len(run.exporter.state.mirrors[0 if mirror == "sydney" else 1].nodes) == 2


async def test_jmx_exporter_pages_give_each_nodes_timers_and_sidecar_tickets_under_the_node_label() -> None:
    def jmx_from_pages(farm: Any, config: dict[str, Any]) -> None:
        config["mirrors"][0]["jmx"] = {
            "exporter_url_template": farm.node_url_template("/jmx/bitbucket"),
            "mesh_exporter_url_template": farm.node_url_template("/jmx/mesh"),
            "interval_seconds": 1,
        }

    scenario = Scenario(repositories=6, mirrors=1)
    async with running_farm(scenario, ["9.x"], interval=INTERVAL, nodes=True, prepare=jmx_from_pages) as run:
        await run.wait_ready()
        await run.control(f"/sim/mirrors/sydney/nodes/{NODE_2}", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [1, 2, 3]})
        truth: dict[str, Any] = {}

        async def synced_and_read() -> bool:
            nonlocal truth
            truth = (await run.truth())["mirrors"]["sydney"]["per_node"]
            samples = await run.metrics()
            syncs = node_value(samples, "bitbucket_mirror_node_syncs_total", NODE_1, sync="incremental")
            return truth[NODE_1]["syncs"]["incremental"] == 3 and syncs == 3.0

        await wait_until(synced_and_read, 10.0, "node 1's three syncs read from its jmx_exporter page")
        samples = await run.metrics()
        assert node_value(samples, "bitbucket_mirror_node_syncs_total", NODE_2, sync="incremental") == 0.0
        for node in (NODE_1, NODE_2):
            assert node_value(samples, "bitbucket_mirror_jmx_up", node) == 1.0
            # The same node label as the node's REST series.
            assert node_value(samples, "bitbucket_mirror_node_up", node) == 1.0
            for resource in ("scm-hosting", "scm-command", "scm-refs", "git-lfs"):
                for figure in ("available", "used"):
                    got = node_value(
                        samples, "bitbucket_mirror_node_tickets", node, resource=resource, attribute=figure
                    )
                    assert got is not None, (node, resource, figure)
        q = "bitbucket_mirror_node_sync_duration_seconds"
        assert node_value(samples, q, NODE_1, sync="incremental", quantile="0.99") == 0.8
        chosen = [labels for (name, labels) in samples if name == "bitbucket_mirror_node_jmx_bean_info"]
        assert chosen and not [labels for labels in chosen if "tag_upstream" in dict(labels)["object_name"]]


async def test_out_of_sync_repos_is_node_local_and_the_mirror_counts_the_union() -> None:
    scenario = Scenario(repositories=8, mirrors=1, sync_tolerance_seconds=0.0)
    async with running_farm(scenario, ["8.x"], interval=INTERVAL, nodes=True) as run:
        await run.control("/sim/mirrors/sydney", {"diagnostics_enabled": True})
        await run.wait_ready()
        # Each node stuck on a repository of its own: the union is larger than either node's list.
        await run.control(f"/sim/mirrors/sydney/nodes/{NODE_1}", {"held_repositories": [2]})
        await run.control(f"/sim/mirrors/sydney/nodes/{NODE_2}", {"held_repositories": [4]})
        await run.control("/sim/push", {"repository_ids": [2, 4]})

        def delayed(s: Samples) -> float | None:
            return value(s, "bitbucket_mirror_delayed_sync_repositories", mirror="sydney")

        samples = await run.metrics_until(lambda s: delayed(s) == 2.0, "the two repositories node 2 is behind on")
        truth = (await run.truth())["mirrors"]["sydney"]
        assert truth["delayed"] == [2, 4]
        assert truth["per_node"][NODE_1]["classes"]["content_drift"] == [2]
        assert truth["per_node"][NODE_2]["classes"]["content_drift"] == [4]
        ok = "bitbucket_mirror_exporter_poll_success"
        assert value(samples, ok, target="sydney", node=NODE_1, source="out_of_sync_repos") == 1.0
        assert value(samples, ok, target="sydney", node=NODE_2, source="out_of_sync_repos") == 1.0


async def test_a_hung_node_delays_neither_its_peers_nor_scrapes() -> None:
    async with running_farm(Scenario(repositories=6, mirrors=1), ["9.x"], interval=INTERVAL, nodes=True) as run:
        await run.wait_ready()
        await run.control(f"/sim/mirrors/sydney/nodes/{NODE_2}", {"fault": "hang"})
        nodes = run.exporter.state.mirrors[0].nodes
        peer, hung = nodes[NODE_1].repo_sync_status, nodes[NODE_2].repo_sync_status
        reads: set[float | None] = set()

        async def peer_read_five_times() -> bool:
            reads.add(peer.last_success_timestamp)
            return len(reads) > 5

        # Node 2's requests hang; its poll ends only after poll.timeout_seconds (2 s) for each of its 3 attempts.
        # Before that first failure, node 1 has been read five more times and the mirror's union has gone on.
        await wait_until(peer_read_five_times, 10.0, "node 1 read five more times while node 2 hangs")
        # One rendering with both: at a 0.2 s interval drift is served 0.6 s (stale_after), and a rendering (at most a
        # second old) can be made between the cycle that counts one node polled and the union it then takes.
        samples = await run.metrics_until(
            lambda s: (
                value(s, "bitbucket_mirror_nodes_polled", mirror="sydney") == 1.0
                and value(s, "bitbucket_mirror_drift_fresh", mirror="sydney") == 1.0
            ),
            "one node polled and the mirror's drift fresh",
        )
        assert hung.errors_total == {}, "node 2's hung poll ended already: the ordering proves nothing"
        assert value(samples, "bitbucket_mirror_drift_fresh", mirror="sydney") == 1.0
        assert node_value(samples, "bitbucket_mirror_node_up", NODE_1) == 1.0


async def test_nodes_slower_than_the_interval_are_waited_for_not_failed() -> None:
    # Every mirror answer takes 1.5 s and the interval is 1 s: the nodes' first cycle (begun after the farm-wide reads
    # that name them) ends after the interval the mirror waits at most for a hung node. Slow nodes are still answering:
    # the mirror's cycle waits for them, so its listing does not fail (no_node_answered) and its drift is known from
    # its first cycle, not an interval later.
    scenario = Scenario(repositories=4, mirrors=1, mirror_latency_seconds=1.5)
    async with running_farm(
        scenario, ["9.x"], interval=1.0, nodes=True, timeout_seconds=10.0, stale_after_seconds=30.0
    ) as run:
        mirror = run.exporter.state.mirrors[0]

        async def first_cycle_done() -> bool:
            return mirror.cycles >= 1

        await wait_until(first_cycle_done, 20.0, "the mirror's first cycle")
        assert mirror.repo_sync_status.errors_total == {}
        assert mirror.nodes_polled == 2
        assert mirror.drift is not None


async def test_when_no_node_answers_the_mirrors_drift_is_unknown_with_the_nodes_reason() -> None:
    async with running_farm(Scenario(repositories=6, mirrors=1), ["9.x"], interval=INTERVAL, nodes=True) as run:
        await run.wait_ready()
        for node in (NODE_1, NODE_2):
            await run.control(f"/sim/mirrors/sydney/nodes/{node}", {"fault": "unauthorized"})
        stale = "bitbucket_mirror_drift_input_stale"
        labels = {"mirror": "sydney", "target": "sydney", "source": "repo_sync_status", "reason": "http_401"}
        samples = await run.metrics_until(lambda s: value(s, stale, **labels) == 1.0, "the nodes' 401 named")
        assert value(samples, "bitbucket_mirror_drift_fresh", mirror="sydney") == 0.0
        assert value(samples, "bitbucket_mirror_up", mirror="sydney") == 1.0  # the farm URL itself answers
        assert value(samples, "bitbucket_mirror_nodes_polled", mirror="sydney") == 0.0


async def test_nodes_found_in_a_cycle_join_it_even_when_the_mirrors_farm_wide_reads_are_slow() -> None:
    # Every mirror answer takes 1.3 s: the mirror's farm-wide sources end seconds after the cycle began, and only then
    # does it learn its nodes. Their first cycle must still use the primary's listing of that cycle; waiting for the
    # next one would keep the exporter unready for a whole 30 s interval.
    scenario = Scenario(repositories=4, mirrors=1, mirror_latency_seconds=1.3)
    async with running_farm(scenario, ["9.x"], interval=30.0, nodes=True, timeout_seconds=10.0) as run:
        await run.wait_ready(within=15)
        samples = await run.metrics()
        for node in (NODE_1, NODE_2):
            assert node_value(samples, "bitbucket_mirror_node_repositories_missing", node) == 0.0
        assert value(samples, "bitbucket_mirror_nodes_polled", mirror="sydney") == 2.0
