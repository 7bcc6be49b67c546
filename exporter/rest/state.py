"""What the REST source last learned: the primary, each mirror (and each of its nodes), source by source.

The pollers write it; the collector reads it on every scrape. Both run on the one event loop thread, so a scrape
always sees whole values: a source's ``value`` is replaced in one assignment, never mutated in place. Freshness:
exporter/sources.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.drift import DriftReport, PrimaryRepo, in_scope, lagging
from exporter.rest.api import OUT_OF_SYNC_REPOS, ActivityPage, ApiFamily, DelayedSync, normalize_url
from exporter.rest.client import ClockReading
from exporter.rest.models import ClusterNode, MirrorServer, MirrorStatus, SyncProgress, SyncSettings, UpstreamServer
from exporter.sources import SourceState
from exporter.state import Policy

# Known mirror /status states, exported at 0 even before they are seen so alerts can compare against them.
KNOWN_MIRROR_STATES = ("SYNCHRONIZED", "METADATA_SYNCHRONIZED", "BOOTSTRAPPED", "STARTING", "UNKNOWN")


@dataclass(frozen=True)
class RefQueue:
    length: int
    # Items of the dumped queue by sync type (lower-cased); the dump is capped by Bitbucket, the length is not.
    items_by_type: dict[str, int]


@dataclass(frozen=True)
class RepoSyncSummary:
    repositories: int
    failing: int
    failed_syncs: int
    newest_last_sync: float | None
    # failedSyncCount by repository id, for the failing ones only (few): a farm's union over its nodes needs them.
    failed_by_repo: dict[str, int] = field(default_factory=dict)

    @classmethod
    def union(cls, nodes: list[RepoSyncSummary]) -> RepoSyncSummary:
        """Over a farm's nodes: a repository fails when it fails on any node, with the most failures any node counts;
        the repository count is the most any node lists (their ids are not kept)."""
        failed: dict[str, int] = {}
        for node in nodes:
            for repo_id, count in node.failed_by_repo.items():
                failed[repo_id] = max(count, failed.get(repo_id, 0))
        newest = max((n.newest_last_sync for n in nodes if n.newest_last_sync is not None), default=None)
        return cls(max((n.repositories for n in nodes), default=0), len(failed), sum(failed.values()), newest, failed)


@dataclass
class NodeState:
    """One node of a farm, read at its own URL (nodes.url_template or nodes.static): its /status and its node-local
    repoSyncStatus, and the drift of its own copy."""

    name: str
    url: str
    status: SourceState[MirrorStatus] = field(default_factory=SourceState)
    repo_sync_status: SourceState[RepoSyncSummary] = field(default_factory=SourceState)
    # 8.x to 9.4 with diagnostics on: the node-local out-of-sync-repos (repository ids); never polled otherwise.
    out_of_sync_repos: SourceState[frozenset[str]] = field(default_factory=SourceState)
    drift: DriftReport | None = None
    states_seen: set[str] = field(default_factory=lambda: set(KNOWN_MIRROR_STATES))

    def sources(self) -> dict[str, SourceState[Any]]:
        sources: dict[str, SourceState[Any]] = {"status": self.status, "repo_sync_status": self.repo_sync_status}
        if self.out_of_sync_repos.polled:  # only where the mirror offers it (8.x to 9.4, switched on)
            sources["out_of_sync_repos"] = self.out_of_sync_repos
        return sources


@dataclass
class MirrorState:
    name: str
    url: str
    api_family: ApiFamily | None = None
    states_seen: set[str] = field(default_factory=lambda: set(KNOWN_MIRROR_STATES))
    status: SourceState[MirrorStatus] = field(default_factory=SourceState)
    upstream: SourceState[UpstreamServer] = field(default_factory=SourceState)
    progress: SourceState[SyncProgress] = field(default_factory=SourceState)
    farm_nodes: SourceState[list[ClusterNode]] = field(default_factory=SourceState)
    ref_changes_queue: SourceState[RefQueue] = field(default_factory=SourceState)
    repo_sync_status: SourceState[RepoSyncSummary] = field(default_factory=SourceState)
    sync_settings: SourceState[SyncSettings] = field(default_factory=SourceState)
    delayed_sync: SourceState[DelayedSync] = field(default_factory=SourceState)
    drift: DriftReport | None = None
    # The mirror's clock against the exporter's; beside the primary's, the skew JWT authentication depends on.
    clock: ClockReading | None = None
    # With nodes configured: each node's own state, by farmNodes name (or static name). The mirror's
    # repo_sync_status and drift are then the union over the nodes that answered (exporter/rest/nodes.py).
    nodes: dict[str, NodeState] = field(default_factory=dict)
    by_node: bool = False
    # How many nodes answered the latest cycle's listing, and when that cycle ended.
    nodes_polled: int = 0
    nodes_polled_at: float | None = None
    discovered: bool = False
    cycles: int = 0
    # The freshness SLO's events (docs/slo.md), counted as each drift report arrives: its repositories in scope, and
    # per lag bound those behind longer. Counters, for SLO tools that take events (pyrra, sloth).
    repository_checks: int = 0
    late_repository_checks: dict[int, int] = field(default_factory=dict)

    def take_report(self, report: DriftReport, now: float) -> None:
        """The mirror's new drift report (of a cycle that read both listings), counted for the freshness SLO."""
        self.drift = report
        self.repository_checks += in_scope(report)
        for over, count in lagging(report, now).items():
            self.late_repository_checks[over] = self.late_repository_checks.get(over, 0) + count

    def delayed(self, now: float, stale_after: float) -> DelayedSync | None:
        """Bitbucket's own list of delayed repositories while fresh. Where it is out-of-sync-repos (8.x to 9.4,
        node-local) and the nodes are read one by one, a repository delayed on any node is delayed on the mirror:
        the union of the nodes' fresh lists, derived here at each rendering rather than written over the farm URL's."""
        value = self.delayed_sync.fresh(now, stale_after)
        if value is None or not value.available or value.endpoint != OUT_OF_SYNC_REPOS or not self.by_node:
            return value
        lists = [ids for n in self.nodes.values() if (ids := n.out_of_sync_repos.fresh(now, stale_after)) is not None]
        return DelayedSync(True, OUT_OF_SYNC_REPOS, len(frozenset().union(*lists))) if lists else value

    def sources(self) -> dict[str, SourceState[Any]]:
        sources: dict[str, SourceState[Any]] = {
            "status": self.status,
            "upstream": self.upstream,
            "progress": self.progress,
            "farm_nodes": self.farm_nodes,
            "ref_changes_queue": self.ref_changes_queue,
            "repo_sync_status": self.repo_sync_status,
            "sync_settings": self.sync_settings,
            "delayed_sync": self.delayed_sync,
        }
        if self.by_node:
            del sources["repo_sync_status"]  # not polled at the farm URL: each node's is (NodeState.sources)
        return sources


