"""aiohttp servers for the simulated primary and mirrors, speaking the documented Bitbucket mirroring API.

Shapes follow the Bitbucket DC 9.2/9.6 OpenAPI schemas (tests/system/test_simulator_schema.py checks them). A mirror
serves either the 8.x layout (``upstreamServers/{id}/...``) or the 9.x one (flat paths), never both, as real mirrors
do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Protocol

from aiohttp import web

from exporter.simulator.accounts import Login, check
from exporter.simulator.farm import FAULTS, Farm, FarmNode, MidWalkPush, Mirror, MirrorRepository, Repository
from exporter.simulator.jmx_text import bitbucket_text, mesh_text
from exporter.simulator.webhook_target import WebhookTarget

REST = "/rest/mirroring/latest"
FARM_KEY = web.AppKey("farm", Farm)
MIRROR_KEY = web.AppKey("mirror", str)
# Set on a node's own server; the farm URL's server has none and balances over the nodes instead.
NODE_KEY = web.AppKey("node", str)
# nginx-ingress's default name for the affinity cookie (Atlassian's chart: affinity cookie, mode persistent).
AFFINITY_COOKIE = "INGRESSCOOKIE"
SERVING_NODE: web.RequestKey[FarmNode | None] = web.RequestKey("serving_node", FarmNode | None)  # type: ignore[arg-type]
Clock = Callable[[], float]
CLOCK_KEY: web.AppKey[Clock] = web.AppKey("clock")


@dataclasses.dataclass
class Listing:
    """A listing's items as JSON, and the pages already built from them by (start, limit)."""

    items: Sequence[bytes]
    revision: int = -1
    pages: dict[tuple[int, int], bytes] = dataclasses.field(default_factory=dict)


class Webhooks(Protocol):
    """Who delivers the primary's webhook events (exporter/simulator/runner.py)."""

    webhooks: list[WebhookTarget]
    delivered: dict[str, int]

    def add_webhook(self, target: WebhookTarget) -> None: ...

    def primary_time(self) -> float: ...

    async def test_connection(self, url: str) -> int | None: ...


WEBHOOKS_KEY: web.AppKey[Webhooks] = web.AppKey("webhooks")

# Route name -> the listing as of a farm revision: each listing is rendered once per farm change.
RENDERED_KEY: web.AppKey[dict[str, Listing]] = web.AppKey("rendered")

# What farmNodes lists as each node's port: the cluster port of Atlassian's chart, which speaks no HTTP.
CLUSTER_PORT = 5701
HANG_SECONDS = 30.0
# The slow-drip fault's pause between bytes: a few bytes a second, never silent long enough for a read timeout.
DRIP_SECONDS = 0.1
ENORMOUS_BYTES = 64 * 1024 * 1024
LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Log in - Bitbucket</title></head><body>Log in</body></html>"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def errors(message: str, status: int) -> web.Response:
    body = {"errors": [{"message": message}]}
    return web.json_response(body, status=status)


def encode(item: Any) -> bytes:
    return json.dumps(item, separators=(",", ":")).encode()


def rendered(request: web.Request, render: Callable[[], Iterable[Any]]) -> Listing:
    """This route's listing, rendered again only when the farm has changed since the last time."""
    cache, revision = request.app[RENDERED_KEY], request.app[FARM_KEY].revision
    route = request.match_info.route.name or request.path
    node = request.get(SERVING_NODE)
    if node is not None and (node.differs or node.missing):
        # Its own copy differs from the farm's; nodes with the farm's copy share one rendering (a farm's servers
        # share one cache), so a farm of identical nodes costs one rendering at 100,000 repositories.
        route = f"{route}@{node.name}"
    hit = cache.get(route)
    if hit is None or hit.revision != revision:
        hit = cache[route] = Listing([encode(item) for item in render()], revision)
    return hit


def paged(request: web.Request, listing: Listing, farm: Farm) -> web.Response:
    """A Bitbucket page of the listing: the server applies its own cap to ``limit`` and says so."""
    try:
        start = max(0, int(request.query.get("start", "0")))
        asked = int(request.query.get("limit", str(farm.scenario.default_page_limit)))
    except ValueError:
        return errors("start and limit must be integers", 400)
    limit = max(1, min(asked, farm.scenario.page_limit_cap))
    body = listing.pages.get((start, limit))
    if body is None:
        values = listing.items[start : start + limit]
        last = start + limit >= len(listing.items)
        page: dict[str, Any] = {"size": len(values), "limit": limit, "isLastPage": last, "start": start}
        if not last:
            page["nextPageStart"] = start + len(values)
        body = listing.pages[(start, limit)] = encode(page)[:-1] + b',"values":[' + b",".join(values) + b"]}"
    farm.page_served(request.match_info.route.name or "", start)
    return web.Response(body=body, content_type="application/json")


def _authorized(request: web.Request, farm: Farm) -> bool:
    """A login /rest and /scm take: the password or an access token (as Bearer, or as the Basic password)."""
    _, how = farm.accounts.login(request.headers.get("Authorization", ""))
    return how in (Login.BEARER, Login.PASSWORD, Login.TOKEN)


