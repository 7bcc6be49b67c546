"""`promtool check metrics` (the real binary) on the exporter's real /metrics output."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator import Scenario
from tests.conftest import running_farm

METRICS_DOC = Path(__file__).parent.parent.parent / "docs" / "metrics.md"


def exported_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        if family.name.startswith("bitbucket_mirror"):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def undocumented(text: str) -> set[str]:
    """Exported bitbucket_mirror metrics that docs/metrics.md does not name in backticks."""
    doc = METRICS_DOC.read_text()
    return {name for name in exported_names(text) if f"`{name}`" not in doc}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install the Debian package 'prometheus' (scripts/bootstrap does)")
    return path


def lint(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)


async def test_promtool_accepts_real_metrics_output() -> None:
    scenario = Scenario(repositories=20, failing_repositories=2, missing_repositories=1, sync_tolerance_seconds=0)
    async with running_farm(scenario, ["9.x", "8.x"]) as run:
        await run.wait_ready()
        # Make every family appear: a failing source (error counter) and a queue with items.
        await run.control("/sim/mirrors/frankfurt", {"faults": {"progress": "error"}, "frozen": True})
        await run.control("/sim/push", {"repository_ids": [1, 2]})
        await run.next_cycles(1)
        _, text = await run.get("/metrics")
    assert "bitbucket_mirror_exporter_poll_errors_total{" in text
    missing = undocumented(text)
    assert not missing, f"not in docs/metrics.md: {sorted(missing)}"
    assert 'bitbucket_mirror_ref_changes_queue_items{mirror="frankfurt",sync="incremental"} 2.0' in text
    result = lint(text)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_is_live() -> None:
    # The check above only means something if promtool rejects what breaks the conventions.
    result = lint("# HELP foo_count a gauge named like a summary\n# TYPE foo_count gauge\nfoo_count 1\n")
    assert result.returncode != 0
