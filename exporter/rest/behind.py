"""``GET /api/v1/behind``: the repositories whose content has diverged longest, across mirrors (node by node where a
farm's nodes are read), as Gerrit multi-site's replication lag list does. Served from the latest drift reports, no
Bitbucket call; a report whose inputs are stale gives no rows (its target is listed as unknown instead): a list of
what is behind must never omit a mirror quietly and look like good news."""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from exporter.drift import DIVERGED, FROM_FIRST_SEEN, FROM_PUSH, DriftReport, RepoHealth, RepoState
from exporter.rest.state import FarmState, MirrorState


def _reports(mirror: MirrorState) -> Iterator[tuple[str | None, DriftReport | None]]:
    """A mirror's report, or each node's where the nodes are read (the farm's is their union: its rows are the
    nodes')."""
    if mirror.by_node:
        for name, node in sorted(mirror.nodes.items()):
            yield name, node.drift
    else:
        yield None, mirror.drift


def _row(mirror: str, node: str | None, report: DriftReport, repo: RepoHealth, now: float) -> dict[str, object]:
    return {
        "mirror": mirror,
        "node": node,
        "project": repo.project_key,
        "repository": repo.slug,
        "repository_id": repo.repo_id,
        "state": str(repo.state),
        "missing": repo.state is RepoState.MISSING,
        "failing": repo.failed_syncs > 0,
        "failed_syncs": repo.failed_syncs,
        "lag_seconds": round(repo.lag_seconds(now), 3),
        "lag_source": FROM_PUSH if repo.from_push else FROM_FIRST_SEEN,
        # When the divergence began (the push, when dated from it) and when the exporter first saw it.
        "diverged_since": repo.diverged_since,
        "first_seen": report.diverged_since.get(repo.repo_id, repo.diverged_since),
        "primary_hash": repo.primary_content,
        "mirror_hash": repo.mirror_content,
    }


def behind(state: FarmState, now: float, limit: int, mirror: str | None = None) -> dict[str, object] | None:
    """The ``limit`` repositories with the longest content lag (content drift or missing), longest first; and each
    target read, with whether its drift is known (fresh inputs) and as of when. None: no such mirror."""
    mirrors = [m for m in state.mirrors if mirror is None or m.name == mirror]
    if mirror is not None and not mirrors:
        return None
    stale_after = state.policy.stale_after
    targets: list[dict[str, object]] = []
    candidates: list[tuple[float, str, str, dict[str, object]]] = []
    for target in mirrors:
        for node, report in _reports(target):
            known = report is not None and report.fresh(now, stale_after)
            targets.append(
                {
                    "mirror": target.name,
                    "node": node,
                    "drift_known": known,
                    "as_of": report.inputs_at if report is not None and known else None,
                }
            )
            if report is None or not known:
                continue
            for repo in report.repositories:
                if repo.state in DIVERGED and repo.diverged_since is not None:
                    row = _row(target.name, node, report, repo, now)
                    candidates.append((repo.diverged_since, target.name, node or "", row))
    # Longest lag first: the earliest divergence; ties in mirror and node order.
    worst = heapq.nsmallest(limit, candidates, key=lambda c: c[:3])
    return {"limit": limit, "repositories": [row for *_, row in worst], "targets": targets}
