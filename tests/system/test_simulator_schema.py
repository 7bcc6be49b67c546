"""The simulator speaks the documented API: its responses validate against the official Bitbucket OpenAPI schemas.

The schemas come from tests/fixtures/openapi/, extracted from Atlassian's 9.2 and 9.6 specs (and the 8.x paths) by
scripts/extract-openapi-fixture, so this runs from a fresh clone.

The schemas are closed here (additionalProperties: false on every object with declared properties), so the simulator
cannot invent fields either. The few fields that only older versions' docs show (8.x ``repoSlug``, the 8.x upstream
record's ``type`` and ``apiBaseUrl``) are allowed by name, with the fact sheet as their source.
"""

from __future__ import annotations

import base64
import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openapi_schema_validator import OAS30ReadValidator

from exporter.simulator import Scenario, SimulatedFarm

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "openapi"
UPSTREAM = "/mirroring/latest/upstreamServers/{upstreamId}"
REST = "/rest/mirroring/latest"
ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:admin").decode()}
EXTRA_8X_FIELDS = {
    "RestMirrorRepositorySynchronizationStatus": {"repoSlug": {"type": "string"}},
    "RestUpstreamServer": {
        "type": {"type": "string", "enum": ["BITBUCKET_SERVER", "BITBUCKET_CLOUD"]},
        "apiBaseUrl": {"type": "string"},
    },
}


@cache
def spec(version: str) -> dict[str, Any]:
    """The fixture of one version: ``paths`` (path -> schema of its 200 answer) and ``schemas`` (components)."""
    return dict(json.loads((FIXTURES / f"bitbucket-dc-{version}.json").read_text()))


def _closed(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _closed(v) for k, v in node.items()}
        if isinstance(node.get("properties"), dict) and node["properties"] and "additionalProperties" not in node:
            node["additionalProperties"] = False
    elif isinstance(node, list):
        node = [_closed(v) for v in node]
    return node


@cache
def closed_components(version: str, allow_8x: bool) -> dict[str, Any]:
    components = {"schemas": copy.deepcopy(spec(version)["schemas"])}
    if allow_8x:
        for name, extra in EXTRA_8X_FIELDS.items():
            components["schemas"][name]["properties"].update(extra)
    closed: dict[str, Any] = _closed(components)
    return closed


def response_schema(version: str, path: str) -> dict[str, Any]:
    return dict(spec(version)["paths"][path])


