"""The simulated primary and mirrors as plain state: repositories, hashes, pushes and syncs.

Time moves only when ``advance(now)`` is called (the servers call it on every request), and every random choice comes
from one seeded generator, so a scenario replays the same way for the same seed and the same request times. The farm
knows the truth it created, which tests compare with what the exporter reports.

It must stay cheap at 100,000 repositories (bench/scale.py), because the servers call ``advance`` on every request:
each mirror keeps the set of repositories it is behind on and the earliest time one of them may sync, so a request
costs nothing while no sync is due; and ``revision`` changes with every change that the repository listings show, so
the servers render each listing once per change rather than once per page.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator.accounts import Accounts

ZERO_HASH = "0" * 40
# Drift classes from worst to best: a farm's repository is in the worst class any of its nodes puts it in.
WORST_FIRST = ("missing", "content_drift", "metadata_drift", "hash_unknown", "in_sync")
FAULTS = (
    "reset",
    "unavailable",
    "error",
    "bad_gateway",
    "rate_limited",
    "unauthorized",
    "forbidden",
    "html",
    "broken_json",
    "truncated_json",
    "wrong_shape",
    "page_loop",
    "enormous",
    "slow_drip",
    "stall_mid_body",
    "hang",
)


def _digest(*parts: object) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


@dataclass
class Project:
    id: int
    key: str
    name: str


@dataclass(frozen=True)
class Push:
    """One ref change on the primary: what ref-change-activities lists."""

    activity_id: int
    at: float  # true time; served on the primary's clock
    from_version: int
    to_version: int


# Ref changes each repository remembers (newest kept); enough for any test, bounded for the soak's churn.
PUSHES_KEPT = 200


@dataclass
class Repository:
    id: int
    project: Project
    slug: str
    content_version: int = 1
    metadata_version: int = 1
    content_changed_at: float = 0.0
    metadata_changed_at: float = 0.0
    # Hashes never computed since an upgrade show as 40 zeros (Atlassian KB); never counted as drift.
    zero_hashes: bool = False
    # When it was created, with its first branch (version 1): the oldest ref change it lists.
    created_at: float = 0.0
    # Content pushes after the creation, oldest first, at most PUSHES_KEPT.
    pushes: list[Push] = field(default_factory=list)

    def commit(self, version: int) -> str:
        """The head commit of version ``version`` (all zeros before the creation)."""
        return ZERO_HASH if version <= 0 else _digest("commit", self.id, version)[:40]

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
    # When the mirror's content first fell behind the primary's current divergence; None while in sync.
    diverged_since: float | None = None


@dataclass
class FarmNode:
    """One node of a mirror farm. Every node keeps its own copy of every repository (Bitbucket's node-local
    listings); here a node's copy is the farm's (``Mirror.repositories``) except where ``differs`` or ``missing`` say
    otherwise, so a farm of healthy nodes costs nothing extra at 100,000 repositories."""

    name: str
    # Its own loopback address (the runner sets it), as farmNodes lists it; the farm's nodes share one HTTP port.
    address: str = "127.0.0.1"
    # A frozen node syncs nothing while its peers go on: it falls behind alone.
    frozen: bool = False
    # A node that is down resets every connection; the farm's load balancer stops sending requests to it.
    down: bool = False
    # Repositories this node alone does not sync (a stuck repository on one node's disk).
    held: set[int] = field(default_factory=set)
    # Its own /status state, where it differs from the farm's (Mirror.state).
    state: str | None = None
    # A fault (from FAULTS) every answer of its own server gets, beside the mirror's faults.
    fault: str | None = None
    # Repository id -> this node's older copy, where it has not synced what the farm has.
    differs: dict[int, MirrorRepository] = field(default_factory=dict)
    # Repository id -> when this node lost its copy (the farm's other nodes still have one).
    missing: dict[int, float] = field(default_factory=dict)
    # Syncs the node has run, by kind, for its jmx_exporter text.
    syncs: dict[str, int] = field(default_factory=lambda: {"incremental": 0, "snapshot": 0, "farm_vet": 0})
    requests: dict[str, int] = field(default_factory=dict)


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
    # Listed by the primary's mirrorServers; False: an admin removed the mirror from the primary.
    registered: bool = True
    # A frozen mirror syncs nothing: the primary moves on and drift grows.
    frozen: bool = False
    base_url: str = ""
    repositories: dict[int, MirrorRepository] = field(default_factory=dict)
    failing: set[int] = field(default_factory=set)
    # Endpoint name (or "*") -> fault kind from FAULTS.
    faults: dict[str, str] = field(default_factory=dict)
    # Faulty answers left before the faults heal by themselves (a burst); None: until changed.
    fault_budget: int | None = None
    last_seen: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)
    # Primary project ids the mirror carries (syncSettings SELECTED_PROJECTS); None: all projects.
    selected_projects: set[int] | None = None
    # Repositories in scope that the mirror does not have, with the time they went missing.
    missing: dict[int, float] = field(default_factory=dict)
    # 8.x to 9.4: out-of-sync-repos answers 409 unless plugin.mirroring.repository.diagnostics.sync.enabled.
    diagnostics_enabled: bool = False
    # How far the mirror's clock (its answers' Date header) runs ahead of the true time.
    clock_skew_seconds: float = 0.0
    # Repositories whose content or metadata version differs from the primary's; only these can sync.
    behind: set[int] = field(default_factory=set)
    # No repository in ``behind`` may sync before this time (a lower bound: -inf means "look").
    next_sync_due: float = -math.inf
    # The farm's nodes, ``nodes`` of them (resize_nodes keeps them in step); the farm URL balances over those up.
    farm_nodes: list[FarmNode] = field(default_factory=list)
    # The load balancer's round-robin position.
    balanced: int = 0

    def __post_init__(self) -> None:
        self.resize_nodes()

    def resize_nodes(self) -> None:
        """Add or drop nodes to match ``nodes`` (the ones kept keep their state)."""
        del self.farm_nodes[self.nodes :]
        for i in range(len(self.farm_nodes), self.nodes):
            self.farm_nodes.append(FarmNode(f"{self.name}-node-{i + 1}"))

    def node(self, name: str) -> FarmNode | None:
        return next((node for node in self.farm_nodes if node.name == name), None)

    def node_view(self, node: FarmNode) -> dict[int, MirrorRepository]:
        """The node's own copy: the farm's, with its older copies and without the repositories it lacks."""
        if not node.differs and not node.missing:
            return self.repositories
        view = dict(self.repositories)
        for repo_id, copy in node.differs.items():
            if repo_id in view:
                view[repo_id] = copy
        for repo_id in node.missing:
            view.pop(repo_id, None)
        return view

    def in_scope(self, repo: Repository) -> bool:
        return self.selected_projects is None or repo.project.id in self.selected_projects

    def fault_for(self, endpoint: str) -> str | None:
        fault = self.faults.get(endpoint) or self.faults.get("*")
        if fault is not None and self.fault_budget is not None:
            self.fault_budget -= 1
            if self.fault_budget <= 0:
                self.faults, self.fault_budget = {}, None
        return fault


@dataclass
class Scenario:
    seed: int = 1
    projects: int = 3
    repositories: int = 30
    mirrors: int = 2
    # Nodes of each mirror farm, each with its own copy (the farm URL balances over them).
    nodes: int = 2
    # Pushes per second to random repositories on the primary.
    push_rate: float = 0.0
    # Seconds a mirror takes to pick up a change on the primary; metadata (and pull-request refs) sync on their own.
    sync_delay_seconds: float = 0.0
    metadata_sync_delay_seconds: float = 0.0
    # plugin.mirroring.repository.diagnostics.sync.tolerance: when Bitbucket itself calls a repository delayed.
    sync_tolerance_seconds: float = 60.0
    failing_repositories: int = 0
    failed_sync_count: int = 3
    zero_hash_repositories: int = 0
    # Repositories each mirror lacks from the start.
    missing_repositories: int = 0
    # The page size Bitbucket applies at most, whatever limit a client asks for.
    page_limit_cap: int = 100
    default_page_limit: int = 25
    # How far the primary's clock (its answers' Date header) runs ahead of the true time.
    primary_clock_skew_seconds: float = 0.0
    # Seconds the primary takes for each answer: a large primary's listing takes longer than a mirror's.
    primary_latency_seconds: float = 0.0
    # The same for every mirror's (and node's) answers: a listing walk of many pages then takes seconds.
    mirror_latency_seconds: float = 0.0
    # Share of mirror:repo_synchronized events sent with refLimitExceeded (and so without changes).
    ref_limit_exceeded_rate: float = 0.0
    # Whether a project webhook may carry mirror:repo_synchronized (false: only repository webhooks may).
    project_webhook_mirror_events: bool = True
    # The order ref-change-activities lists in: "newest_first" (as seen, not published) or "oldest_first".
    activity_order: str = "newest_first"
    # The primary's version: project webhooks exist from 8.10 (before, their paths answer 404).
    primary_version: str = "9.6.0"
    # Bitbucket's webhook circuit breaker: how long the first skip lasts after 5 failed deliveries in a row.
    webhook_first_skip_seconds: float = 10.0
    username: str = "admin"
    password: str = "admin"
    token: str = "simulated-token"
    # Failed logins of the account in a row before Bitbucket wants a CAPTCHA (simulator/accounts.py); 0: never.
    captcha_after_failures: int = 5


def version_at_least(version: str, *wanted: int) -> bool:
    parts = tuple(int(p) for p in version.split(".")[: len(wanted)] if p.isdigit())
    return parts >= wanted


@dataclass
class MidWalkPush:
    """Pushes that land in the middle of listing walks: once every watched listing (a route name: ``repos`` for the
    primary's, ``repo_sync_status`` for a mirror's) has served, in its current walk, a page starting at or after
    ``after_start``. So a repository on an earlier page was read with its old hashes on both sides, and the walks end
    after the push: the case a walk's end time cannot prove."""

    repository_ids: list[int]
    after_start: int
    listings: set[str]
    reached: set[str] = field(default_factory=set)
    pushed_at: float | None = None


