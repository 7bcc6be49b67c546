"""Compares a mirror's repositories with the primary's, by hash, and tracks how long content has diverged.

Pure functions over snapshots: no I/O, so the rules are easy to test and the same for every API family.

Classification of a repository the mirror is meant to carry (its sync settings' scope), in this order:

* ``missing``: on the primary, not in the mirror's repoSyncStatus;
* ``hash_unknown``: a content hash absent or all zeros on either side (never computed since an upgrade, per
  Atlassian's KB): never counted as drift;
* ``content_drift``: the content hashes differ;
* ``metadata_drift``: content matches, both metadata hashes are known and differ (pull-request refs and repository
  metadata sync late by design);
* ``in_sync``: otherwise (content matches; metadata matches or is unknown).

``extra`` counts repositories on the mirror whose id the primary no longer lists.

The analysis is kept between comparisons (``Tally``): the worker process that compares the listings
(exporter/rest/listing_work.py) reclassifies only the repositories whose rows changed since the previous comparison
(``Tally.update``), and all of them (``Tally.rebuild``, as ``analyse`` does) when it cannot tell which.

Lag: for a repository whose content diverges (``content_drift`` or ``missing``), the time since the exporter first saw
the current divergence (``seen_at``: when the later of the two listings that show it was read); it resets when the
repository is back in sync. Its resolution is the poll interval, and it lives in memory only: after a restart it counts
from the first poll. A mirror's lag (``DriftReport.sync_lag_seconds``) is the largest over the *silent laggards*:
repositories in content drift that are neither missing nor failing (``failedSyncCount`` > 0). Missing and failing
repositories have alerts of their own and keep their per-repository lag, so one cause raises one alert.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

import msgspec


class RepoState(StrEnum):
    IN_SYNC = "in_sync"
    CONTENT_DRIFT = "content_drift"
    METADATA_DRIFT = "metadata_drift"
    MISSING = "missing"
    HASH_UNKNOWN = "hash_unknown"
    EXTRA = "extra"


DIVERGED = frozenset({RepoState.CONTENT_DRIFT, RepoState.MISSING})
UNHEALTHY = frozenset({RepoState.CONTENT_DRIFT, RepoState.METADATA_DRIFT, RepoState.MISSING})


def hash_known(value: str | None) -> bool:
    """False for an absent, empty or all-zero hash."""
    return value is not None and value.strip().strip("0") != ""


# Structs without GC tracking: one per repository per target, the bulk of the exporter's memory at scale.
class PrimaryRepo(msgspec.Struct, frozen=True, gc=False):
    project_id: str | None
    project_key: str
    slug: str
    content: str | None
    metadata: str | None


class MirrorRepo(msgspec.Struct, frozen=True, gc=False):
    content: str | None
    metadata: str | None
    failed_syncs: int
    # When this copy last synced (else first did), on the mirror's clock: the pushes after it are missing. As decoded
    # (a datetime, or epoch seconds), read only for the repositories that diverge: no conversion per row.
    synced_at: datetime | float | None = None


def _seconds(when: datetime | float | None) -> float | None:
    return when if when is None or type(when) is float else when.timestamp()  # type: ignore[union-attr]


def classify(primary: PrimaryRepo, mirror: MirrorRepo | None) -> RepoState:
    if mirror is None:
        return RepoState.MISSING
    if not (hash_known(primary.content) and hash_known(mirror.content)):
        return RepoState.HASH_UNKNOWN
    if primary.content != mirror.content:
        return RepoState.CONTENT_DRIFT
    if hash_known(primary.metadata) and hash_known(mirror.metadata) and primary.metadata != mirror.metadata:
        return RepoState.METADATA_DRIFT
    return RepoState.IN_SYNC


class RepoHealth(msgspec.Struct, frozen=True, gc=False):
    """One repository the report keeps (unhealthy, failing, or every one with ``keep_all``). A struct rather than a
    dataclass: reports cross from the workers to the event loop, and a dataclass unpickles through Python code per
    object (10,000 rows: 34 ms on the loop, against 5 ms as a struct)."""

    repo_id: str
    project_key: str
    slug: str
    state: RepoState
    failed_syncs: int
    diverged_since: float | None
    # Over a farm's nodes (``union``): on how many the content diverges (content drift or missing).
    nodes_behind: int = 0
    # The copy's last (else first) sync, for dating the divergence from the push (exporter/rest/push_dating.py).
    synced_at: float | None = None
    # Whether ``diverged_since`` is the push that began the divergence (else when the exporter first saw it).
    from_push: bool = False
    # The content hashes compared: the primary's and the copy's (None: not listed, or the hash unknown). A farm's is
    # the copy of the node whose divergence began first (its worst).
    primary_content: str | None = None
    mirror_content: str | None = None

    def lag_seconds(self, now: float) -> float:
        return max(0.0, now - self.diverged_since) if self.diverged_since is not None else 0.0


@dataclass(frozen=True)
class DriftReport:
    counts: dict[RepoState, int]
    # Repository id -> when the exporter first saw its current content divergence.
    diverged_since: dict[str, float]
    # The repositories per-repository series may be rendered for, worst first (longest lag, then most failures).
    repositories: list[RepoHealth]
    # The earliest first-seen time over the silent laggards (content drift, not failing); None when there is none.
    laggard_since: float | None = None
    # When the older of the two listings compared was read: the report is as fresh as that (docs/metrics.md).
    inputs_at: float = 0.0
    # When the earlier of the two listing walks began: every row compared was requested at or after it (the CI gate
    # says "in sync after a push" only when this is after the push; inputs_at, a walk's end, proves nothing).
    rows_from: float = 0.0
    # One node's report, for ``union`` (``Tally(per_node=True)``): the primary's repositories the node lists, in
    # scope or not, and the ids it lists that the primary does not.
    matched: int = 0
    extra_ids: tuple[str, ...] = ()
    # A union's: over how many nodes.
    nodes: int = 0

    def count(self, state: RepoState) -> int:
        return self.counts.get(state, 0)

    def sync_lag_seconds(self, now: float) -> float:
        """The longest lag over the silent laggards; 0 when there is none."""
        return max(0.0, now - self.laggard_since) if self.laggard_since is not None else 0.0

    def fresh(self, now: float, stale_after: float) -> bool:
        return now - self.inputs_at <= stale_after

    @functools.cached_property
    def diverged_starts(self) -> list[float]:
        """When each diverging repository's divergence began, ascending: how many are late at any moment is a
        bisection (``lagging``), not a pass over every row (with per_repository_metrics: all, every repository)."""
        return sorted(
            r.diverged_since for r in self.repositories if r.state in DIVERGED and r.diverged_since is not None
        )

    def lag_sources(self) -> tuple[int, int]:
        """Diverging repositories whose lag is dated from the push, and from the exporter's first sight."""
        diverging = [r for r in self.repositories if r.state in DIVERGED]
        pushed = sum(1 for r in diverging if r.from_push)
        return pushed, len(diverging) - pushed

    def dated(self, starts: Mapping[str, float]) -> DriftReport:
        """This report with the divergences of ``starts`` dated from the push that began them; the lag is taken
        over the silent laggards again. ``diverged_since`` (first sight, carried to the next analysis) is kept."""
        if not starts:
            return self
        repositories = [
            msgspec.structs.replace(repo, diverged_since=starts[repo.repo_id], from_push=True)
            if repo.repo_id in starts
            else repo
            for repo in self.repositories
        ]
        repositories.sort(key=_worst_first)
        return replace(self, repositories=repositories, laggard_since=silent_laggard_since(repositories))


