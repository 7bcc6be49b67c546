"""Renderings of /metrics (exporter/web/exposition.py): a scrape is served the latest rendering while it is at most
a second old, else a new one (a new drift report is rendered by the loop for the scrapes it expects, never waited for
by a scrape); a lag is never written into a rendering after the fact."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Callable, Iterator
from typing import cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.app import MirrorFarmCollector
from exporter.web import exposition as exposition_module
from exporter.web.exposition import Exposition, accepts_gzip
from tests.unit.scenario import NOW, seeded_state


def registry_at(clock: Callable[[], float]) -> CollectorRegistry:
    state = seeded_state()
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: state, clock=clock))
    return registry


class Monotonic:
    """The exposition's monotonic clock, stepped by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


async def test_a_rendering_is_served_until_it_is_a_second_old_even_after_a_new_drift_report(
    monotonic: Monotonic,
) -> None:
    reports = [(1,)]
    exposition = Exposition(registry_at(lambda: NOW), lambda: reports[-1], monotonic=monotonic)
    first = await exposition.serve("text/plain", generate_latest)
    assert first.body == generate_latest(registry_at(lambda: NOW))
    monotonic.now += 1.0
    assert (await exposition.serve("text/plain", generate_latest)) is first, "a second old: still served"
    monotonic.now += 0.01
    second = await exposition.serve("text/plain", generate_latest)
    assert second is not first, "older than a second: rendered again"
    reports.append((2,))
    monotonic.now += 0.5
    assert (await exposition.serve("text/plain", generate_latest)) is second, "a new drift report: no wait for it"
    monotonic.now += 0.51
    third = await exposition.serve("text/plain", generate_latest)
    assert third is not second and third.reports == (2,), "a second old: rendered again, with the new report"


async def test_each_lag_is_the_one_of_its_rendering_time(monotonic: Monotonic) -> None:
    """No lag is rewritten at the scrape: what a scrape gets is what the collectors said when it was rendered, and
    a second later a new rendering says a second more."""
    now = [NOW]
    exposition = Exposition(registry_at(lambda: now[0]), lambda: (), monotonic=monotonic)
    first = await exposition.serve("text/plain", generate_latest)
    now[0] += 7.25
    assert (await exposition.serve("text/plain", generate_latest)).body == first.body
    monotonic.now += 1.5
    later = (await exposition.serve("text/plain", generate_latest)).body
    assert later == generate_latest(registry_at(lambda: NOW + 7.25))
    assert later != first.body, "the seeded state has lags that grow"


async def test_show_ready_renders_what_was_rendered_before_ready(monotonic: Monotonic) -> None:
    ready = [False]
    exposition = Exposition(registry_at(lambda: NOW), lambda: (), lambda: ready[0], monotonic=monotonic)
    await exposition.start()
    made = monotonic.now
    monotonic.now += 0.5
    assert exposition.rendered_since(made) and not exposition.rendered_since(monotonic.now)
    ready[0] = True
    await exposition.show_ready()
    assert exposition.rendered_since(monotonic.now), "every primed content type rendered again"


async def test_a_scrape_after_ready_never_gets_a_rendering_made_before(monotonic: Monotonic) -> None:
    ready = [False]
    exposition = Exposition(registry_at(lambda: NOW), lambda: (), lambda: ready[0], monotonic=monotonic)
    before = await exposition.serve("text/plain", generate_latest)
    monotonic.now += 0.2
    assert (await exposition.serve("text/plain", generate_latest)) is before, "not ready yet: served as it is"
    ready[0] = True
    after = await exposition.serve("text/plain", generate_latest)
    assert after is not before and after.made == monotonic.now, "ready since: rendered anew, though 0.2 s old"
    assert (await exposition.serve("text/plain", generate_latest)) is after


