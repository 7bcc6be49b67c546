"""HTTP endpoints: /metrics, /-/healthy, /-/ready, POST /-/reload and a small landing page; basic auth on all but
the health endpoints when the web config has users. None of them waits on Bitbucket.

aiohttp alone parses HTTP, on the event loop, over plain TCP or TLS alike: the loop only moves bytes (the mirrors'
listing walks, their decoding and comparison run in worker processes, exporter/workers.py), so a scrape is answered from
the latest rendering (exporter/web/exposition.py) without waiting. The connection cap and the pause when the process
runs out of descriptors are asyncio's and aiohttp's own accept path, counted as refusals here."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import re
import socket
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from exporter.external_url import RUNBOOKS_PATH
from exporter.web.auth import BasicAuth, retry_after_header
from exporter.web.exposition import MAX_AGE_SECONDS, Exposition, accepts_gzip
from exporter.web.landing import Landing
from exporter.web.landing import render as render_landing
from exporter.web.probe import ProbePolicy, RateLimit
from exporter.web.protocol import HEAD_SECONDS, BoundedRequestHandler
from exporter.web.refusals import OUT_OF_FILE_DESCRIPTORS, PROBE_RATE_LIMITED, TOO_MANY_CONNECTIONS, Refusals
from exporter.web.runbooks import page as runbook_page

# Health endpoints stay open with basic auth on: kubelets and load balancers probe them without credentials.
OPEN_PATHS = frozenset({"/-/healthy", "/-/ready"})
CHALLENGE = 'Basic realm="bitbucket-mirror-exporter", charset="UTF-8"'


DEFAULT_MAX_CONNECTIONS = 1000
KEEP_ALIVE_SECONDS = 75.0


class Pages(Protocol):
    """What the web layer reads of the exporter's state; the composition root's ``ExporterState`` gives it, so this
    layer knows no source."""

    @property
    def ready(self) -> bool:
        """Every configured target has finished at least one poll cycle."""
        ...

    def analyses(self) -> tuple[int, ...]:
        """Which analyses the state holds (each makes a new object): a new one asks for a new rendering."""
        ...

    def landing(self, now: float) -> Landing: ...

    def refs(self, now: float) -> list[dict[str, object]]:
        """``/api/v1/refs``: the refs verify_refs found different, with both hashes."""
        ...

    def behind(self, now: float, limit: int, mirror: str | None) -> dict[str, object] | None:
        """``/api/v1/behind``: the repositories with the longest content lag; None: no such mirror."""
        ...

    def probe_node(self, mirror: str, node: str, now: float, max_lag: float) -> tuple[bool, str] | None:
        """``/probe/node``: (healthy, a one-line reason); None: no such node read node by node."""
        ...

    @property
    def stale_after(self) -> float: ...


@dataclass
class Served:
    """What the endpoints serve; a reload replaces its parts, so handlers read it on every request."""

    # The exporter's state as it is now (a reload replaces it): read on every request.
    state: Callable[[], Pages]
    registry: CollectorRegistry
    auth: BasicAuth = field(default_factory=lambda: BasicAuth({}))
    # Reloads the configuration: (success, message). None: nothing to reload.
    reload: Callable[[], Awaitable[tuple[bool, str]]] | None = None
    # Bitbucket's webhook deliveries: the path they are posted to (None: off) and what takes them.
    webhook_path: Callable[[], str | None] = lambda: None
    webhook: Callable[[web.Request], Awaitable[web.Response]] | None = None
    # The CI gate: (project key, slug, commit, since) -> the JSON answer, None for an unknown repository.
    gate: Callable[[str, str, str, float | None], Awaitable[dict[str, Any] | None]] | None = None
    # How old a rendering a scrape may be served (exporter/web/exposition.py).
    max_rendering_age: float = MAX_AGE_SECONDS
    # POST /-/reload is served only with --web.enable-lifecycle (as Prometheus): otherwise 403, and SIGHUP reloads.
    lifecycle: bool = True
    # What the HTTP side refused, by reason (exporter/web/refusals.py).
    refusals: Refusals = field(default_factory=Refusals)
    # Connections open at once, at most (--web.max-connections); more are closed as they are accepted.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # An idle keep-alive connection is closed after this long.
    keep_alive_seconds: float = KEEP_ALIVE_SECONDS
    # A request head must arrive whole within this long of its first byte (exporter/web/protocol.py).
    head_seconds: float = HEAD_SECONDS
    # /probe/node's settings (``probe``), read on every probe: a reload changes them.
    probe: Callable[[], ProbePolicy] = ProbePolicy
    # --web.external-url (or what stands for it): the base of the links the pages write.
    external_url: Callable[[], str] = lambda: ""
    probe_rate: RateLimit = field(default_factory=RateLimit)


SERVED_KEY = web.AppKey("served", Served)
EXPOSITION_KEY = web.AppKey("exposition", Exposition)


def exposition_of(served: Served) -> Exposition:
    return Exposition(
        served.registry, lambda: served.state().analyses(), lambda: served.state().ready, served.max_rendering_age
    )


async def metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    rendering = await request.app[EXPOSITION_KEY].serve(content_type, encoder, request.remote or "")
    headers = {"Content-Type": content_type, "Vary": "Accept-Encoding"}
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        return web.Response(body=rendering.gzipped, headers={**headers, "Content-Encoding": "gzip"})
    return web.Response(body=rendering.body, headers=headers)


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    if request.app[SERVED_KEY].state().ready:
        await request.app[EXPOSITION_KEY].show_ready()
        return web.Response(text="ready\n")
    return web.Response(status=503, text="not ready: waiting for the first poll of every target\n")


async def landing(request: web.Request) -> web.Response:
    state, now = request.app[SERVED_KEY].state(), time.time()
    page = render_landing(state.landing(now), now, state.stale_after, request.app[SERVED_KEY].external_url())
    return web.Response(text=page, content_type="text/html")


async def runbooks(request: web.Request) -> web.Response:
    return web.Response(text=runbook_page(), content_type="text/html")


async def reload(request: web.Request) -> web.Response:
    served = request.app[SERVED_KEY]
    if served.reload is None:
        return web.Response(status=501, text="nothing to reload\n")
    if not served.lifecycle:
        return web.Response(status=403, text="Lifecycle API is not enabled (--web.enable-lifecycle); send SIGHUP\n")
    ok, message = await served.reload()
    # As Prometheus does: 500 with the reason when the new configuration is refused (the old one stays).
    return web.Response(status=200 if ok else 500, text=message + "\n")


COMMIT = re.compile(r"^[0-9a-fA-F]{7,64}$")


async def gate(request: web.Request) -> web.Response:
    """``GET /api/v1/repositories/{key}/{slug}/mirrors?commit=SHA[&since=UNIX]``: is the commit on each mirror?"""
    served = request.app[SERVED_KEY]
    commit = request.query.get("commit", "")
    if not COMMIT.fullmatch(commit):
        return web.json_response({"error": "commit must be a commit id (7 to 64 hex digits)"}, status=400)
    try:
        since = float(request.query["since"]) if "since" in request.query else None
        if since is not None and not math.isfinite(since):
            raise ValueError(since)
    except ValueError:
        return web.json_response({"error": "since must be a Unix timestamp"}, status=400)
    if served.gate is None:
        return web.json_response({"error": "no gate here"}, status=404)
    found = await served.gate(request.match_info["key"], request.match_info["slug"], commit, since)
    if found is None:
        return web.json_response({"error": "the exporter knows no such repository"}, status=404)
    return web.json_response(found)


async def refs(request: web.Request) -> web.Response:
    """``GET /api/v1/refs``: the refs verify_refs found different on each mirror, with both hashes."""
    return web.json_response({"repositories": request.app[SERVED_KEY].state().refs(time.time())})


# /api/v1/behind's default and largest ``limit``.
BEHIND_LIMIT, BEHIND_MAX_LIMIT = 100, 1000


async def behind(request: web.Request) -> web.Response:
    """``GET /api/v1/behind?limit=N[&mirror=M]``: the repositories whose content lags longest, longest first."""
    try:
        limit = int(request.query.get("limit", BEHIND_LIMIT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= BEHIND_MAX_LIMIT:
        return web.json_response({"error": f"limit must be a whole number from 1 to {BEHIND_MAX_LIMIT}"}, status=400)
    mirror = request.query.get("mirror")
    found = request.app[SERVED_KEY].state().behind(time.time(), limit, mirror)
    if found is None:
        return web.json_response({"error": f"the exporter knows no mirror {mirror!r}"}, status=404)
    return web.json_response(found)


PROBE_PATH = "/probe/node"


async def probe_node(request: web.Request) -> web.Response:
    """``GET /probe/node?mirror=M&node=N``: 200 while the node may serve clones, 503 with the reason otherwise
    (exporter/rest/probe.py); a load balancer's health check."""
    served = request.app[SERVED_KEY]
    policy = served.probe()
    if not policy.enabled:
        return web.Response(status=404, text="the node probe is off (probe.enabled)\n")
    if not served.probe_rate.allow(policy.max_requests_per_second):
        served.refusals.count(PROBE_RATE_LIMITED, f"over {policy.max_requests_per_second:g} probes a second")
        return web.Response(status=429, text="too many probes\n", headers={"Retry-After": "1"})
    mirror, node = request.query.get("mirror", ""), request.query.get("node", "")
    if not mirror or not node:
        return web.Response(status=400, text="mirror and node are both needed\n")
    verdict = served.state().probe_node(mirror, node, time.time(), policy.max_lag_seconds)
    if verdict is None:
        return web.Response(status=404, text="the exporter reads no such node (nodes, node by node)\n")
    healthy, reason = verdict
    return web.Response(status=200 if healthy else 503, text=reason + "\n", headers={"Cache-Control": "no-store"})


