"""Renders the latest poll snapshot as Prometheus metric families, fresh on every scrape.

Target values come from the background poll (exporter/rest/poller.py), not from a request made during the scrape;
every HELP text of a target metric says so. A source's metrics keep the last good value while it is at most
``poll.stale_after_seconds`` old and are left out after that (exporter/sources.py, "Freshness");
``bitbucket_mirror_exporter_poll_success`` / ``..._last_success_timestamp_seconds`` say why. Drift and lag need both
listings fresh (``bitbucket_mirror_drift_fresh``).

One function per area, each naming the endpoint its values come from and declaring each metric next to the code
that fills it; docs/metrics.md documents every one (a test fails otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, InfoMetricFamily, Metric

from exporter.config import PRIMARY_TARGET
from exporter.drift import FROM_FIRST_SEEN, FROM_PUSH, LAGGING_OVER_SECONDS, DriftReport, RepoState
from exporter.drift import in_scope as repositories_in_scope
from exporter.drift import lagging as repositories_lagging
from exporter.rest.state import FarmState, MirrorState
from exporter.sources import Health, SourceState, T, gauges

CACHED = (
    " Polled in the background every poll.interval_seconds; scrapes read the last poll, absent once older than "
    "poll.stale_after_seconds."
)
MIRROR = ["mirror"]


_gauge = gauges(CACHED, MIRROR)


@dataclass(frozen=True)
class Scrape:
    """What one scrape reads: the state as it is now, and the time."""

    state: FarmState
    now: float

    def fresh(self, source: SourceState[T]) -> T | None:
        return source.fresh(self.now, self.state.policy.stale_after)

    def each(self, source: Callable[[MirrorState], SourceState[T]]) -> Iterator[tuple[str, T]]:
        """(mirror name, fresh value) for every mirror whose value of that source is still served."""
        for mirror in self.state.mirrors:
            if (value := self.fresh(source(mirror))) is not None:
                yield mirror.name, value


def rest_metrics(state: FarmState, now: float) -> Iterator[Metric]:
    """Every REST family, area by area, from the state as it is at ``now``."""
    scrape = Scrape(state, now)
    areas = (
        status, upstream, farm_nodes, progress, queue, repositories, primary_listing, drift_freshness, drift,
        repository_checks, repository_series, nodes, node_lag_began, delayed_sync, clock_skew, mirror_servers,
    )  # fmt: skip
    for area in areas:
        yield from area(scrape)


def status(scrape: Scrape) -> Iterator[Metric]:
    """``GET /status`` on each mirror (outside /rest, no auth)."""
    up = _gauge("bitbucket_mirror_up", "1 when the last poll of the mirror's /status endpoint succeeded.")
    state = _gauge(
        "bitbucket_mirror_state",
        "1 for the state the mirror's /status reports now, 0 for the other states known or seen.",
        ["mirror", "state"],
    )
    members = _gauge("bitbucket_mirror_status_members", "Cluster members (memberCount) the mirror's /status reports.")
    for mirror in scrape.state.mirrors:
        up.add_metric([mirror.name], 1.0 if mirror.status.success else 0.0)
        if (current := scrape.fresh(mirror.status)) is not None:
            for seen in sorted(mirror.states_seen):
                state.add_metric([mirror.name, seen], 1.0 if seen == current.state else 0.0)
            if current.member_count is not None:
                members.add_metric([mirror.name], current.member_count)
    yield from (up, state, members)


def upstream(scrape: Scrape) -> Iterator[Metric]:
    """9.x ``…/upstreamServer``, 8.x ``…/upstreamServers/{id}``; and the API family found there."""
    record = _gauge(
        "bitbucket_mirror_upstream_state",
        "1 for the state of the mirror's upstream server record (INSTALLED when healthy).",
        ["mirror", "state"],
    )
    for name, value in scrape.each(lambda m: m.upstream):
        record.add_metric([name, value.state], 1.0)
    info = InfoMetricFamily(
        "bitbucket_mirror", "The mirror's base URL and detected mirroring API family.", labels=MIRROR
    )
    for mirror in scrape.state.mirrors:
        info.add_metric([mirror.name], {"url": mirror.url, "api_family": str(mirror.api_family or "")})
    yield from (record, info)


def farm_nodes(scrape: Scrape) -> Iterator[Metric]:
    """9.x ``…/farmNodes``, 8.x ``…/upstreamServers/{id}/farmNodes``."""
    nodes = _gauge("bitbucket_mirror_farm_nodes", "Nodes in the mirror farm (farmNodes).")
    for name, value in scrape.each(lambda m: m.farm_nodes):
        nodes.add_metric([name], len(value))
    yield nodes


def progress(scrape: Scrape) -> Iterator[Metric]:
    """9.x ``…/progress``, 8.x ``…/upstreamServers/{id}/progress``."""
    discovering = _gauge(
        "bitbucket_mirror_sync_discovering", "1 while the mirror is discovering repositories (progress)."
    )
    synced = _gauge(
        "bitbucket_mirror_sync_synced_repositories",
        "Repositories synced so far in the current synchronization (progress.syncedRepos).",
    )
    total = _gauge(
        "bitbucket_mirror_sync_total_repositories",
        "Repositories to sync in the current synchronization (progress.totalRepos).",
    )
    for name, value in scrape.each(lambda m: m.progress):
        discovering.add_metric([name], 1.0 if value.discovering else 0.0)
        synced.add_metric([name], value.synced_repos)
        total.add_metric([name], value.total_repos)
    yield from (discovering, synced, total)


def queue(scrape: Scrape) -> Iterator[Metric]:
    """``…/supportInfo/refChangesQueue/count`` and ``…/supportInfo/refChangesQueue`` (farm-wide)."""
    length = _gauge(
        "bitbucket_mirror_ref_changes_queue_length",
        "Ref changes waiting in the farm-wide queue (refChangesQueue/count).",
    )
    items = _gauge(
        "bitbucket_mirror_ref_changes_queue_items",
        "Items of the dumped ref-changes queue by sync type; the dump is capped by "
        "plugin.mirroring.farm.max.ref.change.queue.dump.size.",
        ["mirror", "sync"],
    )
    for name, value in scrape.each(lambda m: m.ref_changes_queue):
        length.add_metric([name], value.length)
        for kind in sorted({"incremental", "snapshot", *value.items_by_type}):
            items.add_metric([name, kind], value.items_by_type.get(kind, 0))
    yield from (length, items)


def repositories(scrape: Scrape) -> Iterator[Metric]:
    """``…/supportInfo/repoSyncStatus`` (all pages): the mirror's own view of its repositories."""
    count = _gauge("bitbucket_mirror_repositories", "Repositories the mirror reports in supportInfo/repoSyncStatus.")
    failing = _gauge("bitbucket_mirror_repositories_failing", "Repositories with failedSyncCount > 0 on the mirror.")
    failed = _gauge("bitbucket_mirror_failed_syncs", "Sum of failedSyncCount over the mirror's repositories.")
    last_sync = _gauge(
        "bitbucket_mirror_last_sync_timestamp_seconds",
        "Newest lastSyncDate over the mirror's repositories, as a Unix timestamp.",
    )
    for name, value in scrape.each(lambda m: m.repo_sync_status):
        count.add_metric([name], value.repositories)
        failing.add_metric([name], value.failing)
        failed.add_metric([name], value.failed_syncs)
        if value.newest_last_sync is not None:
            last_sync.add_metric([name], value.newest_last_sync)
    yield from (count, failing, failed, last_sync)