async def _apply_fault(request: web.Request, fault: str, handler: Handler) -> web.StreamResponse | None:
    """The faulty answer, or None to answer normally (a page fault on an endpoint that is not paged)."""
    if fault == "reset":
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=500)
    simple = _SIMPLE_FAULTS.get(fault)
    if simple is not None:
        return simple()
    if fault == "hang":
        await asyncio.sleep(HANG_SECONDS)
        return errors("too late", 504)
    if fault == "enormous":
        return await _enormous(request)
    real = await handler(request)
    body = real.body if isinstance(real, web.Response) and isinstance(real.body, bytes) else b""
    if fault == "truncated_json":
        # A proxy that cut the answer short but closed it cleanly: the length matches what is sent.
        return web.Response(body=body[: len(body) // 2], content_type="application/json")
    if fault == "page_loop":
        document = json.loads(body) if body else None
        if not isinstance(document, dict) or "isLastPage" not in document:
            return real
        start = int(request.query.get("start", "0"))
        looped = {**document, "isLastPage": False, "nextPageStart": start}
        return web.json_response(looped)
    if fault == "slow_drip":
        return await _trickle(request, body, first=1, pause=DRIP_SECONDS)
    if fault == "stall_mid_body":
        return await _trickle(request, body, first=max(1, len(body) // 2), pause=HANG_SECONDS)
    raise AssertionError(f"fault {fault} has no answer")  # FAULTS and this function out of step


# Faults answered by a fixed response, by name.
_SIMPLE_FAULTS: dict[str, Callable[[], web.Response]] = {
    "unavailable": lambda: errors("Service unavailable", 503),
    "error": lambda: errors("Internal server error", 500),
    "bad_gateway": lambda: web.Response(status=502, text="502 Bad Gateway", content_type="text/plain"),
    "rate_limited": lambda: web.Response(
        status=429, text="Too many requests", content_type="text/plain", headers={"Retry-After": "2"}
    ),
    "unauthorized": lambda: errors("Authentication failed. Please check your credentials and try again.", 401),
    "forbidden": lambda: errors("You are not permitted to access this resource", 403),
    "html": lambda: web.Response(body=LOGIN_PAGE, content_type="text/html"),
    "broken_json": lambda: web.Response(body=b'{"values": [{"externalRepoId": "1", ', content_type="application/json"),
    # Valid JSON, but not the documented shape (a list where an object is, values that are not a list).
    "wrong_shape": lambda: web.json_response({"values": {"size": 1}, "isLastPage": "maybe", "state": []}),
}


async def _trickle(request: web.Request, body: bytes, first: int, pause: float) -> web.StreamResponse:
    """Send ``first`` bytes of a normal answer at once, then one byte per ``pause`` seconds."""
    response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(body))})
    await response.prepare(request)
    try:
        await response.write(body[:first])
        for i in range(first, len(body)):
            await asyncio.sleep(pause)
            await response.write(body[i : i + 1])
    except ConnectionError:
        pass  # the client gave up, as it should
    return response


async def _enormous(request: web.Request) -> web.StreamResponse:
    """A page far larger than any real one, streamed without a length: only a size cap stops the reader."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    item = b'{"externalRepoId": "1", "failedSyncCount": 0, "padding": "' + b"x" * 4000 + b'"},'
    try:
        await response.write(b'{"isLastPage": true, "values": [')
        for _ in range(ENORMOUS_BYTES // len(item)):
            await response.write(item)
        await response.write(item[:-1] + b"]}")
    except ConnectionError:
        pass
    return response


async def dated(request: web.Request, response: web.StreamResponse) -> None:
    """The Date header on the simulated host's own clock: the true time plus its skew (whole seconds, cut down)."""
    farm = request.app[FARM_KEY]
    mirror_name = request.app.get(MIRROR_KEY)
    skew = (
        farm.mirrors[mirror_name].clock_skew_seconds
        if mirror_name is not None
        else farm.scenario.primary_clock_skew_seconds
    )
    response.headers["Date"] = formatdate(request.app[CLOCK_KEY]() + skew, usegmt=True)


def _balance(request: web.Request, mirror: Mirror) -> tuple[FarmNode | None, bool]:
    """The node a request to the farm URL goes to, like nginx-ingress with cookie affinity: the node its cookie
    names while that node is up, else the next one up in turn (True: the answer sets a new cookie)."""
    wanted = request.cookies.get(AFFINITY_COOKIE)
    up = [node for node in mirror.farm_nodes if not node.down]
    pinned = next((node for node in up if node.name == wanted), None)
    if pinned is not None or not up:
        return pinned, False
    mirror.balanced += 1
    return up[mirror.balanced % len(up)], True


@web.middleware
async def farm_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    farm = request.app[FARM_KEY]
    farm.advance(request.app[CLOCK_KEY]())
    # Requests to paths this server does not serve (another API family's) are counted by path.
    route = request.match_info.route.name or f"unmatched {request.path}"
    if route.startswith("sim_"):
        return await handler(request)
    # What clients asked, as (method, path template): tests hold the exporter's requests to the specs' paths.
    resource = request.match_info.route.resource
    farm.asked.setdefault(
        (request.method, resource.canonical if resource is not None else request.path), str(request.url)
    )
    mirror_name = request.app.get(MIRROR_KEY)
    new_cookie = False
    host = "primary"
    if mirror_name is not None:
        mirror = farm.mirrors[mirror_name]
        node_name = request.app.get(NODE_KEY)
        if node_name is not None:
            node = mirror.node(node_name)
            if node is None or node.down:
                if request.transport is not None:
                    request.transport.abort()  # a node that is down: the connection is refused or reset
                return web.Response(status=500)
            node.requests[route] = node.requests.get(route, 0) + 1
            host = f"{mirror_name}/{node_name}"
        else:
            mirror.requests[route] = mirror.requests.get(route, 0) + 1
            host = mirror_name
            node, new_cookie = _balance(request, mirror)
            if node is None and mirror.farm_nodes:
                return errors("No healthy upstream", 503)
        request[SERVING_NODE] = node
        if farm.scenario.mirror_latency_seconds > 0:
            await asyncio.sleep(farm.scenario.mirror_latency_seconds)
        fault = mirror.fault_for(route) or (node.fault if node_name is not None and node is not None else None)
        if fault is not None:
            response = await _apply_fault(request, fault, handler)
            if response is not None:
                return response
    else:
        farm.primary_requests[route] = farm.primary_requests.get(route, 0) + 1
        if farm.scenario.primary_latency_seconds > 0:
            await asyncio.sleep(farm.scenario.primary_latency_seconds)
    # /status is public on real Bitbucket and refuses tokens; the REST API wants an admin for supportInfo.
    refused = check(request, farm.accounts, host, protected=request.path.startswith("/rest/"))
    if refused is not None:
        return refused
    response = await handler(request)
    if new_cookie and not response.prepared:
        serving = request[SERVING_NODE]
        assert serving is not None  # a new cookie names the node picked
        response.set_cookie(AFFINITY_COOKIE, serving.name, path="/", httponly=True)
    return response


def _farm(request: web.Request) -> Farm:
    return request.app[FARM_KEY]


def _mirror(request: web.Request) -> Mirror:
    return request.app[FARM_KEY].mirrors[request.app[MIRROR_KEY]]


def _node(request: web.Request) -> FarmNode | None:
    """The node answering: the node's own server, or the one the farm URL's load balancer picked."""
    return request.get(SERVING_NODE)


def _copy(request: web.Request) -> dict[int, MirrorRepository]:
    """The repositories of the node answering (node-local listings), or the farm's without nodes."""
    mirror, node = _mirror(request), _node(request)
    return mirror.repositories if node is None else mirror.node_view(node)


# --- mirror endpoints ----------------------------------------------------------------------------------------------


async def mirror_status(request: web.Request) -> web.Response:
    mirror, node = _mirror(request), _node(request)
    state = node.state if node is not None and node.state is not None else mirror.state
    body = {
        "state": state,
        "memberCount": str(mirror.nodes),  # a string on real mirrors
        "discovering": False,
        "syncedRepos": 0,
        "totalRepos": 0,
    }
    return web.json_response(body, status=503 if state == "STARTING" else 200)


def _upstream_record(mirror: Mirror, farm: Farm, full: bool) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": mirror.upstream_id,
        "state": mirror.upstream_state,
        "baseUrl": farm.primary_url,
    }
    if full:  # 8.x records carry type and apiBaseUrl as well
        record.update({"type": "BITBUCKET_SERVER", "apiBaseUrl": farm.primary_url + "/rest"})
    return record