async def webhook(request: web.Request) -> web.Response:
    served = request.app[SERVED_KEY]
    if served.webhook is None or request.path != served.webhook_path():
        return web.Response(status=404, text="Not Found\n")
    return await served.webhook(request)


@web.middleware
async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    served = request.app[SERVED_KEY]
    auth = served.auth
    # Bitbucket signs its webhook deliveries (X-Hub-Signature) and sends no credentials: the receiver checks them.
    open_path = (
        request.path in OPEN_PATHS
        or (request.method == "POST" and request.path == served.webhook_path())
        # Load balancers probe without credentials; opened only where the admin said so.
        or (request.path == PROBE_PATH and served.probe().unauthenticated)
    )
    if auth.enabled and not open_path:
        verdict = await auth.check(request.headers.get("Authorization"), request.remote)
        if verdict.retry_after is not None:
            # Too many checks under way, or this address kept failing: no bcrypt spent on it now.
            headers = {"Retry-After": retry_after_header(verdict.retry_after)}
            return web.Response(status=429, text="Too many authentication attempts\n", headers=headers)
        if not verdict.allowed:
            return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": CHALLENGE})
    return await handler(request)


def make_app(served: Served, exposition: Exposition | None = None) -> web.Application:
    app = web.Application(middlewares=[basic_auth])
    app[SERVED_KEY] = served
    app[EXPOSITION_KEY] = exposition or exposition_of(served)
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get(RUNBOOKS_PATH, runbooks)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/api/v1/repositories/{key}/{slug}/mirrors", gate)
    app.router.add_get("/api/v1/refs", refs)
    app.router.add_get("/api/v1/behind", behind)
    app.router.add_get(PROBE_PATH, probe_node)
    # Any other POST: the webhook path is configurable and may change with a reload.
    app.router.add_post("/{path:.*}", webhook)
    return app


