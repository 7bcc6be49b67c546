"""The worker pool's sizing and pinning (exporter/workers.py), without processes: the cores a container may use, and
each farm on one worker for good."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.workers import InlineWorker, WorkerPool, usable_cores


@pytest.mark.parametrize(
    ("cpu_max", "bound"),
    [("200000 100000\n", 2), ("50000 100000\n", 1), ("150000 100000\n", 2), ("max 100000\n", None), (None, None)],
    ids=["two cores", "half a core", "one and a half", "no limit", "no cgroup v2"],
)
def test_a_cgroup_cpu_limit_bounds_the_cores_the_affinity_gives(
    tmp_path: Path, cpu_max: str | None, bound: int | None
) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(path) == (affinity if bound is None else min(affinity, bound))


def test_each_farm_keeps_its_worker_and_farms_spread_over_the_pool() -> None:
    pool = WorkerPool((), 2, InlineWorker)
    sydney, frankfurt, saopaulo = pool.worker("sydney"), pool.worker("frankfurt"), pool.worker("saopaulo")
    assert sydney is not frankfurt and saopaulo is sydney
    assert pool.worker("frankfurt") is frankfurt, "pinned for good: its kept pages are there"
    assert pool.assigned() == [sydney, frankfurt], "both workers have a farm"
    assert WorkerPool((), 3, InlineWorker).assigned() == [], "no farm yet: no worker is started"