def _check_upstream(request: web.Request) -> web.Response | None:
    if request.match_info.get("upstream_id") not in (None, _mirror(request).upstream_id):
        return errors("No upstream server with that id", 404)
    return None


async def upstream_server(request: web.Request) -> web.Response:
    return web.json_response(_upstream_record(_mirror(request), _farm(request), full=False))


async def upstream_servers(request: web.Request) -> web.Response:
    record = _upstream_record(_mirror(request), _farm(request), full=True)
    return paged(request, Listing([encode(record)]), _farm(request))


async def upstream_server_v8(request: web.Request) -> web.Response:
    return _check_upstream(request) or web.json_response(_upstream_record(_mirror(request), _farm(request), True))


async def progress(request: web.Request) -> web.Response:
    if (missing := _check_upstream(request)) is not None:
        return missing
    mirror = _mirror(request)
    total = len(mirror.repositories)
    if mirror.state in ("SYNCHRONIZED", "METADATA_SYNCHRONIZED"):
        body = {"discovering": False, "syncedRepos": 0, "totalRepos": 0}  # idle
    else:
        synced = sum(1 for r in mirror.repositories.values() if r.failed_sync_count == 0)
        body = {"discovering": mirror.state == "BOOTSTRAPPED", "syncedRepos": synced, "totalRepos": total}
    return web.json_response(body)


async def farm_nodes(request: web.Request) -> web.Response:
    if (missing := _check_upstream(request)) is not None:
        return missing
    mirror, serving = _mirror(request), _node(request)
    # RestClusterNode is the cluster member: its address and its cluster (Hazelcast) port, not an HTTP URL
    # (Atlassian's chart: HTTP on 7990, Hazelcast on 5701; the spec's example port is 8230). Reference section 8.
    nodes = [
        {
            "id": node.name,
            "name": node.name,
            "address": {"address": node.address, "port": CLUSTER_PORT},
            "buildVersion": "9.6.0" if mirror.api_family == "9.x" else "8.19.0",
            "local": node is serving,
        }
        for node in mirror.farm_nodes
    ]
    return web.json_response(nodes)


