"""HTTP endpoints: /metrics, /-/healthy, /-/ready, POST /-/reload and a small landing page; basic auth on all but
the health endpoints when the web config has users. None of them waits on Bitbucket."""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.basic_auth import BasicAuth
from exporter.state import ExporterState, MirrorState

# Health endpoints stay open with basic auth on: kubelets and load balancers probe them without credentials.
OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})
CHALLENGE = 'Basic realm="bitbucket-mirror-exporter", charset="UTF-8"'


@dataclass
class Served:
    """What the endpoints serve; a reload replaces its parts, so handlers read it on every request."""

    state: ExporterState
    registry: CollectorRegistry
    auth: BasicAuth = field(default_factory=lambda: BasicAuth({}))
    # Reloads the configuration: (success, message). None: nothing to reload.
    reload: Callable[[], Awaitable[tuple[bool, str]]] | None = None


SERVED_KEY = web.AppKey("served", Served)
# Content type -> (monotonic time, exposition) of the latest rendering.
Renderings = dict[str, tuple[float, bytes]]
RENDERINGS_KEY: web.AppKey[Renderings] = web.AppKey("renderings")
# Scrapes this close together share one rendering: a burst of simultaneous scrapes (an HA pair of Prometheus
# servers, several teams' Prometheus) costs one rendering, not one each queued behind the others (bench/scale.py).
SHARED_RENDERING_SECONDS = 0.2


async def metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    renderings, now = request.app[RENDERINGS_KEY], time.monotonic()
    latest = renderings.get(content_type)
    if latest is None or now - latest[0] > SHARED_RENDERING_SECONDS:
        latest = renderings[content_type] = (now, encoder(request.app[SERVED_KEY].registry))
    return web.Response(body=latest[1], headers={"Content-Type": content_type})


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[SERVED_KEY].state.ready:
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready: waiting for the first poll of every target\n")


def _age(timestamp: float | None) -> str:
    return "never" if timestamp is None else f"{time.time() - timestamp:.0f}s ago"


def _mirror_row(mirror: MirrorState) -> str:
    status = mirror.status.value
    summary = mirror.repo_sync_status.value
    cells = [
        mirror.name,
        mirror.url,
        "up" if mirror.status.success else ("down" if mirror.status.polled else "not polled yet"),
        status.state if status is not None else "",
        str(mirror.layout.family) if mirror.layout is not None else "",
        str(summary.repositories) if summary is not None else "",
        str(summary.failing) if summary is not None else "",
        _age(mirror.status.last_success_timestamp),
    ]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


async def landing(request: web.Request) -> web.Response:
    state = request.app[SERVED_KEY].state
    rows = "\n".join(_mirror_row(m) for m in state.mirrors)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Bitbucket Mirror Exporter</title></head>
<body>
<h1>Bitbucket Mirror Exporter</h1>
<p>Version {html.escape(__version__)}. Primary: {html.escape(state.primary.url)}</p>
<ul><li><a href="metrics">Metrics</a></li><li><a href="-/healthy">Health</a></li>
<li><a href="-/ready">Readiness</a></li></ul>
<table border="1" cellpadding="4">
<tr><th>Mirror</th><th>URL</th><th>Status poll</th><th>State</th><th>API</th><th>Repositories</th>
<th>Failing</th><th>Last good status</th></tr>
{rows}
</table>
</body></html>
"""
    return web.Response(text=page, content_type="text/html")


async def reload(request: web.Request) -> web.Response:
    served = request.app[SERVED_KEY]
    if served.reload is None:
        return web.Response(status=501, text="nothing to reload\n")
    ok, message = await served.reload()
    # As Prometheus does: 500 with the reason when the new configuration is refused (the old one stays).
    return web.Response(status=200 if ok else 500, text=message + "\n")


@web.middleware
async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[SERVED_KEY].auth
    if auth.enabled and request.path not in OPEN_PATHS and not await auth.allows(request.headers.get("Authorization")):
        return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": CHALLENGE})
    return await handler(request)


def make_app(served: Served) -> web.Application:
    app = web.Application(middlewares=[basic_auth])
    app[SERVED_KEY] = served
    app[RENDERINGS_KEY] = {}
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    return app
