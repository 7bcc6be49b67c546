"""The git reference mirrors' metric families, from each mirror's latest comparison while fresh."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.state import GitMirrorState

CHECKED = (
    " Compared in the background every interval_seconds of the git mirror; absent once older than the larger of "
    "poll.stale_after_seconds and 3 intervals."
)
LABEL = ["git_mirror"]


def _gauge(name: str, doc: str, labels: list[str] = LABEL) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc + CHECKED, labels=labels)


def git_metrics(mirrors: Iterable[GitMirrorState], now: float) -> Iterator[Metric]:
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
        check = mirror.refs.fresh(now, mirror.stale_after_seconds)
        if check is None:
            continue
        comparison = check.comparison
        refs.add_metric([mirror.name, "local"], comparison.local)
        refs.add_metric([mirror.name, "remote"], comparison.remote)
        behind.add_metric([mirror.name], len(comparison.behind))
        extra.add_metric([mirror.name], len(comparison.extra))
        since = mirror.behind_since
        behind_seconds.add_metric([mirror.name], max(0.0, now - since) if since is not None else 0.0)
        if check.last_fetch is not None:
            fetched.add_metric([mirror.name], check.last_fetch)
        if check.objects_bytes is not None:
            size.add_metric([mirror.name], check.objects_bytes)
    yield from (refs, behind, extra, behind_seconds, fetched, checked, size)
