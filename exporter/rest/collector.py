"""Renders the latest poll snapshot as Prometheus metric families, fresh on every scrape.

Target values come from the background poll (see exporter/poller.py), not from a request made during the scrape;
every HELP text of a target metric says so. When a source fails, its metrics keep the last good value while it is at
most ``poll.stale_after_seconds`` old, and are left out after that (state.py, "Freshness");
``bitbucket_mirror_exporter_poll_success`` / ``..._last_success_timestamp_seconds`` say why. Drift and lag need both
listings fresh (``bitbucket_mirror_drift_fresh``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import PRIMARY_TARGET
from exporter.drift import RepoState
from exporter.jmx.collector import jmx_metrics
from exporter.rest.api import normalize_url
from exporter.sources import SourceFamilies, SourceState
from exporter.state import ExporterState

CACHED = (
    " Polled in the background every poll.interval_seconds; scrapes read the last poll, absent once older than "
    "poll.stale_after_seconds."
)


def _gauge(name: str, doc: str, labels: Iterable[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc + CACHED, labels=list(labels))


class MirrorFarmCollector(Collector):
    def __init__(
        self,
        state: ExporterState,
        per_repository: str = "unhealthy",
        max_repository_series: int = 100,
        stale_after: float = 90.0,
    ) -> None:
        self._state = state
        self._per_repository = per_repository
        self._max_repository_series = max_repository_series
        self._stale_after = stale_after

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        yield from self._mirror_metrics(now)
        yield from self._drift_metrics(now)
        yield from self._clock_metrics(now)
        yield from self._mirror_server_metrics(now)
        yield from jmx_metrics(self._state.mirrors, now)
        yield from self._self_metrics()

    def _mirror_metrics(self, now: float) -> Iterator[Metric]:
        up = _gauge(
            "bitbucket_mirror_up",
            "1 when the last poll of the mirror's /status endpoint succeeded.",
            ["mirror"],
        )
        state = _gauge(
            "bitbucket_mirror_state",
            "1 for the state the mirror's /status reports now, 0 for the other states known or seen.",
            ["mirror", "state"],
        )
        members = _gauge(
            "bitbucket_mirror_status_members",
            "Cluster members (memberCount) the mirror's /status reports.",
            ["mirror"],
        )
        upstream = _gauge(
            "bitbucket_mirror_upstream_state",
            "1 for the state of the mirror's upstream server record (INSTALLED when healthy).",
            ["mirror", "state"],
        )
        info = InfoMetricFamily(
            "bitbucket_mirror", "The mirror's base URL and detected mirroring API family.", labels=["mirror"]
        )
        nodes = _gauge("bitbucket_mirror_farm_nodes", "Nodes in the mirror farm (farmNodes).", ["mirror"])
        discovering = _gauge(
            "bitbucket_mirror_sync_discovering",
            "1 while the mirror is discovering repositories (progress).",
            ["mirror"],
        )
        synced = _gauge(
            "bitbucket_mirror_sync_synced_repositories",
            "Repositories synced so far in the current synchronization (progress.syncedRepos).",
            ["mirror"],
        )
        total = _gauge(
            "bitbucket_mirror_sync_total_repositories",
            "Repositories to sync in the current synchronization (progress.totalRepos).",
            ["mirror"],
        )
        queue = _gauge(
            "bitbucket_mirror_ref_changes_queue_length",
            "Ref changes waiting in the farm-wide queue (refChangesQueue/count).",
            ["mirror"],
        )
        queue_items = _gauge(
            "bitbucket_mirror_ref_changes_queue_items",
            "Items of the dumped ref-changes queue by sync type; the dump is capped by "
            "plugin.mirroring.farm.max.ref.change.queue.dump.size.",
            ["mirror", "sync"],
        )
        repos = _gauge(
            "bitbucket_mirror_repositories",
            "Repositories the mirror reports in supportInfo/repoSyncStatus.",
            ["mirror"],
        )
        failing = _gauge(
            "bitbucket_mirror_repositories_failing",
            "Repositories with failedSyncCount > 0 on the mirror.",
            ["mirror"],
        )
        failed = _gauge(
            "bitbucket_mirror_failed_syncs",
            "Sum of failedSyncCount over the mirror's repositories.",
            ["mirror"],
        )
        last_sync = _gauge(
            "bitbucket_mirror_last_sync_timestamp_seconds",
            "Newest lastSyncDate over the mirror's repositories, as a Unix timestamp.",
            ["mirror"],
        )
        stale = self._stale_after
        for mirror in self._state.mirrors:
            name = mirror.name
            up.add_metric([name], 1.0 if mirror.status.success else 0.0)
            info.add_metric(
                [name], {"url": mirror.url, "api_family": str(mirror.layout.family) if mirror.layout else ""}
            )
            if (status := mirror.status.fresh(now, stale)) is not None:
                for seen in sorted(mirror.states_seen):
                    state.add_metric([name, seen], 1.0 if seen == status.state else 0.0)
                if status.member_count is not None:
                    members.add_metric([name], status.member_count)
            if (record := mirror.upstream.fresh(now, stale)) is not None:
                upstream.add_metric([name, record.state], 1.0)
            if (farm := mirror.farm_nodes.fresh(now, stale)) is not None:
                nodes.add_metric([name], len(farm))
            if (progress := mirror.progress.fresh(now, stale)) is not None:
                discovering.add_metric([name], 1.0 if progress.discovering else 0.0)
                synced.add_metric([name], progress.synced_repos)
                total.add_metric([name], progress.total_repos)
            if (refs := mirror.ref_changes_queue.fresh(now, stale)) is not None:
                queue.add_metric([name], refs.length)
                for kind in sorted({"incremental", "snapshot", *refs.items_by_type}):
                    queue_items.add_metric([name, kind], refs.items_by_type.get(kind, 0))
            if (summary := mirror.repo_sync_status.fresh(now, stale)) is not None:
                repos.add_metric([name], summary.repositories)
                failing.add_metric([name], summary.failing)
                failed.add_metric([name], summary.failed_syncs)
                if summary.newest_last_sync is not None:
                    last_sync.add_metric([name], summary.newest_last_sync)
        yield from (up, state, members, upstream, info, nodes, discovering, synced, total, queue, queue_items)
        yield from (repos, failing, failed, last_sync)

    def _drift_metrics(self, now: float) -> Iterator[Metric]:
        primary_repos = _gauge(
            "bitbucket_mirror_primary_repositories",
            "Repositories the primary offers for mirroring (mirroring/latest/repos).",
            [],
        )
        if (repositories := self._state.primary.repositories.fresh(now, self._stale_after)) is not None:
            primary_repos.add_metric([], len(repositories))
        m = ["mirror"]
        in_sync = _gauge("bitbucket_mirror_repositories_in_sync", "Repositories whose content hashes match.", m)
        out_of_sync = _gauge(
            "bitbucket_mirror_repositories_out_of_sync",
            "Repositories whose content hashes differ (hash=content), or whose content matches but metadata "
            "hashes differ (hash=metadata).",
            ["mirror", "hash"],
        )
        missing = _gauge(
            "bitbucket_mirror_repositories_missing", "Repositories in the mirror's scope it does not have.", m
        )
        unknown = _gauge(
            "bitbucket_mirror_repositories_hash_unknown",
            "Repositories whose content hash is absent or all zeros on either side: not counted as drift.",
            m,
        )
        extra = _gauge(
            "bitbucket_mirror_repositories_extra", "Repositories on the mirror that the primary no longer lists.", m
        )
        fresh = _gauge(
            "bitbucket_mirror_drift_fresh",
            "1 when the mirror's drift and lag were computed from fresh inputs (the primary's and the mirror's "
            "listings, both at most poll.stale_after_seconds old), else 0; while 0, drift and lag series are absent.",
            m,
        )
        lag = _gauge(
            "bitbucket_mirror_sync_lag_seconds",
            "Longest time a repository's content has differed from the primary's, as first seen by the exporter, over "
            "repositories in content drift that are neither missing nor failing (those have their own alerts and "
            "per-repository lag); 0 when there is none. Resolution: the poll interval.",
            m,
        )
        stale_input = _gauge(
            "bitbucket_mirror_drift_input_stale",
            "1 for each input of the mirror's drift (target primary source repositories; the mirror's "
            "repo_sync_status) that has no value fresher than poll.stale_after_seconds, with the reason of its last "
            "failed poll; only while bitbucket_mirror_drift_fresh is 0.",
            ["mirror", "target", "source", "reason"],
        )
        repo_labels = ["mirror", "project", "repository"]
        repo_lag = _gauge(
            "bitbucket_mirror_repository_sync_lag_seconds",
            "Time the repository's content has diverged from the primary, as first seen by the exporter; "
            "0 when in sync. Only for repositories selected by per_repository_metrics.",
            repo_labels,
        )
        repo_failed = _gauge(
            "bitbucket_mirror_repository_failed_syncs",
            "failedSyncCount of the repository on the mirror. "
            "Only for repositories selected by per_repository_metrics.",
            repo_labels,
        )
        dropped = _gauge(
            "bitbucket_mirror_repository_series_dropped",
            "Repositories left without per-repository series because of max_repository_series.",
            m,
        )
        for mirror in self._state.mirrors:
            report = mirror.drift
            is_fresh = report is not None and report.fresh(now, self._stale_after)
            fresh.add_metric([mirror.name], 1.0 if is_fresh else 0.0)
            if report is None or not is_fresh:
                # Never serve drift computed from stale inputs as current: absent, and these say why.
                for target, source, st in (
                    (PRIMARY_TARGET, "repositories", self._state.primary.repositories),
                    (mirror.name, "repo_sync_status", mirror.repo_sync_status),
                ):
                    if st.fresh(now, self._stale_after) is None:
                        stale_input.add_metric([mirror.name, target, source, st.error_reason or "not_polled_yet"], 1.0)
                continue
            name = mirror.name
            in_sync.add_metric([name], report.count(RepoState.IN_SYNC))
            out_of_sync.add_metric([name, "content"], report.count(RepoState.CONTENT_DRIFT))
            out_of_sync.add_metric([name, "metadata"], report.count(RepoState.METADATA_DRIFT))
            missing.add_metric([name], report.count(RepoState.MISSING))
            unknown.add_metric([name], report.count(RepoState.HASH_UNKNOWN))
            extra.add_metric([name], report.count(RepoState.EXTRA))
            lag.add_metric([name], report.sync_lag_seconds(now))
            shown = [] if self._per_repository == "none" else report.repositories[: self._max_repository_series]
            for repo in shown:
                labels = [name, repo.project_key, repo.slug]
                repo_lag.add_metric(labels, repo.lag_seconds(now))
                repo_failed.add_metric(labels, repo.failed_syncs)
            left_out = 0 if self._per_repository == "none" else len(report.repositories) - len(shown)
            dropped.add_metric([name], left_out)
        yield from (primary_repos, fresh, stale_input, in_sync, out_of_sync, missing, unknown, extra, lag, repo_lag)
        yield from (repo_failed, dropped)
        yield from self._delayed_sync_metrics(now)

    def _clock_metrics(self, now: float) -> Iterator[Metric]:
        skew = _gauge(
            "bitbucket_mirror_clock_skew_seconds",
            "The mirror's clock minus the primary's, from the Date headers of answers already fetched (each against "
            "the exporter's clock at the middle of its request); resolution 1 s. Beyond 30 s the primary refuses "
            "the mirror's JWT and the mirror falls behind.",
            ["mirror"],
        )
        primary = self._state.primary.clock
        if primary is not None and now - primary.at <= self._stale_after:
            for mirror in self._state.mirrors:
                clock = mirror.clock
                if clock is not None and now - clock.at <= self._stale_after:
                    skew.add_metric([mirror.name], float(round(clock.offset_seconds - primary.offset_seconds)))
        yield skew

    def _delayed_sync_metrics(self, now: float) -> Iterator[Metric]:
        available = _gauge(
            "bitbucket_mirror_delayed_sync_available",
            "1 when the mirror offers Bitbucket's own list of delayed repositories (9.5+ mirrorRepos/delayed-sync, "
            "or out-of-sync-repos when enabled on 8.x to 9.4), else 0.",
            ["mirror", "endpoint"],
        )
        delayed = _gauge(
            "bitbucket_mirror_delayed_sync_repositories",
            "Repositories Bitbucket itself reports as not synced within "
            "plugin.mirroring.repository.diagnostics.sync.tolerance (delayed-sync returns at most 100).",
            ["mirror"],
        )
        for mirror in self._state.mirrors:
            if (value := mirror.delayed_sync.fresh(now, self._stale_after)) is None:
                continue
            available.add_metric([mirror.name, value.endpoint], 1.0 if value.available else 0.0)
            if value.available and value.repositories is not None:
                delayed.add_metric([mirror.name], value.repositories)
        yield from (available, delayed)

    def _mirror_label(self, base_url: str | None, fallback: str) -> str:
        if base_url:
            wanted = normalize_url(base_url)
            for mirror in self._state.mirrors:
                if normalize_url(mirror.url) == wanted:
                    return mirror.name
        return fallback

    def _mirror_server_metrics(self, now: float) -> Iterator[Metric]:
        enabled = _gauge(
            "bitbucket_mirror_server_enabled",
            "1 when the primary lists the mirror as enabled (mirrorServers).",
            ["mirror"],
        )
        last_seen = _gauge(
            "bitbucket_mirror_server_last_seen_timestamp_seconds",
            "When the primary last heard from the mirror (mirrorServers lastSeenDate), as a Unix timestamp.",
            ["mirror"],
        )
        info = InfoMetricFamily(
            "bitbucket_mirror_server",
            "The primary's record of each mirror server (mirrorServers)." + CACHED,
            labels=["mirror", "server_id", "mirror_type", "product_version"],
        )
        for server in self._state.primary.mirror_servers.fresh(now, self._stale_after) or []:
            label = self._mirror_label(server.base_url, server.name or server.id)
            if server.enabled is not None:
                enabled.add_metric([label], 1.0 if server.enabled else 0.0)
            if server.last_seen_date is not None:
                last_seen.add_metric([label], server.last_seen_date)
            info.add_metric(
                [label, server.id, server.mirror_type or "", server.product_version or ""],
                {"base_url": server.base_url or ""},
            )
        yield from (enabled, last_seen, info)

    def _targets(self) -> Iterator[tuple[str, dict[str, SourceState[object]]]]:
        yield PRIMARY_TARGET, self._state.primary.sources()
        for mirror in self._state.mirrors:
            yield mirror.name, mirror.sources()

    def _self_metrics(self) -> Iterator[Metric]:
        labels = ["target", "source"]
        success = GaugeMetricFamily(
            "bitbucket_mirror_exporter_poll_success",
            "1 when the last background poll of the source succeeded, 0 when it failed (values then are stale).",
            labels=labels,
        )
        duration = GaugeMetricFamily(
            "bitbucket_mirror_exporter_poll_duration_seconds",
            "How long the last background poll of the source took, retries included.",
            labels=labels,
        )
        last_success = GaugeMetricFamily(
            "bitbucket_mirror_exporter_last_success_timestamp_seconds",
            "When the source was last polled successfully, as a Unix timestamp: the age of its values.",
            labels=labels,
        )
        errors = CounterMetricFamily(
            "bitbucket_mirror_exporter_poll_errors",
            "Failed background polls of the source, by reason.",
            labels=[*labels, "reason"],
        )
        health = SourceFamilies(success, duration, last_success, errors)
        for target, sources in self._targets():
            for source, st in sources.items():
                health.add([target, source], st)
        build = GaugeMetricFamily(
            "bitbucket_mirror_exporter_build_info", "The exporter's version; always 1.", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        yield from (success, duration, last_success, errors, build)
