"""The simulated primary and mirrors as plain state: repositories, hashes, pushes and syncs.

Time moves only when ``advance(now)`` is called (the servers call it on every request), and every random choice comes
from one seeded generator, so a scenario replays the same way for the same seed and the same request times. The farm
knows the truth it created, which tests compare with what the exporter reports.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

ZERO_HASH = "0" * 40
FAULTS = ("reset", "unavailable", "error", "unauthorized", "html", "broken_json", "hang")


def _digest(*parts: object) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


@dataclass
class Project:
    id: int
    key: str
    name: str


@dataclass
class Repository:
    id: int
    project: Project
    slug: str
    content_version: int = 1
    metadata_version: int = 1
    content_changed_at: float = 0.0
    # Hashes never computed since an upgrade show as 40 zeros (Atlassian KB); never counted as drift.
    zero_hashes: bool = False

    def content_hash(self, version: int | None = None) -> str:
        if self.zero_hashes:
            return ZERO_HASH
        return _digest("content", self.id, self.content_version if version is None else version)

    def metadata_hash(self, version: int | None = None) -> str:
        if self.zero_hashes:
            return ZERO_HASH
        return _digest("metadata", self.id, self.metadata_version if version is None else version)


@dataclass
class MirrorRepository:
    local_id: int
    local_project_id: int
    content_version: int
    metadata_version: int
    initial_sync_date: float
    last_sync_date: float
    failed_sync_count: int = 0


@dataclass
class Mirror:
    name: str
    api_family: str  # "8.x" or "9.x"
    server_id: str
    upstream_id: str
    nodes: int = 2
    state: str = "SYNCHRONIZED"
    upstream_state: str = "INSTALLED"
    enabled: bool = True
    # A frozen mirror syncs nothing: the primary moves on and drift grows.
    frozen: bool = False
    base_url: str = ""
    repositories: dict[int, MirrorRepository] = field(default_factory=dict)
    failing: set[int] = field(default_factory=set)
    # Endpoint name (or "*") -> fault kind from FAULTS.
    faults: dict[str, str] = field(default_factory=dict)
    last_seen: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)

    def fault_for(self, endpoint: str) -> str | None:
        return self.faults.get(endpoint) or self.faults.get("*")


@dataclass
class Scenario:
    seed: int = 1
    projects: int = 3
    repositories: int = 30
    mirrors: int = 2
    # Pushes per second to random repositories on the primary.
    push_rate: float = 0.0
    # Seconds a mirror takes to pick up a change on the primary.
    sync_delay_seconds: float = 0.0
    failing_repositories: int = 0
    failed_sync_count: int = 3
    zero_hash_repositories: int = 0
    # The page size Bitbucket applies at most, whatever limit a client asks for.
    page_limit_cap: int = 100
    default_page_limit: int = 25
    username: str = "admin"
    password: str = "admin"
    token: str = "simulated-token"


class Farm:
    def __init__(self, scenario: Scenario, now: float, mirror_families: list[str] | None = None) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.now = now
        self.projects = [Project(i + 1, f"PRJ{i + 1}", f"Project {i + 1}") for i in range(scenario.projects)]
        self.repositories: dict[int, Repository] = {}
        for i in range(scenario.repositories):
            project = self.projects[i % len(self.projects)]
            self.repositories[i + 1] = Repository(i + 1, project, f"repo-{i + 1}", content_changed_at=now)
        for repo_id in self.rng.sample(sorted(self.repositories), scenario.zero_hash_repositories):
            self.repositories[repo_id].zero_hashes = True
        families = mirror_families or [("9.x" if i % 2 == 0 else "8.x") for i in range(scenario.mirrors)]
        self.mirrors: dict[str, Mirror] = {}
        names = ["sydney", "frankfurt", "saopaulo", "tokyo", "toronto", "mumbai"]
        for i, family in enumerate(families):
            name = names[i] if i < len(names) else f"mirror{i + 1}"
            mirror = Mirror(name, family, server_id=f"MIRROR-{i + 1:04d}", upstream_id=_digest("upstream", i)[:32])
            mirror.last_seen = now
            for repo in self.repositories.values():
                mirror.repositories[repo.id] = MirrorRepository(
                    local_id=1000 + repo.id,
                    local_project_id=100 + repo.project.id,
                    content_version=repo.content_version,
                    metadata_version=repo.metadata_version,
                    initial_sync_date=now,
                    last_sync_date=now,
                )
            failing = self.rng.sample(sorted(self.repositories), scenario.failing_repositories)
            for repo_id in failing:
                mirror.failing.add(repo_id)
                mirror.repositories[repo_id].failed_sync_count = scenario.failed_sync_count
            self.mirrors[name] = mirror
        self.primary_requests: dict[str, int] = {}
        self.primary_url = ""

    # --- time -----------------------------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Apply the pushes due since the last call, then let each mirror sync what it has had time to."""
        if now <= self.now:
            return
        elapsed = now - self.now
        pushes = self._pushes_due(elapsed)
        for _ in range(pushes):
            self.push(self.rng.choice(sorted(self.repositories)), at=self.now + self.rng.uniform(0, elapsed))
        self.now = now
        for mirror in self.mirrors.values():
            self._sync(mirror)

    def _pushes_due(self, elapsed: float) -> int:
        expected = self.scenario.push_rate * elapsed
        whole = int(expected)
        return whole + (1 if self.rng.random() < expected - whole else 0)

    def push(self, repo_id: int, at: float | None = None, metadata_only: bool = False) -> None:
        repo = self.repositories[repo_id]
        if metadata_only:
            repo.metadata_version += 1
            return
        repo.content_version += 1
        repo.content_changed_at = self.now if at is None else at

    def _sync(self, mirror: Mirror) -> None:
        if mirror.frozen:
            return
        mirror.last_seen = self.now
        for repo_id, mrepo in mirror.repositories.items():
            repo = self.repositories.get(repo_id)
            if repo is None or repo_id in mirror.failing:
                continue
            due = self.now - repo.content_changed_at >= self.scenario.sync_delay_seconds
            if due and (mrepo.content_version, mrepo.metadata_version) != (
                repo.content_version,
                repo.metadata_version,
            ):
                mrepo.content_version = repo.content_version
                mrepo.metadata_version = repo.metadata_version
                mrepo.last_sync_date = self.now

    # --- views the servers render ---------------------------------------------------------------------------------

    def pending(self, mirror: Mirror) -> list[tuple[int, str]]:
        """Repositories waiting to sync on the mirror, with the sync type Bitbucket would queue."""
        items = []
        for repo_id, mrepo in sorted(mirror.repositories.items()):
            repo = self.repositories.get(repo_id)
            if repo is None or repo_id in mirror.failing or mrepo.content_version == repo.content_version:
                continue
            items.append((repo_id, "snapshot" if repo.content_version - mrepo.content_version > 1 else "incremental"))
        return items

    def truth(self) -> dict[str, Any]:
        mirrors = {}
        for mirror in self.mirrors.values():
            repos = mirror.repositories.values()
            mirrors[mirror.name] = {
                "api_family": mirror.api_family,
                "base_url": mirror.base_url,
                "state": mirror.state,
                "nodes": mirror.nodes,
                "frozen": mirror.frozen,
                "faults": dict(mirror.faults),
                "repositories": len(mirror.repositories),
                "repositories_failing": sum(1 for r in repos if r.failed_sync_count > 0),
                "failed_syncs": sum(r.failed_sync_count for r in repos),
                "newest_last_sync": max((r.last_sync_date for r in repos), default=None),
                "ref_changes_queue_length": len(self.pending(mirror)),
                "content_drift": sorted(
                    rid
                    for rid, r in mirror.repositories.items()
                    if rid in self.repositories
                    and not self.repositories[rid].zero_hashes
                    and r.content_version != self.repositories[rid].content_version
                ),
                "requests": dict(mirror.requests),
            }
        return {
            "now": self.now,
            "repositories": len(self.repositories),
            "zero_hash_repositories": sorted(r.id for r in self.repositories.values() if r.zero_hashes),
            "primary_requests": dict(self.primary_requests),
            "mirrors": mirrors,
        }
