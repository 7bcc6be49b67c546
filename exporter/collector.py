"""Renders the latest poll snapshot as Prometheus metric families, fresh on every scrape.

Target values come from the background poll (see exporter/poller.py), not from a request made during the scrape;
every HELP text of a target metric says so. When a source fails, its metrics keep the last good value and
``bitbucket_mirror_exporter_poll_success`` / ``..._last_success_timestamp_seconds`` show how stale it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.config import PRIMARY_TARGET
from exporter.state import ExporterState, MirrorState, SourceState

CACHED = " Polled in the background every poll.interval_seconds; scrapes read the last poll."


def normalize_url(url: str) -> str:
    """Compare base URLs loosely: scheme and host case, default ports and trailing slashes do not matter."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    port = parts.port
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = (parts.hostname or "").lower() + (f":{port}" if port and port != default else "")
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _gauge(name: str, doc: str, labels: Iterable[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc + CACHED, labels=list(labels))


class MirrorFarmCollector(Collector):
    def __init__(self, state: ExporterState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._mirror_metrics()
        yield from self._mirror_server_metrics()
        yield from self._self_metrics()

    def _mirror_metrics(self) -> Iterator[Metric]:
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
        for mirror in self._state.mirrors:
            name = mirror.name
            up.add_metric([name], 1.0 if mirror.status.success else 0.0)
            info.add_metric(
                [name], {"url": mirror.url, "api_family": str(mirror.layout.family) if mirror.layout else ""}
            )
            self._add_states(state, mirror)
            if (status := mirror.status.value) is not None and status.member_count is not None:
                members.add_metric([name], status.member_count)
            if (record := mirror.upstream.value) is not None:
                upstream.add_metric([name, record.state], 1.0)
            if (farm := mirror.farm_nodes.value) is not None:
                nodes.add_metric([name], len(farm))
            if (progress := mirror.progress.value) is not None:
                discovering.add_metric([name], 1.0 if progress.discovering else 0.0)
                synced.add_metric([name], progress.synced_repos)
                total.add_metric([name], progress.total_repos)
            if (refs := mirror.ref_changes_queue.value) is not None:
                queue.add_metric([name], refs.length)
                for kind in sorted({"incremental", "snapshot", *refs.items_by_type}):
                    queue_items.add_metric([name, kind], refs.items_by_type.get(kind, 0))
            if (summary := mirror.repo_sync_status.value) is not None:
                repos.add_metric([name], summary.repositories)
                failing.add_metric([name], summary.failing)
                failed.add_metric([name], summary.failed_syncs)
                if summary.newest_last_sync is not None:
                    last_sync.add_metric([name], summary.newest_last_sync)
        yield from (up, state, members, upstream, info, nodes, discovering, synced, total, queue, queue_items)
        yield from (repos, failing, failed, last_sync)

    @staticmethod
    def _add_states(family: GaugeMetricFamily, mirror: MirrorState) -> None:
        current = mirror.status.value.state if mirror.status.value is not None else None
        for seen in sorted(mirror.states_seen):
            family.add_metric([mirror.name, seen], 1.0 if seen == current else 0.0)

    def _mirror_label(self, base_url: str | None, fallback: str) -> str:
        if base_url:
            wanted = normalize_url(base_url)
            for mirror in self._state.mirrors:
                if normalize_url(mirror.url) == wanted:
                    return mirror.name
        return fallback

    def _mirror_server_metrics(self) -> Iterator[Metric]:
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
        for server in self._state.primary.mirror_servers.value or []:
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
        for target, sources in self._targets():
            for source, st in sources.items():
                if st.polled:
                    success.add_metric([target, source], 1.0 if st.success else 0.0)
                    duration.add_metric([target, source], st.duration_seconds)
                if st.last_success_timestamp is not None:
                    last_success.add_metric([target, source], st.last_success_timestamp)
                for reason, count in sorted(st.errors_total.items()):
                    errors.add_metric([target, source, reason], count)
        build = GaugeMetricFamily(
            "bitbucket_mirror_exporter_build_info", "The exporter's version; always 1.", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        yield from (success, duration, last_success, errors, build)
