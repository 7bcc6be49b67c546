"""An oracle we did not write, so the simulator and the client cannot share a guess: every path the exporter requests of
Bitbucket is in the official specs (tests/fixtures/openapi/, extracted by scripts/extract-openapi-fixture) or, where the
specs have no schema, in tests/fixtures/bitbucket/ (transcribed from Atlassian's documentation and public clients'
recorded answers); and the simulator's answer on each of those paths validates against that oracle. The exporter is run
against the simulator with every source on (9.x and 8.x mirrors, node by node, jmx_exporter pages, lag from the push,
webhook statistics) and `webhooks apply|status` at project and repository scope, and the simulator records what it was
asked."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from exporter.app import settings_from_mapping
from exporter.rest.client import BitbucketClient
from exporter.simulator import Scenario, SimulatedFarm
from exporter.webhooks.setup import Webhooks
from tests.conftest import running_farm, value
from tests.system.test_real_server import basic
from tests.system.test_simulator_schema import check, closed_components, spec
from tests.system.test_webhooks import SECRET

ORACLE = Path(__file__).resolve().parent.parent / "fixtures" / "bitbucket"
# Asked of Bitbucket outside its REST specs, each with where its shape comes from.
OUTSIDE_THE_SPECS = {
    ("GET", "/status"): "fact sheet section 1 (a real body); tests/system/test_simulator_schema.py",
    ("GET", "/jmx/bitbucket"): "jmx_exporter text (tests/fixtures/jmx_exporter/)",
    ("GET", "/jmx/mesh"): "jmx_exporter text (tests/fixtures/jmx_exporter/)",
    ("GET", "/rest/capabilities"): "tests/fixtures/bitbucket/capabilities.json",
    ("GET", "/rest/webhooks/latest/capabilities"): "tests/fixtures/bitbucket/webhook-capabilities.json",
    # git's smart HTTP (the CI gate's refs proof, verify_refs): git's own protocol, read by git, not by the exporter.
    ("GET", "/scm/{}/{}.git/info/refs"): "git's http-protocol documentation (a ref advertisement)",
}
# The specs give these answers no schema (or an empty one): the oracle is a fixture.
ORACLE_FILES = {
    "/rest/capabilities": "capabilities.json",
    "/rest/webhooks/latest/capabilities": "webhook-capabilities.json",
    "/api/latest/projects/{}/webhooks/{}/statistics/summary": "webhook-statistics-summary.json",
    "/api/latest/projects/{}/repos/{}/webhooks/{}/statistics/summary": "webhook-statistics-summary.json",
}
# RestWebhook in the specs has no ``id``, which every real answer carries (Atlassian's REST examples; public clients).
WEBHOOK_EXTRA = {"RestWebhook": {"id": {"type": "integer"}, "scopeType": {"type": "string"}}}


def template(path: str) -> str:
    """A path as the specs write it, with every parameter's name dropped: ``/api/latest/projects/{}/repos``."""
    if path.startswith(("/rest/api/", "/rest/mirroring/")):
        path = path.removeprefix("/rest")  # the specs' paths are relative to /rest
    return re.sub(r"\{[^}]*\}", "{}", path)


def spec_operations(version: str) -> dict[tuple[str, str], Any]:
    """(method, template) -> the schema of its answer (None: no body), from one fixture."""
    fixture = spec(version)
    found: dict[tuple[str, str], Any] = {("GET", template(p)): schema for p, schema in fixture["paths"].items()}
    for path, methods in fixture.get("operations", {}).items():
        for method, answer in methods.items():
            found.setdefault((method.upper(), template(path)), answer["schema"])
    return found


def shape(node: Any) -> Any:
    """What two answers must agree on: member names and nesting, and the kind of each value."""
    if isinstance(node, dict):
        return {key: shape(sub) for key, sub in node.items()}
    if isinstance(node, list):
        return [shape(node[0])] if node else []
    if isinstance(node, bool):
        return "boolean"
    return "number" if isinstance(node, int | float) else type(node).__name__