def _sync_status_item(farm: Farm, mirror: Mirror, repo_id: int, mrepo: MirrorRepository) -> dict[str, Any]:
    repo = farm.repositories.get(repo_id)
    zero = repo is None or repo.zero_hashes
    content = "0" * 40 if zero or repo is None else repo.content_hash(mrepo.content_version)
    metadata = "0" * 40 if zero or repo is None else repo.metadata_hash(mrepo.metadata_version)
    item: dict[str, Any] = {
        "externalRepoId": str(repo_id),
        "localRepoId": mrepo.local_id,
        "localProjectId": mrepo.local_project_id,
        "upstreamId": mirror.upstream_id,
        "failedSyncCount": mrepo.failed_sync_count,
        "initialSyncDate": iso(mrepo.initial_sync_date),
        "lastSyncDate": iso(mrepo.last_sync_date),
        "hashes": {"content": content, "metadata": metadata},
    }
    if mirror.api_family == "8.x" and repo is not None:
        item["repoSlug"] = repo.slug  # 8.x examples carry it
    return item


async def repo_sync_status(request: web.Request) -> web.Response:
    farm, mirror = _farm(request), _mirror(request)
    items = rendered(
        request,
        lambda: (_sync_status_item(farm, mirror, r, m) for r, m in sorted(_copy(request).items())),
    )
    return paged(request, items, farm)


async def one_repo_sync_status(request: web.Request) -> web.Response:
    """The per-repository status endpoint (what a naive monitor would call once per repository)."""
    farm, mirror = _farm(request), _mirror(request)
    repo = farm.by_slug(request.match_info["project_key"], request.match_info["slug"])
    mrepo = _copy(request).get(repo.id) if repo is not None else None
    if repo is None or mrepo is None:
        return errors("Repository not found on this mirror", 404)
    return web.json_response(_sync_status_item(farm, mirror, repo.id, mrepo))


async def ref_changes_queue(request: web.Request) -> web.Response:
    farm, mirror = _farm(request), _mirror(request)
    listing = rendered(
        request,
        lambda: (
            {
                "externalRepoId": str(repo_id),
                "attempt": 1,
                "createdAt": iso(farm.repositories[repo_id].content_changed_at),  # queued when the push came
                "type": kind,
            }
            for repo_id, kind in farm.pending(mirror)
        ),
    )
    return web.Response(body=b'{"values":[' + b",".join(listing.items) + b"]}", content_type="application/json")


async def ref_changes_queue_count(request: web.Request) -> web.Response:
    return web.json_response(len(_farm(request).pending(_mirror(request))))


async def sync_settings(request: web.Request) -> web.Response:
    if (missing := _check_upstream(request)) is not None:
        return missing
    mirror = _mirror(request)
    if mirror.selected_projects is None:
        return web.json_response({"mode": "ALL_PROJECTS", "projectIds": []})
    return web.json_response(
        {"mode": "SELECTED_PROJECTS", "projectIds": [str(p) for p in sorted(mirror.selected_projects)]}
    )


async def sync_settings_mode(request: web.Request) -> web.Response:
    if (missing := _check_upstream(request)) is not None:
        return missing
    return web.json_response("ALL_PROJECTS" if _mirror(request).selected_projects is None else "SELECTED_PROJECTS")


async def sync_settings_projects(request: web.Request) -> web.Response:
    if (missing := _check_upstream(request)) is not None:
        return missing
    return web.json_response([str(p) for p in sorted(_mirror(request).selected_projects or ())])


async def delayed_sync(request: web.Request) -> web.Response:
    farm, mirror = _farm(request), _mirror(request)
    try:
        limit = min(int(request.query.get("limit", "100")), 100)
    except ValueError:
        return errors("limit must be an integer", 400)
    values = [
        {
            "projectKey": farm.repositories[r].project.key,
            "repositoryId": str(r),
            "repositorySlug": farm.repositories[r].slug,
        }
        for r in farm.delayed(mirror)[:limit]
    ]
    return web.json_response(values)


async def out_of_sync_repos(request: web.Request) -> web.Response:
    farm, mirror = _farm(request), _mirror(request)
    if not mirror.diagnostics_enabled:
        return errors("Repository sync diagnostics are disabled", 409)
    # The spec types this "list of repository IDs" as a string; send the ids as one JSON string. Node-local.
    return web.json_response(",".join(str(r) for r in farm.delayed(mirror, _node(request))))


async def jmx_exporter_bitbucket(request: web.Request) -> web.Response:
    node = _node(request)
    assert node is not None  # routed on node servers only
    return web.Response(text=bitbucket_text(node), content_type="text/plain")


async def jmx_exporter_mesh(request: web.Request) -> web.Response:
    node = _node(request)
    assert node is not None
    return web.Response(text=mesh_text(node), content_type="text/plain")


