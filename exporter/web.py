"""HTTP endpoints: /metrics, /-/healthy, /-/ready, POST /-/reload and a small landing page; basic auth on all but
the health endpoints when the web config has users. None of them waits on Bitbucket."""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.basic_auth import BasicAuth
from exporter.config import PRIMARY_TARGET
from exporter.state import ExporterState, MirrorState, SourceState

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
    # poll.stale_after_seconds: the landing page shows what /metrics leaves out as stale.
    stale_after: float = 90.0


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


def _row(cells: list[str]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _mirror_row(mirror: MirrorState, now: float, stale_after: float) -> str:
    # Only what /metrics serves: a stale state or count would say "fine" about a mirror nobody can read.
    status = mirror.status.fresh(now, stale_after)
    summary = mirror.repo_sync_status.fresh(now, stale_after)
    report = mirror.drift
    drift = "fresh" if report is not None and report.fresh(now, stale_after) else "unknown"
    return _row(
        [
            mirror.name,
            mirror.url,
            "up" if mirror.status.success else ("down" if mirror.status.polled else "not polled yet"),
            status.state if status is not None else "",
            str(mirror.layout.family) if mirror.layout is not None else "",
            str(summary.repositories) if summary is not None else "",
            str(summary.failing) if summary is not None else "",
            drift,
            _age(mirror.status.last_success_timestamp),
        ]
    )


def _source_rows(state: ExporterState, now: float, stale_after: float) -> list[str]:
    """One row per source that is failing or whose values are no longer served."""
    targets: list[tuple[str, dict[str, SourceState[Any]]]] = [(PRIMARY_TARGET, state.primary.sources())]
    targets += [(m.name, m.sources()) for m in state.mirrors]
    rows = []
    for target, sources in targets:
        for name, source in sources.items():
            served = source.fresh(now, stale_after) is not None
            if source.success is not False and served:
                continue
            condition = "failing, values still served" if served else "failing, values left out (stale)"
            if source.success is not False:
                condition = "no value yet" if source.value is None else "values left out (stale)"
            rows.append(_row([target, name, condition, source.error_reason or "", _age(source.last_success_timestamp)]))
    return rows


async def landing(request: web.Request) -> web.Response:
    served = request.app[SERVED_KEY]
    state, now = served.state, time.time()
    rows = "\n".join(_mirror_row(m, now, served.stale_after) for m in state.mirrors)
    sources = _source_rows(state, now, served.stale_after)
    problems = (
        '<table border="1" cellpadding="4">\n<tr><th>Target</th><th>Source</th><th>Condition</th>'
        "<th>Reason</th><th>Last good poll</th></tr>\n" + "\n".join(sources) + "\n</table>"
        if sources
        else "<p>Every source was polled successfully within poll.stale_after_seconds.</p>"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Bitbucket Mirror Exporter</title></head>
<body>
<h1>Bitbucket Mirror Exporter</h1>
<p>Version {html.escape(__version__)}. Primary: {html.escape(state.primary.url)}</p>
<ul><li><a href="metrics">Metrics</a></li><li><a href="-/healthy">Health</a></li>
<li><a href="-/ready">Readiness</a></li></ul>
<table border="1" cellpadding="4">
<tr><th>Mirror</th><th>URL</th><th>Status poll</th><th>State</th><th>API</th><th>Repositories</th>
<th>Failing</th><th>Drift</th><th>Last good status</th></tr>
{rows}
</table>
<h2>Failing and stale sources</h2>
{problems}
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
