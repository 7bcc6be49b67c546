"""The simulated farm's ground truth: seeded, and syncing only after the configured delay."""

from __future__ import annotations

from exporter.simulator import Farm, Scenario


def test_a_push_waits_for_the_sync_delay_then_syncs() -> None:
    farm = Farm(Scenario(repositories=5, sync_delay_seconds=30), now=1000.0, mirror_families=["9.x"])
    mirror = farm.mirrors["sydney"]
    farm.push(2)
    farm.advance(1010.0)
    assert farm.truth()["mirrors"]["sydney"]["classes"]["content_drift"] == [2]
    assert farm.pending(mirror) == [(2, "incremental")]
    farm.push(2)
    assert farm.pending(mirror) == [(2, "snapshot")]  # two versions behind
    farm.advance(1040.0)
    assert farm.truth()["mirrors"]["sydney"]["classes"]["content_drift"] == []
    assert mirror.repositories[2].last_sync_date == 1040.0


def test_failing_repositories_and_frozen_mirrors_never_sync() -> None:
    farm = Farm(
        Scenario(repositories=6, failing_repositories=2, failed_sync_count=5), now=0.0, mirror_families=["9.x", "8.x"]
    )
    failing = sorted(farm.mirrors["sydney"].failing)
    farm.mirrors["frankfurt"].frozen = True
    for repo_id in farm.repositories:
        farm.push(repo_id)
    farm.advance(1.0)
    truth = farm.truth()["mirrors"]
    assert truth["sydney"]["classes"]["content_drift"] == failing
    assert truth["sydney"]["failed_syncs"] == 10
    assert truth["frankfurt"]["classes"]["content_drift"] == sorted(farm.repositories)


def test_the_same_seed_replays_the_same_pushes() -> None:
    def run(seed: int) -> list[int]:
        farm = Farm(Scenario(seed=seed, repositories=50, push_rate=3.0), now=0.0, mirror_families=["9.x"])
        for t in range(1, 11):
            farm.advance(float(t))
        return [r.content_version for r in farm.repositories.values()]

    assert run(5) == run(5)
    assert run(5) != run(6)
    assert 15 <= sum(v - 1 for v in run(5)) <= 45  # about 3 pushes a second for 10 s


def test_zero_hash_repositories_report_forty_zeros_and_are_not_drift() -> None:
    farm = Farm(Scenario(repositories=4, zero_hash_repositories=2), now=0.0, mirror_families=["9.x"])
    zero = farm.truth()["zero_hash_repositories"]
    assert len(zero) == 2
    assert farm.repositories[zero[0]].content_hash() == "0" * 40
    farm.mirrors["sydney"].frozen = True
    for repo_id in farm.repositories:
        farm.push(repo_id)
    assert set(farm.truth()["mirrors"]["sydney"]["classes"]["content_drift"]) == set(farm.repositories) - set(zero)
