"""Every dashboard query, run through a real Prometheus that scrapes the exporter on the simulated farm, with JMX
from a real JVM: each one parses and evaluates, and returns data, as Grafana would ask for it."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from alerts.rules import RULES_FILE
from dashboards.preview import draw_all
from exporter.simulator import Scenario, SimulatedFarm
from exporter.simulator.webhook_target import WebhookTarget
from tests.conftest import running_farm, wait_until
from tests.dashboard_json import PanelQuery, generated, queries
from tests.git_server import Remote, mirror_of, sync
from tests.jmx_node import FARM_VET, INCREMENTAL, SNAPSHOT, TICKETS, Timer, fake_node
from tests.monitoring_stack import LOOPBACK, free_port, prometheus

JOB = "bitbucket-mirror-exporter"
RULES = Path(__file__).parent.parent.parent / RULES_FILE
# What Grafana puts in for the variables: a multi-value selection becomes a regex alternation, and
# $__rate_interval is four scrape intervals (Prometheus scrapes every second here).
VARIABLES = {
    "cluster": ".*",  # All: matches series without a cluster label
    "job": f"({JOB})",
    "mirror": "(sydney|frankfurt)",
    "node": "(node-a|node-b|sydney-node-1|sydney-node-2|frankfurt-node-1|frankfurt-node-2)",
    "git_mirror": "(ci)",
    "__rate_interval": "4s",
    "freshness_objective": "0.99",
    "push_sync_objective": "0.99",
}
RANGE_SECONDS = 10
SECRET = "dashboard-webhooks"
SCENARIO = Scenario(
    repositories=12,
    mirrors=2,
    failing_repositories=2,
    zero_hash_repositories=1,
    missing_repositories=1,
    metadata_sync_delay_seconds=600,
    sync_tolerance_seconds=0.5,
)


def substitute(text: str) -> str:
    for name, value in VARIABLES.items():
        text = text.replace(f"${{{name}}}", value).replace(f"${name}", value)
    assert "$" not in text, f"a variable left in {text}"
    return text


def with_jmx(node_url: str, secret_file: Path, git_mirror: Path) -> Any:
    dead = f"service:jmx:rmi:///jndi/rmi://{LOOPBACK}:{free_port()}/jmxrmi"

    def prepare(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        config["webhooks"] = {"secret_file": str(secret_file)}
        # A CI reference mirror one push behind its (file://) remote.
        config["git_mirrors"] = [{"name": "ci", "path": str(git_mirror), "interval_seconds": 0.5}]
        # Fewer per-repository series than unhealthy repositories, so the "dropped" count has something to say.
        config["max_repository_series"] = 4
        nodes = [{"name": "node-a", "url": node_url}, {"name": "node-b", "url": dead}]
        config["mirrors"][0]["jmx"] = {"interval_seconds": 1, "timeout_seconds": 10, "nodes": nodes}
        # frankfurt's from its nodes' jmx_exporter pages: the sync performance panels must work from either path.
        config["mirrors"][1]["jmx"] = {
            "interval_seconds": 1,
            "exporter_url_template": farm.node_url_template("/jmx/bitbucket"),
            "mesh_exporter_url_template": farm.node_url_template("/jmx/mesh"),
        }

    return prepare


@dataclass
class Outcome:
    query: PanelQuery
    error: str = ""
    series: int = 0


class PrometheusAPI:
    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.base = f"http://{LOOPBACK}:{port}/api/v1"

    async def get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        async with self.http.get(self.base + path, params=params, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            body: dict[str, Any] = await resp.json()
            return body

    async def run(self, query: PanelQuery) -> Outcome:
        """The query as Grafana sends it: instant at now, or a range over the last seconds."""
        now = time.time()
        expr = substitute(query.expr)
        if query.target["instant"]:
            body = await self.get("/query", {"query": expr, "time": f"{now:.3f}"})
        else:
            span = {"start": f"{now - RANGE_SECONDS:.3f}", "end": f"{now:.3f}", "step": "1"}
            body = await self.get("/query_range", {"query": expr, **span})
        if body["status"] != "success":
            return Outcome(query, error=f"{body.get('errorType')}: {body.get('error')}")
        return Outcome(query, series=len(body["data"]["result"]))

    async def label_values(self, query: str) -> list[str]:
        """A ``label_values(selector, label)`` variable query."""
        match = re.fullmatch(r"label_values\((?:(.+), )?(\w+)\)", substitute(query))
        assert match, query
        params = {"match[]": match[1]} if match[1] else {}
        values: list[str] = (await self.get(f"/label/{match[2]}/values", params))["data"]
        return values


async def test_every_panel_query_evaluates_and_returns_data(fake_node_classes: Path, tmp_path: Path) -> None:
    panel_queries = queries()
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET)
    remote = Remote(tmp_path)
    git_mirror = mirror_of(remote, tmp_path / "ci.git")
    sync(git_mirror)  # the syncer's fetch: FETCH_HEAD, the last fetch's time
    remote.commit("not synced yet")
    remote.push("main")
    async with fake_node(fake_node_classes) as node:
        await node.timer(INCREMENTAL, Timer(count=40))
        await node.timer(SNAPSHOT, Timer(duration_unit="seconds", count=2))
        await node.timer(FARM_VET, Timer(count=5))
        await node.gauge(TICKETS, Available=8, Used=2)
        async with (
            running_farm(
                SCENARIO, ["9.x", "8.x"], interval=0.5, prepare=with_jmx(node.url, secret_file, git_mirror), nodes=True
            ) as run,
            # With the committed rules: the dashboards read the node aggregates from the recording rules.
            prometheus(tmp_path, run.exporter.port, rules=RULES) as port,
        ):
            await run.wait_ready()
            # The webhooks: every push timed to every mirror that syncs it (frankfurt does; sydney is frozen).
            run.farm.add_webhook(WebhookTarget(run.url + "/webhooks/bitbucket", SECRET))
            # Pushes all along, as in life: the push-sync SLO has a value only over windows with pushes in them.
            await run.control("/sim/scenario", {"push_rate": 2.0})
            # Drift of every kind, a failing endpoint for the error panels, Bitbucket's own delayed list on both.
            await run.control("/sim/mirrors/sydney", {"frozen": True})
            await run.control("/sim/mirrors/frankfurt", {"faults": {"progress": "error"}, "diagnostics_enabled": True})
            # One node of frankfurt stuck on a repository its peer syncs: the node panels have a node behind.
            await run.control("/sim/mirrors/frankfurt/nodes/frankfurt-node-2", {"held_repositories": [6]})
            await run.control("/sim/push", {"repository_ids": [1, 2, 3, 6]})
            await run.control("/sim/push", {"repository_ids": [4], "metadata_only": True})
            await run.control("/sim/delete", {"repository_ids": [5]})
            api = PrometheusAPI(run.http, port)
            outcomes: list[Outcome] = []

            pushed = run.farm.farm.repositories[1]
            gate = f"/api/v1/repositories/{pushed.project.key}/{pushed.slug}/mirrors?commit="
            gate += pushed.commit(pushed.content_version)

            async def all_have_data() -> bool:
                nonlocal outcomes
                await run.get(gate)  # a pipeline asking: the gate's panels (frankfurt's yes ends one wait)
                outcomes = [await api.run(q) for q in panel_queries]
                return all(o.series > 0 and not o.error for o in outcomes)

            try:
                await wait_until(all_have_data, 90, "data in every panel")
            finally:
                failing = [f"{o.query}: {o.error or 'no series'}" for o in outcomes if o.error or not o.series]
                assert not failing, "\n".join(failing)

            # The sync performance panels again for frankfurt alone, whose JMX comes from jmx_exporter pages.
            frankfurt = [
                PanelQuery(q.dashboard, q.panel, {**q.target, "expr": q.expr.replace("$mirror", "(frankfurt)")})
                for q in panel_queries
                if q.dashboard == "sync-performance.json"
            ]
            from_pages = [await api.run(q) for q in frankfurt]
            assert frankfurt and not [f"{o.query}" for o in from_pages if o.error or not o.series]

            variables = {v["name"]: v for d in generated().values() for v in d["templating"]["list"]}
            assert await api.label_values(variables["cluster"]["query"]) == []  # optional: no cluster label here
            assert await api.label_values(variables["job"]["query"]) == [JOB]
            assert await api.label_values(variables["mirror"]["query"]) == ["frankfurt", "sydney"]
            nodes = ["frankfurt-node-1", "frankfurt-node-2", "node-a", "node-b", "sydney-node-1", "sydney-node-2"]
            assert await api.label_values(variables["node"]["query"]) == nodes
            assert await api.label_values(variables["git_mirror"]["query"]) == ["ci"]

            # The previews (docs/dashboards/) drawn from this Prometheus: every data panel gets its series.
            base = f"http://{LOOPBACK}:{port}"
            drawn = await asyncio.to_thread(draw_all, generated(), base, VARIABLES, tmp_path / "previews")
            for name, panels in drawn.items():
                png = tmp_path / "previews" / name.replace(".json", ".png")
                assert png.stat().st_size > 20_000, name
                empty = [title for title, count in panels.items() if not count and title != "Firing alerts"]
                assert not empty, f"{name}: drawn without data: {empty}"
    assert len(panel_queries) > 50