def same_shape_as_oracle(answer: Any, name: str) -> None:
    oracle = json.loads((ORACLE / name).read_text())
    if name == "webhook-statistics-summary.json":
        # A map keyed by event id: every entry shaped like the documented one.
        (entry,) = {json.dumps(shape(v), sort_keys=True) for v in oracle.values()}
        assert answer and all(json.dumps(shape(v), sort_keys=True) == entry for v in answer.values()), answer
    elif name == "capabilities.json":
        assert shape({k: v for k, v in answer.items() if k != "capabilities"}) == shape(
            {k: v for k, v in oracle.items() if k != "capabilities"}
        )
        assert all(isinstance(url, str) for url in answer["capabilities"].values())
        assert {"webhooks", "repository-mirroring"} <= set(answer["capabilities"])
    else:
        assert shape(answer) == shape(oracle), (answer, oracle)


async def exercise_webhooks(farm: SimulatedFarm, exporter_url: str, tmp_path: Path) -> None:
    """`webhooks apply` and `status` as the CLI runs them: PRJ1 with a project webhook, PRJ2 per repository."""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    config = farm.exporter_config(interval_seconds=1.0)
    config["webhooks"] = {"secret_file": str(secret_file)}
    settings = settings_from_mapping(config)
    async with aiohttp.ClientSession() as session:
        hooks = Webhooks(
            BitbucketClient(session, settings.poll), settings.primary, settings.webhooks, lambda line: None
        )
        await hooks.apply(["PRJ1"], [exporter_url], dry_run=False)
        farm.scenario.project_webhook_mirror_events = False  # PRJ2's project webhook refused: per repository
        await hooks.apply(["PRJ2"], [exporter_url], dry_run=False)
        farm.farm.push(1)
        farm.farm.push(2)
        await wait_for_deliveries(farm)
        await hooks.status(["PRJ1", "PRJ2"])


async def wait_for_deliveries(farm: SimulatedFarm) -> None:
    from tests.conftest import wait_until

    async def delivered() -> bool:
        return all(t.invocations for t in farm.webhooks)

    await wait_until(delivered, 15, "the webhooks delivered")


async def test_every_path_the_exporter_asks_is_in_the_specs_and_the_simulator_answers_it_as_they_say(
    tmp_path: Path,
) -> None:
    scenario = Scenario(repositories=9, projects=2, mirrors=2, nodes=2, sync_delay_seconds=0.5)

    def everything(farm: SimulatedFarm, config: dict[str, Any]) -> None:
        for mirror in config["mirrors"]:
            mirror["jmx"] = {
                "exporter_url_template": farm.node_url_template("/jmx/bitbucket"),
                "mesh_exporter_url_template": farm.node_url_template("/jmx/mesh"),
                "interval_seconds": 1,
            }
        config["webhooks"] = {
            "secret_file": str(tmp_path / "secret"),
            "statistics_projects": ["PRJ1", "PRJ2"],
            "statistics_interval_seconds": 1,
        }

    (tmp_path / "secret").write_text(SECRET)
    async with running_farm(scenario, ["9.x", "8.x"], interval=0.3, nodes=True, prepare=everything) as run:
        await run.wait_ready()
        # A repository sydney does not sync: its lag is dated from the push (ref change activity).
        await run.control("/sim/mirrors/sydney", {"frozen": True})
        await run.control("/sim/push", {"repository_ids": [3]})
        await run.metrics_until(
            lambda s: value(s, "bitbucket_mirror_sync_lag_source", mirror="sydney", source="push") == 1.0, "dated"
        )
        await exercise_webhooks(run.farm, run.url + "/webhooks/bitbucket", tmp_path)
        await run.metrics_until(
            lambda s: any(k[0] == "bitbucket_mirror_webhook_deliveries" for k in s), "webhook statistics read", 15
        )
        # The CI gate about an abbreviated commit: looked up on the primary (commits/{id}).
        repo = run.farm.farm.repositories[3]
        status, _ = await run.get(f"/api/v1/repositories/PRJ1/repo-3/mirrors?commit={repo.commit(1)[:10]}")
        assert status == 200
        asked = dict(run.farm.farm.asked)
        # Walk the simulator over every one of them again (GETs, as an admin) and hold each answer to the oracle.
        await walk(asked, run.farm)

    known = {**spec_operations("9.2"), **spec_operations("9.6"), **spec_operations("8.x")}
    outside = {(method, template(path)) for method, path in OUTSIDE_THE_SPECS}
    unknown = sorted(
        f"{method} {path}" for method, path in asked if (method, template(path)) not in known | dict.fromkeys(outside)
    )
    assert not unknown, f"asked of Bitbucket but in no spec and no oracle fixture: {unknown}"
    # Every kind of request the issue names was made.
    kinds = {template(path) for _, path in asked}
    for wanted in (
        "/status",
        "/mirroring/latest/supportInfo/repoSyncStatus",
        "/api/latest/projects/{}/repos/{}/ref-change-activities",
        "/api/latest/projects/{}/webhooks/{}/statistics/summary",
        "/api/latest/projects/{}/repos/{}/webhooks/{}/latest",
        "/rest/webhooks/latest/capabilities",
        "/api/latest/projects/{}/repos/{}/commits/{}",
    ):
        assert wanted in kinds, wanted


