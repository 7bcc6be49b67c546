"""The exporter's web handlers through aiohttp's test client: readiness, basic auth on everything but the health
endpoints, reload answers, and scrapes in one burst sharing a rendering."""

from __future__ import annotations

import base64
import dataclasses
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import bcrypt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from exporter.app import ExporterState, MirrorFarmCollector
from exporter.drift import RepoState
from exporter.rest.state import MirrorState, PrimaryState
from exporter.web.auth import BasicAuth
from exporter.web.server import Served, make_app
from tests.conftest import wait_until

Reload = Callable[[], Awaitable[tuple[bool, str]]]


def state() -> ExporterState:
    return ExporterState(
        PrimaryState(url="https://b.example.com"), [MirrorState(name="sydney", url="https://s.example.com")]
    )


async def client_for(served: Served) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(make_app(served))) as client:
        yield client


def served(current: ExporterState, auth: BasicAuth | None = None, reload: Reload | None = None) -> Served:
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: current))
    return Served(lambda: current, registry, auth or BasicAuth({}), reload)


async def test_ready_waits_for_the_first_poll_of_every_configured_target() -> None:
    current = state()
    async for client in client_for(served(current)):
        assert (await client.get("/-/ready")).status == 503
        current.primary.cycles = 1
        assert (await client.get("/-/ready")).status == 503
        current.mirrors[0].cycles = 1
        assert (await client.get("/-/ready")).status == 200
        assert (await client.get("/-/healthy")).status == 200


async def test_basic_auth_guards_every_page_but_the_health_endpoints() -> None:
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    good = {"Authorization": "Basic " + base64.b64encode(b"prometheus:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"prometheus:wrong").decode()}
    async for client in client_for(served(state(), BasicAuth({"prometheus": hashed}))):
        for path in ("/metrics", "/", "/runbooks"):
            refused = await client.get(path)
            assert refused.status == 401 and refused.headers["WWW-Authenticate"].startswith("Basic ")
            assert (await client.get(path, headers=bad)).status == 401
            assert (await client.get(path, headers=good)).status == 200
        for path in ("/-/healthy", "/-/ready"):
            assert (await client.get(path)).status in (200, 503)


@pytest.mark.parametrize(
    ("outcome", "status"), [(None, 501), ((True, "config reloaded"), 200), ((False, "config reload failed: x"), 500)]
)
async def test_reload_answers(outcome: tuple[bool, str] | None, status: int) -> None:
    async def reload() -> tuple[bool, str]:
        assert outcome is not None
        return outcome

    async for client in client_for(served(state(), reload=None if outcome is None else reload)):
        answer = await client.post("/-/reload")
        assert answer.status == status
        if outcome is not None:
            assert (await answer.text()).strip() == outcome[1]


async def test_scrapes_in_one_burst_share_one_rendering() -> None:
    current = state()
    async for client in client_for(served(current)):
        first = await (await client.get("/metrics")).text()
        current.mirrors[0].status.success = True  # changes bitbucket_mirror_up
        second = await (await client.get("/metrics")).text()
    assert first == second and 'bitbucket_mirror_up{mirror="sydney"} 0.0' in first


async def test_metrics_are_gzipped_for_a_scraper_that_accepts_gzip_and_plain_for_one_that_does_not() -> None:
    async for client in client_for(served(state())):
        zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"}, auto_decompress=False)
        assert zipped.headers["Content-Encoding"] == "gzip" and "Content-Encoding" not in plain.headers
        assert zipped.headers["Vary"] == plain.headers["Vary"] == "Accept-Encoding"
        assert gzip.decompress(await zipped.read()) == await plain.read()


async def test_a_new_drift_report_is_rendered_by_the_loop_not_waited_for_by_a_scrape() -> None:
    """A scrape right after a report landed is served the rendering before it (at most a second old) at once; the
    loop renders the report for the scrapes it expects, and the next scrape shows it."""
    from tests.unit.scenario import NOW, seeded_state

    current = seeded_state()
    sydney = next(m for m in current.mirrors if m.name == "sydney")
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: current, clock=lambda: NOW))
    shown = 'bitbucket_mirror_repositories_missing{mirror="sydney"} 999.0'
    async for client in client_for(Served(lambda: current, registry, BasicAuth({}), None)):
        first = await (await client.get("/metrics")).text()
        assert sydney.drift is not None
        sydney.drift = dataclasses.replace(sydney.drift, counts={**sydney.drift.counts, RepoState.MISSING: 999})
        second = await (await client.get("/metrics")).text()
        assert second == first, "served at once: the rendering made before the report"

        async def rendered(scraper: TestClient[web.Request, web.Application] = client) -> bool:
            return shown in await (await scraper.get("/metrics")).text()

        await wait_until(rendered, 5.0, "the new report on /metrics")
    assert shown not in first


def test_the_landing_page_lists_a_failing_node_under_its_mirror() -> None:
    from exporter.web.landing import render
    from tests.unit.scenario import NOW, seeded_state

    state = seeded_state()
    page = render(state.landing(NOW), NOW, 90.0)
    sources = page.split('<table id="sources">')[1]
    assert "sydney/sydney-3" in sources and "connect_timeout" in sources
    assert "sydney/sydney-1" not in sources  # answering nodes have nothing to report


def test_the_landing_page_shows_the_refs_that_differ_with_both_commits() -> None:
    from exporter.web.landing import render
    from tests.unit.scenario import NOW, seeded_state

    state = seeded_state()
    page = render(state.landing(NOW), NOW, 90.0)
    refs = page.split('<table id="refs">')[1]
    assert "PRJ/repo-2" in refs and "refs/heads/main" in refs and "5" * 40 in refs and "6" * 40 in refs


def test_the_landing_page_shows_where_alerts_send_people_escaped() -> None:
    from exporter.web.landing import render
    from tests.unit.scenario import NOW, seeded_state

    landing = seeded_state().landing(NOW)
    page = render(landing, NOW, 90.0, "https://bme.example.com/a&b")
    assert '<a id="runbook-base" href="https://bme.example.com/a&amp;b/runbooks">' in page
    assert 'id="runbook-base"' not in render(landing, NOW, 90.0)