@dataclass
class PrimaryState:
    url: str
    mirror_servers: SourceState[list[MirrorServer]] = field(default_factory=SourceState)
    # The primary's repositories by id, with their content hashes (metadata hashes are read by the workers alone, which
    # compare them: None here): fetched once per cycle, shared by every mirror.
    repositories: SourceState[Mapping[str, PrimaryRepo]] = field(default_factory=SourceState)
    # The ref change activity pages asked to date divergences from the push (exporter/rest/push_dating.py): the
    # latest lookup's outcome, and every failure counted.
    ref_change_activity: SourceState[ActivityPage] = field(default_factory=lambda: SourceState(on_demand=True))
    clock: ClockReading | None = None
    cycles: int = 0
    # Repositories whose content hash changed between two listings since start: the pushes polling sees.
    content_changes: int = 0

    def sources(self) -> dict[str, SourceState[Any]]:
        sources: dict[str, SourceState[Any]] = {
            "mirror_servers": self.mirror_servers,
            "repositories": self.repositories,
        }
        if self.ref_change_activity.polled:  # asked only while some repository diverges
            sources["ref_change_activity"] = self.ref_change_activity
        return sources


@dataclass
class FarmState:
    """The REST source's whole state: the primary and every mirror (configured and discovered), and the rendering
    policy they are read with."""

    primary: PrimaryState
    mirrors: list[MirrorState]
    policy: Policy = field(default_factory=Policy)

    def mirror_label(self, base_url: str | None, fallback: str) -> str:
        """The configured mirror whose URL is the server's base URL, else the name the primary gives it."""
        if base_url:
            wanted = normalize_url(base_url)
            for mirror in self.mirrors:
                if normalize_url(mirror.url) == wanted:
                    return mirror.name
        return fallback

    def mirror_of_server(self, server_id: str, name: str | None) -> str:
        """The ``mirror`` label for the primary's mirror server ``server_id`` (a webhook names it so): by the base
        URL the primary's mirrorServers lists for it, else the name it is sent with."""
        servers = self.primary.mirror_servers.value or []
        server = next((s for s in servers if s.id == server_id), None)
        return self.mirror_label(server.base_url if server is not None else None, name or server_id)

    @property
    def ready(self) -> bool:
        """Every configured target has finished at least one poll cycle (discovered mirrors join later)."""
        return self.primary.cycles > 0 and all(m.cycles > 0 for m in self.mirrors if not m.discovered)