# How a divergence's lag is dated: from its push on the primary, or from the exporter's first sight of it (the
# ``source`` of bitbucket_mirror_sync_lag_source, and /api/v1/behind's ``lag_source``).
FROM_PUSH, FROM_FIRST_SEEN = "push", "first_seen"

# The lag bounds the freshness SLO is judged at (bitbucket_mirror_repositories_lagging's `over`; docs/slo.md): its
# threshold is one of them, so a few series per mirror serve any objective.
LAGGING_OVER_SECONDS = (60, 120, 300, 600, 900, 1800, 3600)


def in_scope(report: DriftReport) -> int:
    """Repositories in the mirror's scope: every class but the extra ones."""
    return sum(count for state, count in report.counts.items() if state is not RepoState.EXTRA)


def late(report: DriftReport, now: float, bound: float) -> list[RepoHealth]:
    """The repositories whose content has diverged (content drift or missing) for longer than ``bound`` seconds,
    longest first."""
    found = [r for r in report.repositories if r.state in DIVERGED and r.lag_seconds(now) > bound]
    return sorted(found, key=lambda r: r.diverged_since or 0.0)


def lagging(report: DriftReport, now: float) -> dict[int, int]:
    """For each bound of LAGGING_OVER_SECONDS, how many of ``late`` there are: a divergence that began before
    ``now - bound``."""
    starts = report.diverged_starts
    return {over: bisect.bisect_left(starts, now - over) for over in LAGGING_OVER_SECONDS}