@pytest.mark.parametrize("encoder", [generate_latest, generate_openmetrics], ids=["text", "openmetrics"])
async def test_a_rendering_made_a_few_families_at_a_time_is_the_encoders_own_body(
    encoder: Callable[[CollectorRegistry], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut after every sample (pieces of one sample, a step of no time at all): the parts joined are byte for byte
    one encoding."""
    monkeypatch.setattr(exposition_module, "STEP_SECONDS", 0.0)
    monkeypatch.setattr(exposition_module, "PIECE_SAMPLES", 1)
    registry = registry_at(lambda: NOW)
    rendering = await Exposition(registry, lambda: ()).render("any", encoder)
    assert rendering.body == encoder(registry)
    assert rendering.body.count(b"# EOF") == (1 if encoder is generate_openmetrics else 0)
    assert gzip.decompress(rendering.gzipped) == rendering.body, "the gzip stream, compressed piece by piece"
    assert len(rendering.gzipped) < len(rendering.body) / 3


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),  # Prometheus
        ("gzip, deflate", True),  # aiohttp, requests
        ("br;q=1.0, GZIP;q=0.5", True),
        ("x-gzip", True),
        ("", False),
        ("identity", False),
        ("deflate, br", False),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("gzip;q=bad", False),
        ("gzipped", False),
    ],
)
def test_gzip_is_served_when_the_accept_encoding_header_accepts_it(accept_encoding: str, gzipped: bool) -> None:
    assert accepts_gzip(accept_encoding) is gzipped


async def test_a_scrape_that_waits_for_a_rendering_never_gets_one_begun_before_it_asked(
    monotonic: Monotonic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rendering under way when a report lands shows the state before it: a scrape that has no rendering to serve
    waits for one begun after it asked."""
    monkeypatch.setattr(exposition_module, "STEP_SECONDS", 0.0)
    reports = [(1,)]
    registry = registry_at(lambda: NOW)
    begun = asyncio.Event()

    class Watched:
        """The registry, saying when a rendering has begun reading it."""

        def collect(self) -> Iterator[Metric]:
            begun.set()
            yield from registry.collect()

    exposition = Exposition(cast(CollectorRegistry, Watched()), lambda: reports[-1], monotonic=monotonic)
    under_way = asyncio.ensure_future(exposition.render("text/plain", generate_latest))
    await asyncio.wait_for(begun.wait(), 5)
    monotonic.now += 0.5
    reports.append((2,))
    served = await exposition.serve("text/plain", generate_latest)
    assert (await under_way).reports == (1,)
    assert served.reports == (2,) and served.made >= monotonic.now


async def test_the_loop_renders_ahead_only_while_a_scrape_is_expected(monotonic: Monotonic) -> None:
    """Each scraper's next scrape is predicted from its own last gap: the loop renders from 0.8 s before it is due
    until it comes (or is overdue by its gap), and not at all for a content type nobody scrapes on an interval."""
    reports = [(1,)]
    exposition = Exposition(registry_at(lambda: NOW), lambda: reports[-1], monotonic=monotonic)
    await exposition.start()
    monotonic.now += 30
    assert exposition.due() == [], "primed for the first scrape, then nobody scrapes: nothing rendered ahead"

    def due() -> list[str]:
        return [content_type for content_type, _ in exposition.due()]

    async def scrape(scraper: str) -> None:
        await exposition.serve("text/plain", generate_latest, scraper)

    await scrape("prometheus-a")
    monotonic.now += 15
    await scrape("prometheus-a")  # every 15 s: the next is due 15 s from now
    monotonic.now += 14.1
    assert due() == [], "0.9 s before the scrape: a rendering made now would be too old for it"
    monotonic.now += 0.2
    assert due() == ["text/plain"], "0.7 s before it"
    await exposition.render("text/plain", generate_latest)
    monotonic.now += 0.5
    assert due() == [], "rendered 0.5 s ago: served as it is"
    reports.append((2,))
    assert due() == ["text/plain"], "a new drift report while the scrape is expected: rendered at once"
    await exposition.render("text/plain", generate_latest)
    monotonic.now += 1.0
    assert due() == ["text/plain"], "the scrape is late: rendered again while it may come"
    await exposition.render("text/plain", generate_latest)
    monotonic.now += 15.0
    assert due() == [], "overdue by more than its gap: no longer expected"

    # An HA pair: two servers 5 s apart, each every 30 s. Merged, their gaps (5, 25) would predict neither.
    await scrape("prometheus-b")
    monotonic.now += 5
    await scrape("prometheus-c")
    monotonic.now += 25
    await scrape("prometheus-b")
    monotonic.now += 5
    await scrape("prometheus-c")
    monotonic.now += 24.5
    assert due() == ["text/plain"], "prometheus-b is due in 0.5 s"
    await exposition.render("text/plain", generate_latest)
    await scrape("prometheus-b")
    monotonic.now += 4.6
    assert due() == [], "prometheus-c is due in 0.9 s"
    monotonic.now += 0.2
    assert due() == ["text/plain"], "prometheus-c is due in 0.7 s"


async def test_a_rendering_too_old_to_be_served_does_not_hold_up_rendered_since(monotonic: Monotonic) -> None:
    exposition = Exposition(registry_at(lambda: NOW), lambda: (), monotonic=monotonic)
    await exposition.start()
    monotonic.now += 0.5
    assert not exposition.rendered_since(monotonic.now), "a scrape now is served the rendering of 0.5 s ago"
    monotonic.now += 0.6
    assert exposition.rendered_since(monotonic.now), "1.1 s old: a scrape now waits for a new rendering"