async def walk(asked: dict[tuple[str, str], str], farm: SimulatedFarm) -> None:
    """GET every URL the exporter asked (the first of each kind) and validate the answer against the oracle."""
    admin = {"Authorization": basic(farm.scenario.username, farm.scenario.password)}
    async with aiohttp.ClientSession() as http:
        for (method, path), url in sorted(asked.items()):
            if method != "GET":
                continue
            async with http.get(url, headers=admin) as resp:
                if resp.status in (204, 404, 409):
                    continue  # no body: no deliveries yet, the other API family's path, opt-in diagnostics off
                assert resp.status == 200, (url, resp.status)
                text = await resp.text()
            key = template(path)
            if key in ORACLE_FILES:
                same_shape_as_oracle(json.loads(text), ORACLE_FILES[key])
                continue
            if key.startswith(("/jmx/", "/scm/")) or key == "/status":
                continue  # not JSON of the specs (OUTSIDE_THE_SPECS)
            body = json.loads(text)
            validated = 0
            # An 8.x mirror's answer (or its node's) is held to the 8.x spec alone: it may carry what only 8.x sends
            # (repoSlug). Which mirror a path was first asked of depends on timing: both families share the paths.
            versions = ("8.x",) if family_of(url, farm) == "8.x" else ("9.2", "9.6", "8.x")
            for version in versions:
                schema = spec_operations(version).get(("GET", key))
                if schema is None:
                    continue
                if schema == {} and key.endswith("/webhooks"):  # "A page of webhooks.": each value a RestWebhook
                    schema = {"type": "object", "properties": {"values": {"type": "array", "items": {
                        "$ref": "#/components/schemas/RestWebhook"}}, "size": {}, "limit": {}, "isLastPage": {},
                        "start": {}, "nextPageStart": {}}}  # fmt: skip
                if isinstance(body, dict) and "isLastPage" in body and not _is_page(schema, version):
                    # The specs type some pages as their item (/mirroring/latest/repos): each value must be one.
                    for item in body["values"]:
                        _check(item, schema, version)
                else:
                    _check(body, schema, version)
                validated += 1
            assert validated, f"no schema for GET {key}"


def family_of(url: str, farm: SimulatedFarm) -> str | None:
    """The API family of the mirror whose host (or node's) ``url`` is on; None: the primary's."""
    origin = str(URL(url).origin())
    for name, mirror_url in farm.mirror_urls.items():
        hosts = [mirror_url, *farm.node_urls.get(name, {}).values()]
        if origin in {str(URL(host).origin()) for host in hosts}:
            return farm.farm.mirrors[name].api_family
    return None


def _is_page(schema: dict[str, Any], version: str) -> bool:
    if "$ref" in schema:
        schema = spec(version)["schemas"].get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
    return "values" in schema.get("properties", {})


def _check(body: Any, schema: dict[str, Any], version: str) -> None:
    components = closed_components(version, version == "8.x")
    for name, extra in WEBHOOK_EXTRA.items():
        if name in components["schemas"]:
            components["schemas"][name]["properties"].update(extra)
    check(body, schema, version=version, allow_8x=version == "8.x")
