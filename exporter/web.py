"""HTTP endpoints: /metrics, /-/healthy, /-/ready and a small landing page. None of them waits on Bitbucket."""

from __future__ import annotations

import html
import time

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.state import ExporterState, MirrorState

STATE_KEY = web.AppKey("state", ExporterState)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
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
        latest = renderings[content_type] = (now, encoder(request.app[REGISTRY_KEY]))
    return web.Response(body=latest[1], headers={"Content-Type": content_type})


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[STATE_KEY].ready:
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
    state = request.app[STATE_KEY]
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


def make_app(state: ExporterState, registry: CollectorRegistry) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state
    app[REGISTRY_KEY] = registry
    app[RENDERINGS_KEY] = {}
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    return app
