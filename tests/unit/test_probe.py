"""A node's verdict for a load balancer (exporter/rest/probe.py): a yes only on fresh proof, every other case a no with
its reason, "unknown" for what is stale or never read."""

from __future__ import annotations

from dataclasses import replace

import msgspec
import pytest

from exporter.drift import DriftReport, RepoHealth, RepoState
from exporter.rest.models import MirrorStatus
from exporter.rest.probe import node_verdict
from exporter.rest.state import FarmState, MirrorState, NodeState, PrimaryState
from exporter.sources import SourceState
from exporter.state import Policy

NOW = 1_800_000_000.0
STALE_AFTER = 90.0
MAX_LAG = 300.0


def behind(repo_id: str, state: RepoState, lag: float) -> RepoHealth:
    return RepoHealth(repo_id, "PRJ", f"repo-{repo_id}", state, 0, NOW - lag)


def farm(status: SourceState[MirrorStatus], drift: DriftReport | None, by_node: bool = True) -> FarmState:
    node = NodeState("node-1", "http://node-1", status=status, drift=drift)
    mirror = MirrorState("sydney", "http://sydney", nodes={"node-1": node}, by_node=by_node)
    return FarmState(PrimaryState("http://primary"), [mirror], Policy(stale_after=STALE_AFTER))


def status(state: str = "SYNCHRONIZED", read: float = NOW - 5, success: bool = True) -> SourceState[MirrorStatus]:
    return SourceState(MirrorStatus(state=state), success, value_timestamp=read, last_success_timestamp=read)


def report(*repositories: RepoHealth, read: float = NOW - 10) -> DriftReport:
    return DriftReport(
        {}, {r.repo_id: r.diverged_since or 0.0 for r in repositories}, list(repositories), inputs_at=read
    )


def verdict(state: FarmState, node: str = "node-1") -> tuple[bool, str] | None:
    found = node_verdict(state, "sydney", node, NOW, MAX_LAG)
    return (found.healthy, found.reason) if found is not None else None


def test_a_synchronized_node_with_nothing_late_is_healthy() -> None:
    within = behind("1", RepoState.CONTENT_DRIFT, MAX_LAG - 1)  # behind, not for long: a sync on its way
    assert verdict(farm(status(), report(within))) == (True, "ok: SYNCHRONIZED, no repository behind for over 300 s")


def test_a_repository_behind_past_the_bound_takes_the_node_out_naming_the_worst() -> None:
    late = [behind("7", RepoState.MISSING, 900), behind("3", RepoState.CONTENT_DRIFT, 400)]
    healthy, reason = verdict(farm(status(), report(*late))) or (True, "")
    assert not healthy
    assert reason == "behind: 2 repositories behind for over 300 s (1 missing); worst PRJ/repo-7, 900 s"


def test_failing_or_metadata_only_repositories_are_not_behind() -> None:
    metadata = behind("4", RepoState.METADATA_DRIFT, 10_000)
    failing = msgspec.structs.replace(behind("5", RepoState.IN_SYNC, 10_000), failed_syncs=3)
    assert verdict(farm(status(), report(metadata, failing)))[0] is True  # type: ignore[index]


@pytest.mark.parametrize(
    ("node_status", "drift", "reason"),
    [
        (SourceState[MirrorStatus](), report(), "unknown: the node's /status was not read yet"),
        (status(read=NOW - STALE_AFTER - 1), report(), "unknown: the node's /status is stale"),
        (
            replace(status(), success=False, error_reason="http_503"),
            report(),
            "down: the node's /status failed (http_503)",
        ),
        (status("METADATA_SYNCHRONIZED"), report(), "not synchronized: the node reports METADATA_SYNCHRONIZED"),
        (status(), None, "unknown: the node's repositories were not compared with the primary's yet"),
        (status(), report(read=NOW - STALE_AFTER - 30), "unknown: the node's drift is stale (inputs 120 s old)"),
    ],
)
def test_no_proof_is_a_no(node_status: SourceState[MirrorStatus], drift: DriftReport | None, reason: str) -> None:
    assert verdict(farm(node_status, drift)) == (False, reason)


def test_a_node_the_exporter_does_not_read_by_itself_is_not_found() -> None:
    assert verdict(farm(status(), report()), node="node-9") is None
    assert verdict(farm(status(), report(), by_node=False)) is None  # the farm URL only: no node is proven
    assert node_verdict(farm(status(), report()), "nowhere", "node-1", NOW, MAX_LAG) is None