def silent_laggard_since(repositories: list[RepoHealth]) -> float | None:
    """The earliest divergence over the silent laggards (content drift, not failing); None when there is none."""
    return min(
        (
            r.diverged_since
            for r in repositories
            if r.state is RepoState.CONTENT_DRIFT and not r.failed_syncs and r.diverged_since is not None
        ),
        default=None,
    )


def _worst_first(repo: RepoHealth) -> tuple[float, int, str, str, str]:
    since = repo.diverged_since if repo.diverged_since is not None else math.inf
    return (since, -repo.failed_syncs, repo.project_key, repo.slug, repo.repo_id)


class Slots:
    """A number for each repository id seen, so per-repository columns are arrays rather than dicts: one registry of
    ids per worker process, shared by its mirror listings' columns (exporter/rest/listing_work.py) and tallies."""

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.ids: list[str] = list(ids)
        self.index: dict[str, int] = {repo_id: slot for slot, repo_id in enumerate(self.ids)}

    def slot(self, repo_id: str) -> int:
        slot = self.index.get(repo_id)
        if slot is None:
            slot = self.index[repo_id] = len(self.ids)
            self.ids.append(repo_id)
        return slot


# A repository's part in a tally, one byte a slot: ABSENT (on neither listing), else 1 + 2 x its class + whether the
# mirror lists it (matched). The classes: the counted states by their index in _COUNTED, and NOT_COUNTED (out of the
# mirror's scope, or on the mirror only: extra).
ABSENT = 0
_COUNTED = (
    RepoState.IN_SYNC,
    RepoState.CONTENT_DRIFT,
    RepoState.METADATA_DRIFT,
    RepoState.MISSING,
    RepoState.HASH_UNKNOWN,
)
_CLASS = {state: index for index, state in enumerate(_COUNTED)}
NOT_COUNTED = len(_COUNTED)
_IN_SYNC_MATCHED = 1 + 2 * _CLASS[RepoState.IN_SYNC] + 1