def primary_listing(scrape: Scrape) -> Iterator[Metric]:
    """The primary's ``…/repos``: how many it offers, and the content changes between two listings."""
    state = scrape.state
    primary_repos = _gauge(
        "bitbucket_mirror_primary_repositories",
        "Repositories the primary offers for mirroring (mirroring/latest/repos).",
        [],
    )
    if (listing := scrape.fresh(state.primary.repositories)) is not None:
        primary_repos.add_metric([], len(listing))
    changes = CounterMetricFamily(
        "bitbucket_mirror_primary_content_changes",
        "Repositories whose content hash changed on the primary between two of its listings: the pushes polling "
        "sees (several pushes between two listings count once)." + CACHED,
        labels=[],
    )
    changes.add_metric([], state.primary.content_changes)
    yield from (primary_repos, changes)


def fresh_reports(scrape: Scrape) -> Iterator[tuple[MirrorState, DriftReport]]:
    """Each mirror whose drift report was computed from fresh inputs, with it (the only ones drift is served for)."""
    for mirror in scrape.state.mirrors:
        report = mirror.drift
        if report is not None and report.fresh(scrape.now, scrape.state.policy.stale_after):
            yield mirror, report


def drift_freshness(scrape: Scrape) -> Iterator[Metric]:
    """Whether each mirror's drift is served, and, where not, which input is stale and why."""
    state, now, policy = scrape.state, scrape.now, scrape.state.policy
    fresh = _gauge(
        "bitbucket_mirror_drift_fresh",
        "1 when the mirror's drift and lag were computed from fresh inputs (the primary's and the mirror's "
        "listings, both at most poll.stale_after_seconds old), else 0; while 0, drift and lag series are absent.",
    )
    stale_input = _gauge(
        "bitbucket_mirror_drift_input_stale",
        "1 for each input of the mirror's drift (target primary source repositories; the mirror's "
        "repo_sync_status) that has no value fresher than poll.stale_after_seconds, with the reason of its last "
        "failed poll; only while bitbucket_mirror_drift_fresh is 0.",
        ["mirror", "target", "source", "reason"],
    )
    served = {mirror.name for mirror, _ in fresh_reports(scrape)}
    for mirror in state.mirrors:
        name = mirror.name
        fresh.add_metric([name], 1.0 if name in served else 0.0)
        if name in served:
            continue
        # Never serve drift computed from stale inputs as current: absent, and these say why.
        inputs: list[tuple[str, str, SourceState[object]]] = [
            (PRIMARY_TARGET, "repositories", state.primary.repositories),  # type: ignore[list-item]
            (name, "repo_sync_status", mirror.repo_sync_status),  # type: ignore[list-item]
        ]
        for target, source, input_state in inputs:
            if input_state.fresh(now, policy.stale_after) is None:
                stale_input.add_metric([name, target, source, input_state.error_reason or "not_polled_yet"], 1.0)
    yield from (fresh, stale_input)


