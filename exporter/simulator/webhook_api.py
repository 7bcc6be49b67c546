"""The simulated primary's webhook REST API (what ``bitbucket-mirror-exporter webhooks apply|status`` calls):
projects and repositories listed, project and repository webhooks created, updated and listed (``?event=`` filters),
their statistics summary and latest invocations, "Test connection", ``rest/capabilities`` and the webhook
capabilities, in the shapes of tests/fixtures/bitbucket/ (their sources are named there). Project webhooks exist from
Bitbucket 8.10 (``Scenario.primary_version``): before, their paths answer 404. A webhook created here becomes a
delivery target (runner.py): every event goes to every registered URL once (the simulator does not scope deliveries
to the webhook's project), and the statistics of a webhook are those of its URL."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from exporter.simulator.farm import version_at_least
from exporter.simulator.server import FARM_KEY, WEBHOOKS_KEY, Listing, encode, errors, paged
from exporter.simulator.webhook_target import WebhookTarget

API = "/rest/api/latest"
STORE_KEY: web.AppKey[dict[int, dict[str, Any]]] = web.AppKey("webhook_store")
ALL_EVENTS = ["repo:refs_changed", "repo:modified", "pr:opened", "mirror:repo_synchronized", "diagnostics:ping"]
MIRROR_EVENT = "mirror:repo_synchronized"
OUTCOMES = ("SUCCESS", "FAILURE", "ERROR")


def _scope(request: web.Request) -> tuple[str, str | None] | web.Response:
    farm = request.app[FARM_KEY]
    key, slug = request.match_info["key"], request.match_info.get("slug")
    if slug is None and not version_at_least(farm.scenario.primary_version, 8, 10):
        return errors(f"No resource at {request.path}", 404)  # no project webhooks before 8.10
    if not any(p.key == key for p in farm.projects):
        return errors("Project does not exist", 404)
    if slug is not None and farm.by_slug(key, slug) is None:
        return errors("Repository does not exist", 404)
    return key, slug


def _shown(hook: dict[str, Any]) -> dict[str, Any]:
    """As Bitbucket lists a webhook: the secret is not sent back."""
    return {k: v for k, v in hook.items() if k not in ("configuration", "scope")}


async def projects(request: web.Request) -> web.Response:
    farm = request.app[FARM_KEY]
    items = [
        encode({"key": p.key, "id": p.id, "name": p.name, "public": False, "type": "NORMAL"}) for p in farm.projects
    ]
    return paged(request, Listing(items), farm)


async def repositories(request: web.Request) -> web.Response:
    farm = request.app[FARM_KEY]
    key = request.match_info["key"]
    repos = [r for r in farm.repositories.values() if r.project.key == key]
    return paged(request, Listing([encode({"slug": r.slug, "id": r.id, "name": r.slug}) for r in repos]), farm)


async def list_webhooks(request: web.Request) -> web.Response:
    scope = _scope(request)
    if isinstance(scope, web.Response):
        return scope
    wanted = set(request.query.getall("event", []))
    hooks = [
        _shown(h)
        for h in request.app[STORE_KEY].values()
        if h["scope"] == scope and (not wanted or wanted & set(h.get("events", [])))
    ]
    return paged(request, Listing([encode(h) for h in hooks]), request.app[FARM_KEY])


def _register(request: web.Request, hook: dict[str, Any]) -> None:
    targets = request.app[WEBHOOKS_KEY]
    secret = (hook.get("configuration") or {}).get("secret")
    target = next((t for t in targets.webhooks if t.url == hook["url"]), None)
    if target is None:
        targets.add_webhook(WebhookTarget(hook["url"], secret))
    else:
        target.secret = secret


async def _checked(request: web.Request, scope: tuple[str, str | None]) -> dict[str, Any] | web.Response:
    body = await request.json()
    if not isinstance(body, dict) or not isinstance(body.get("url"), str) or not isinstance(body.get("events"), list):
        return errors("A webhook needs a url and events", 400)
    unknown = [e for e in body["events"] if e not in ALL_EVENTS]
    if unknown:
        return errors(f"Unknown events {unknown}", 400)
    project_only = scope[1] is None
    if (
        project_only
        and MIRROR_EVENT in body["events"]
        and not request.app[FARM_KEY].scenario.project_webhook_mirror_events
    ):
        return errors(f"{MIRROR_EVENT} is not supported for project webhooks", 400)
    return body


async def create_webhook(request: web.Request) -> web.Response:
    scope = _scope(request)
    if isinstance(scope, web.Response):
        return scope
    body = await _checked(request, scope)
    if isinstance(body, web.Response):
        return body
    store = request.app[STORE_KEY]
    hook_id = max(store, default=0) + 1
    store[hook_id] = {**body, "id": hook_id, "scope": scope, "scopeType": "repository" if scope[1] else "project"}
    _register(request, store[hook_id])
    return web.json_response(_shown(store[hook_id]))


async def update_webhook(request: web.Request) -> web.Response:
    scope = _scope(request)
    if isinstance(scope, web.Response):
        return scope
    store = request.app[STORE_KEY]
    hook_id = int(request.match_info["hook_id"])
    if hook_id not in store or store[hook_id]["scope"] != scope:
        return errors("Webhook does not exist", 404)
    body = await _checked(request, scope)
    if isinstance(body, web.Response):
        return body
    store[hook_id] = {**store[hook_id], **body}
    _register(request, store[hook_id])
    return web.json_response(_shown(store[hook_id]))


def _hook_target(request: web.Request) -> WebhookTarget | web.Response | None:
    """The webhook the path names (or the error to answer), and the delivery target of its URL (None: none yet)."""
    scope = _scope(request)
    if isinstance(scope, web.Response):
        return scope
    hook = request.app[STORE_KEY].get(int(request.match_info["hook_id"]))
    if hook is None or hook["scope"] != scope:
        return errors("Webhook does not exist", 404)
    return next((t for t in request.app[WEBHOOKS_KEY].webhooks if t.url == hook["url"]), None)


async def summary(request: web.Request) -> web.Response:
    """A map keyed by event id of the outcomes in the current window; 204 before the first delivery."""
    target = _hook_target(request)
    if isinstance(target, web.Response):
        return target
    now_ms = int(request.app[WEBHOOKS_KEY].primary_time() * 1000)
    counts = target.summary(now_ms) if target is not None else {}
    return web.json_response(counts) if counts else web.Response(status=204)


async def latest(request: web.Request) -> web.Response:
    """RestDetailedInvocation of the newest invocation of ``event`` with ``outcome``; 204 when there is none."""
    target = _hook_target(request)
    if isinstance(target, web.Response):
        return target
    outcome = request.query.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        return errors(f"outcome must be one of {', '.join(OUTCOMES)}", 400)
    invocation = target.latest(request.query.get("event"), outcome) if target is not None else None
    if invocation is None:
        return web.Response(status=204)
    scope_type = "repository" if "slug" in request.match_info else "project"
    return web.json_response(
        {
            "id": invocation.id,
            "event": invocation.event,
            "eventScope": {"id": request.match_info.get("slug") or request.match_info["key"], "type": scope_type},
            "start": invocation.start_ms,
            "finish": invocation.finish_ms,
            "duration": invocation.finish_ms - invocation.start_ms,
            "request": {"url": target.url if target is not None else "", "method": "POST"},
            "result": {"outcome": invocation.outcome, "description": invocation.description},
        }
    )


async def test_connection(request: web.Request) -> web.Response:
    """ "Test connection": posts ``diagnostics:ping`` to ``url``; a 2xx closes the webhook's circuit breaker."""
    scope = _scope(request)
    if isinstance(scope, web.Response):
        return scope
    url = request.query.get("url")
    if not url:
        return errors("url is required", 400)
    status = await request.app[WEBHOOKS_KEY].test_connection(url)
    return web.json_response({"request": {"url": url, "method": "POST"}, "response": {"status": status}})