class Tally:
    """One mirror's (or node's) drift analysis, kept so that the next comparison reclassifies only the repositories
    whose rows changed (``update``) rather than every one (``rebuild``): each repository's part (its class, whether
    the mirror lists it) one byte a slot, the counts, the kept rows (unhealthy, failing, or all with ``keep_all``),
    the first-seen times of the divergences and the extra ids. A report from updates is the report a full analysis of
    the same rows gives (tests/unit/test_drift.py holds the two to each other)."""

    def __init__(self, slots: Slots, scope: frozenset[str] | None, keep_all: bool = False, per_node: bool = False):
        """``per_node``: one node of a farm, for ``union``: hash_unknown repositories are kept too (a node's own
        hashes may be unknown while its peers' are known) and the extra ids are listed."""
        self.slots = slots
        self.scope = scope
        self.keep_all = keep_all
        self.per_node = per_node
        self._parts = bytearray()
        self._counts = dict.fromkeys(_COUNTED, 0)
        self._matched = 0
        self._mirror_size = 0
        self._since: dict[str, float] = {}
        self._kept: dict[str, RepoHealth] = {}
        self._extra: set[str] = set()

    def rebuild(
        self,
        primary: Mapping[str, PrimaryRepo],
        mirror: Mapping[str, MirrorRepo],
        previous_since: Mapping[str, float],
        seen_at: float,
    ) -> None:
        """Classify every repository anew; a divergence that lasts keeps its time from ``previous_since``."""
        self._parts = bytearray(len(self.slots.ids))
        self._counts = dict.fromkeys(_COUNTED, 0)
        self._matched = 0
        self._since, self._kept, self._extra = {}, {}, set()
        scope, keep_all, counts, parts, slot_of = self.scope, self.keep_all, self._counts, self._parts, self._slot
        in_sync = RepoState.IN_SYNC
        for repo_id, upstream in primary.items():
            local = mirror.get(repo_id)
            if (
                local is not None
                and not local.failed_syncs
                and local.content == upstream.content
                and local.metadata == upstream.metadata
                and not keep_all
                and (scope is None or upstream.project_id in scope)
                and hash_known(upstream.content)
            ):
                # The common case at scale, decided without the general rules and with nothing more to record.
                counts[in_sync] += 1
                parts[slot_of(repo_id)] = _IN_SYNC_MATCHED
                self._matched += 1
                continue
            self._apply(repo_id, upstream, local, previous_since, seen_at)
        for repo_id in mirror:
            if repo_id not in primary:
                self._apply(repo_id, None, mirror[repo_id], previous_since, seen_at)
        self._mirror_size = len(mirror)

    def update(
        self,
        changed: Iterable[str],
        primary: Mapping[str, PrimaryRepo],
        mirror: Mapping[str, MirrorRepo],
        seen_at: float,
    ) -> None:
        """Reclassify the repositories whose rows changed (or that appeared or went) on either listing since the
        previous ``rebuild`` or ``update``; the rest keep their part."""
        since = self._since
        for repo_id in changed:
            self._apply(repo_id, primary.get(repo_id), mirror.get(repo_id), since, seen_at)
        self._mirror_size = len(mirror)

    def _slot(self, repo_id: str) -> int:
        """The id's slot, its part's byte there (ABSENT for an id new to the worker)."""
        slot = self.slots.slot(repo_id)
        if slot >= len(self._parts):
            self._parts.extend(bytes(slot + 1 - len(self._parts)))
        return slot

    def _apply(
        self,
        repo_id: str,
        upstream: PrimaryRepo | None,
        local: MirrorRepo | None,
        previous_since: Mapping[str, float],
        seen_at: float,
    ) -> None:
        slot = self._slot(repo_id)
        parts = self._parts
        before = parts[slot]
        if before != ABSENT:
            kind, matched = divmod(before - 1, 2)
            if kind != NOT_COUNTED:
                self._counts[_COUNTED[kind]] -= 1
            self._matched -= matched
        self._kept.pop(repo_id, None)
        self._extra.discard(repo_id)
        diverged: float | None = None
        if upstream is None:
            kind, matched = NOT_COUNTED, 0
            if local is not None:
                self._extra.add(repo_id)
            part = ABSENT if local is None else 1 + 2 * kind
        else:
            matched = int(local is not None)
            if self.scope is not None and upstream.project_id not in self.scope:
                kind = NOT_COUNTED
            else:
                state = classify(upstream, local)
                kind = _CLASS[state]
                self._counts[state] += 1
                failed = local.failed_syncs if local is not None else 0
                if state in DIVERGED:
                    # Carried over only while the divergence lasts; repositories that are gone or healed are forgotten.
                    diverged = previous_since.get(repo_id, seen_at)
                if (
                    self.keep_all
                    or state in UNHEALTHY
                    or failed > 0
                    or (self.per_node and state is RepoState.HASH_UNKNOWN)
                ):
                    self._kept[repo_id] = RepoHealth(
                        repo_id,
                        upstream.project_key,
                        upstream.slug,
                        state,
                        failed,
                        diverged,
                        synced_at=_seconds(local.synced_at) if local is not None else None,
                        primary_content=upstream.content,
                        mirror_content=local.content if local is not None else None,
                    )
            part = 1 + 2 * kind + matched
        self._matched += matched
        if diverged is None:
            self._since.pop(repo_id, None)
        else:
            self._since[repo_id] = diverged
        parts[slot] = part

    def report(self, inputs_at: float, rows_from: float | None = None) -> DriftReport:
        """The report of the rows as the latest ``rebuild`` or ``update`` saw them; ``rows_from`` (when the earlier
        walk began) defaults to 0: nothing proven."""
        counts = {state: count for state, count in self._counts.items() if count}
        extra = self._mirror_size - self._matched
        if extra:
            counts[RepoState.EXTRA] = extra
        extra_ids = tuple(sorted(self._extra)) if self.per_node else ()
        kept = sorted(self._kept.values(), key=_worst_first)
        return DriftReport(
            counts,
            dict(self._since),
            kept,
            silent_laggard_since(kept),
            inputs_at,
            rows_from or 0.0,
            self._matched,
            extra_ids,
        )