def drift(scrape: Scrape) -> Iterator[Metric]:
    """The primary's ``…/repos`` joined with each mirror's repoSyncStatus (exporter/drift.py): counts and lag."""
    in_sync = _gauge("bitbucket_mirror_repositories_in_sync", "Repositories whose content hashes match.")
    out_of_sync = _gauge(
        "bitbucket_mirror_repositories_out_of_sync",
        "Repositories whose content hashes differ (hash=content), or whose content matches but metadata "
        "hashes differ (hash=metadata).",
        ["mirror", "hash"],
    )
    missing = _gauge("bitbucket_mirror_repositories_missing", "Repositories in the mirror's scope it does not have.")
    unknown = _gauge(
        "bitbucket_mirror_repositories_hash_unknown",
        "Repositories whose content hash is absent or all zeros on either side: not counted as drift.",
    )
    extra = _gauge(
        "bitbucket_mirror_repositories_extra", "Repositories on the mirror that the primary no longer lists."
    )
    lag = _gauge(
        "bitbucket_mirror_sync_lag_seconds",
        "Longest time a repository's content has differed from the primary's, as first seen by the exporter, over "
        "repositories in content drift that are neither missing nor failing (those have their own alerts and "
        "per-repository lag); 0 when there is none. Resolution: the poll interval.",
    )
    lag_began = _gauge(
        "bitbucket_mirror_sync_lag_first_seen_timestamp_seconds",
        "When the divergence behind bitbucket_mirror_sync_lag_seconds began, as a Unix timestamp (the push that began "
        "it, else the exporter's first sight: bitbucket_mirror_sync_lag_source): time() minus it is the lag at query "
        "time. Absent when nothing lags.",
    )
    lag_source = _gauge(
        "bitbucket_mirror_sync_lag_source",
        "Repositories whose content diverges (content drift or missing), by how their lag is dated: source=push, "
        "from the push on the primary that began the divergence (ref change activity); source=first_seen, from when "
        "the exporter first saw it (the activity could not be read, or not yet).",
        ["mirror", "source"],
    )
    in_scope = _gauge(
        "bitbucket_mirror_repositories_in_scope",
        "Repositories in the mirror's scope (its sync settings): in sync, out of sync, missing or hash unknown. The "
        "freshness SLI's total (docs/slo.md).",
    )
    lagging = _gauge(
        "bitbucket_mirror_repositories_lagging",
        "Repositories in the mirror's scope whose content has differed from the primary's (content drift or "
        "missing) for longer than `over` seconds, lag dated as bitbucket_mirror_sync_lag_seconds: the freshness "
        "SLI's bad events (docs/slo.md).",
        ["mirror", "over"],
    )
    for mirror, report in fresh_reports(scrape):
        name = mirror.name
        in_scope.add_metric([name], repositories_in_scope(report))
        for over, count in repositories_lagging(report, scrape.now).items():
            lagging.add_metric([name, str(over)], count)
        in_sync.add_metric([name], report.count(RepoState.IN_SYNC))
        out_of_sync.add_metric([name, "content"], report.count(RepoState.CONTENT_DRIFT))
        out_of_sync.add_metric([name, "metadata"], report.count(RepoState.METADATA_DRIFT))
        missing.add_metric([name], report.count(RepoState.MISSING))
        unknown.add_metric([name], report.count(RepoState.HASH_UNKNOWN))
        extra.add_metric([name], report.count(RepoState.EXTRA))
        lag.add_metric([name], report.sync_lag_seconds(scrape.now))
        if report.laggard_since is not None:
            lag_began.add_metric([name], report.laggard_since)
        pushed, first_seen = report.lag_sources()
        lag_source.add_metric([name, FROM_PUSH], pushed)
        lag_source.add_metric([name, FROM_FIRST_SEEN], first_seen)
    yield from (in_sync, out_of_sync, missing, unknown, extra, lag, lag_began, lag_source, in_scope, lagging)


