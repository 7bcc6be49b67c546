"""The git reference mirrors' metric families, from each mirror's latest comparison while fresh."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.git.refs import RefVerdict
from exporter.git.state import GitMirrorState
from exporter.sources import Health, SourceState, gauges

CHECKED = (
    " Compared in the background every interval_seconds of the git mirror; absent once older than the larger of "
    "poll.stale_after_seconds and 3 intervals."
)
LABEL = ["git_mirror"]


_gauge = gauges(CHECKED, LABEL)


def git_metrics(mirrors: Iterable[GitMirrorState], now: float, stale_after: float) -> Iterator[Metric]:
    refs = _gauge(
        "bitbucket_mirror_git_refs",
        "Refs counted (the git mirror's refs globs, less its exclusions) on the mirror (side=local) and its remote "
        "(side=remote).",
        [*LABEL, "side"],
    )
    behind = _gauge(
        "bitbucket_mirror_git_refs_behind",
        "Refs whose value on the mirror differs from the remote's, or that the mirror lacks.",
    )
    extra = _gauge("bitbucket_mirror_git_refs_extra", "Refs on the mirror that the remote no longer has.")
    behind_seconds = _gauge(
        "bitbucket_mirror_git_behind_seconds",
        "How long the mirror's refs have differed from the remote's, as first seen by the exporter; 0 in step.",
    )
    fetched = _gauge(
        "bitbucket_mirror_git_last_fetch_timestamp_seconds",
        "When the mirror's syncer last fetched (FETCH_HEAD's modification time), as a Unix timestamp.",
    )
    checked = GaugeMetricFamily(
        "bitbucket_mirror_git_last_check_success_timestamp_seconds",
        "When the exporter last compared the mirror with its remote successfully, as a Unix timestamp.",
        labels=LABEL,
    )
    size = _gauge("bitbucket_mirror_git_objects_bytes", "The mirror's objects on disk (git count-objects -v), bytes.")
    for mirror in mirrors:
        if mirror.refs.last_success_timestamp is not None:
            checked.add_metric([mirror.name], mirror.refs.last_success_timestamp)
        check = mirror.refs.fresh(now, stale_after)
        if check is None:
            continue
        comparison = check.comparison
        refs.add_metric([mirror.name, "local"], comparison.local)
        refs.add_metric([mirror.name, "remote"], comparison.remote)
        behind.add_metric([mirror.name], len(comparison.behind))
        extra.add_metric([mirror.name], len(comparison.extra))
        since = check.behind_since
        behind_seconds.add_metric([mirror.name], max(0.0, now - since) if since is not None else 0.0)
        if check.last_fetch is not None:
            fetched.add_metric([mirror.name], check.last_fetch)
        if check.objects_bytes is not None:
            size.add_metric([mirror.name], check.objects_bytes)
    yield from (refs, behind, extra, behind_seconds, fetched, checked, size)


Verified = Mapping[str, SourceState[list[RefVerdict]]]


def health(mirrors: Iterable[GitMirrorState]) -> Health:
    """Each git mirror's comparison, for the exporter's poll health families (verify_refs go with their mirror's
    REST sources)."""
    for mirror in mirrors:
        yield {"target": mirror.name, "source": "git_refs"}, mirror.refs


def verified_metrics(verified: Verified, now: float, stale_after: float) -> Iterator[Metric]:
    """verify_refs: each listed repository's refs on the mirror against the primary's (git ls-remote on both)."""
    behind = GaugeMetricFamily(
        "bitbucket_mirror_repository_refs_behind",
        "Refs (branches and tags, not pull-request refs) of the repository whose value on the mirror differs from "
        "the primary's or that the mirror lacks, from git ls-remote on both; only for the mirror's verify_refs. "
        "Checked every poll.interval_seconds; absent once older than poll.stale_after_seconds.",
        labels=["mirror", "project", "repository"],
    )
    for mirror, source in verified.items():
        for verdict in source.fresh(now, stale_after) or []:
            behind.add_metric([mirror, verdict.project, verdict.slug], len(verdict.comparison.behind))
    yield behind


def verified_refs(verified: Verified, now: float, stale_after: float) -> list[dict[str, object]]:
    """The same as JSON, with the refs that differ and both hashes: what /api/v1/refs answers."""
    found: list[dict[str, object]] = []
    for mirror, source in verified.items():
        verdicts = source.fresh(now, stale_after)
        if verdicts is None:
            continue
        for verdict in verdicts:
            found.append(
                {
                    "mirror": mirror,
                    "project": verdict.project,
                    "repository": verdict.slug,
                    "checked_at": source.last_success_timestamp,
                    "behind": [
                        {"ref": d.ref, "mirror": d.local, "primary": d.remote} for d in verdict.comparison.behind
                    ],
                    "extra": [{"ref": d.ref, "mirror": d.local} for d in verdict.comparison.extra],
                }
            )
    return found
