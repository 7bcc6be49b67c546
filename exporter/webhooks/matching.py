"""Matches each mirror's ``mirror:repo_synchronized`` to the ``repo:refs_changed`` push it completes: pure, no I/O.

A push is remembered per (repository id, the change's ``toHash``) with its ref and date; a synchronized event whose
change has the same ``toHash`` completes it for that mirror, and the difference of the two dates (both on the
primary's clock, whole seconds) is that push's time to reach the mirror. A busy mirror coalesces: one sync catches up
several pushes of a ref and names only the newest ``toHash`` (fact sheet, section 8), so a sync of ref R at hash H
completes every pending push of R made no later than the push of H, each timed from its own push (also one whose
event comes after the sync's). A synchronized event with ``refLimitExceeded`` lists no changes: it completes the
oldest push of that repository the mirror has not confirmed, made before the event. A push that some monitored mirror
has not confirmed within ``pending_timeout_seconds`` is counted unconfirmed for it.

Everything is bounded by ``max_pending``: the oldest entries go first and are counted, so a flood of events costs a
fixed amount of memory.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

# Seconds from a push to a mirror: from one second (the dates' resolution) to an hour (the pending timeout's default).
BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)
ZERO_HASH = "0" * 40


@dataclass
class Histogram:
    """Cumulative-ready counts per bucket (the last one +Inf), and the sum; ``bounds`` the buckets' upper bounds."""

    bounds: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(self.bounds) if seconds <= bound), len(self.bounds))
        self.counts[index] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        running, buckets = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == math.inf else f"{bound:g}", float(running)))
        return buckets


@dataclass
class Push:
    repo_id: str
    to_hash: str
    pushed_at: float  # the event's date: the primary's clock
    received: float  # the exporter's clock, for the pending timeout
    ref: str = ""
    # The hash the ref had before this push: the push before it on the ref ended there.
    from_hash: str = ""
    confirmed: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Change:
    ref: str
    to_hash: str
    from_hash: str = ""

    def key(self, repo_id: str) -> tuple[str, str]:
        # A deleted ref has no commit: its deletion is matched by the ref instead.
        return (repo_id, self.to_hash if self.to_hash != ZERO_HASH else f"delete:{self.ref}")


# Hashes remembered per (repository, ref, mirror) as covered by its latest sync: a bound on one ref's chain.
MAX_CHAIN = 64


@dataclass
class Covered:
    """What a mirror's latest sync of a ref brought: pushes up to ``until`` (the newest push's date) and the hashes of
    the chain that led to it."""

    synced_at: float
    until: float
    sync_type: str
    hashes: set[str] = field(default_factory=set)

    def covers(self, push: Push) -> bool:
        """Whether a push whose event came late was brought by this sync: a second earlier, or on the chain."""
        return push.pushed_at <= self.synced_at and (push.pushed_at < self.until or push.to_hash in self.hashes)