def repository_checks(scrape: Scrape) -> Iterator[Metric]:
    """The freshness SLO's events as counters (docs/slo.md): for SLO tools that take events (pyrra, sloth)."""
    checks = CounterMetricFamily(
        "bitbucket_mirror_repositories_checked",
        "Repositories in the mirror's scope compared with the primary, summed over the drift analyses since the "
        "exporter started (one per cycle): the freshness SLO's total events (docs/slo.md).",
        labels=MIRROR,
    )
    late = CounterMetricFamily(
        "bitbucket_mirror_repositories_checked_late",
        "Of bitbucket_mirror_repositories_checked_total, those that found the repository's content behind the "
        "primary's for longer than `over` seconds: the freshness SLO's bad events.",
        labels=["mirror", "over"],
    )
    for mirror in scrape.state.mirrors:
        checks.add_metric([mirror.name], mirror.repository_checks)
        for over in LAGGING_OVER_SECONDS:
            late.add_metric([mirror.name, str(over)], mirror.late_repository_checks.get(over, 0))
    yield from (checks, late)


def repository_series(scrape: Scrape) -> Iterator[Metric]:
    """Per-repository drift series, for the repositories per_repository_metrics selects (worst first)."""
    policy = scrape.state.policy
    repo_labels = ["mirror", "project", "repository"]
    repo_lag = _gauge(
        "bitbucket_mirror_repository_sync_lag_seconds",
        "Time the repository's content has diverged from the primary, as first seen by the exporter; "
        "0 when in sync. Only for repositories selected by per_repository_metrics.",
        repo_labels,
    )
    repo_began = _gauge(
        "bitbucket_mirror_repository_sync_lag_first_seen_timestamp_seconds",
        "When the repository's content divergence began, as a Unix timestamp (its push, else the exporter's first "
        "sight): time() minus it is bitbucket_mirror_repository_sync_lag_seconds at query time. Absent while in "
        "sync. Only for repositories selected by per_repository_metrics.",
        repo_labels,
    )
    repo_failed = _gauge(
        "bitbucket_mirror_repository_failed_syncs",
        "failedSyncCount of the repository on the mirror. Only for repositories selected by per_repository_metrics.",
        repo_labels,
    )
    nodes_behind = _gauge(
        "bitbucket_mirror_repository_nodes_behind",
        "Nodes of the farm (of those that answered) where the repository's content diverges from the primary's or "
        "is missing. Only with nodes configured, and only for repositories selected by per_repository_metrics.",
        repo_labels,
    )
    dropped = _gauge(
        "bitbucket_mirror_repository_series_dropped",
        "Repositories left without per-repository series because of max_repository_series.",
    )
    for mirror, report in fresh_reports(scrape):
        name = mirror.name
        shown = policy.shown(report.repositories)
        for repo in shown:
            labels = [name, repo.project_key, repo.slug]
            repo_lag.add_metric(labels, repo.lag_seconds(scrape.now))
            if repo.diverged_since is not None:
                repo_began.add_metric(labels, repo.diverged_since)
            repo_failed.add_metric(labels, repo.failed_syncs)
            if mirror.by_node:
                nodes_behind.add_metric(labels, repo.nodes_behind)
        dropped.add_metric([name], 0 if policy.per_repository == "none" else len(report.repositories) - len(shown))
    yield from (repo_lag, repo_began, repo_failed, nodes_behind, dropped)


