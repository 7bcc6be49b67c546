"""The CI gate: "is my commit on the mirror yet?", answered per mirror (and node) from what the exporter knows.

A commit is on a mirror only on proof (docs/webhooks.md, "The CI gate"):
- ``by: "webhook"``: the mirror's ``mirror:repo_synchronized`` named the commit, or a later hash of its ref pushed
  after it (a sync covers what came before it on the ref: exporter/webhooks/matching.py);
- ``by: "listing"``: both listings compared, the primary's and the mirror's, were **begun** after the push (every row
  was requested after it; a walk's end proves nothing for its first pages), the push's time moved onto the
  exporter's clock by the primary's measured offset and rounded up by a second (the event's date has whole seconds),
  and the repository in sync in them.
Anything else is ``on_mirror: false`` with a ``reason``: ``not_synced`` (the mirror is behind), ``listing_too_old``
(no listing begun after the push yet), ``stale`` (the exporter cannot tell now). The answer says when the exporter
last knew, so a pipeline can tell "not yet" from "cannot tell".
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.drift import DIVERGED, DriftReport, PrimaryRepo, hash_known
from exporter.rest.client import ClockReading
from exporter.rest.poller import scope_of
from exporter.rest.state import FarmState, MirrorState
from exporter.sources import FetchError
from exporter.webhooks.matching import Histogram
from exporter.webhooks.receiver import Receiver


def _repository_id(state: FarmState, receiver: Receiver, key: str, slug: str) -> tuple[str, PrimaryRepo | None]:
    listing = state.primary.repositories.value or {}
    found = receiver.repositories.get((key, slug))
    if found is None:
        found = next(
            (repo_id for repo_id, repo in listing.items() if repo.project_key == key and repo.slug == slug), ""
        )
    return found, listing.get(found)


def _in_sync(
    report: DriftReport | None, repo_id: str, upstream: PrimaryRepo | None, now: float, stale_after: float
) -> tuple[bool | None, float, float | None, float | None]:
    """(in sync now: None when it cannot tell, lag seconds, when the listing compared was read, when the walks of
    the listings compared began)."""
    if report is None or not report.fresh(now, stale_after) or upstream is None:
        return None, 0.0, None, None
    if not hash_known(upstream.content):
        return None, 0.0, report.inputs_at, report.rows_from
    diverging = next((r for r in report.repositories if r.repo_id == repo_id), None)
    if diverging is not None and diverging.state in DIVERGED:
        return False, diverging.lag_seconds(now), report.inputs_at, report.rows_from
    return True, 0.0, report.inputs_at, report.rows_from


def push_on_our_clock(pushed_at: float, primary: ClockReading | None) -> float:
    """A push's date (the primary's clock, whole seconds cut down) as the latest moment it may have been on the
    exporter's clock: the smallest offset the primary's answers allow taken off (none known: clocks that agree), and
    a second added for the cut-down date."""
    return pushed_at - (primary.earliest if primary is not None else 0.0) + 1.0


def _verdict(has_commit: bool, in_sync: bool | None, rows_from: float | None, after: float | None) -> dict[str, Any]:
    """``on_mirror``, ``by`` and, when not on the mirror, ``reason``."""
    if has_commit:
        return {"on_mirror": True, "by": "webhook"}
    if in_sync is None:
        return {"on_mirror": False, "by": None, "reason": "stale"}
    if in_sync is False:
        return {"on_mirror": False, "by": None, "reason": "not_synced"}
    if after is not None and rows_from is not None and rows_from >= after:
        return {"on_mirror": True, "by": "listing"}
    return {"on_mirror": False, "by": None, "reason": "listing_too_old"}


def _in_scope(mirror: MirrorState, upstream: PrimaryRepo | None) -> bool:
    scope = scope_of(mirror.sync_settings.value)
    return scope is None or upstream is None or upstream.project_id in scope


def answer(
    state: FarmState,
    receiver: Receiver,
    key: str,
    slug: str,
    commit: str,
    since: float | None = None,
    now: float | None = None,
    first_push: float | None = None,
) -> dict[str, Any] | None:
    """The gate's JSON answer, or None when the exporter knows no such repository. ``first_push``: when the primary's
    ref change activity first named the commit (its clock), for a push the webhooks did not bring; ``since``: a time
    after the push on the exporter's clock (the first question about it), when nothing dates the push."""
    now = time.time() if now is None else now
    repo_id, upstream = _repository_id(state, receiver, key, slug)
    if not repo_id:
        return None
    commit = commit.lower()
    synced = receiver.book.synced(repo_id, commit)
    pushed_at = receiver.book.pushed_at(repo_id, commit)
    pushed_at = pushed_at if pushed_at is not None else first_push
    # Both listings must have been begun after the push (or, not knowing the push, after ``since``).
    after = push_on_our_clock(pushed_at, state.primary.clock) if pushed_at is not None else since
    stale_after = state.policy.stale_after
    mirrors = []
    for mirror in state.mirrors:
        in_sync, lag, known_at, rows_from = _in_sync(mirror.drift, repo_id, upstream, now, stale_after)
        has_commit = mirror.name in synced
        entry: dict[str, Any] = {
            "mirror": mirror.name,
            "in_scope": _in_scope(mirror, upstream),
            "has_commit": has_commit,
            "synced_at": synced.get(mirror.name),
            "in_sync": in_sync,
            "lag_seconds": round(lag, 3),
            "known_at": known_at,
            "read_from": rows_from,
            **_verdict(has_commit, in_sync, rows_from, after),
        }
        if mirror.by_node:
            entry["nodes"] = _nodes(mirror, repo_id, upstream, now, stale_after, after)
        mirrors.append(entry)
    return {
        "repository": {"project": key, "slug": slug, "id": repo_id},
        "commit": commit,
        "pushed_at": pushed_at,
        "mirrors": mirrors,
    }