class Book:
    """What the webhooks taught: pending pushes, synced commits, latencies and counts."""

    def __init__(self, timeout: float, max_pending: int) -> None:
        self.timeout = timeout
        self.max_pending = max_pending
        self._pending: OrderedDict[tuple[str, str], Push] = OrderedDict()
        # Repository id -> its pending keys, oldest first (refLimitExceeded completes the oldest).
        self._by_repo: dict[str, list[tuple[str, str]]] = {}
        # (repository id, commit) -> mirror -> when it had it (primary's clock): the CI gate's answer.
        self._synced: OrderedDict[tuple[str, str], dict[str, float]] = OrderedDict()
        self._request_ids: OrderedDict[str, float] = OrderedDict()
        # Syncs that came before their push (the two events travel apart, from different servers): (repository id,
        # commit) -> mirror -> (when it had it, sync type), kept until the push comes or max_pending newer ones did.
        self._early: OrderedDict[tuple[str, str], dict[str, tuple[float, str]]] = OrderedDict()
        # (repository id, ref) -> mirror -> what its latest sync of the ref covered: a push whose event comes after
        # the sync of a later push of its ref is confirmed by it all the same.
        self._ref_synced: OrderedDict[tuple[str, str], dict[str, Covered]] = OrderedDict()
        self.histograms: dict[tuple[str, str], Histogram] = {}
        self.unconfirmed: dict[str, int] = {}
        self.evicted = 0

    # --- the two events ---------------------------------------------------------------------------------------

    def pushed(self, repo_id: str, changes: Iterable[Change], pushed_at: float, now: float) -> None:
        for change in changes:
            key = change.key(repo_id)
            if key in self._pending:
                continue  # the same commit pushed to a second ref: the first push is what mirrors must sync
            push = self._pending[key] = Push(repo_id, key[1], pushed_at, now, change.ref, change.from_hash)
            self._by_repo.setdefault(repo_id, []).append(key)
            for mirror, (synced_at, sync_type) in self._early.pop(key, {}).items():
                # A sync dated before the push completed an earlier push of the same commit, not this one.
                if synced_at >= pushed_at:
                    self._confirm_covered(mirror, push, synced_at, sync_type)
            for mirror, covered in list(self._ref_synced.get((repo_id, push.ref), {}).items()):
                # Events travel apart: this push's event came after a mirror's sync of a later push of its ref.
                if mirror not in push.confirmed and covered.covers(push):
                    self._remember_synced(key, mirror, covered.synced_at)
                    self._confirm_covered(mirror, push, covered.synced_at, covered.sync_type)
        while len(self._pending) > self.max_pending:
            self._drop(next(iter(self._pending)))
            self.evicted += 1

    def synchronized(
        self,
        mirror: str,
        repo_id: str,
        changes: list[Change],
        ref_limit_exceeded: bool,
        sync_type: str,
        synced_at: float,
    ) -> list[float]:
        """The latencies this sync completes (seconds, whole), each observed once per mirror."""
        keys = [change.key(repo_id) for change in changes]
        if ref_limit_exceeded and not keys:
            oldest = next(
                (
                    key
                    for key in self._by_repo.get(repo_id, [])
                    if mirror not in self._pending[key].confirmed and self._pending[key].pushed_at <= synced_at
                ),
                None,
            )
            keys = [oldest] if oldest is not None else []
        for key in keys:
            self._remember_synced(key, mirror, synced_at)
        latencies = []
        for key in keys:
            push = self._pending.get(key)
            if push is None:
                self._remember_early(key, mirror, synced_at, sync_type)
                continue
            if ref_limit_exceeded and not changes:
                latencies += self._confirm([push], mirror, synced_at, sync_type)
            else:
                latencies += self._confirm_covered(mirror, push, synced_at, sync_type)
        return latencies

    def _confirm_covered(self, mirror: str, newest: Push, synced_at: float, sync_type: str) -> list[float]:
        """The mirror synced ``newest``'s ref to its commit: that push and every earlier pending push of the ref,
        earlier by date (a second before it, at least) or by the hashes (a push that ended where a covered one
        began), each timed from its own push."""
        key = (newest.repo_id, newest.ref)
        covered = self._ref_synced.setdefault(key, {}).get(mirror)
        if covered is None or covered.until < newest.pushed_at:
            covered = self._ref_synced[key][mirror] = Covered(synced_at, newest.pushed_at, sync_type)
        covered.hashes.add(newest.to_hash)
        pushes = [newest]
        chain, visited = [newest.from_hash], set()
        same_ref = [
            self._pending[k] for k in self._by_repo.get(newest.repo_id, []) if self._pending[k].ref == newest.ref
        ]
        while chain:
            start = chain.pop()
            if not start or start in visited:
                continue
            visited.add(start)
            covered.hashes.add(start)
            for push in same_ref:
                if push.to_hash == start and all(push is not p for p in pushes):
                    pushes.append(push)
                    chain.append(push.from_hash)
        pushes += [
            p
            for p in same_ref
            if all(p is not q for q in pushes) and p.pushed_at < newest.pushed_at and p.pushed_at <= synced_at
        ]
        while len(covered.hashes) > MAX_CHAIN:
            covered.hashes.pop()
        self._ref_synced.move_to_end(key)
        while len(self._ref_synced) > self.max_pending:
            self._ref_synced.popitem(last=False)
        for push in pushes:
            if push is not newest:
                self._remember_synced((push.repo_id, push.to_hash), mirror, synced_at)
        return self._confirm(pushes, mirror, synced_at, sync_type)

    def _confirm(self, pushes: list[Push], mirror: str, synced_at: float, sync_type: str) -> list[float]:
        """Each push the mirror has not confirmed yet, confirmed and timed from its own push."""
        latencies = []
        for push in pushes:
            if mirror in push.confirmed:
                continue
            push.confirmed.add(mirror)
            latency = max(0.0, synced_at - push.pushed_at)
            self.histograms.setdefault((mirror, sync_type), Histogram()).observe(latency)
            latencies.append(latency)
        return latencies

    def _remember_early(self, key: tuple[str, str], mirror: str, synced_at: float, sync_type: str) -> None:
        self._early.setdefault(key, {}).setdefault(mirror, (synced_at, sync_type))
        self._early.move_to_end(key)
        while len(self._early) > self.max_pending:
            self._early.popitem(last=False)

    def _remember_synced(self, key: tuple[str, str], mirror: str, synced_at: float) -> None:
        mirrors = self._synced.setdefault(key, {})
        mirrors.setdefault(mirror, synced_at)
        self._synced.move_to_end(key)
        while len(self._synced) > self.max_pending:
            self._synced.popitem(last=False)

    # --- time passing -----------------------------------------------------------------------------------------

    def expire(self, now: float, mirrors: Iterable[str]) -> None:
        """Forget pushes older than the timeout, counting each monitored mirror that never confirmed them; and
        pushes every monitored mirror has confirmed."""
        expected = set(mirrors)
        for key in list(self._pending):
            push = self._pending[key]
            if now - push.received > self.timeout:
                for mirror in expected - push.confirmed:
                    self.unconfirmed[mirror] = self.unconfirmed.get(mirror, 0) + 1
                self._drop(key)
            elif expected and expected <= push.confirmed:
                self._drop(key)
        while self._request_ids and now - next(iter(self._request_ids.values())) > self.timeout:
            self._request_ids.popitem(last=False)

    def _drop(self, key: tuple[str, str]) -> None:
        push = self._pending.pop(key)
        keys = self._by_repo.get(push.repo_id)
        if keys is not None:
            keys.remove(key)
            if not keys:
                del self._by_repo[push.repo_id]

    def replayed(self, request_id: str | None, now: float) -> bool:
        """Whether a delivery with this X-Request-Id was already taken within the pending window (then it is not
        observed again); remembers it otherwise."""
        if not request_id:
            return False
        if request_id in self._request_ids:
            return True
        self._request_ids[request_id] = now
        while len(self._request_ids) > self.max_pending:
            self._request_ids.popitem(last=False)
        return False

    # --- what the CI gate asks --------------------------------------------------------------------------------

    def synced(self, repo_id: str, commit: str) -> dict[str, float]:
        """Mirror -> when it synced ``commit`` (primary's clock), from the synchronized events remembered."""
        return dict(self._synced.get((repo_id, commit), {}))

    def pushed_at(self, repo_id: str, commit: str) -> float | None:
        push = self._pending.get((repo_id, commit))
        return push.pushed_at if push is not None else None

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def early_syncs(self) -> int:
        """Syncs held for a push that has not come (yet)."""
        return len(self._early)