def mirror_app(
    farm: Farm,
    mirror_name: str,
    clock: Callable[[], float],
    node: str | None = None,
    cache: dict[str, Listing] | None = None,
) -> web.Application:
    """The farm URL's server (``node`` None: it balances over the nodes), or one node's own server, which also
    serves that node's jmx_exporter text (Bitbucket's JVM at /jmx/bitbucket, the Mesh sidecar's at /jmx/mesh).
    The servers of one farm share one ``cache`` of rendered listings."""
    app = web.Application(middlewares=[farm_middleware])
    app.on_response_prepare.append(dated)
    app[FARM_KEY], app[MIRROR_KEY], app[CLOCK_KEY] = farm, mirror_name, clock
    app[RENDERED_KEY] = cache if cache is not None else {}
    r = app.router
    if node is not None:
        app[NODE_KEY] = node
        r.add_get("/jmx/bitbucket", jmx_exporter_bitbucket, name="jmx_bitbucket")
        r.add_get("/jmx/mesh", jmx_exporter_mesh, name="jmx_mesh")
    r.add_get("/status", mirror_status, name="status")
    r.add_get("/scm/{key}/{slug}.git/info/refs", git_refs, name="git_refs")
    if farm.mirrors[mirror_name].api_family == "9.x":
        r.add_get(f"{REST}/upstreamServer", upstream_server, name="upstream")
        r.add_get(f"{REST}/progress", progress, name="progress")
        r.add_get(f"{REST}/farmNodes", farm_nodes, name="farm_nodes")
        r.add_get(f"{REST}/syncSettings", sync_settings, name="sync_settings")
        # 9.5+ (the simulator's 9.x is 9.6, where out-of-sync-repos is gone).
        r.add_get(f"{REST}/mirrorRepos/delayed-sync", delayed_sync, name="delayed_sync")
    else:
        r.add_get(f"{REST}/upstreamServers", upstream_servers, name="upstream_servers")
        r.add_get(f"{REST}/upstreamServers/{{upstream_id}}", upstream_server_v8, name="upstream")
        r.add_get(f"{REST}/upstreamServers/{{upstream_id}}/progress", progress, name="progress")
        r.add_get(f"{REST}/upstreamServers/{{upstream_id}}/farmNodes", farm_nodes, name="farm_nodes")
        # 8.x: RestUpstreamSettings at .../settings (8.19 spec), with its two sub-resources.
        r.add_get(f"{REST}/upstreamServers/{{upstream_id}}/settings", sync_settings, name="sync_settings")
        r.add_get(f"{REST}/upstreamServers/{{upstream_id}}/settings/mode", sync_settings_mode, name="settings_mode")
        r.add_get(
            f"{REST}/upstreamServers/{{upstream_id}}/settings/projects",
            sync_settings_projects,
            name="settings_projects",
        )
        r.add_get(f"{REST}/supportInfo/out-of-sync-repos/content", out_of_sync_repos, name="out_of_sync")
    r.add_get(f"{REST}/supportInfo/repoSyncStatus", repo_sync_status, name="repo_sync_status")
    r.add_get(
        f"{REST}/supportInfo/projects/{{project_key}}/repos/{{slug}}/repoSyncStatus",
        one_repo_sync_status,
        name="one_repo_sync_status",
    )
    r.add_get(f"{REST}/supportInfo/refChangesQueue", ref_changes_queue, name="ref_changes_queue")
    r.add_get(f"{REST}/supportInfo/refChangesQueue/count", ref_changes_queue_count, name="ref_changes_queue_count")
    return app


# --- primary endpoints ---------------------------------------------------------------------------------------------


async def primary_status(request: web.Request) -> web.Response:
    return web.json_response({"state": "RUNNING"})


async def mirror_servers(request: web.Request) -> web.Response:
    farm = _farm(request)
    values = [
        {
            "id": m.server_id,
            "name": m.name,
            "baseUrl": m.base_url,
            "enabled": m.enabled,
            "lastSeenDate": iso(m.last_seen),
            "mirrorType": "FARM" if m.nodes > 1 else "SINGLE",
            "productVersion": "9.6.0" if m.api_family == "9.x" else "8.19.0",
        }
        for m in farm.mirrors.values()
        if m.registered
    ]
    return paged(request, Listing([encode(v) for v in values]), farm)


def _enriched_repository(repo: Repository) -> dict[str, Any]:
    project = repo.project
    return {
        "id": repo.id,
        "slug": repo.slug,
        "name": repo.slug,
        "scmId": "git",
        "state": "AVAILABLE",
        "statusMessage": "Available",
        "forkable": True,
        "public": False,
        "archived": False,
        "hierarchyId": f"h{repo.id:019d}"[-20:],
        "project": {"id": project.id, "key": project.key, "name": project.name, "public": False, "type": "NORMAL"},
        "properties": {
            "contentHash": repo.content_hash(),
            "metadataHash": repo.metadata_hash(),
            "defaultBranchId": "refs/heads/main",
        },
    }


async def primary_repos(request: web.Request) -> web.Response:
    farm = _farm(request)
    items = rendered(request, lambda: (_enriched_repository(farm.repositories[r]) for r in sorted(farm.repositories)))
    return paged(request, items, farm)


