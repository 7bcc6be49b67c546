"""A seeded, hand-built exporter state under a frozen clock: what the collectors render from it is the golden
exposition (tests/unit/golden/exposition.txt), so every change to a series shows in one reviewable diff."""

from __future__ import annotations

from exporter.app import ExporterState
from exporter.drift import MirrorRepo, PrimaryRepo, analyse, union
from exporter.git.refs import Comparison, Difference, RefVerdict
from exporter.git.state import GitCheck, GitMirrorState
from exporter.jmx.reading import NodeReading, TicketReading, TimerReading
from exporter.jmx.state import JmxNodeState
from exporter.rest.api import ApiFamily, DelayedSync
from exporter.rest.client import ClockReading
from exporter.rest.models import (
    ClusterNode,
    MirrorServer,
    MirrorStatus,
    NodeAddress,
    SyncProgress,
    SyncSettings,
    UpstreamServer,
)
from exporter.rest.state import MirrorState, NodeState, PrimaryState, RefQueue, RepoSyncSummary
from exporter.sources import SourceState
from exporter.state import Policy

NOW = 1_800_000_000.0
A, B, ZERO = "a" * 64, "b" * 64, "0" * 40


def fresh(value: object, age: float = 5.0, duration: float = 0.25) -> SourceState[object]:
    return SourceState(
        value=value,
        success=True,
        duration_seconds=duration,
        last_success_timestamp=NOW - age,
        value_timestamp=NOW - age,
    )


def failing(value: object, age: float, reason: str, errors: int) -> SourceState[object]:
    state = fresh(value, age)
    state.success, state.error_reason, state.errors_total = False, reason, {reason: errors}
    return state


def primary_repositories() -> dict[str, PrimaryRepo]:
    repos = {
        str(i): PrimaryRepo("1" if i <= 5 else "2", "PRJ" if i <= 5 else "OPS", f"repo-{i}", A, A) for i in range(1, 9)
    }
    repos["8"] = PrimaryRepo("2", "OPS", "repo-8", ZERO, ZERO)  # hashes never computed
    return repos


def mirror_rows(kind: str) -> dict[str, MirrorRepo]:
    rows = {str(i): MirrorRepo(A, A, 0) for i in range(1, 9)}
    if kind == "behind":
        rows["2"] = MirrorRepo(B, A, 0)  # a silent laggard
        rows["3"] = MirrorRepo(B, A, 4)  # failing
        del rows["4"]  # missing
        rows["5"] = MirrorRepo(A, B, 0)  # metadata only
        rows["99"] = MirrorRepo(A, A, 0)  # extra
    return rows


def mirror(name: str, family: ApiFamily, kind: str) -> MirrorState:
    state = MirrorState(name=name, url=f"https://{name}.example.com", api_family=family)
    state.status = fresh(MirrorStatus(state="SYNCHRONIZED", memberCount=2))  # type: ignore[assignment]
    state.upstream = fresh(UpstreamServer(id="up-1", state="INSTALLED"))  # type: ignore[assignment]
    state.progress = fresh(SyncProgress())  # type: ignore[assignment]
    nodes = [
        ClusterNode(id=f"{name}-{i}", name=f"{name}-{i}", address=NodeAddress(address="10.0.0.1", port=7777))
        for i in (1, 2)
    ]
    state.farm_nodes = fresh(nodes)  # type: ignore[assignment]
    state.ref_changes_queue = fresh(RefQueue(length=3, items_by_type={"incremental": 2, "snapshot": 1}))  # type: ignore[assignment]
    rows = mirror_rows(kind)
    failing_rows = [r for r in rows.values() if r.failed_syncs]
    summary = RepoSyncSummary(len(rows), len(failing_rows), sum(r.failed_syncs for r in failing_rows), NOW - 60)
    state.repo_sync_status = fresh(summary)  # type: ignore[assignment]
    state.sync_settings = fresh(SyncSettings())  # type: ignore[assignment]
    state.delayed_sync = fresh(DelayedSync(True, "delayed-sync", 1 if kind == "behind" else 0))  # type: ignore[assignment]
    previous = {"2": NOW - 600, "3": NOW - 3600, "4": NOW - 1800} if kind == "behind" else {}
    report = analyse(primary_repositories(), None, rows, previous, NOW - 10)
    # Taken as a poll takes it: counted once among the freshness SLO's events.
    state.take_report(
        type(report)(report.counts, report.diverged_since, report.repositories, report.laggard_since, NOW - 10), NOW
    )
    state.clock = ClockReading(offset_seconds=21.4 if kind == "behind" else 0.2, at=NOW - 5)
    state.cycles = 12
    return state