# From worst to best: a farm's repository is as bad as on its worst node.
_SEVERITY = {
    RepoState.MISSING: 4,
    RepoState.CONTENT_DRIFT: 3,
    RepoState.METADATA_DRIFT: 2,
    RepoState.HASH_UNKNOWN: 1,
    RepoState.IN_SYNC: 0,
}


def _earliest(one: float | None, other: float | None) -> float | None:
    return other if one is None else one if other is None else min(one, other)


def union(nodes: list[DriftReport], keep_all: bool = False) -> DriftReport:
    """The farm's report from its nodes' (``Tally(per_node=True)`` against the same primary listing): a repository
    is in the worst class any node puts it in, its failures are the most any node counts, its divergence began when
    the first node's did, and ``nodes_behind`` counts the nodes where its content diverges. A repository no node kept
    is in sync on every node. The lag is the worst node's."""
    merged: dict[str, RepoHealth] = {}
    behind: dict[str, int] = {}
    for report in nodes:
        for repo in report.repositories:
            if repo.state in DIVERGED:
                behind[repo.repo_id] = behind.get(repo.repo_id, 0) + 1
            seen = merged.get(repo.repo_id)
            if seen is None:
                merged[repo.repo_id] = repo
                continue
            worst = repo if _SEVERITY[repo.state] > _SEVERITY[seen.state] else seen
            worse = worst.state
            # The earliest divergence over the nodes, whether that one was dated from the push, and its copy's hash.
            dated = [r for r in (seen, repo) if r.diverged_since is not None]
            first = min(dated, key=lambda r: (r.diverged_since, r.from_push)) if dated and worse in DIVERGED else None
            since, pushed = (first.diverged_since, first.from_push) if first is not None else (None, False)
            copy = (first or worst).mirror_content
            failed = max(seen.failed_syncs, repo.failed_syncs)
            merged[repo.repo_id] = RepoHealth(
                repo.repo_id,
                repo.project_key,
                repo.slug,
                worse,
                failed,
                since,
                from_push=pushed,
                primary_content=repo.primary_content,
                mirror_content=copy,
            )
    counts: dict[RepoState, int] = {}
    kept: list[RepoHealth] = []
    since_by_repo: dict[str, float] = {}
    laggard: float | None = None
    for repo_id, repo in merged.items():
        counts[repo.state] = counts.get(repo.state, 0) + 1
        if repo.diverged_since is not None:
            since_by_repo[repo_id] = repo.diverged_since
            if repo.state is RepoState.CONTENT_DRIFT and not repo.failed_syncs:
                laggard = _earliest(laggard, repo.diverged_since)
        if keep_all or repo.state in UNHEALTHY or repo.failed_syncs > 0:
            kept.append(
                RepoHealth(
                    repo_id,
                    repo.project_key,
                    repo.slug,
                    repo.state,
                    repo.failed_syncs,
                    repo.diverged_since,
                    behind.get(repo_id, 0),
                    from_push=repo.from_push,
                    primary_content=repo.primary_content,
                    mirror_content=repo.mirror_content,
                )
            )
    in_scope = max((sum(c for s, c in r.counts.items() if s is not RepoState.EXTRA) for r in nodes), default=0)
    counts[RepoState.IN_SYNC] = counts.get(RepoState.IN_SYNC, 0) + max(0, in_scope - len(merged))
    extra = {repo_id for report in nodes for repo_id in report.extra_ids}
    if extra:
        counts[RepoState.EXTRA] = len(extra)
    kept.sort(key=_worst_first)
    inputs_at = min((report.inputs_at for report in nodes), default=0.0)
    rows_from = min((report.rows_from for report in nodes), default=0.0)
    return DriftReport(counts, since_by_repo, kept, laggard, inputs_at, rows_from, nodes=len(nodes))


def analyse(
    primary: Mapping[str, PrimaryRepo],
    scope: frozenset[str] | None,
    mirror: Mapping[str, MirrorRepo],
    previous_since: Mapping[str, float],
    now: float,
    keep_all: bool = False,
    per_node: bool = False,
) -> DriftReport:
    """Classify every repository in scope; ``scope`` holds the primary project ids the mirror carries (None: all).
    ``now`` is when both listings were read."""
    tally = Tally(Slots(), scope, keep_all, per_node)
    tally.rebuild(primary, mirror, previous_since, now)
    return tally.report(now)
