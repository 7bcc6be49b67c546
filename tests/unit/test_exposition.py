"""The golden exposition (node_exporter's e2e-output): the collectors' output for a seeded state under a frozen clock,
compared byte for byte with tests/unit/golden/exposition.txt. After an intended change, regenerate it with
`scripts/test unit --update-golden` and read the diff."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.app import MirrorFarmCollector
from tests.unit.scenario import NOW, seeded_state

GOLDEN = Path(__file__).parent / "golden" / "exposition.txt"


def exposition() -> str:
    state = seeded_state()
    registry = CollectorRegistry()
    registry.register(MirrorFarmCollector(lambda: state, clock=lambda: NOW))
    return generate_latest(registry).decode()


def test_the_exposition_is_the_golden_one(request: pytest.FixtureRequest) -> None:
    text = exposition()
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), "no golden file: run scripts/test unit --update-golden"
    assert text == GOLDEN.read_text(), "the exposition changed: if intended, run scripts/test unit --update-golden"


def test_the_golden_exposition_says_what_the_seeded_state_holds() -> None:
    # A golden file could hold a wrong truth: these lines pin the decisions the seeded state is built around.
    text = exposition()
    assert 'bitbucket_mirror_sync_lag_seconds{mirror="sydney"} 600.0' in text  # the silent laggard only
    assert (
        'bitbucket_mirror_repository_sync_lag_seconds{mirror="sydney",project="PRJ",repository="repo-3"} 3600.0' in text
    )
    assert 'bitbucket_mirror_drift_fresh{mirror="frankfurt"} 0.0' in text
    assert 'mirror="frankfurt",reason="http_401",source="repo_sync_status",target="frankfurt"} 1.0' in text
    assert 'bitbucket_mirror_repositories{mirror="frankfurt"}' not in text  # stale: left out
    assert 'bitbucket_mirror_sync_discovering{mirror="frankfurt"} 0.0' in text  # failing, still within stale_after
    assert 'bitbucket_mirror_clock_skew_seconds{mirror="sydney"} 21.0' in text
    assert 'bitbucket_mirror_repository_series_dropped{mirror="sydney"} 2.0' in text  # max_repository_series=2


def test_each_lag_has_beside_it_the_time_its_divergence_began() -> None:
    # time() - first_seen is the lag: the same truth, for queries that compute lag at query time.
    text = exposition()
    for lag_family, labels in (
        ("bitbucket_mirror_sync_lag", 'mirror="sydney"'),
        ("bitbucket_mirror_repository_sync_lag", 'mirror="sydney",project="PRJ",repository="repo-3"'),
        ("bitbucket_mirror_repository_sync_lag", 'mirror="sydney",project="PRJ",repository="repo-4"'),
        ("bitbucket_mirror_node_sync_lag", 'mirror="sydney",node="sydney-1"'),
    ):
        lag = float(text.split(f"{lag_family}_seconds{{{labels}}} ")[1].split()[0])
        began = float(text.split(f"{lag_family}_first_seen_timestamp_seconds{{{labels}}} ")[1].split()[0])
        assert lag > 0 and NOW - began == lag, (lag_family, labels)
    # Nothing lags on sydney-2: a lag of 0 and no timestamp.
    assert 'bitbucket_mirror_node_sync_lag_first_seen_timestamp_seconds{mirror="sydney",node="sydney-2"}' not in text


def test_a_mirror_read_node_by_node_is_the_union_of_the_nodes_that_answered() -> None:
    text = exposition()
    # The same mirror-level figures as one listing with the same drift (the union of a behind and an in-sync node).
    assert 'bitbucket_mirror_repositories_out_of_sync{hash="content",mirror="sydney"} 2.0' in text
    assert 'bitbucket_mirror_sync_lag_seconds{mirror="sydney"} 600.0' in text
    assert 'bitbucket_mirror_node_sync_lag_seconds{mirror="sydney",node="sydney-1"} 600.0' in text
    assert 'bitbucket_mirror_node_sync_lag_seconds{mirror="sydney",node="sydney-2"} 0.0' in text
    assert 'bitbucket_mirror_nodes_polled{mirror="sydney"} 2.0' in text
    assert 'bitbucket_mirror_repository_nodes_behind{mirror="sydney",project="PRJ",repository="repo-4"} 1.0' in text
    # The node that stopped answering long ago: down, and no drift series of its own.
    assert 'bitbucket_mirror_node_up{mirror="sydney",node="sydney-3"} 0.0' in text
    assert 'node="sydney-3"} ' not in text.split("bitbucket_mirror_node_repositories_missing")[1].split("# HELP")[0]


def test_every_family_of_the_golden_exposition_is_documented() -> None:
    # The unit tier catches a metric added without its line in docs/metrics.md (the system tier checks the real
    # output again, with every family a running farm shows).
    doc = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    families = {line.split()[2] for line in exposition().splitlines() if line.startswith("# TYPE ")}
    assert len(families) > 50
    missing = sorted(name for name in families if f"`{name}`" not in doc and f"`{name}_total`" not in doc)
    assert not missing, f"families docs/metrics.md does not name: {missing}"
