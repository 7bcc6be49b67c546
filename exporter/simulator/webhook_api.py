"""The simulated primary's webhook REST API (what ``bitbucket-mirror-exporter webhooks apply|status`` calls):
projects and repositories listed, project and repository webhooks created, updated and listed, their statistics
summary, and ``rest/capabilities``. A webhook created here becomes a delivery target (runner.py): every event goes
to every registered URL once (the simulator does not scope deliveries to the webhook's project)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from exporter.simulator.server import FARM_KEY, WEBHOOKS_KEY, Listing, encode, errors, paged
from exporter.simulator.webhook_target import WebhookTarget

API = "/rest/api/latest"
STORE_KEY: web.AppKey[dict[int, dict[str, Any]]] = web.AppKey("webhook_store")
ALL_EVENTS = ["repo:refs_changed", "repo:modified", "pr:opened", "mirror:repo_synchronized", "diagnostics:ping"]
MIRROR_EVENT = "mirror:repo_synchronized"


def _scope(request: web.Request) -> tuple[str, str | None] | web.Response:
    farm = request.app[FARM_KEY]
    key, slug = request.match_info["key"], request.match_info.get("slug")
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
    hooks = [_shown(h) for h in request.app[STORE_KEY].values() if h["scope"] == scope]
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


async def summary(request: web.Request) -> web.Response:
    scope = _scope(request)
    if isinstance(scope, web.Response):
        return scope
    hook = request.app[STORE_KEY].get(int(request.match_info["hook_id"]))
    if hook is None or hook["scope"] != scope:
        return errors("Webhook does not exist", 404)
    target = next((t for t in request.app[WEBHOOKS_KEY].webhooks if t.url == hook["url"]), None)
    if target is None:
        return web.Response(status=204)
    body: dict[str, Any] = {"counts": {"successes": target.successes, "failures": target.failures, "errors": 0}}
    if target.last_success_ms is not None:
        body["lastSuccess"] = {"start": target.last_success_ms, "finish": target.last_success_ms}
    if target.last_failure_ms is not None:
        body["lastFailure"] = {"start": target.last_failure_ms, "finish": target.last_failure_ms}
    return web.json_response(body)


async def capabilities(request: web.Request) -> web.Response:
    base = str(request.url.with_path("/rest/capabilities/webhooks").with_query(None))
    return web.json_response({"application": "stash", "capabilities": {"webhooks": base}})


async def webhook_capabilities(request: web.Request) -> web.Response:
    farm = request.app[FARM_KEY]
    project_events = [e for e in ALL_EVENTS if e != MIRROR_EVENT or farm.scenario.project_webhook_mirror_events]
    return web.json_response({"application": "stash", "events": ALL_EVENTS, "projectEvents": project_events})


def add_routes(app: web.Application) -> None:
    app[STORE_KEY] = {}
    r = app.router
    r.add_get(f"{API}/projects", projects, name="sim_api_projects")
    r.add_get(f"{API}/projects/{{key}}/repos", repositories, name="sim_api_repos")
    for prefix in (f"{API}/projects/{{key}}", f"{API}/projects/{{key}}/repos/{{slug}}"):
        r.add_get(f"{prefix}/webhooks", list_webhooks)
        r.add_post(f"{prefix}/webhooks", create_webhook)
        r.add_put(f"{prefix}/webhooks/{{hook_id:[0-9]+}}", update_webhook)
        r.add_get(f"{prefix}/webhooks/{{hook_id:[0-9]+}}/statistics/summary", summary)
    r.add_get("/rest/capabilities", capabilities, name="sim_capabilities")
    r.add_get("/rest/capabilities/webhooks", webhook_capabilities, name="sim_webhook_capabilities")
