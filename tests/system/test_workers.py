"""The worker processes (exporter/workers.py) under a real exporter and farm: a worker killed under a node's walk is
replaced and counted, the walk fails with worker_lost (the primary's own listing does not), no count served is ever
wrong, and the walks' credentials are on no worker's command line or environment."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from exporter.simulator import Scenario
from exporter.steps import STARTS_PER_PASS
from exporter.workers import WorkerPool
from tests.conftest import Running, Samples, running_farm, value, wait_until
from tests.unit.test_pass_ration import starts_before_next_pass

RESTARTS = "bitbucket_mirror_exporter_worker_restarts_total"
PASSWORD = "worker-walk-secret-6c1f"
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


def proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def lost_walks(samples: Samples) -> float:
    return sum(v for (name, labels), v in samples.items() if name == ERRORS and ("reason", "worker_lost") in labels)


async def test_a_killed_worker_is_restarted_and_counted_and_no_count_served_meanwhile_is_wrong() -> None:
    # Each mirror request answered after 0.1 s: a node's walk is in flight in its worker most of the time.
    scenario = Scenario(repositories=60, missing_repositories=3, mirror_latency_seconds=0.1, password=PASSWORD)
    async with running_farm(scenario, ["9.x", "8.x"], nodes=True) as run:
        await run.wait_ready()
        await wait_until(lambda: all_counts_true(run), 15, "every count true")
        pids = run.exporter.workers.pids()
        assert pids, "the walks ran in a worker process"
        for pid in pids:
            # The walks' credentials reach a worker over its socket only.
            for part in ("cmdline", "environ"):
                assert PASSWORD.encode() not in proc_file(pid, part), part
        killed: set[int] = set()
        seen_wrong: list[str] = []

        async def killed_under_a_walk() -> bool:
            """The workers killed, again until a walk in flight failed with them."""
            samples, truth = await run.metrics(), await run.truth()
            seen_wrong.extend(wrong_counts(samples, truth))
            if lost_walks(samples) >= 1:
                return True
            for pid in run.exporter.workers.pids():
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)
            return False

        await wait_until(killed_under_a_walk, 20, "a walk failed as worker_lost under a killed worker")

        async def restarted_and_true() -> bool:
            samples, truth = await run.metrics(), await run.truth()
            seen_wrong.extend(wrong_counts(samples, truth))
            served = all(value(samples, "bitbucket_mirror_repositories_in_sync", mirror=name) is not None
                         for name in truth["mirrors"])  # fmt: skip
            # A new process (the next call starts it; until then the last reports ride over while fresh).
            running = run.exporter.workers.pids()
            restarted = bool(running) and killed.isdisjoint(running) and (value(samples, RESTARTS) or 0) >= 1
            return restarted and served and not wrong_counts(samples, truth)

        await wait_until(restarted_and_true, 20, "a new worker and every count served and true again")
        assert not seen_wrong, seen_wrong
        samples = await run.metrics()
        assert (value(samples, RESTARTS) or 0) <= len(killed), "a restart counted for each process killed, no more"
        primary_lost = value(samples, ERRORS, target="primary", source="repositories", reason="worker_lost")
        assert primary_lost is None, "the primary's own listing is read on the loop: a worker's death is not its"


async def test_a_worker_process_rations_no_starts_while_the_event_loop_does() -> None:
    # The worker serves no scrape: its walks' requests and answers all go on in the pass they are ready in.
    pool = WorkerPool((), 1)
    try:
        in_worker = await asyncio.wait_for(pool.worker("farm").call(starts_before_next_pass), 30)
    finally:
        await pool.stop()
    assert in_worker == 20
    assert await starts_before_next_pass() == STARTS_PER_PASS