async def primary_repo(request: web.Request) -> web.Response:
    """One repository with its hashes (what a naive monitor would call once per repository)."""
    try:
        repo = _farm(request).repositories.get(int(request.match_info["repo_id"]))
    except ValueError:
        repo = None
    if repo is None:
        return errors("Repository not found", 404)
    return web.json_response(_enriched_repository(repo))


def _activity(farm: Farm, repo: Repository, activity_id: int, at: float, before: int, after: int) -> dict[str, Any]:
    """One RestRepositoryRefChangeActivity: a push to the default branch (ADD for the repository's first one)."""
    ref = {"id": "refs/heads/main", "displayId": "main", "type": "BRANCH"}
    skew = farm.scenario.primary_clock_skew_seconds
    return {
        "id": activity_id,
        "createdDate": int((at + skew) * 1000),  # epoch milliseconds, on the primary's clock
        "refChange": {
            "ref": ref,
            "refId": ref["id"],
            "fromHash": repo.commit(before),
            "toHash": repo.commit(after),
            "type": "ADD" if before <= 0 else "UPDATE",
        },
        "repository": {"id": repo.id, "slug": repo.slug, "name": repo.slug, "project": {"key": repo.project.key}},
        "trigger": "push",
        "user": {"name": "developer", "displayName": "A Developer", "slug": "developer", "type": "NORMAL"},
    }


async def ref_change_activities(request: web.Request) -> web.Response:
    """A repository's ref changes (9.2 spec; REPO_ADMIN): its pushes and its creation, newest first unless the
    scenario says ``activity_order: oldest_first``."""
    farm = _farm(request)
    repo = farm.by_slug(request.match_info["project_key"], request.match_info["slug"])
    if repo is None:
        return errors("Repository not found", 404)
    denied = farm.activity_denied
    if denied is None or repo.id in denied:
        return errors("You are not permitted to access this resource (REPO_ADMIN is required)", 401)
    wanted = request.query.get("ref")
    if wanted not in (None, "refs/heads/main"):
        return paged(request, Listing([]), farm)
    items = [_activity(farm, repo, p.activity_id, p.at, p.from_version, p.to_version) for p in reversed(repo.pushes)]
    items.append(_activity(farm, repo, 0, repo.created_at, 0, 1))
    if farm.scenario.activity_order == "oldest_first":
        items.reverse()  # nothing published says which order a real server uses: the exporter must not care
    return paged(request, Listing([encode(item) for item in items]), farm)


async def commit(request: web.Request) -> web.Response:
    """RestCommit of one of a repository's commits (9.2 spec), found by its id or an abbreviation of it (at least 4
    hex digits, unambiguous), as Bitbucket resolves them; 404 with a REST error otherwise."""
    farm = _farm(request)
    repo = farm.by_slug(request.match_info["project_key"], request.match_info["slug"])
    asked = request.match_info["commit_id"].lower()
    if repo is None:
        return errors(f"Repository {request.match_info['slug']} does not exist.", 404)
    versions = [v for v in range(1, repo.content_version + 1) if repo.commit(v).startswith(asked)]
    if len(asked) < 4 or len(versions) != 1:
        return errors(f"Commit '{asked}' does not exist in repository '{repo.slug}'.", 404)
    version = versions[0]
    pushes = {p.to_version: p.at for p in repo.pushes}
    at = int((pushes.get(version, repo.created_at) + farm.scenario.primary_clock_skew_seconds) * 1000)
    person = {"name": "developer", "emailAddress": "developer@example.com"}
    full = repo.commit(version)
    return web.json_response(
        {
            "id": full,
            "displayId": full[:11],
            "author": person,
            "authorTimestamp": at,
            "committer": person,
            "committerTimestamp": at,
            "message": f"change {version}",
            "parents": [{"id": repo.commit(version - 1), "displayId": repo.commit(version - 1)[:11]}]
            if version > 1
            else [],
        }
    )


def _pkt(line: bytes) -> bytes:
    return f"{len(line) + 4:04x}".encode() + line


def ref_advertisement(refs: list[tuple[str, str]]) -> bytes:
    """Git's smart-HTTP answer to ``info/refs?service=git-upload-pack`` (protocol v0): what ``git ls-remote``
    reads. The first ref carries the capabilities after a NUL."""
    body = _pkt(b"# service=git-upload-pack\n") + b"0000"
    for i, (value, ref) in enumerate(refs):
        capabilities = b"\0multi_ack side-band-64k ofs-delta agent=git/bitbucket-simulator" if i == 0 else b""
        body += _pkt(value.encode() + b" " + ref.encode() + capabilities + b"\n")
    return body + b"0000"


async def git_refs(request: web.Request) -> web.Response:
    """``/scm/{key}/{slug}.git/info/refs``: a repository's refs as git sees them over HTTP, on the primary or on a
    mirror (its serving node's copy); Basic auth as for the REST API. Branch ``main`` at the copy's version, and on
    the primary a pull-request ref, which mirrors sync only periodically."""
    farm = _farm(request)
    if request.query.get("service") != "git-upload-pack":
        return errors("Only smart HTTP is served", 403)
    if not _authorized(request, farm):
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="Bitbucket"'})
    repo = farm.by_slug(request.match_info["key"].upper(), request.match_info["slug"])
    if repo is None:
        return web.Response(status=404, text="Repository not found")
    if request.app.get(MIRROR_KEY) is None:
        refs = [(repo.commit(repo.content_version), "refs/heads/main")]
        refs.append((repo.commit(max(1, repo.content_version - 1)), f"refs/pull-requests/{repo.id}/from"))
    else:
        mrepo = _copy(request).get(repo.id)
        if mrepo is None:
            return web.Response(status=404, text="Repository not found on this mirror")
        refs = [(repo.commit(mrepo.content_version), "refs/heads/main")]
    return web.Response(body=ref_advertisement(refs), content_type="application/x-git-upload-pack-advertisement")