class Farm:
    def __init__(self, scenario: Scenario, now: float, mirror_families: list[str] | None = None) -> None:
        self.scenario = scenario
        self.rng = random.Random(scenario.seed)
        self.accounts = Accounts(scenario)
        self.now = now
        self.revision = 0
        self.projects = [Project(i + 1, f"PRJ{i + 1}", f"Project {i + 1}") for i in range(scenario.projects)]
        self.repositories: dict[int, Repository] = {}
        for i in range(scenario.repositories):
            project = self.projects[i % len(self.projects)]
            self.repositories[i + 1] = Repository(
                i + 1, project, f"repo-{i + 1}", content_changed_at=now, created_at=now
            )
        for repo_id in self.rng.sample(sorted(self.repositories), scenario.zero_hash_repositories):
            self.repositories[repo_id].zero_hashes = True
        families = mirror_families or [("9.x" if i % 2 == 0 else "8.x") for i in range(scenario.mirrors)]
        self.mirrors: dict[str, Mirror] = {}
        names = ["sydney", "frankfurt", "saopaulo", "tokyo", "toronto", "mumbai"]
        for i, family in enumerate(families):
            name = names[i] if i < len(names) else f"mirror{i + 1}"
            mirror = Mirror(
                name,
                family,
                server_id=f"MIRROR-{i + 1:04d}",
                upstream_id=_digest("upstream", i)[:32],
                nodes=scenario.nodes,
            )
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
            self.make_missing(mirror, self.rng.sample(sorted(self.repositories), scenario.missing_repositories))
        self.primary_requests: dict[str, int] = {}
        # Every (method, path template) a client asked of the primary, a mirror or a node, with the first URL asked.
        self.asked: dict[tuple[str, str], str] = {}
        self.primary_url = ""
        self.activities = 0  # ref change activity ids handed out
        # Webhook events waiting for the runner to deliver them: (event key, payload). Kept only while some
        # webhook is registered (``webhooks_on``), so a farm without webhooks pays nothing.
        self.outbox: list[tuple[str, dict[str, Any]]] = []
        self.webhooks_on = False
        # Pushes armed to land in the middle of listing walks (POST /sim/push_mid_walk).
        self.mid_walk: MidWalkPush | None = None
        # ref-change-activities answers 401 for these repositories (no REPO_ADMIN); None: for every repository.
        self.activity_denied: set[int] | None = set()

    def page_served(self, listing: str, start: int) -> None:
        """A page of ``listing`` starting at ``start`` was served: fires an armed mid-walk push when due."""
        armed = self.mid_walk
        if armed is None or armed.pushed_at is not None or listing not in armed.listings:
            return
        if start == 0:
            armed.reached.discard(listing)  # a new walk of this listing
        elif start >= armed.after_start:
            armed.reached.add(listing)
        if armed.reached == armed.listings:
            for repo_id in armed.repository_ids:
                self.push(repo_id)
            armed.pushed_at = self.now

    def changed(self) -> None:
        """Something the repository listings show has changed: servers render them again."""
        self.revision += 1

    def by_slug(self, project_key: str, slug: str) -> Repository | None:
        # Slugs are "repo-<id>" (see __init__), so the lookup needs no index.
        prefix, _, number = slug.partition("-")
        repo = self.repositories.get(int(number)) if prefix == "repo" and number.isdigit() else None
        return repo if repo is not None and repo.project.key == project_key else None

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
        when = self.now if at is None else at
        self.changed()
        if metadata_only:
            repo.metadata_version += 1
            repo.metadata_changed_at = when
            due = when + self.scenario.metadata_sync_delay_seconds
        else:
            repo.content_version += 1
            repo.content_changed_at = when
            self.activities += 1
            repo.pushes.append(Push(self.activities, when, repo.content_version - 1, repo.content_version))
            del repo.pushes[:-PUSHES_KEPT]
            self._send("repo:refs_changed", repo, when, [self._change(repo, repo.content_version)])
            due = when + self.scenario.sync_delay_seconds
        for mirror in self.mirrors.values():
            mrepo = mirror.repositories.get(repo_id)
            if mrepo is None:
                continue
            if not metadata_only and mrepo.diverged_since is None:
                mrepo.diverged_since = when
            mirror.behind.add(repo_id)
            mirror.next_sync_due = min(mirror.next_sync_due, due)

    def sync_now(self, repo_ids: Iterable[int]) -> None:
        """Every mirror that is not frozen syncs these repositories now, whatever the sync delays (bench/scale.py's
        changes between cycles: pushed before one cycle, synced before the next)."""
        for mirror in self.mirrors.values():
            if mirror.frozen:
                continue
            for repo_id in repo_ids:
                repo, mrepo = self.repositories.get(repo_id), mirror.repositories.get(repo_id)
                if repo is None or mrepo is None or repo_id in mirror.failing:
                    continue
                if mrepo.content_version != repo.content_version:
                    self._nodes_sync(mirror, repo_id, mrepo, "incremental")
                    had, mrepo.content_version = mrepo.content_version, repo.content_version
                    self._synchronized(mirror, repo, had, "incremental")
                    mrepo.diverged_since = None
                    mrepo.last_sync_date = self.now
                mirror.behind.discard(repo_id)
        self.changed()

    def sync_timing_changed(self) -> None:
        """The sync delays or a mirror's failing set changed: every mirror looks at what it is behind on again."""
        for mirror in self.mirrors.values():
            mirror.next_sync_due = -math.inf

    def set_failing(self, mirror: Mirror, repo_ids: set[int]) -> None:
        mirror.failing = set(repo_ids)
        copies = [*mirror.repositories.items(), *(i for node in mirror.farm_nodes for i in node.differs.items())]
        for repo_id, mrepo in copies:
            mrepo.failed_sync_count = max(mrepo.failed_sync_count, 1) if repo_id in mirror.failing else 0
        self.changed()
        self.sync_timing_changed()

    def create(self, project_index: int) -> int:
        """Create a repository on the primary; each mirror in scope fetches it like any push (sync delay)."""
        repo_id = max(self.repositories, default=0) + 1
        project = self.projects[project_index % len(self.projects)]
        self.repositories[repo_id] = Repository(
            repo_id, project, f"repo-{repo_id}", content_changed_at=self.now, created_at=self.now
        )
        for mirror in self.mirrors.values():
            if mirror.in_scope(self.repositories[repo_id]):
                # Version 0: an empty copy, behind the primary until it syncs.
                mirror.repositories[repo_id] = MirrorRepository(
                    1000 + repo_id, 100 + project.id, 0, 0, self.now, self.now, diverged_since=self.now
                )
                mirror.behind.add(repo_id)
        self.changed()
        self.sync_timing_changed()
        return repo_id

    def forget_deleted(self, mirror: Mirror) -> None:
        """The mirror notices deletions on the primary and drops its copies (no longer extra)."""
        for repo_id in [r for r in mirror.repositories if r not in self.repositories]:
            del mirror.repositories[repo_id]
        self.changed()

    def delete(self, repo_id: int) -> None:
        """Delete a repository on the primary; mirrors keep their copies until they notice (extra)."""
        del self.repositories[repo_id]
        self.changed()
        for mirror in self.mirrors.values():
            mirror.missing.pop(repo_id, None)
            mirror.behind.discard(repo_id)
            for node in mirror.farm_nodes:
                node.differs.pop(repo_id, None)
                node.missing.pop(repo_id, None)

    def make_missing(self, mirror: Mirror, repo_ids: list[int]) -> None:
        self.changed()
        for repo_id in repo_ids:
            if repo_id in self.repositories and mirror.repositories.pop(repo_id, None) is not None:
                mirror.missing[repo_id] = self.now
                mirror.behind.discard(repo_id)

    def select_projects(self, mirror: Mirror, project_ids: set[int] | None) -> None:
        """Change the mirror's sync settings; repositories outside the new scope leave the mirror."""
        mirror.selected_projects = project_ids
        self.changed()
        for repo_id in list(mirror.repositories):
            repo = self.repositories.get(repo_id)
            if repo is not None and not mirror.in_scope(repo):
                del mirror.repositories[repo_id]
                mirror.behind.discard(repo_id)

    def _sync(self, mirror: Mirror) -> None:
        if mirror.frozen:
            return
        mirror.last_seen = self.now
        if self.now < mirror.next_sync_due:
            return
        content_delay = self.scenario.sync_delay_seconds
        metadata_delay = self.scenario.metadata_sync_delay_seconds
        next_due = math.inf
        for repo_id in list(mirror.behind):  # a copy: repositories that catch up leave the set
            repo, mrepo = self.repositories.get(repo_id), mirror.repositories.get(repo_id)
            if repo is None or mrepo is None or repo_id in mirror.failing:
                continue  # failing repositories never sync; set_failing makes the mirror look again
            if mrepo.content_version != repo.content_version:
                if self.now - repo.content_changed_at >= content_delay:
                    self._nodes_sync(mirror, repo_id, mrepo, "incremental")
                    behind_by = repo.content_version - mrepo.content_version
                    had = mrepo.content_version
                    mrepo.content_version = repo.content_version
                    # Every push since the last sync caught up at once (coalesced): the event names only the newest.
                    self._synchronized(mirror, repo, had, "snapshot" if behind_by > 1 else "incremental")
                    mrepo.diverged_since = None
                    mrepo.last_sync_date = self.now
                    self.changed()
                else:
                    next_due = min(next_due, repo.content_changed_at + content_delay)
            if mrepo.metadata_version != repo.metadata_version:
                if self.now - repo.metadata_changed_at >= metadata_delay:
                    self._nodes_sync(mirror, repo_id, mrepo, None)
                    mrepo.metadata_version = repo.metadata_version
                    mrepo.last_sync_date = self.now
                    self.changed()
                else:
                    next_due = min(next_due, repo.metadata_changed_at + metadata_delay)
            if (mrepo.content_version, mrepo.metadata_version) == (repo.content_version, repo.metadata_version):
                mirror.behind.discard(repo_id)
        mirror.next_sync_due = next_due

    # --- webhook events ---------------------------------------------------------------------------------------------

    @staticmethod
    def _change(repo: Repository, version: int, since: int | None = None) -> dict[str, Any]:
        """The change of main to ``version``, from ``since`` (default: the version before)."""
        ref = {"id": "refs/heads/main", "displayId": "main", "type": "BRANCH"}
        before, after = repo.commit(version - 1 if since is None else since), repo.commit(version)
        return {"ref": ref, "refId": ref["id"], "fromHash": before, "toHash": after, "type": "UPDATE"}

    def _date(self, when: float) -> str:
        """As Bitbucket dates its events: whole seconds (cut down) with an offset without a colon, primary's clock."""
        moment = math.floor(when + self.scenario.primary_clock_skew_seconds)
        return time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(moment))

    def _send(self, event: str, repo: Repository, when: float, changes: list[dict[str, Any]], **more: Any) -> None:
        if not self.webhooks_on:
            return
        repository = {
            "id": repo.id,
            "slug": repo.slug,
            "name": repo.slug,
            "project": {"id": repo.project.id, "key": repo.project.key, "name": repo.project.name},
        }
        payload: dict[str, Any] = {"eventKey": event, "date": self._date(when), **more, "repository": repository}
        payload["changes"] = changes
        self.outbox.append((event, payload))

    def _synchronized(self, mirror: Mirror, repo: Repository, had: int, sync_type: str) -> None:
        limited = self.webhooks_on and self.rng.random() < self.scenario.ref_limit_exceeded_rate
        changes = [] if limited else [self._change(repo, repo.content_version, had)]
        server = {"id": mirror.server_id, "name": mirror.name}
        self._send("mirror:repo_synchronized", repo, self.now, changes, mirrorServer=server, syncType=sync_type,
                   refLimitExceeded=limited)  # fmt: skip

    @staticmethod
    def _nodes_sync(mirror: Mirror, repo_id: int, mrepo: MirrorRepository, kind: str | None) -> None:
        """The farm syncs a repository: nodes that are frozen or down keep their older copy, the rest count a sync."""
        for node in mirror.farm_nodes:
            if node.frozen or node.down or repo_id in node.held:
                if repo_id not in node.differs and repo_id not in node.missing:
                    node.differs[repo_id] = dataclasses.replace(mrepo)
            elif kind is not None:
                node.syncs[kind] += 1

    def set_node(self, mirror: Mirror, node: FarmNode, frozen: bool | None = None, down: bool | None = None) -> None:
        """Freeze or stop one node; a node frozen and down no more catches up with its peers at once."""
        if frozen is not None:
            node.frozen = frozen
        if down is not None:
            node.down = down
        if not node.frozen and not node.down and node.differs:
            for repo_id in [r for r in node.differs if r not in node.held]:
                del node.differs[repo_id]
            node.syncs["snapshot"] += 1
        self.changed()

    def make_node_missing(self, mirror: Mirror, node: FarmNode, repo_ids: list[int]) -> None:
        """The node loses its copies of these repositories (an empty ``repo_ids`` gives them all back)."""
        if not repo_ids:
            node.missing.clear()
        for repo_id in repo_ids:
            if repo_id in mirror.repositories:
                node.missing[repo_id] = self.now
                node.differs.pop(repo_id, None)
        self.changed()

    # --- views the servers render ---------------------------------------------------------------------------------

    def pending(self, mirror: Mirror) -> list[tuple[int, str]]:
        """Repositories waiting to sync on the mirror, with the sync type Bitbucket would queue."""
        items = []
        for repo_id in sorted(mirror.behind):
            repo, mrepo = self.repositories.get(repo_id), mirror.repositories.get(repo_id)
            if repo is None or mrepo is None or repo_id in mirror.failing:
                continue
            if mrepo.content_version == repo.content_version:
                continue
            items.append((repo_id, "snapshot" if repo.content_version - mrepo.content_version > 1 else "incremental"))
        return items

    def classify(self, mirror: Mirror, node: FarmNode | None = None) -> dict[str, list[int]]:
        """The ground truth the exporter's drift classification must reproduce, per class: of one node's copy, or
        (no node) of the farm: a repository is as bad as on its worst node that is up."""
        if node is not None or not any(n.differs or n.missing for n in mirror.farm_nodes):
            return self._classify_copy(mirror, mirror.repositories if node is None else mirror.node_view(node))
        per_node = [self._classify_copy(mirror, mirror.node_view(n)) for n in mirror.farm_nodes if not n.down]
        if not per_node:
            return self._classify_copy(mirror, mirror.repositories)
        worst: dict[int, str] = {}
        for classes in per_node:
            for state in WORST_FIRST:
                for repo_id in classes[state]:
                    if WORST_FIRST.index(worst.get(repo_id, "in_sync")) >= WORST_FIRST.index(state):
                        worst[repo_id] = state
        union: dict[str, list[int]] = {state: [] for state in (*WORST_FIRST, "extra")}
        for repo_id, state in sorted(worst.items()):
            union[state].append(repo_id)
        union["extra"] = sorted({r for classes in per_node for r in classes["extra"]})
        return union

    def _classify_copy(self, mirror: Mirror, copy: dict[int, MirrorRepository]) -> dict[str, list[int]]:
        classes: dict[str, list[int]] = {state: [] for state in (*WORST_FIRST, "extra")}
        for repo_id, repo in sorted(self.repositories.items()):
            if not mirror.in_scope(repo):
                continue
            mrepo = copy.get(repo_id)
            if mrepo is None:
                classes["missing"].append(repo_id)
            elif repo.zero_hashes:
                classes["hash_unknown"].append(repo_id)
            elif mrepo.content_version != repo.content_version:
                classes["content_drift"].append(repo_id)
            elif mrepo.metadata_version != repo.metadata_version:
                classes["metadata_drift"].append(repo_id)
            else:
                classes["in_sync"].append(repo_id)
        classes["extra"] = sorted(r for r in copy if r not in self.repositories)
        return classes

    def diverged_since(
        self, mirror: Mirror, classes: dict[str, list[int]], node: FarmNode | None = None
    ) -> dict[int, float]:
        """Since when each repository's content has diverged (content drift or missing), zero hashes excluded;
        ``classes`` is ``classify(mirror, node)``. For the farm, the earliest over its nodes that are up."""
        nodes: list[FarmNode | None] = [node] if node is not None else [n for n in mirror.farm_nodes if not n.down]
        nodes = nodes or [None]
        since: dict[int, float] = {}
        for one in nodes:
            copy = mirror.repositories if one is None else mirror.node_view(one)
            lost = mirror.missing if one is None else {**mirror.missing, **one.missing}
            for repo_id in classes["missing"]:
                if repo_id in lost and repo_id not in copy:
                    since[repo_id] = min(since.get(repo_id, math.inf), lost[repo_id])
            for repo_id in (*classes["content_drift"], *classes["missing"]):
                mrepo, repo = copy.get(repo_id), self.repositories[repo_id]
                if mrepo is None or mrepo.content_version == repo.content_version:
                    continue
                diverged = self.now if mrepo.diverged_since is None else mrepo.diverged_since
                since[repo_id] = min(since.get(repo_id, math.inf), diverged)
        return since

    def pushed_since(
        self, mirror: Mirror, classes: dict[str, list[int]], node: FarmNode | None = None
    ) -> dict[int, float]:
        """Lag dated from the push (docs/metrics.md's definition): a repository in content drift diverged at the first
        push after its copy last synced; one the mirror does not have, at its creation."""
        since = self.diverged_since(mirror, classes, node)
        for repo_id in classes["missing"]:
            since[repo_id] = self.repositories[repo_id].created_at
        return since

    def node_truth(self, mirror: Mirror, node: FarmNode) -> dict[str, Any]:
        classes = self.classify(mirror, node)
        return {
            "address": node.address,
            "frozen": node.frozen,
            "down": node.down,
            "repositories": len(mirror.node_view(node)),
            "classes": classes,
            "diverged_since": {str(k): v for k, v in self.diverged_since(mirror, classes, node).items()},
            "pushed_since": {str(k): v for k, v in self.pushed_since(mirror, classes, node).items()},
            "syncs": dict(node.syncs),
            "requests": dict(node.requests),
        }

    def delayed(self, mirror: Mirror, node: FarmNode | None = None) -> list[int]:
        """What Bitbucket's delayed-sync / out-of-sync-repos would list: content not synced within the tolerance on
        one or more nodes, or on ``node`` only (the ``content_drift`` class of ``classify``, read from the
        repositories the farm is behind on and the nodes' older copies)."""
        tolerance = self.scenario.sync_tolerance_seconds
        nodes = mirror.farm_nodes if node is None else [node]
        view = mirror.repositories if node is None else mirror.node_view(node)
        copies = [(repo_id, view.get(repo_id)) for repo_id in mirror.behind]
        copies += [item for one in nodes for item in one.differs.items() if item[0] in view]
        listed = set()
        for repo_id, mrepo in copies:
            repo = self.repositories.get(repo_id)
            if repo is None or mrepo is None or repo.zero_hashes or not mirror.in_scope(repo):
                continue
            if mrepo.content_version == repo.content_version:
                continue
            since = self.now if mrepo.diverged_since is None else mrepo.diverged_since
            if self.now - since >= tolerance:
                listed.add(repo_id)
        return sorted(listed)

    def truth(self) -> dict[str, Any]:
        mirrors = {}
        for mirror in self.mirrors.values():
            repos = mirror.repositories.values()
            classes = self.classify(mirror)
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
                # What bitbucket_mirror_clock_skew_seconds must show: the mirror's clock minus the primary's.
                "clock_skew_seconds": mirror.clock_skew_seconds - self.scenario.primary_clock_skew_seconds,
                "selected_projects": sorted(mirror.selected_projects) if mirror.selected_projects else None,
                "classes": classes,
                "diverged_since": {str(k): v for k, v in self.diverged_since(mirror, classes).items()},
                "pushed_since": {str(k): v for k, v in self.pushed_since(mirror, classes).items()},
                "per_node": {node.name: self.node_truth(mirror, node) for node in mirror.farm_nodes},
                "delayed": self.delayed(mirror),
                "requests": dict(mirror.requests),
            }
        return {
            "now": self.now,
            "repositories": len(self.repositories),
            "projects": {p.id: p.key for p in self.projects},
            "zero_hash_repositories": sorted(r.id for r in self.repositories.values() if r.zero_hashes),
            "primary_requests": dict(self.primary_requests),
            "mirrors": mirrors,
        }
