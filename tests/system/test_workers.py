"""The worker processes (exporter/workers.py) under a real exporter and farm: a worker killed mid-run is replaced
and counted, its farm's listing poll fails with worker_lost meanwhile (the primary's own listing does not), and no
count served is ever wrong."""

from __future__ import annotations

import os
import signal

from exporter.simulator import Scenario
from tests.conftest import Running, Samples, running_farm, value, wait_until

RESTARTS = "bitbucket_mirror_exporter_worker_restarts_total"
ERRORS = "bitbucket_mirror_exporter_poll_errors_total"


def wrong_counts(samples: Samples, truth: dict[str, object]) -> list[str]:
    """Counts served that differ from the farm's truth (a count not served is not wrong: it is unknown)."""
    wrong = []
    for name, mirror in truth["mirrors"].items():  # type: ignore[attr-defined]
        for metric, cls in (
            ("bitbucket_mirror_repositories_in_sync", "in_sync"),
            ("bitbucket_mirror_repositories_missing", "missing"),
        ):
            served = value(samples, metric, mirror=name)
            if served is not None and served != len(mirror["classes"][cls]):
                wrong.append(f"{metric}{{mirror={name}}} = {served}, truth {len(mirror['classes'][cls])}")
    return wrong


async def all_counts_true(run: Running) -> bool:
    samples, truth = await run.metrics(), await run.truth()
    return not wrong_counts(samples, truth) and all(
        value(samples, "bitbucket_mirror_repositories_in_sync", mirror=name) is not None for name in truth["mirrors"]
    )


async def test_a_killed_worker_is_restarted_and_counted_and_no_count_served_meanwhile_is_wrong() -> None:
    scenario = Scenario(repositories=60, missing_repositories=3)
    async with running_farm(scenario, ["9.x", "8.x"], nodes=True) as run:
        await run.wait_ready()
        await wait_until(lambda: all_counts_true(run), 15, "every count true")
        pids = run.exporter.workers.pids()
        assert pids, "the comparisons ran in a worker process"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        seen_wrong: list[str] = []

        async def restarted_and_true() -> bool:
            samples, truth = await run.metrics(), await run.truth()
            seen_wrong.extend(wrong_counts(samples, truth))
            return (value(samples, RESTARTS) or 0) >= 1 and not wrong_counts(samples, truth)

        await wait_until(restarted_and_true, 20, "a new worker and every count true again")
        assert not seen_wrong, seen_wrong
        samples = await run.metrics()
        lost = sum(v for (name, labels), v in samples.items() if name == ERRORS and ("reason", "worker_lost") in labels)
        assert lost >= 1, "the walk the worker died under failed as worker_lost"
        primary_lost = value(samples, ERRORS, target="primary", source="repositories", reason="worker_lost")
        assert primary_lost is None, "the primary's own listing is read on the loop: a worker's death is not its"
        assert set(run.exporter.workers.pids()).isdisjoint(pids), "new processes"