# How long a stop waits for requests in flight to /metrics: SIGTERM must end the process within seconds.
STOP_SECONDS = 2.0
# asyncio's message when accept() fails for want of descriptors or memory; it then stops accepting on that socket for
# a second (asyncio's ACCEPT_RETRY_DELAY) rather than spinning.
OUT_OF_RESOURCES = "socket.accept() out of system resource"
_EXHAUSTED = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Bound and listening sockets for every address of ``host``, as asyncio's create_server makes them (with port
    0, every address on the port the first one got)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is made, before a byte is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


@dataclass
class Server:
    """The exporter's HTTP server on one address, over TLS when the web config asks for it; ``port`` is the bound
    port (useful with port 0)."""

    served: Served
    host: str
    port: int
    tls: ssl.SSLContext | None = None
    _runner: web.AppRunner | None = None
    _listeners: list[asyncio.Server] = field(default_factory=list)
    _rendering: asyncio.Task[None] | None = None
    _exposition: Exposition | None = None
    _previous_handler: Any = None
    # Connections accepted and not yet lost (exporter/web/protocol.py).
    _open: weakref.WeakSet[BoundedRequestHandler] = field(default_factory=weakref.WeakSet)

    async def start(self) -> None:
        exposition = self._exposition = exposition_of(self.served)
        self._runner = web.AppRunner(
            make_app(self.served, exposition), handle_signals=False, shutdown_timeout=STOP_SECONDS, **self._handling()
        )
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._previous_handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_exception)
        sockets = listening_sockets(self.host, self.port)
        try:
            for sock in sockets:
                self._listeners.append(await loop.create_server(self._connection, sock=sock, ssl=self.tls))
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self.port = sockets[0].getsockname()[1]
        await exposition.start()
        self._rendering = asyncio.create_task(exposition.keep_fresh())

    @property
    def exposition(self) -> Exposition | None:
        return self._exposition

    def _connection(self) -> asyncio.Protocol:
        """A new connection's protocol: aiohttp's handler, or a refusal past the connection cap."""
        server = self._runner.server if self._runner is not None else None
        served = self.served
        if server is None:
            return Refused()
        if len(self._open) >= served.max_connections:
            served.refusals.count(TOO_MANY_CONNECTIONS, f"{served.max_connections} open")
            return Refused()
        return BoundedRequestHandler(
            server,
            loop=asyncio.get_running_loop(),
            refusals=served.refusals,
            head_seconds=served.head_seconds,
            open_connections=self._open,
            **self._handling(),
        )

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Out of descriptors while accepting: counted and logged once per change of state (asyncio itself pauses
        accepting); anything else goes where it went before."""
        error = context.get("exception")
        if context.get("message") == OUT_OF_RESOURCES and isinstance(error, OSError) and error.errno in _EXHAUSTED:
            self.served.refusals.count(OUT_OF_FILE_DESCRIPTORS, error.strerror or "")
            return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)

    def _handling(self) -> dict[str, Any]:
        """How aiohttp handles each connection."""
        return {
            "access_log": None,
            # aiohttp's own default keeps an idle connection an hour.
            "keepalive_timeout": self.served.keep_alive_seconds,
            # Requests aiohttp cannot parse are counted and logged once per change of kind, not once each.
            "logger": self.served.refusals.logger,
        }

    async def stop(self) -> None:
        for listener in self._listeners:
            listener.close()
        if self._rendering is not None:
            self._rendering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rendering
        if self._runner is not None:
            await self._runner.cleanup()
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners = []
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() == self._loop_exception:
            loop.set_exception_handler(self._previous_handler)
