"""The CI gate: "is my commit on the mirror yet?", answered per mirror (and node) from what the exporter knows.

A commit is on a mirror when the mirror's ``mirror:repo_synchronized`` named it (webhooks), or when the exporter's
latest listing of the mirror, read after the commit was pushed, shows the repository in sync. The answer says which
one it used and when the exporter last knew, so a pipeline can tell "not yet" from "cannot tell".
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from exporter.drift import DIVERGED, DriftReport, PrimaryRepo, hash_known
from exporter.rest.poller import scope_of
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
) -> tuple[bool | None, float, float | None]:
    """(in sync now: None when it cannot tell, lag seconds, when the listing compared was read)."""
    if report is None or not report.fresh(now, stale_after) or upstream is None:
        return None, 0.0, None
    if not hash_known(upstream.content):
        return None, 0.0, report.inputs_at
    diverging = next((r for r in report.repositories if r.repo_id == repo_id), None)
    if diverging is not None and diverging.state in DIVERGED:
        return False, diverging.lag_seconds(now), report.inputs_at
    return True, 0.0, report.inputs_at


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
    # The listing must have been read after the push (or, not knowing the push, after the caller's ``since``).
    after = pushed_at if pushed_at is not None else since
    stale_after = state.policy.stale_after
    mirrors = []
    for mirror in state.mirrors:
        in_sync, lag, known_at = _in_sync(mirror.drift, repo_id, upstream, now, stale_after)
        has_commit = mirror.name in synced
        listing_says = in_sync is True and known_at is not None and after is not None and known_at >= after
        entry: dict[str, Any] = {
            "mirror": mirror.name,
            "in_scope": _in_scope(mirror, upstream),
            "has_commit": has_commit,
            "synced_at": synced.get(mirror.name),
            "in_sync": in_sync,
            "lag_seconds": round(lag, 3),
            "known_at": known_at,
            "on_mirror": has_commit or listing_says,
            "by": "webhook" if has_commit else "listing" if listing_says else None,
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
        in_sync, lag, known_at = _in_sync(node.drift, repo_id, upstream, now, stale_after)
        nodes[name] = {"in_sync": in_sync, "lag_seconds": round(lag, 3), "known_at": known_at}
    return nodes