def nodes(scrape: Scrape) -> Iterator[Metric]:
    """Each node at its own URL (nodes.url_template or nodes.static): ``/status`` and the node-local
    ``…/supportInfo/repoSyncStatus`` against the primary's ``…/repos`` (exporter/rest/nodes.py)."""
    now, stale_after = scrape.now, scrape.state.policy.stale_after
    node_labels = ["mirror", "node"]
    up = _gauge(
        "bitbucket_mirror_node_up",
        "1 when the last poll of the node's own /status succeeded, else 0; for each node farmNodes lists (or "
        "nodes.static names).",
        node_labels,
    )
    state = _gauge(
        "bitbucket_mirror_node_state",
        "1 for the state the node's own /status reports now, 0 for the other states known or seen.",
        [*node_labels, "state"],
    )
    out_of_sync = _gauge(
        "bitbucket_mirror_node_repositories_out_of_sync",
        "Repositories whose content hashes on this node differ from the primary's (hash=content), or whose content "
        "matches but metadata hashes differ (hash=metadata).",
        [*node_labels, "hash"],
    )
    missing = _gauge(
        "bitbucket_mirror_node_repositories_missing",
        "Repositories in the mirror's scope that this node does not list.",
        node_labels,
    )
    lag = _gauge(
        "bitbucket_mirror_node_sync_lag_seconds",
        "Longest time a repository's content on this node has differed from the primary's, as first seen by the "
        "exporter, over repositories in content drift on the node that are neither missing nor failing there; 0 "
        "when there is none.",
        node_labels,
    )
    polled = _gauge(
        "bitbucket_mirror_nodes_polled",
        "Nodes whose listing answered in the mirror's latest cycle: the mirror's drift and lag are the union over "
        "these (compare with bitbucket_mirror_farm_nodes).",
    )
    for mirror in scrape.state.mirrors:
        if not mirror.by_node:
            continue
        if mirror.nodes_polled_at is not None and now - mirror.nodes_polled_at <= stale_after:
            polled.add_metric([mirror.name], mirror.nodes_polled)
        for name, node in sorted(mirror.nodes.items()):
            labels = [mirror.name, name]
            up.add_metric(labels, 1.0 if node.status.success else 0.0)
            if (current := scrape.fresh(node.status)) is not None:
                for seen in sorted(node.states_seen):
                    state.add_metric([*labels, seen], 1.0 if seen == current.state else 0.0)
    for labels, report in fresh_node_reports(scrape):
        out_of_sync.add_metric([*labels, "content"], report.count(RepoState.CONTENT_DRIFT))
        out_of_sync.add_metric([*labels, "metadata"], report.count(RepoState.METADATA_DRIFT))
        missing.add_metric(labels, report.count(RepoState.MISSING))
        lag.add_metric(labels, report.sync_lag_seconds(now))
    yield from (up, state, out_of_sync, missing, lag, polled)


def fresh_node_reports(scrape: Scrape) -> Iterator[tuple[list[str], DriftReport]]:
    """([mirror, node], report) for each node read one by one whose drift report is fresh: a node that stopped
    answering has no drift series once its listing is stale."""
    for mirror in scrape.state.mirrors:
        for name, node in sorted(mirror.nodes.items()) if mirror.by_node else ():
            report = node.drift
            if report is not None and report.fresh(scrape.now, scrape.state.policy.stale_after):
                yield [mirror.name, name], report