def check(instance: Any, schema: dict[str, Any], version: str = "9.2", allow_8x: bool = False) -> None:
    root = {**_closed(schema), "components": closed_components(version, allow_8x)}
    errors = sorted(OAS30ReadValidator(root).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def component(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


async def get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, headers=ADMIN) as resp:
        assert resp.status == 200, (url, resp.status)
        return await resp.json()


@pytest.fixture
async def farm() -> Any:
    scenario = Scenario(repositories=12, failing_repositories=2, zero_hash_repositories=1, page_limit_cap=5)
    async with SimulatedFarm(scenario, ["9.x", "8.x"]) as running:
        running.farm.mirrors["sydney"].frozen = True
        running.farm.mirrors["frankfurt"].frozen = True
        running.farm.mirrors["frankfurt"].diagnostics_enabled = True
        running.farm.scenario.sync_tolerance_seconds = 0
        # Something in the ref-changes queue and the delayed lists: a repository with real hashes.
        pushed = next(r.id for r in running.farm.repositories.values() if not r.zero_hashes)
        running.farm.push(pushed)
        running.farm.select_projects(running.farm.mirrors["frankfurt"], {1, 2})
        yield running


async def test_mirror_endpoints_of_the_9x_family_match_the_spec(farm: SimulatedFarm) -> None:
    base = farm.mirror_urls["sydney"] + REST
    async with aiohttp.ClientSession() as http:
        for path in (
            "upstreamServer",
            "progress",
            "farmNodes",
            "supportInfo/refChangesQueue",
            "supportInfo/repoSyncStatus",
        ):
            body = await get(http, f"{base}/{path}")
            check(body, response_schema("9.2", f"/mirroring/latest/{path}"))
            check(body, response_schema("9.6", f"/mirroring/latest/{path}"), version="9.6")
        check(await get(http, f"{base}/syncSettings"), response_schema("9.2", "/mirroring/latest/syncSettings"))
        delayed = await get(http, f"{base}/mirrorRepos/delayed-sync?limit=100")
        assert delayed, "the check must see at least one delayed repository"
        check(delayed, response_schema("9.6", "/mirroring/latest/mirrorRepos/delayed-sync"), version="9.6")
        queue = await get(http, f"{base}/supportInfo/refChangesQueue")
        assert queue["values"], "the check must see at least one queue item"
        count = await get(http, f"{base}/supportInfo/refChangesQueue/count")
        assert count == len(queue["values"])  # untyped in the spec: a bare number, see docs/assumptions.md
        # The per-repository status (bench/scale.py's naive per-repository poller uses it).
        one_path = "/mirroring/latest/supportInfo/projects/{projectKey}/repos/{repositorySlug}/repoSyncStatus"
        one = await get(http, f"{base}/supportInfo/projects/PRJ1/repos/repo-1/repoSyncStatus")
        check(one, response_schema("9.2", one_path))
        check(one, response_schema("9.6", one_path), version="9.6")
        assert one == next(
            v for v in (await get(http, f"{base}/supportInfo/repoSyncStatus"))["values"] if v["externalRepoId"] == "1"
        )
        async with http.get(f"{base}/supportInfo/projects/PRJ2/repos/repo-1/repoSyncStatus", headers=ADMIN) as resp:
            assert resp.status == 404  # repo-1 is in PRJ1


async def test_mirror_endpoints_of_the_8x_family_match_the_same_schemas(farm: SimulatedFarm) -> None:
    base = farm.mirror_urls["frankfurt"] + REST
    async with aiohttp.ClientSession() as http:
        servers = await get(http, f"{base}/upstreamServers")
        page = {
            "type": "object",
            "properties": {
                "values": {"type": "array", "items": component("RestUpstreamServer")},
                "size": {},
                "limit": {},
                "isLastPage": {},
                "start": {},
                "nextPageStart": {},
            },
        }
        check(servers, page, allow_8x=True)
        upstream_id = servers["values"][0]["id"]
        check(
            await get(http, f"{base}/upstreamServers/{upstream_id}"),
            component("RestUpstreamServer"),
            allow_8x=True,
        )
        check(await get(http, f"{base}/upstreamServers/{upstream_id}/progress"), component("RestSyncProgress"))
        nodes = await get(http, f"{base}/upstreamServers/{upstream_id}/farmNodes")
        check(nodes, {"type": "array", "items": component("RestClusterNode")})
        # 8.x reads the sync scope from .../settings (RestUpstreamSettings); .../syncSettings does not exist there.
        settings = await get(http, f"{base}/upstreamServers/{upstream_id}/settings")
        assert settings == {"mode": "SELECTED_PROJECTS", "projectIds": ["1", "2"]}
        check(settings, response_schema("8.x", f"{UPSTREAM}/settings"), version="8.x")
        check(settings, component("RestUpstreamSettings"))
        async with http.get(f"{base}/upstreamServers/{upstream_id}/syncSettings", headers=ADMIN) as resp:
            assert resp.status == 404
        for path in ("progress", "farmNodes"):
            body = await get(http, f"{base}/upstreamServers/{upstream_id}/{path}")
            check(body, response_schema("8.x", f"{UPSTREAM}/{path}"), version="8.x")
        out_of_sync = await get(http, f"{base}/supportInfo/out-of-sync-repos/content")
        assert out_of_sync == str(next(r.id for r in farm.farm.repositories.values() if not r.zero_hashes))
        check(out_of_sync, response_schema("9.2", "/mirroring/latest/supportInfo/out-of-sync-repos/content"))
        statuses = await get(http, f"{base}/supportInfo/repoSyncStatus")
        check(statuses, response_schema("9.2", "/mirroring/latest/supportInfo/repoSyncStatus"), allow_8x=True)
        # The 9.x paths do not exist on an 8.x mirror.
        async with http.get(f"{base}/upstreamServer", headers=ADMIN) as resp:
            assert resp.status == 404


async def test_primary_endpoints_match_the_spec(farm: SimulatedFarm) -> None:
    base = farm.primary_url + REST
    async with aiohttp.ClientSession() as http:
        servers = await get(http, f"{base}/mirrorServers")
        check(servers, response_schema("9.2", "/mirroring/latest/mirrorServers"))
        check(servers, response_schema("9.6", "/mirroring/latest/mirrorServers"), version="9.6")
        repos = await get(http, f"{base}/repos")
        # The spec types this as one EnrichedRepository although it describes a page; each value must be one.
        assert repos["values"] and repos["isLastPage"] is False
        for repo in repos["values"]:
            check(repo, response_schema("9.2", "/mirroring/latest/repos"))
        one = await get(http, f"{base}/repos/{repos['values'][0]['id']}")
        check(one, response_schema("9.2", "/mirroring/latest/repos/{repoId}"))
        assert one == repos["values"][0]
        # When each push reached the primary (lag dated from the push): newest first, the creation last.
        pushed = next(r for r in farm.farm.repositories.values() if r.pushes)
        activities_path = "/api/latest/projects/{projectKey}/repos/{repositorySlug}/ref-change-activities"
        where = {"projectKey": pushed.project.key, "repositorySlug": pushed.slug}
        activities = await get(http, farm.primary_url + "/rest" + activities_path.format(**where))
        check(activities, response_schema("9.2", activities_path))
        created = [a["createdDate"] for a in activities["values"]]
        assert len(created) == 2 and created == sorted(created, reverse=True)
        assert [a["refChange"]["type"] for a in activities["values"]] == ["UPDATE", "ADD"]
        assert activities["values"][0]["refChange"]["fromHash"] == activities["values"][1]["refChange"]["toHash"]


async def test_listings_are_rendered_again_after_a_change(farm: SimulatedFarm) -> None:
    # The simulator caches each listing per farm revision; a push must show in the next page all the same.
    async with aiohttp.ClientSession() as http:
        before = (await get(http, f"{farm.primary_url}{REST}/repos?limit=1"))["values"][0]
        mirrored = await get(http, f"{farm.mirror_urls['sydney']}{REST}/supportInfo/repoSyncStatus?limit=1")
        farm.farm.push(before["id"])
        farm.farm.mirrors["sydney"].frozen = False
        after = (await get(http, f"{farm.primary_url}{REST}/repos?limit=1"))["values"][0]
        assert after["properties"]["contentHash"] != before["properties"]["contentHash"]
        synced = await get(http, f"{farm.mirror_urls['sydney']}{REST}/supportInfo/repoSyncStatus?limit=1")
        assert synced["values"][0]["hashes"]["content"] == after["properties"]["contentHash"]
        assert synced["values"][0]["hashes"] != mirrored["values"][0]["hashes"]


async def test_pages_are_capped_and_error_bodies_are_rest_errors(farm: SimulatedFarm) -> None:
    base = farm.mirror_urls["sydney"] + REST
    async with aiohttp.ClientSession() as http:
        page = await get(http, f"{base}/supportInfo/repoSyncStatus?limit=1000")
        assert page["limit"] == 5 and page["size"] == 5 and page["nextPageStart"] == 5
        async with http.get(f"{base}/supportInfo/repoSyncStatus") as resp:
            assert resp.status == 401
            check(await resp.json(), component("RestErrors"))


async def test_status_has_the_documented_shape(farm: SimulatedFarm) -> None:
    # /status is outside /rest and in no spec; the fact sheet quotes a real body.
    async with aiohttp.ClientSession() as http, http.get(farm.mirror_urls["sydney"] + "/status") as resp:
        body = await resp.json()
    assert set(body) == {"state", "memberCount", "discovering", "syncedRepos", "totalRepos"}
    assert isinstance(body["memberCount"], str)
