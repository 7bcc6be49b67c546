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

import time
from collections.abc import Mapping
from typing import Any

from exporter.drift import DIVERGED, DriftReport, PrimaryRepo, hash_known
from exporter.rest.client import ClockReading
from exporter.rest.poller import scope_of
from exporter.rest.push_dating import offset_of
from exporter.state import ExporterState, MirrorState
from exporter.webhooks.receiver import Receiver


def _repository_id(state: ExporterState, receiver: Receiver, key: str, slug: str) -> tuple[str, PrimaryRepo | None]:
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
    exporter's clock: the primary's measured offset taken off, and a second added for the cut-down date."""
    return pushed_at - offset_of(primary) + 1.0


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
    state: ExporterState,
    receiver: Receiver,
    key: str,
    slug: str,
    commit: str,
    since: float | None = None,
    now: float | None = None,
) -> dict[str, Any] | None:
    """The gate's JSON answer, or None when the exporter knows no such repository."""
    now = time.time() if now is None else now
    repo_id, upstream = _repository_id(state, receiver, key, slug)
    if not repo_id:
        return None
    commit = commit.lower()
    synced = receiver.book.synced(repo_id, commit)
    pushed_at = receiver.book.pushed_at(repo_id, commit)
    # Both listings must have been begun after the push (or, not knowing the push, after the caller's ``since``).
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
            entry["nodes"] = _nodes(mirror, repo_id, upstream, now, stale_after)
        mirrors.append(entry)
    return {
        "repository": {"project": key, "slug": slug, "id": repo_id},
        "commit": commit,
        "pushed_at": pushed_at,
        "mirrors": mirrors,
    }


def _nodes(
    mirror: MirrorState, repo_id: str, upstream: PrimaryRepo | None, now: float, stale_after: float
) -> Mapping[str, dict[str, Any]]:
    nodes = {}
    for name, node in sorted(mirror.nodes.items()):
        in_sync, lag, known_at, rows_from = _in_sync(node.drift, repo_id, upstream, now, stale_after)
        nodes[name] = {"in_sync": in_sync, "lag_seconds": round(lag, 3), "known_at": known_at, "read_from": rows_from}
    return nodes
