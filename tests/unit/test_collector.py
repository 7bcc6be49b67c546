"""The REST collector over hand-built state, read through the registry as a scrape would: freshness, the
per-repository series policy, states seen, and naming the primary's mirror servers."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from exporter.app import ExporterState, MirrorFarmCollector
from exporter.drift import MirrorRepo, PrimaryRepo, analyse
from exporter.rest.models import MirrorServer, MirrorStatus
from exporter.rest.state import MirrorState, PrimaryState
from exporter.state import Policy
from tests.unit.scenario import NOW, fresh

'''"$(cat /tmp/moved_collector.py)"'''


def _state_with_drift(policy: Policy) -> ExporterState:
    primary = {str(i): PrimaryRepo("1", "PRJ", f"r{i}", "new", "m") for i in range(1, 6)}
    rows = {str(i): MirrorRepo("old", "m", 0) for i in range(1, 6)}
    report = analyse(primary, None, rows, {}, NOW - 10)
    mirror = MirrorState(name="sydney", url="https://sydney.example.com", drift=report)
    return ExporterState(PrimaryState(url="https://bitbucket.example.com"), [mirror], policy)


def _samples(state: ExporterState, name: str) -> int:
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: state, clock=lambda: NOW))
    return sum(1 for family in registry.collect() for s in family.samples if s.name == name)


@pytest.mark.parametrize(
    ("per_repository", "cap", "series", "dropped"),
    [("unhealthy", 100, 5, 0), ("unhealthy", 2, 2, 3), ("none", 2, 0, 0), ("all", 100, 5, 0)],
)
def test_per_repository_series_follow_the_policy(per_repository: str, cap: int, series: int, dropped: int) -> None:
    state = _state_with_drift(Policy(per_repository, cap, 90.0))
    assert _samples(state, "bitbucket_mirror_repository_sync_lag_seconds") == series
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: state, clock=lambda: NOW))
    assert registry.get_sample_value("bitbucket_mirror_repository_series_dropped", {"mirror": "sydney"}) == dropped


def test_states_known_or_seen_are_exported_at_zero_and_the_current_one_at_one() -> None:
    mirror = MirrorState(name="sydney", url="https://sydney.example.com")
    mirror.status = fresh(MirrorStatus(state="BRAND_NEW_STATE"), age=1)  # type: ignore[assignment]
    mirror.states_seen.add("BRAND_NEW_STATE")
    state = ExporterState(PrimaryState(url="https://b.example.com"), [mirror])
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: state, clock=lambda: NOW))
    get = registry.get_sample_value
    assert get("bitbucket_mirror_state", {"mirror": "sydney", "state": "BRAND_NEW_STATE"}) == 1.0
    assert get("bitbucket_mirror_state", {"mirror": "sydney", "state": "SYNCHRONIZED"}) == 0.0


def test_mirror_servers_are_named_by_the_configured_url_else_by_the_primarys_name() -> None:
    mirror = MirrorState(name="syd", url="https://Mirror-Syd.example.com:443/")
    primary = PrimaryState(url="https://b.example.com")
    servers = [
        MirrorServer(id="1", name="Sydney farm", baseUrl="https://mirror-syd.example.com", enabled=True),
        MirrorServer(id="2", name="tokyo", baseUrl="https://tokyo.example.com", enabled=False),
    ]
    primary.mirror_servers = fresh(servers, age=1)  # type: ignore[assignment]
    state = ExporterState(primary, [mirror])
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: state, clock=lambda: NOW))
    assert registry.get_sample_value("bitbucket_mirror_server_enabled", {"mirror": "syd"}) == 1.0
    assert registry.get_sample_value("bitbucket_mirror_server_enabled", {"mirror": "tokyo"}) == 0.0


def test_a_reload_is_seen_at_the_next_scrape() -> None:
    # The collector reads the exporter's current state at every scrape: replacing the state is the whole reload.
    states = [_state_with_drift(Policy("unhealthy", 100, 90.0))]
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: states[-1], clock=lambda: NOW))
    assert (
        registry.get_sample_value("bitbucket_mirror_repositories_out_of_sync", {"mirror": "sydney", "hash": "content"})
        == 5
    )
    states.append(ExporterState(PrimaryState(url="https://b.example.com"), []))
    assert (
        registry.get_sample_value("bitbucket_mirror_repositories_out_of_sync", {"mirror": "sydney", "hash": "content"})
        is None
    )
