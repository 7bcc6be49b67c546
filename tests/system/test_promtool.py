"""`promtool check metrics` (the real binary) on the exporter's real /metrics output."""

from __future__ import annotations

from exporter.simulator import Scenario
from tests.conftest import running_farm
from tests.tools import lint, undocumented


async def test_promtool_accepts_real_metrics_output() -> None:
    scenario = Scenario(repositories=20, failing_repositories=2, missing_repositories=1, sync_tolerance_seconds=0)
    async with running_farm(scenario, ["9.x", "8.x"]) as run:
        await run.wait_ready()
        # Make every family appear: a failing source (error counter) and a queue with items.
        await run.control("/sim/mirrors/frankfurt", {"faults": {"progress": "error"}, "frozen": True})
        await run.control("/sim/push", {"repository_ids": [1, 2]})
        await run.next_cycles(1)
        text = await run.metrics_text()
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