def node_lag_began(scrape: Scrape) -> Iterator[Metric]:
    """When each node's lag began (its drift, as ``nodes`` serves it)."""
    began = _gauge(
        "bitbucket_mirror_node_sync_lag_first_seen_timestamp_seconds",
        "When the divergence behind bitbucket_mirror_node_sync_lag_seconds began on the node, as a Unix timestamp "
        "(the push that began it, else the exporter's first sight): time() minus it is the node's lag at query time. "
        "Absent when nothing lags on the node.",
        ["mirror", "node"],
    )
    for labels, report in fresh_node_reports(scrape):
        if report.laggard_since is not None:
            began.add_metric(labels, report.laggard_since)
    yield began


def delayed_sync(scrape: Scrape) -> Iterator[Metric]:
    """9.5+ ``…/mirrorRepos/delayed-sync``, else the opt-in ``…/supportInfo/out-of-sync-repos/content``."""
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
    )
    for mirror in scrape.state.mirrors:
        value = mirror.delayed(scrape.now, scrape.state.policy.stale_after)
        if value is None:
            continue
        available.add_metric([mirror.name, value.endpoint], 1.0 if value.available else 0.0)
        if value.available and value.repositories is not None:
            delayed.add_metric([mirror.name], value.repositories)
    yield from (available, delayed)


def clock_skew(scrape: Scrape) -> Iterator[Metric]:
    """The ``Date`` header of the answers already fetched from the primary and each mirror."""
    skew = _gauge(
        "bitbucket_mirror_clock_skew_seconds",
        "The mirror's clock minus the primary's, from the Date headers of answers already fetched (the offsets "
        "they allow against the exporter's clock, narrowed answer by answer); resolution 1 s. Beyond 30 s the "
        "primary refuses the mirror's JWT and the mirror falls behind.",
    )
    stale_after = scrape.state.policy.stale_after
    primary = scrape.state.primary.clock
    if primary is not None and scrape.now - primary.at <= stale_after:
        for mirror in scrape.state.mirrors:
            clock = mirror.clock
            if clock is not None and scrape.now - clock.at <= stale_after:
                skew.add_metric([mirror.name], float(round(clock.offset_seconds - primary.offset_seconds)))
    yield skew


def mirror_servers(scrape: Scrape) -> Iterator[Metric]:
    """The primary's ``…/mirrorServers`` (all pages)."""
    enabled = _gauge(
        "bitbucket_mirror_server_enabled", "1 when the primary lists the mirror as enabled (mirrorServers)."
    )
    last_seen = _gauge(
        "bitbucket_mirror_server_last_seen_timestamp_seconds",
        "When the primary last heard from the mirror (mirrorServers lastSeenDate), as a Unix timestamp.",
    )
    info = InfoMetricFamily(
        "bitbucket_mirror_server",
        "The primary's record of each mirror server (mirrorServers)." + CACHED,
        labels=["mirror", "server_id", "mirror_type", "product_version"],
    )
    for server in scrape.fresh(scrape.state.primary.mirror_servers) or []:
        label = scrape.state.mirror_label(server.base_url, server.name or server.id)
        if server.enabled is not None:
            enabled.add_metric([label], 1.0 if server.enabled else 0.0)
        if server.last_seen_date is not None:
            last_seen.add_metric([label], server.last_seen_date)
        info.add_metric(
            [label, server.id, server.mirror_type or "", server.product_version or ""],
            {"base_url": server.base_url or ""},
        )
    yield from (enabled, last_seen, info)


def health(state: FarmState, extra: Mapping[str, Mapping[str, SourceState[Any]]]) -> Health:
    """Each REST source's labels and state, for the exporter's poll health families (exporter/sources.py): the
    primary's, then each mirror's farm-wide ones, each followed by ``extra`` sources other packages poll for it (by
    target name). A farm's nodes come apart (``node_health``): the git mirrors are listed between them."""
    targets = [(PRIMARY_TARGET, state.primary.sources()), *((m.name, m.sources()) for m in state.mirrors)]
    for target, sources in targets:
        for name, source in {**sources, **extra.get(target, {})}.items():
            yield {"target": target, "source": name}, source


def node_health(state: FarmState) -> Health:
    for mirror in state.mirrors:
        for node_name, node in sorted(mirror.nodes.items()):
            for source, node_source in node.sources().items():
                yield {"target": mirror.name, "node": node_name, "source": source}, node_source
