"""Shared fixtures: a simulated farm and an exporter over real loopback HTTP, and bounded waits."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import WORKER_PRELOAD, Exporter, ListenAddress, Settings, settings_from_mapping
from exporter.reloading import ConfigLoader
from exporter.rest import listing_work
from exporter.rest.state import MirrorState, PrimaryState
from exporter.simulator import Scenario, SimulatedFarm
from exporter.web.config import WebConfig
from exporter.workers import InlineWorker, WorkerPool
from tests.jmx_node import compile_fake_node

LOOPBACK = "127.0.0.1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tier is the folder: tests/unit (no sockets, no processes; seconds) and tests/system (real parts)."""
    for item in items:
        tier = item.path.parent.name
        if tier in ("unit", "system"):
            item.add_marker(getattr(pytest.mark, tier))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/unit/golden/ from the current output")


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float = 15.0, what: str = "") -> None:
    """Poll ``condition`` every 50 ms until it holds; fail the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out after {within}s waiting for {what or condition}")


def held_within(condition: Callable[[], bool], within: float = 10.0) -> bool:
    """For a condition another thread makes true (no event loop to await): poll it every 10 ms for up to ``within``
    seconds; whether it held."""
    deadline = time.monotonic() + within
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


class Running:
    """A running simulated farm plus an exporter watching it."""

    def __init__(self, farm: SimulatedFarm, exporter: Exporter, http: aiohttp.ClientSession) -> None:
        self.farm = farm
        self.exporter = exporter
        self.http = http
        # When the state last changed in a way a test waits for (a poll cycle, readiness): a scrape shows it once the
        # renderings served (at most a second old in production) are newer.
        self.settled = 0.0

    def settle(self) -> None:
        """The state just changed (the test changed it itself): the next ``metrics`` shows the change."""
        self.settled = time.monotonic()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.exporter.port}"

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(self.url + path, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status, await resp.text()

    async def metrics(self) -> Samples:
        """A scrape through the production path (renderings up to a second old),
        once the renderings served are newer than the last change the test waited for."""
        return parse_metrics(await self.metrics_text())

    async def metrics_text(self) -> str:
        """``metrics`` as the text served."""

        async def rendered() -> bool:
            return self.exporter.rendered_since(self.settled)

        if self.settled:
            await wait_until(rendered, 5.0, "a rendering newer than the last change")
        status, text = await self.get("/metrics")
        assert status == 200
        return text

    async def metrics_until(self, check: Callable[[Samples], object], what: str, within: float = 10.0) -> Samples:
        """Scrape until ``check`` holds for the samples (at most ``within`` seconds); the samples that passed."""
        found: Samples = {}

        async def holds() -> bool:
            nonlocal found
            found = await self.metrics()
            return bool(check(found))

        await wait_until(holds, within, what)
        return found

    async def control(self, path: str, body: dict[str, Any]) -> Any:
        """Change the simulated farm; what follows from it (a poll, a webhook delivery) is in a later rendering."""
        self.settle()
        url = self.farm.primary_url + path
        async with self.http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def leave_behind(self, mirror: str, repository_ids: list[int]) -> None:
        """``mirror`` stops syncing and the primary gets a push to each of ``repository_ids``: behind for good."""
        await self.control(f"/sim/mirrors/{mirror}", {"frozen": True})
        await self.control("/sim/push", {"repository_ids": repository_ids})

    async def truth(self) -> Any:
        async with self.http.get(self.farm.primary_url + "/sim/truth") as resp:
            return await resp.json()

    async def wait_ready(self, within: float = 15.0) -> None:
        async def ready() -> bool:
            return (await self.get("/-/ready"))[0] == 200

        await wait_until(ready, within, "/-/ready")
        self.settle()

    async def next_cycles(self, count: int = 1, within: float = 15.0) -> None:
        """Wait until every target has finished ``count`` more poll cycles."""
        state = self.exporter.state
        targets: list[PrimaryState | MirrorState] = [state.primary, *state.mirrors]
        goal = [t.cycles + count for t in targets]

        async def done() -> bool:
            return all(t.cycles >= g for t, g in zip(targets, goal, strict=True))

        await wait_until(done, within, f"{count} more poll cycles")
        self.settle()


@asynccontextmanager
async def running_farm(
    scenario: Scenario | None = None,
    mirror_families: list[str] | None = None,
    interval: float = 0.2,
    prepare: Callable[[SimulatedFarm, dict[str, Any]], None] | None = None,
    resolver: AbstractResolver | None = None,
    farm_tls: ssl.SSLContext | None = None,
    web_config: WebConfig | None = None,
    loader: ConfigLoader[Settings] | None = None,
    nodes: bool = False,
    lifecycle: bool = False,
    http_reload_interval: float = 10.0,
    **poll: Any,
) -> AsyncIterator[Running]:
    """Start a farm and an exporter watching it (with ``nodes``, each mirror node by node); ``prepare`` may change the
    farm or the config first."""
    poll.setdefault("timeout_seconds", 2.0)
    poll.setdefault("backoff_seconds", 0.01)
    poll.setdefault("max_backoff_seconds", 0.05)
    async with SimulatedFarm(scenario or Scenario(), mirror_families, ssl_context=farm_tls) as farm:
        config = farm.exporter_config(interval_seconds=interval, nodes=nodes, **poll)
        if prepare is not None:
            prepare(farm, config)
        exporter = Exporter(
            settings_from_mapping(config),
            ListenAddress(LOOPBACK, 0),
            resolver,
            web_config,
            loader,
            lifecycle=lifecycle,
            http_reload_interval=http_reload_interval,
        )
        await exporter.start()
        try:
            async with aiohttp.ClientSession() as http:
                yield Running(farm, exporter, http)
        finally:
            await exporter.stop()


@pytest.fixture(scope="session")
def fake_node_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/jmx/FakeMirrorNode.java, compiled once per run with the JDK's javac."""
    return compile_fake_node(tmp_path_factory.mktemp("fake-node"))


@pytest.fixture
def workers() -> Iterator[WorkerPool]:
    """For the unit tests that drive pollers by hand: the listings' work done in this process, on a store of the
    test's own (an exporter starts worker processes of its own)."""
    kept, listing_work.STORE = listing_work.STORE, listing_work.Store()
    yield WorkerPool(WORKER_PRELOAD, 1, InlineWorker)
    listing_work.STORE = kept
