"""Starts the simulated primary and mirrors as real HTTP servers on loopback, and delivers its webhook events."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import itertools
import json
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
from aiohttp import web

from exporter.simulator.farm import Farm, Scenario
from exporter.simulator.server import Listing, mirror_app, primary_app
from exporter.simulator.webhook_api import STORE_KEY
from exporter.simulator.webhook_api import add_routes as add_webhook_api
from exporter.simulator.webhook_target import ERROR, FAILURE, SUCCESS, WebhookTarget

# Binding every node on one port can find it taken on some address: tries before giving up.
BIND_ATTEMPTS = 5
# The first node's loopback address; the others follow (127.0.0.0/8 is all loopback on Linux).
FIRST_NODE_ADDRESS = 2


def node_addresses(host: str) -> Iterator[str]:
    """Each node's own address: 127.0.0.2, 127.0.0.3, ... when the farm is on 127.0.0.1, else the farm's host (then
    nodes cannot share a port, and each binds its own)."""
    if host != "127.0.0.1":
        while True:
            yield host
    for index in itertools.count(FIRST_NODE_ADDRESS):
        yield str(ipaddress.IPv4Address("127.0.0.0") + index)


# Bitbucket's limit of deliveries in flight; events beyond it are skipped (fact sheet, section 8).
MAX_IN_FLIGHT = 250
DELIVERY_TIMEOUT = aiohttp.ClientTimeout(total=10)
# How often the deliverer lets time pass on the farm and sends what it queued: syncs are dated within this.
DELIVERY_TICK_SECONDS = 0.05


class SimulatedFarm:
    """``async with SimulatedFarm(Scenario(...)) as farm:`` gives a primary and mirrors on 127.0.0.1."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        mirror_families: list[str] | None = None,
        host: str = "127.0.0.1",
        clock: Callable[[], float] = time.time,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # Served over HTTPS with this context when given (TLS tests); plain HTTP otherwise.
        self.ssl_context = ssl_context
        self.scenario = scenario or Scenario()
        self.clock = clock
        self.farm = Farm(self.scenario, clock(), mirror_families)
        self.host = host
        self._runners: list[web.AppRunner] = []
        self._mirror_runners: dict[str, web.AppRunner] = {}
        self.primary_url = ""
        self.mirror_urls: dict[str, str] = {}
        # Mirror name -> node name -> the node's own base URL: its own loopback address, one HTTP port for all.
        self.node_urls: dict[str, dict[str, str]] = {}
        self.node_http_port = 0
        self.webhooks: list[WebhookTarget] = []
        # The webhooks created over the REST API (webhooks apply), by id.
        self.webhook_store: dict[int, dict[str, Any]] = {}
        self.delivered: dict[str, int] = {}  # event key -> deliveries answered 2xx
        self._deliverer: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()

    async def _serve(self, app: web.Application, port: int = 0, host: str = "") -> tuple[web.AppRunner, str]:
        host = host or self.host
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=self.ssl_context).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runners.append(runner)
        scheme = "https" if self.ssl_context is not None else "http"
        return runner, f"{scheme}://{host}:{runner.addresses[0][1]}"

    async def _serve_nodes(self, cache: dict[str, dict[str, Listing]]) -> None:
        """Every node on its own loopback address and all on one HTTP port, as a real farm's nodes share 7990 on
        their own pod addresses: so ``http://{address}:<port>`` reaches each, and farmNodes' ``port`` (the cluster
        port) is not needed, as on a real farm. A port taken on some address is given up for another."""
        nodes = [(name, node) for name, mirror in self.farm.mirrors.items() for node in mirror.farm_nodes]
        for node, address in zip((node for _, node in nodes), node_addresses(self.host), strict=False):
            node.address = address
        for _ in range(BIND_ATTEMPTS):
            bound: list[web.AppRunner] = []
            port = 0
            try:
                for name, node in nodes:
                    app = mirror_app(self.farm, name, self.clock, node.name, cache[name])
                    runner, url = await self._serve(app, port, node.address)
                    port = int(runner.addresses[0][1]) if self.host == "127.0.0.1" else 0
                    bound.append(runner)
                    self.node_urls[name][node.name] = url
            except OSError:
                for runner in bound:
                    self._runners.remove(runner)
                    await runner.cleanup()
                continue
            self.node_http_port = port
            return
        raise OSError(f"no port free on every node address after {BIND_ATTEMPTS} attempts")

    async def start(self) -> None:
        primary = primary_app(self.farm, self.clock, self)
        add_webhook_api(primary)  # Bitbucket's webhook REST API, for `webhooks apply` and `status`
        self.webhook_store = primary[STORE_KEY]
        self.primary_url = (await self._serve(primary))[1]
        self.farm.primary_url = self.primary_url
        caches: dict[str, dict[str, Listing]] = {}
        for name, mirror in self.farm.mirrors.items():
            cache = caches[name] = {}
            self._mirror_runners[name], url = await self._serve(mirror_app(self.farm, name, self.clock, cache=cache))
            mirror.base_url = url
            self.mirror_urls[name] = url
            self.node_urls[name] = {}
        await self._serve_nodes(caches)

    def add_webhook(self, target: WebhookTarget) -> None:
        """Post every push and every mirror sync to ``target`` from now on."""
        target.first_skip_seconds = self.scenario.webhook_first_skip_seconds
        self.webhooks.append(target)
        self.farm.webhooks_on = True
        if self._deliverer is None:
            self._deliverer = asyncio.create_task(self._deliver_forever())

    async def _deliver_forever(self) -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                self.farm.advance(self.clock())  # syncs happen when due, not only when someone asks
                events, self.farm.outbox = self.farm.outbox, []
                for event, payload in events:
                    body = json.dumps(payload).encode()
                    for target in self.webhooks:
                        if target.drop_next > 0:
                            target.drop_next -= 1
                            continue
                        if target.drop_rate and self.farm.rng.random() < target.drop_rate:
                            continue
                        if target.skipping(self.clock()) or len(self._sends) >= MAX_IN_FLIGHT:
                            continue  # Bitbucket drops what its breaker or its in-flight limit skips
                        task = asyncio.create_task(self._post(http, target, event, body))
                        self._sends.add(task)
                        task.add_done_callback(self._sends.discard)
                await asyncio.sleep(DELIVERY_TICK_SECONDS)

    async def _post(self, http: aiohttp.ClientSession, target: WebhookTarget, event: str, body: bytes) -> None:
        if target.delay_seconds > 0:
            await asyncio.sleep(target.delay_seconds)
        headers = self._headers(event, body, target.secret)
        start = self.primary_time()
        outcome, description = ERROR, "no answer"
        try:
            async with http.post(target.url, data=body, headers=headers, timeout=DELIVERY_TIMEOUT) as r:
                outcome = SUCCESS if 200 <= r.status < 300 else FAILURE
                description = f"{r.status} {r.reason or ''}".strip()
        except TimeoutError:
            description = "timed out"
        except aiohttp.ClientError as exc:
            description = type(exc).__name__
        target.record(event, outcome, start, self.primary_time(), description)
        if outcome == SUCCESS:
            self.delivered[event] = self.delivered.get(event, 0) + 1

    @staticmethod
    def _headers(event: str, body: bytes, secret: str | None) -> dict[str, str]:
        """As Bitbucket sends an event: its key, a request id, and with a secret the body's HMAC-SHA256."""
        headers = {"Content-Type": "application/json", "X-Event-Key": event, "X-Request-Id": str(uuid.uuid4())}
        if secret:
            headers["X-Hub-Signature"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return headers

    def primary_time(self) -> float:
        """Now on the primary's clock (its skew included): Bitbucket dates its invocations so."""
        return self.clock() + self.farm.scenario.primary_clock_skew_seconds

    async def test_connection(self, url: str) -> int | None:
        """The "Test connection" button of a webhook's settings: a ``diagnostics:ping`` to ``url``; the answer's
        status, or None when there was none. A 2xx closes the breaker of the webhooks posting to that URL."""
        body = json.dumps({"test": True}).encode()
        headers = self._headers("diagnostics:ping", body, next((t.secret for t in self.webhooks if t.url == url), None))
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, data=body, headers=headers, timeout=DELIVERY_TIMEOUT) as r,
            ):
                status = r.status
        except (aiohttp.ClientError, TimeoutError):
            return None
        if 200 <= status < 300:
            for target in self.webhooks:
                if target.url == url:
                    target.close()
        return status

    async def stop_mirror(self, name: str) -> int:
        """Take one mirror off the network (its connections close, its port is free); returns the port."""
        runner = self._mirror_runners.pop(name)
        port = int(runner.addresses[0][1])
        self._runners.remove(runner)
        await runner.cleanup()
        return port

    async def start_mirror(self, name: str, port: int) -> None:
        """Bring a stopped mirror back on its old port."""
        self._mirror_runners[name], _ = await self._serve(mirror_app(self.farm, name, self.clock), port)

    async def stop(self) -> None:
        tasks = [t for t in (self._deliverer, *self._sends) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._deliverer = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self._mirror_runners.clear()

    async def __aenter__(self) -> SimulatedFarm:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def node_url_template(self, path: str = "") -> str:
        """What an admin writes for this farm's nodes: their farmNodes address and the HTTP port they all share."""
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{{address}}:{self.node_http_port}{path}"

    def exporter_config(self, interval_seconds: float = 5.0, nodes: bool = False, **poll: Any) -> dict[str, Any]:
        """An exporter configuration (as the YAML file would hold it) that monitors this farm; with ``nodes``, every
        node by its own URL, built from farmNodes (nodes.url_template)."""
        node_block = {"nodes": {"url_template": self.node_url_template()}} if nodes else {}
        return {
            "primary": {
                "url": self.primary_url,
                "username": self.scenario.username,
                "password": self.scenario.password,
            },
            "mirrors": [{"name": name, "url": url, **node_block} for name, url in self.mirror_urls.items()],
            "poll": {"interval_seconds": interval_seconds, **poll},
        }
