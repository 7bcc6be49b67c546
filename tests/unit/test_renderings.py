"""Renderings of /metrics (exporter/web/exposition.py): a scrape is served the latest rendering while it is at most
a second old and shows the latest drift reports, else a new one; a lag is never written into a rendering after the
fact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.app import MirrorFarmCollector
from exporter.web import exposition as exposition_module
from exporter.web.exposition import Exposition
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


async def test_a_rendering_is_served_until_it_is_a_second_old_or_a_new_drift_report_comes(monotonic: Monotonic) -> None:
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
    assert (await exposition.serve("text/plain", generate_latest)) is not second, "a new drift report"


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


async def test_a_scrape_never_gets_a_rendering_begun_before_a_new_drift_report(
    monotonic: Monotonic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rendering under way when a report lands shows the state before it: the scrape waits for one begun after."""
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
