"""The benchmarks still run (one round each, no timing judged here: figures belong to bench/ itself)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.monitoring_stack import free_port

# Benchmarks, run by `scripts/test bench` (CI runs them once), not by the default suite.
pytestmark = pytest.mark.bench


BENCH = Path(__file__).parent.parent.parent / "bench"


def test_jmx_poll_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH / "jmx_poll.py"), "--polls", "1"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "jmxquery poll, default jmx.java_options" in result.stdout
    assert "% of one core per node" in result.stdout


def test_scale_benchmark_runs_and_writes_its_results(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH / "scale.py"), "--sizes", "300", "--mirrors", "1", "--cycles", "1"]
    command += ["--scrapers", "2", "--scrape-period", "0.05", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "| 300 | 1 | 1 |" in result.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"scale.md", "scale.json", "scale.png"}
    row = json.loads((tmp_path / "scale.json").read_text())["rows"][0]
    # The floor downloads exactly the pages the exporter does; the naive clients agree with it on the drift.
    assert row["floor"]["requests"] == row["exporter"]["requests"]
    assert row["floor"]["response_bytes"] == row["exporter"]["response_bytes"]
    assert row["sync"]["drifting"] == row["exporter"]["drifting"] == {"sydney": 3}
    assert row["per_repository"]["requests"] == {"primary": 300, "sydney": 300}


def test_scale_benchmarks_nodes_dimension_reads_every_node_like_its_floor(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH / "scale.py"), "--sizes", "300", "--mirrors", "1", "--nodes", "3"]
    command += ["--cycles", "1", "--scrapers", "1", "--scrape-period", "0.05", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "| 300 | 1 | 3 |" in result.stdout
    [row] = json.loads((tmp_path / "scale.json").read_text())["rows"]
    nodes = {f"sydney/sydney-node-{i}" for i in (1, 2, 3)}
    assert nodes <= set(row["exporter"]["requests"])
    assert row["floor"]["requests"] == row["exporter"]["requests"]
    assert row["floor"]["response_bytes"] == row["exporter"]["response_bytes"]
    assert row["exporter"]["drifting"] == {"sydney": 3}
    # Three pushes no mirror syncs, each seen on /metrics (how soon is bench/'s business, not a test's).
    assert row["nodes"] == 3 and len(row["drift_found"]["delays_seconds"]) == 3


def test_soak_benchmark_runs_and_the_exporter_ends_in_step_with_the_farm(tmp_path: Path) -> None:
    out = tmp_path / "soak"
    command = [sys.executable, str(BENCH / "soak.py"), "--minutes", "0.17", "--load-seconds", "2", "--scrapers", "5"]
    command += ["--repositories", "100", "--interval", "0.5", "--port", str(free_port()), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.with_suffix(".json").read_text())
    assert figures["load"]["scrapes"] > 0 and figures["load"]["errors"] == 0
    soak = figures["soak"]
    assert soak["errors"] == 0 and soak["poll_errors"] == 0
    # Created and deleted repositories are followed: the exporter's count is the farm's, extras dropped.
    assert soak["repositories_on_mirrors_exported"] == soak["repositories_on_mirrors_truth"]


def test_webhook_burst_benchmark_runs_and_observes_every_sync(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH / "webhook_burst.py"), "--events", "200", "--seconds", "1"]
    result = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "webhook_burst.json").read_text())
    assert figures["sent"]["statuses"] == {"200": 200} and figures["observed_syncs"] == 100.0
    assert figures["scrapes_during_burst_ms"]["count"] > 0


def test_git_mirrors_benchmark_runs_and_sees_exactly_the_mirrors_set_back(tmp_path: Path) -> None:
    command = [sys.executable, str(BENCH / "git_mirrors.py"), "--mirrors", "12", "--cycles", "1"]
    command += ["--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "git_mirrors.json").read_text())
    assert figures["failed"] == [] and figures["behind_seen"] == figures["behind_truth"] == 1
    # Four git processes per check: for-each-ref, ls-remote, count-objects and the origin lookup.
    assert figures["cycle"]["spawned"] == 4 * 12
    assert figures["counted_refs_seen"] == [figures["refs_per_mirror"]["counted"]]


@pytest.mark.timeout(600)
def test_the_parser_properties_hold_over_a_long_hunt() -> None:
    # The unit tier runs each property over 25 examples; this runs them over 1,000 each (about 80 s on two cores).
    test = Path(__file__).parent.parent / "unit" / "test_parsers_property.py"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "timeout=600", str(test)]
    env = {**os.environ, "PROPERTY_PROFILE": "long"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_the_scale_farm_changes_the_share_asked_between_two_walks_and_syncs_it_a_walk_later() -> None:
    # bench/scale.py --changes-per-cycle: pages must really change between cycles, by the share asked, or the figures
    # for "cost grows with what changed" would measure a quiet farm.
    farm = subprocess.Popen(
        [sys.executable, str(BENCH / "scale_farm.py"), "--repositories", "1000", "--mirrors", "1", "--drift", "0",
         "--changes-per-cycle", "0.05"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert farm.stdout is not None
        info = json.loads(farm.stdout.readline())
        auth = "Basic " + base64.b64encode(f"{info['username']}:{info['password']}".encode()).decode()

        def walk(base: str, path: str) -> dict[str, str]:
            hashes: dict[str, str] = {}
            for start in range(0, 1000, info["page_cap"]):
                url = f"{base}/rest/mirroring/latest/{path}?start={start}&limit={info['page_cap']}"
                request = urllib.request.Request(url, headers={"Authorization": auth})
                with urllib.request.urlopen(request, timeout=30) as answer:
                    for row in json.load(answer)["values"]:
                        key = str(row.get("id", row.get("externalRepoId")))
                        hashes[key] = row["hashes"]["content"] if "hashes" in row else row["properties"]["contentHash"]
            return hashes

        mirror = next(iter(info["mirrors"].values()))
        first = walk(info["primary"], "repos")
        mirror_first = walk(mirror, "supportInfo/repoSyncStatus")
        # The farm acts once the walk is over: poll for it, boundedly, rather than sleep a guess.
        deadline = time.monotonic() + 10
        while (second := walk(info["primary"], "repos")) == first and time.monotonic() < deadline:
            pass
        pushed = {k for k in first if first[k] != second[k]}
        assert len(pushed) == 50, len(pushed)
        # Before the second walk the mirror had the old content of each; the walk's end synced the batch there.
        assert all(mirror_first[k] == first[k] for k in pushed)
        deadline = time.monotonic() + 10
        while not all(v == second[k] for k, v in walk(mirror, "supportInfo/repoSyncStatus").items() if k in pushed):
            assert time.monotonic() < deadline, "the mirror never synced the first batch"
    finally:
        farm.terminate()
        farm.wait(timeout=30)