async def capabilities(request: web.Request) -> web.Response:
    """``rest/capabilities``: each capability's URL (tests/fixtures/bitbucket/capabilities.json)."""
    base = request.url.with_path("/").with_query(None)
    names = {
        "webhooks": "rest/webhooks/latest/capabilities",
        "repository-mirroring": "rest/mirroring/latest/capabilities",
        "build": "rest/api/latest/build/capabilities",
    }
    return web.json_response(
        {
            "links": {"self": str(base.with_path("/rest/capabilities"))},
            "application": "stash",
            "buildDate": "2025-01-01T00:00:00Z",
            "capabilities": {name: str(base.with_path("/" + path)) for name, path in names.items()},
        }
    )


async def webhook_capabilities(request: web.Request) -> web.Response:
    """One global list of the webhook events the primary can send (tests/fixtures/bitbucket/)."""
    return web.json_response({"application-webhooks": ALL_EVENTS})


def add_routes(app: web.Application) -> None:
    app[STORE_KEY] = {}
    r = app.router
    r.add_get(f"{API}/projects", projects, name="api_projects")
    r.add_get(f"{API}/projects/{{key}}/repos", repositories, name="api_repos")
    for prefix in (f"{API}/projects/{{key}}", f"{API}/projects/{{key}}/repos/{{slug}}"):
        r.add_get(f"{prefix}/webhooks", list_webhooks)
        r.add_post(f"{prefix}/webhooks", create_webhook)
        r.add_put(f"{prefix}/webhooks/{{hook_id:[0-9]+}}", update_webhook)
        r.add_get(f"{prefix}/webhooks/{{hook_id:[0-9]+}}/statistics/summary", summary)
        r.add_get(f"{prefix}/webhooks/{{hook_id:[0-9]+}}/latest", latest)
        r.add_post(f"{prefix}/webhooks/test", test_connection)
    r.add_get("/rest/capabilities", capabilities, name="capabilities")
    r.add_get("/rest/webhooks/latest/capabilities", webhook_capabilities, name="webhook_capabilities")