# --- control API ---------------------------------------------------------------------------------------------------


async def sim_truth(request: web.Request) -> web.Response:
    return web.json_response(_farm(request).truth())


async def sim_mirror(request: web.Request) -> web.Response:
    """Change one mirror: ``{"faults": {"*": "reset"}, "state": ..., "upstream_state": ..., "nodes": ...,
    "frozen": ..., "enabled": ..., "registered": ... (listed by the primary), "diagnostics_enabled": ...,
    "failing_repositories": [ids],
    "missing_repositories": [ids], "selected_projects": [project ids] or null}``. Faults ``{}`` heal it; with
    ``"fault_budget": n`` the faults heal by themselves after n faulty answers (a burst)."""
    farm = _farm(request)
    mirror = farm.mirrors.get(request.match_info["name"])
    if mirror is None:
        return errors("no such mirror", 404)
    change = await request.json()
    if "faults" in change:
        bad = [f for f in change["faults"].values() if f not in FAULTS]
        if bad:
            return errors(f"unknown faults {bad}; known: {list(FAULTS)}", 400)
        mirror.faults = dict(change["faults"])
        mirror.fault_budget = change.get("fault_budget")
    known = ("state", "upstream_state", "nodes", "frozen", "enabled", "registered", "diagnostics_enabled")
    for key in (*known, "clock_skew_seconds"):
        if key in change:
            setattr(mirror, key, change[key])
    mirror.resize_nodes()
    if "missing_repositories" in change:
        farm.make_missing(mirror, [int(x) for x in change["missing_repositories"]])
    if "selected_projects" in change:
        selected = change["selected_projects"]
        farm.select_projects(mirror, None if selected is None else {int(x) for x in selected})
    if "failing_repositories" in change:
        farm.set_failing(mirror, {int(x) for x in change["failing_repositories"]})
    return web.json_response(farm.truth()["mirrors"][mirror.name])


async def sim_node(request: web.Request) -> web.Response:
    """Change one node of a mirror farm: ``{"frozen": true}`` (it stops syncing while its peers go on),
    ``{"down": true}`` (it resets every connection; the farm URL stops using it), ``{"held_repositories": [ids]}``
    (it alone stops syncing these; ``[]`` lets it catch up), ``{"fault": "hang"}`` (every answer at its own URL,
    one of FAULTS; null heals it), ``{"missing_repositories": [ids]}``
    (it loses its copies; ``[]`` gives them back), ``{"state": "STARTING"}`` (its own /status; null: the farm's).
    Frozen and down false again: it catches up at once."""
    farm = _farm(request)
    mirror = farm.mirrors.get(request.match_info["name"])
    node = mirror.node(request.match_info["node"]) if mirror is not None else None
    if mirror is None or node is None:
        return errors("no such mirror node", 404)
    change = await request.json()
    if "held_repositories" in change:
        node.held = {int(x) for x in change["held_repositories"]}
    if "fault" in change:
        if change["fault"] is not None and change["fault"] not in FAULTS:
            return errors(f"unknown fault {change['fault']}; known: {list(FAULTS)}", 400)
        node.fault = change["fault"]
    farm.set_node(mirror, node, frozen=change.get("frozen"), down=change.get("down"))
    if "state" in change:
        node.state = change["state"]
    if "missing_repositories" in change:
        farm.make_node_missing(mirror, node, [int(x) for x in change["missing_repositories"]])
    return web.json_response(farm.node_truth(mirror, node))


async def sim_scenario(request: web.Request) -> web.Response:
    """Change the running scenario: ``{"push_rate": ..., "sync_delay_seconds": ...}``; ``"activity_permission"``:
    true, false or the repository ids whose ref change activity answers 401."""
    farm = _farm(request)
    change = await request.json()
    if "activity_permission" in change:
        # true: every repository's ref changes readable; false: none (no REPO_ADMIN); a list: those answer 401.
        permission = change["activity_permission"]
        farm.activity_denied = set() if permission is True else None if permission is False else set(permission)
    for key in (
        "push_rate",
        "sync_delay_seconds",
        "metadata_sync_delay_seconds",
        "sync_tolerance_seconds",
        "primary_clock_skew_seconds",
        "primary_latency_seconds",
    ):
        if key in change:
            setattr(farm.scenario, key, float(change[key]))
    farm.sync_timing_changed()
    # The scenario, less the credentials the simulated Bitbucket accepts.
    shown = {k: v for k, v in dataclasses.asdict(farm.scenario).items() if k not in ("password", "token")}
    return web.json_response(shown)