def by_node(state: MirrorState) -> None:
    """sydney read node by node: sydney-1 is behind, sydney-2 in sync, sydney-3 down for long (no drift series);
    the mirror's report is the union of the two that answered, which equals the 'behind' listing's own."""
    previous = {"2": NOW - 600, "3": NOW - 3600, "4": NOW - 1800}
    state.by_node, state.nodes_polled, state.nodes_polled_at = True, 2, NOW - 5
    reports = []
    for name, kind in (("sydney-1", "behind"), ("sydney-2", "in_sync")):
        node = NodeState(name, f"http://10.0.0.{name[-1]}:7990")
        node.status = fresh(MirrorStatus(state="SYNCHRONIZED"))  # type: ignore[assignment]
        rows = mirror_rows(kind)
        node.repo_sync_status = fresh(RepoSyncSummary(len(rows), 0, 0, NOW - 60))  # type: ignore[assignment]
        since = previous if kind == "behind" else {}
        node.drift = analyse(primary_repositories(), None, rows, since, NOW - 10, per_node=True)
        reports.append(node.drift)
        state.nodes[name] = node
    down = NodeState("sydney-3", "http://10.0.0.3:7990")
    down.status = failing(MirrorStatus(state="SYNCHRONIZED"), age=600, reason="connect_timeout", errors=20)  # type: ignore[assignment]
    down.repo_sync_status = failing(None, age=600, reason="connect_timeout", errors=20)  # type: ignore[assignment]
    state.nodes["sydney-3"] = down
    state.drift = union(reports)


def seeded_state() -> ExporterState:
    primary = PrimaryState(url="https://bitbucket.example.com")
    servers = [
        MirrorServer(id="M-1", name="sydney", baseUrl="https://sydney.example.com", enabled=True,
                     lastSeenDate=(NOW - 30) * 1000, mirrorType="FARM", productVersion="9.6.0"),
        MirrorServer(id="M-9", name="unmonitored", baseUrl="https://other.example.com", enabled=False),
    ]  # fmt: skip
    primary.mirror_servers = fresh(servers)  # type: ignore[assignment]
    primary.repositories = fresh(primary_repositories())  # type: ignore[assignment]
    primary.clock = ClockReading(offset_seconds=0.4, at=NOW - 5)
    sydney = mirror("sydney", ApiFamily.V9, "behind")
    frankfurt = mirror("frankfurt", ApiFamily.V8, "in_sync")
    # frankfurt's progress fails, but its last value is still within stale_after; its listing is stale.
    frankfurt.progress = failing(SyncProgress(), age=40, reason="http_500", errors=3)  # type: ignore[assignment]
    frankfurt.repo_sync_status = failing(frankfurt.repo_sync_status.value, age=200, reason="http_401", errors=7)  # type: ignore[assignment]
    report = frankfurt.drift
    assert report is not None  # its last report was computed when that listing was last read
    frankfurt.drift = type(report)(report.counts, report.diverged_since, report.repositories, None, NOW - 200)
    timer = TimerReading("com.atlassian:name=Incremental", count=40, rate_per_second=0.5,
                         quantiles={"0.5": 0.2, "0.99": 1.5}, mean=0.3, max=2.0, min=0.1, stddev=0.2)  # fmt: skip
    reading = NodeReading(beans=3, timers={"incremental": timer}, tickets=[
        TicketReading("com.atlassian:name=scm-hosting", "scm-hosting", "Available", 8)])  # fmt: skip
    node = JmxNodeState("service:jmx:rmi:///jndi/rmi://sydney-1:3333/jmxrmi")
    node.source = fresh(reading, age=20, duration=0.8)  # type: ignore[assignment]
    node.source.own_interval = 60.0  # jmx.interval_seconds
    by_node(sydney)
    state = ExporterState(primary=primary, mirrors=[sydney, frankfurt], policy=Policy("unhealthy", 2, 90.0))
    state.jmx = {"sydney": {"sydney-1": node}}
    state.git.mirrors = [git_mirror()]
    # verify_refs on sydney: repo-2's main branch one commit behind the primary's.
    main_behind = Comparison(1, 1, (Difference("refs/heads/main", "5" * 40, "6" * 40),), ())
    state.git.verified = {"sydney": fresh([RefVerdict("PRJ", "repo-2", main_behind)])}  # type: ignore[dict-item]
    return state


def git_mirror() -> GitMirrorState:
    """A CI reference mirror two refs behind its remote for 10 minutes, with an extra ref the remote deleted."""
    behind = (Difference("refs/heads/main", "1" * 40, "2" * 40), Difference("refs/tags/v2", None, "3" * 40))
    extra = (Difference("refs/heads/old", "4" * 40, None),)
    mirror = GitMirrorState("ci-reference", "/mirrors/app.git")
    remote = "https://bitbucket.example.com/scm/prj/app.git"
    check = GitCheck(Comparison(41, 42, behind, extra), NOW - 900, 123_456_789, remote, behind_since=NOW - 600)
    mirror.refs = fresh(check, age=30, duration=0.4)  # type: ignore[assignment]
    mirror.refs.own_interval = 60.0  # the git mirror's interval_seconds
    return mirror