def _nodes(
    mirror: MirrorState,
    repo_id: str,
    upstream: PrimaryRepo | None,
    now: float,
    stale_after: float,
    after: float | None,
) -> Mapping[str, dict[str, Any]]:
    """Each node's own answer from its own listing (a sync event names the farm, not a node)."""
    nodes = {}
    for name, node in sorted(mirror.nodes.items()):
        in_sync, lag, known_at, rows_from = _in_sync(node.drift, repo_id, upstream, now, stale_after)
        nodes[name] = {
            "in_sync": in_sync,
            "lag_seconds": round(lag, 3),
            "known_at": known_at,
            "read_from": rows_from,
            **_verdict(False, in_sync, rows_from, after),
        }
    return nodes


# --- the gate as served: commits looked up on the primary, its own numbers ------------------------------------------

# Seconds from the first question about a commit and mirror to the first "on the mirror": what the gate costs CI.
WAIT_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
OUTCOMES = ("on_mirror", "not_yet", "unknown_commit", "error")
REMEMBERED = 10_000
# A commit the primary did not have is asked again after this long (it may have been pushed since).
MISSING_FOR_SECONDS = 30.0


class RefsLookup(Protocol):
    """``git ls-remote`` of a repository at each of ``bases`` (a mirror, or its nodes): ref -> hash, None for one
    that cannot be read now (exporter/git/verify.py, RefsProbe)."""

    async def refs(self, mirror: str, bases: list[str], project: str, slug: str) -> list[dict[str, str] | None]: ...


class CommitLookup(Protocol):
    async def commit(self, project_key: str, slug: str, commit_id: str) -> str | None: ...

    async def first_pushed(
        self, project_key: str, slug: str, commit_id: str, limit: int, max_pages: int
    ) -> float | None: ...


@dataclass(frozen=True)
class CommitFacts:
    """What the primary says of a commit the webhooks did not bring: its full id (None: no such commit) and when a ref
    change first named it (its clock; None: no page read names it)."""

    full: str | None
    pushed_at: float | None
    learned: float