async def sim_accounts(request: web.Request) -> web.Response:
    """The account's login record: ``GET`` shows it; ``POST {"clear_captcha": true}`` clears the CAPTCHA lock (an
    admin's reset), ``{"captcha_after_failures": n}`` changes the threshold (0: never lock)."""
    accounts = _farm(request).accounts
    if request.method == "POST":
        change = await request.json()
        if change.get("clear_captcha"):
            accounts.clear()
        if "captcha_after_failures" in change:
            accounts.account.captcha_after_failures = int(change["captcha_after_failures"])
    return web.json_response(
        {
            "locked": accounts.locked,
            "failures_in_a_row": accounts.failures_in_a_row,
            "credentials_outside_rest": accounts.credentials_outside_rest,
            "denied": accounts.denied,
        }
    )


async def sim_push(request: web.Request) -> web.Response:
    """Push to repositories on the primary now: ``{"repository_ids": [1, 2], "metadata_only": false}``."""
    farm = _farm(request)
    change = await request.json()
    for repo_id in change.get("repository_ids", []):
        if int(repo_id) not in farm.repositories:
            return errors(f"no repository {repo_id}", 404)
        farm.push(int(repo_id), metadata_only=bool(change.get("metadata_only", False)))
    return web.json_response(farm.truth())


async def sim_webhooks(request: web.Request) -> web.Response:
    """Register a webhook (or change how one is delivered): ``{"url": ..., "secret": ..., "drop_next": n,
    "drop_rate": 0.1, "delay_seconds": 5}``; the primary posts every push and every mirror sync to it, signed."""
    change = await request.json()
    targets = request.app[WEBHOOKS_KEY]
    url = change.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return errors("url must be an http(s) URL", 400)
    target = next((t for t in targets.webhooks if t.url == url), None)
    if target is None:
        target = WebhookTarget(url)
        targets.add_webhook(target)
    for key in ("secret", "drop_next", "drop_rate", "delay_seconds"):
        if key in change:
            setattr(target, key, change[key])
    return web.json_response({"webhooks": len(targets.webhooks), "delivered": targets.delivered})


async def sim_push_mid_walk(request: web.Request) -> web.Response:
    """Arm pushes that land in the middle of listing walks: ``{"repository_ids": [1], "after_start": 125,
    "listings": ["repos", "repo_sync_status"]}`` (see farm.MidWalkPush); ``GET`` says when they landed."""
    farm = _farm(request)
    if request.method == "POST":
        change = await request.json()
        farm.mid_walk = MidWalkPush(
            [int(r) for r in change["repository_ids"]], int(change["after_start"]), set(change["listings"])
        )
    armed = farm.mid_walk
    return web.json_response({"pushed_at": armed.pushed_at if armed is not None else None})


async def sim_delete(request: web.Request) -> web.Response:
    """Delete repositories on the primary: ``{"repository_ids": [1, 2]}``."""
    farm = _farm(request)
    change = await request.json()
    for repo_id in change.get("repository_ids", []):
        if int(repo_id) in farm.repositories:
            farm.delete(int(repo_id))
    return web.json_response(farm.truth())


def primary_app(
    farm: Farm, clock: Callable[[], float] = time.time, webhooks: Webhooks | None = None
) -> web.Application:
    app = web.Application(middlewares=[farm_middleware])
    app.on_response_prepare.append(dated)
    app[FARM_KEY], app[CLOCK_KEY], app[RENDERED_KEY] = farm, clock, {}
    if webhooks is not None:
        app[WEBHOOKS_KEY] = webhooks
        app.router.add_post("/sim/webhooks", sim_webhooks, name="sim_webhooks")
    r = app.router
    r.add_get("/status", primary_status, name="status")
    r.add_get(f"{REST}/mirrorServers", mirror_servers, name="mirror_servers")
    r.add_get(f"{REST}/repos", primary_repos, name="repos")
    r.add_get(f"{REST}/repos/{{repo_id}}", primary_repo, name="repo")
    r.add_get("/scm/{key}/{slug}.git/info/refs", git_refs, name="git_refs")
    r.add_get(
        "/rest/api/latest/projects/{project_key}/repos/{slug}/ref-change-activities",
        ref_change_activities,
        name="ref_change_activities",
    )
    r.add_get("/rest/api/latest/projects/{project_key}/repos/{slug}/commits/{commit_id}", commit, name="commit")
    r.add_get("/sim/truth", sim_truth, name="sim_truth")
    r.add_post("/sim/mirrors/{name}", sim_mirror, name="sim_mirror")
    r.add_post("/sim/mirrors/{name}/nodes/{node}", sim_node, name="sim_node")
    r.add_post("/sim/scenario", sim_scenario, name="sim_scenario")
    r.add_post("/sim/push", sim_push, name="sim_push")
    r.add_get("/sim/accounts", sim_accounts, name="sim_accounts_get")
    r.add_post("/sim/accounts", sim_accounts, name="sim_accounts")
    r.add_post("/sim/delete", sim_delete, name="sim_delete")
    r.add_post("/sim/push_mid_walk", sim_push_mid_walk, name="sim_push_mid_walk")
    r.add_get("/sim/push_mid_walk", sim_push_mid_walk, name="sim_push_mid_walk_get")
    return app
