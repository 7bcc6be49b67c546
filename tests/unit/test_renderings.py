"""Renderings served off the event loop (exporter/web/exposition.py): everything as the encoder wrote it, lag lines
written again with the scrape's time; and which requests the scrape threads serve (exporter/web/scrape_thread.py)."""

from __future__ import annotations

import base64
from collections.abc import Callable

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import MirrorFarmCollector
from exporter.web.auth import BasicAuth
from exporter.web.exposition import GROWING, Exposition, Rendering
from exporter.web.scrape_thread import is_scrape, parse_head
from tests.unit.scenario import NOW, seeded_state

Encoder = Callable[[CollectorRegistry], bytes]
Parser = Callable[[str], object]


def registry_at(clock: Callable[[], float]) -> CollectorRegistry:
    state = seeded_state()
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: state, clock=clock))
    return registry


def samples(text: bytes, parse: Parser) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = parse(text.decode())
    assert not isinstance(families, str)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families  # type: ignore[attr-defined]
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("encoder", "parse"),
    [(generate_latest, text_string_to_metric_families), (generate_openmetrics, openmetrics_families)],
)
def test_a_rendering_served_later_has_every_lag_grown_by_the_time_since_and_nothing_else_changed(
    encoder: Encoder, parse: Parser
) -> None:
    written = encoder(registry_at(lambda: NOW))
    rendering = Rendering.of(written, NOW, ())
    assert rendering.body(NOW) == written
    later = encoder(registry_at(lambda: NOW + 7.25))
    assert rendering.body(NOW + 7.25) == later, "as if rendered at the scrape"
    before, after = samples(written, parse), samples(rendering.body(NOW + 7.25), parse)
    grown = {key for key in before if after[key] != before[key]}
    assert {name for name, _ in grown} == {
        "bitbucket_mirror_sync_lag_seconds",
        "bitbucket_mirror_node_sync_lag_seconds",
        "bitbucket_mirror_repository_sync_lag_seconds",
        "bitbucket_mirror_git_behind_seconds",
    }
    assert all(after[key] == before[key] + 7.25 for key in grown)
    # A lag of 0 (nothing diverges) stays 0 until a poll says otherwise.
    zero = [key for key in before if key[0].encode() in GROWING and before[key] == 0]
    assert zero and all(after[key] == 0 for key in zero)


def test_a_rendering_is_kept_until_it_is_old_or_a_new_drift_report_comes() -> None:
    reports = [(1,)]
    exposition = Exposition(registry_at(lambda: NOW), lambda: reports[-1], lambda: NOW)
    first = exposition.on_loop("text/plain", generate_latest, young=60)
    assert exposition.on_loop("text/plain", generate_latest, young=60) is first
    assert exposition.current("text/plain", generate_latest, young=60) is first
    assert exposition.on_loop("text/plain", generate_latest, young=-1) is not first, "too old"
    latest = exposition.on_loop("text/plain", generate_latest, young=60)
    reports.append((2,))
    assert exposition.on_loop("text/plain", generate_latest, young=60) is not latest, "a new drift report"


def test_off_the_loop_nothing_is_rendered_without_a_running_loop() -> None:
    exposition = Exposition(registry_at(lambda: NOW), lambda: (), lambda: NOW)
    assert exposition.from_thread("text/plain", generate_latest, timeout=0.1) is None
    made = exposition.on_loop("text/plain", generate_latest, young=60)
    assert exposition.from_thread("text/plain", generate_latest, timeout=0.1) is made


SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9879\r\nAccept: text/plain\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "served_here"),
    [
        (SCRAPE, True),
        (SCRAPE + b"GET / HTTP/1.1\r\n", True),  # the next request is peeked at separately
        (b"GET /metrics?collect=all HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET /metrics HTTP/1.0\r\n\r\n", True),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", False),  # incomplete: aiohttp reads the rest
        (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"GET /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", False),
        (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", False),
        (b"GET /metrics HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", False),
        (b"GET /metricsx HTTP/1.1\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\n\r\n", False),
        (b"GET /metrics HTTP/2.0\r\n\r\n", False),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", False),
        (b"GET /metrics HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", False),  # repeated header
        (b"GET /metrics HTTP/1.1\r\nHost : a\r\n\r\n", False),  # space before the colon
        (b"GET /metrics HTTP/1.1\r\nbroken\r\n\r\n", False),
    ],
)
def test_the_scrape_threads_serve_plain_scrapes_and_hand_over_everything_else(
    request_bytes: bytes, served_here: bool
) -> None:
    head = parse_head(request_bytes)
    assert (head is not None and is_scrape(head, BasicAuth({}))) is served_here
    if served_here:
        assert head is not None and request_bytes[head.size :] in (b"", b"GET / HTTP/1.1\r\n")


async def test_with_basic_auth_only_credentials_checked_before_are_served_off_the_loop() -> None:
    auth = BasicAuth({"prometheus": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()})
    good = "Basic " + base64.b64encode(b"prometheus:s3cret").decode()
    bad = "Basic " + base64.b64encode(b"prometheus:wrong").decode()

    def served_here(authorization: str) -> bool:
        head = parse_head(SCRAPE.replace(b"\r\n\r\n", f"\r\nAuthorization: {authorization}\r\n\r\n".encode()))
        return head is not None and is_scrape(head, auth)

    assert not served_here(good), "bcrypt runs on the event loop's executor, once"
    assert await auth.allows(good) and not await auth.allows(bad)
    assert served_here(good)
    assert not served_here(bad) and not served_here("Bearer x") and not is_scrape(parse_head(SCRAPE), auth)  # type: ignore[arg-type]