class Gate:
    """Answers the CI gate: the webhooks' and listings' proof (``answer``), the primary asked once about a commit
    the exporter never saw pushed (cached, bounded), and the gate's own counts."""

    def __init__(
        self,
        state: Callable[[], FarmState],
        receiver: Receiver,
        lookup: Callable[[], CommitLookup | None],
        pages: Callable[[], tuple[int, int]],
        clock: Callable[[], float] = time.time,
        refs: Callable[[], RefsLookup | None] = lambda: None,
    ) -> None:
        self._state = state
        self._receiver = receiver
        self._lookup = lookup
        self._pages = pages  # (page size, pages at most) for the ref change activity
        self._refs = refs
        self._clock = clock
        self._facts: OrderedDict[tuple[str, str], CommitFacts] = OrderedDict()
        # (repository id, commit) -> when it was first asked about; (.., mirror) -> when, until its first yes.
        self._first_asked: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._waiting: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self.requests: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.waits = Histogram(WAIT_BUCKETS)

    async def ask(self, key: str, slug: str, commit: str, since: float | None) -> dict[str, Any] | None:
        now = self._clock()
        state = self._state()
        repo_id, _ = _repository_id(state, self._receiver, key, slug)
        if not repo_id:
            self.requests["error"] += 1
            return None
        commit = commit.lower()
        book = self._receiver.book
        facts: CommitFacts | None = None
        exists: bool | None = True
        if len(commit) < 40 or (book.pushed_at(repo_id, commit) is None and not book.synced(repo_id, commit)):
            try:
                facts = await self._learn(key, slug, repo_id, commit, now)
            except FetchError:
                exists = None  # the primary could not be asked: cannot tell
            else:
                exists = facts.full is not None
                commit = facts.full or commit
        first_asked = _remember(self._first_asked, (repo_id, commit), now)
        # Nothing dates the push: the first question came after it (a pipeline asks about what it pushed).
        after = first_asked if since is None else max(since, first_asked)
        found = answer(state, self._receiver, key, slug, commit, after, now, facts.pushed_at if facts else None)
        if found is None:
            self.requests["error"] += 1
            return None
        found["commit_exists"] = exists
        mirrors: list[dict[str, Any]] = found["mirrors"]
        if exists is not True:
            for entry in mirrors:
                entry.update(on_mirror=False, by=None, reason="unknown_commit" if exists is False else "stale")
        else:
            await self._prove_by_refs(state, key, slug, commit, mirrors)
        self._count(repo_id, commit, mirrors, exists, now)
        return found

    async def _prove_by_refs(
        self, state: FarmState, key: str, slug: str, commit: str, mirrors: list[dict[str, Any]]
    ) -> None:
        """``by: "refs"`` for a mirror not yet proven otherwise: a ref at the commit on the mirror, and on every node
        where nodes are read (ls-remote, rate-limited by the probe)."""
        probe = self._refs()
        if probe is None:
            return
        states = {mirror.name: mirror for mirror in state.mirrors}
        for entry in mirrors:
            mirror = states.get(str(entry["mirror"]))
            if entry["on_mirror"] or mirror is None or entry.get("in_scope") is False:
                continue
            bases = [node.url for node in mirror.nodes.values()] if mirror.by_node and mirror.nodes else [mirror.url]
            found = await probe.refs(mirror.name, bases, key, slug)
            if found and all(refs is not None and commit in refs.values() for refs in found):
                entry.update(on_mirror=True, by="refs")
                entry.pop("reason", None)
                for node in (entry.get("nodes") or {}).values():
                    node.update(on_mirror=True, by="refs")
                    node.pop("reason", None)

    async def _learn(self, key: str, slug: str, repo_id: str, commit: str, now: float) -> CommitFacts:
        known = self._facts.get((repo_id, commit))
        if known is not None and (known.full is not None or now - known.learned < MISSING_FOR_SECONDS):
            self._facts.move_to_end((repo_id, commit))
            return known
        lookup = self._lookup()
        if lookup is None:
            raise FetchError("not_ready", "the primary is not polled yet")
        full = await lookup.commit(key, slug, commit)
        pushed_at = None
        if full is not None:
            pushed = self._receiver.book.pushed_at(repo_id, full)
            if pushed is None:
                limit, max_pages = self._pages()
                pushed = await lookup.first_pushed(key, slug, full, limit, max_pages)
            pushed_at = pushed
        facts = self._facts[(repo_id, commit)] = CommitFacts(full, pushed_at, now)
        while len(self._facts) > REMEMBERED:
            self._facts.popitem(last=False)
        return facts

    def _count(self, repo_id: str, commit: str, mirrors: list[dict[str, Any]], exists: bool | None, now: float) -> None:
        if exists is False:
            self.requests["unknown_commit"] += 1
            return
        if exists is None:
            self.requests["error"] += 1
            return
        for entry in mirrors:
            key = (repo_id, commit, str(entry["mirror"]))
            asked = _remember(self._waiting, key, now)
            if entry["on_mirror"] and asked != math.inf:
                self.waits.observe(max(0.0, now - asked))
                self._waiting[key] = math.inf  # observed once: its first yes
        self.requests["on_mirror" if mirrors and all(e["on_mirror"] for e in mirrors) else "not_yet"] += 1


def _remember(table: OrderedDict[Any, float], key: Any, now: float) -> float:
    """The time first remembered for ``key`` (now, if new), the table bounded to REMEMBERED entries."""
    if key not in table:
        table[key] = now
        while len(table) > REMEMBERED:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return table[key]
