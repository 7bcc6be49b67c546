"""Mirror farm overview: which mirror is behind, and is each one healthy? One table row per mirror, then the trends."""

from __future__ import annotations

from grafanalib import core as g

from alerts.rules import NODES_BEHIND_PEERS, NODES_DOWN, NODES_UP
from dashboards import thresholds as t
from dashboards.common import OVERVIEW_UID, REPOSITORY_DRIFT_UID
from dashboards.common import dashboard as make_dashboard
from dashboards.panels import (
    DATASOURCE,
    PUSH_TO_SYNC_NOTE,
    TARGET,
    UP_MAPPING,
    UP_THRESHOLDS,
    VALUE,
    ZERO_IS_GOOD,
    AlertList,
    Column,
    Grid,
    Query,
    mirror_sel,
    push_to_sync_quantiles,
    sel,
    stat,
    table,
    timeseries,
)

UID = OVERVIEW_UID
CONTENT = 'hash="content"'
NOT_SYNCHRONIZED = 'state!="SYNCHRONIZED"'


def by_mirror(expr: str) -> str:
    """One value per mirror, whatever the exporter's instance labels: the table joins its queries on ``mirror``."""
    return f"max by (mirror) ({expr})"


def in_scope() -> str:
    """Repositories in the mirror's scope: the drift classes are exclusive and together cover it."""
    parts = [
        mirror_sel("bitbucket_mirror_repositories_in_sync"),
        f"sum without (hash) ({mirror_sel('bitbucket_mirror_repositories_out_of_sync')})",
        mirror_sel("bitbucket_mirror_repositories_missing"),
        mirror_sel("bitbucket_mirror_repositories_hash_unknown"),
    ]
    return " + ".join(parts)


def nodes_up() -> str:
    return f"sum by (mirror) ({mirror_sel(NODES_UP)})"


def nodes_behind() -> str:
    """Nodes with content drift their best peer does not have; 0 for a mirror read node by node with none."""
    return f"sum by (mirror) ({mirror_sel(NODES_BEHIND_PEERS, CONTENT)}) or 0 * {nodes_up()}"


def mirrors_table() -> g.Table:
    drift_link = {
        "title": "Repositories of ${__value.raw}",
        "url": f"/d/{REPOSITORY_DRIFT_UID}?${{datasource:queryparam}}&${{job:queryparam}}&var-mirror=${{__value.raw}}"
        "&${__url_time_range}",
    }
    labels = [Column("mirror", "Mirror", "string", link=drift_link), Column("state", "State", "string")]
    values: list[tuple[Query, Column | None]] = [
        # Only supplies the state label.
        (Query(f"max by (mirror, state) ({mirror_sel('bitbucket_mirror_state')} == 1)"), None),
        (Query(by_mirror(mirror_sel("bitbucket_mirror_up"))), Column(VALUE, "Up", "none", UP_THRESHOLDS, UP_MAPPING)),
        (Query(by_mirror(mirror_sel("bitbucket_mirror_repositories_in_sync"))), Column(VALUE, "In sync", "short")),
        (Query(by_mirror(in_scope())), Column(VALUE, "In scope", "short")),
        (
            Query(by_mirror(mirror_sel("bitbucket_mirror_repositories_out_of_sync", CONTENT))),
            Column(VALUE, "Out of sync", "short", ZERO_IS_GOOD),
        ),
        (Query(by_mirror(mirror_sel("bitbucket_mirror_sync_lag_seconds"))), Column(VALUE, "Max lag", "s", t.SYNC_LAG)),
        (
            Query(by_mirror(mirror_sel("bitbucket_mirror_ref_changes_queue_length"))),
            Column(VALUE, "Queue", "short", t.QUEUE_BACKLOG),
        ),
        (
            Query(by_mirror(mirror_sel("bitbucket_mirror_repositories_failing"))),
            Column(VALUE, "Failing repositories", "short", ZERO_IS_GOOD),
        ),
        (
            Query(by_mirror(f"time() - {mirror_sel('bitbucket_mirror_server_last_seen_timestamp_seconds')}")),
            Column(VALUE, "Last seen by primary", "s", t.NOT_SEEN),
        ),
        (Query(by_mirror(mirror_sel("bitbucket_mirror_farm_nodes"))), Column(VALUE, "Farm nodes", "short")),
        # Only for mirrors read node by node (a nodes block); empty otherwise.
        (Query(by_mirror(nodes_up())), Column(VALUE, "Nodes up", "short")),
        (Query(by_mirror(nodes_behind())), Column(VALUE, "Nodes behind", "short", ZERO_IS_GOOD)),
    ]
    return table(
        "Mirrors",
        "One row per mirror. State is what the mirror's /status reports; Up is whether the exporter could read it. "
        "In sync / In scope count the repositories the mirror carries whose content and metadata match the primary. "
        "Out of sync counts content drift; Max lag is how long the longest of those has differed. Queue is the "
        "farm's ref-changes queue; Last seen is how long ago the primary last heard from the mirror. For mirrors "
        "read node by node, Nodes up counts the nodes whose /status answers and Nodes behind those with content "
        "drift their best peer does not have (BitbucketMirrorNodeBehind once it lasts). Click a mirror for its "
        "repositories.",
        labels,
        values,
        sort_by="Max lag",
    )


def alert_list() -> AlertList:
    """The exporter's alerts firing or pending now, from the Prometheus data source's rules."""
    # grafanalib's Panel fields are unknown to mypy.
    return AlertList(  # type: ignore[call-arg]
        title="Firing alerts",
        description="BitbucketMirror* alerts firing or pending in Prometheus (the data source's alert rules); each "
        "has a runbook at the Runbooks variable's address.",
        dataSource=DATASOURCE,
        label_filter='{alertname=~"BitbucketMirror.*"}',
    )


def dashboard() -> g.Dashboard:
    grid = Grid()
    grid.line(
        [
            stat(
                "Mirrors up",
                "One box per mirror: up while its /status answers, down (red) when it does not "
                "(BitbucketMirrorDown).",
                Query(by_mirror(mirror_sel("bitbucket_mirror_up")), "{{mirror}}"),
                "none",
                UP_THRESHOLDS,
                UP_MAPPING,
            ),
            stat(
                "Mirrors not synchronized",
                "Mirrors whose /status reports a state other than SYNCHRONIZED (BitbucketMirrorNotSynchronized).",
                Query(f"sum({mirror_sel('bitbucket_mirror_state', NOT_SYNCHRONIZED)})"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Repositories out of sync",
                "Repositories whose content differs from the primary, summed over the selected mirrors "
                "(BitbucketMirrorRepositoriesOutOfSync once one has differed long enough).",
                Query(f"sum({mirror_sel('bitbucket_mirror_repositories_out_of_sync', CONTENT)})"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Max sync lag",
                "The longest time any repository on the selected mirrors has differed from the primary. Orange and "
                "red at the BitbucketMirrorSyncLagHigh warning and critical thresholds.",
                Query(f"max({mirror_sel('bitbucket_mirror_sync_lag_seconds')})"),
                "s",
                t.SYNC_LAG,
            ),
            stat(
                "Failing repositories",
                "Repositories whose last syncs failed (failedSyncCount > 0), summed over the selected mirrors "
                "(BitbucketMirrorRepositorySyncFailing).",
                Query(f"sum({mirror_sel('bitbucket_mirror_repositories_failing')})"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Nodes down",
                "Mirror nodes (of the mirrors read node by node) whose own /status does not answer: the mirror's "
                "drift is the union over the others (BitbucketMirrorExporterPollFailing names the node).",
                Query(f"sum({mirror_sel(NODES_DOWN)}) or vector(0)"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Nodes behind their peers",
                "Mirror nodes with content drift the best node of their farm does not have, over the mirrors read "
                "node by node: clones sent to them get stale code (BitbucketMirrorNodeBehind once it lasts).",
                Query(f"sum({nodes_behind()}) or vector(0)"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Primary repositories",
                "Repositories the primary offers for mirroring.",
                Query(f"max({sel('bitbucket_mirror_primary_repositories')})"),
                "short",
            ),
        ],
        height=4,
    )  # fmt: skip
    grid.add(mirrors_table(), 24, 8)
    last_success = sel("bitbucket_mirror_exporter_last_success_timestamp_seconds", TARGET)
    failing = f"max by (target, source) ({sel('bitbucket_mirror_exporter_poll_success', TARGET)} == 0)"
    failing_sources = table(
        "Failing or stale sources",
        "Each endpoint whose last poll failed, with how long ago it last succeeded; the exporter's landing page (/) "
        "shows the reason. Empty when every poll succeeds.",
        [Column("target", "Target", "string"), Column("source", "Source", "string")],
        [
            (
                Query(f"max by (target, source) (time() - {last_success}) and on (target, source) {failing}"),
                Column(VALUE, "Last good poll", "s", ZERO_IS_GOOD),
            )
        ],
        sort_by="Last good poll",
    )  # fmt: skip
    grid.line(
        [
            stat(
                "Sources failing",
                "Endpoints whose last poll failed, over the primary and the selected mirrors: their values are served "
                "for poll.stale_after_seconds, then left out (BitbucketMirrorExporterPollFailing).",
                Query(f"count({sel('bitbucket_mirror_exporter_poll_success', TARGET)} == 0) or vector(0)"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Mirrors with unknown drift",
                "Mirrors whose drift and lag cannot be computed from fresh listings: their drift alerts cannot fire "
                "(BitbucketMirrorDriftUnknown).",
                Query(f"count({mirror_sel('bitbucket_mirror_drift_fresh')} == 0) or vector(0)"),
                "short",
                ZERO_IS_GOOD,
            ),
            failing_sources,
            alert_list(),
        ],
        height=5,
    )
    grid.row("Trends")
    grid.line(
        [
            timeseries(
                "Sync lag",
                "Per mirror, how long its longest-diverged repository has differed from the primary; 0 when all "
                "match. Dashed lines: the lag alerts' warning and critical thresholds.",
                [Query(mirror_sel("bitbucket_mirror_sync_lag_seconds"), "{{mirror}}")],
                "s",
                t.SYNC_LAG,
            ),
            timeseries(
                "Repositories out of sync",
                "Per mirror: content drift (pages after the lag threshold), metadata-only drift (late by design) and "
                "repositories the mirror does not have.",
                [
                    Query(mirror_sel("bitbucket_mirror_repositories_out_of_sync"), "{{mirror}} {{hash}}"),
                    Query(mirror_sel("bitbucket_mirror_repositories_missing"), "{{mirror}} missing"),
                ],
                "short",
            ),
        ],
        height=8,
    )
    grid.line(
        [
            timeseries("Push to mirror", PUSH_TO_SYNC_NOTE, push_to_sync_quantiles(), "s", t.PUSH_TO_SYNC),
            timeseries(
                "Ref changes queue",
                "Ref changes waiting in each farm's queue. Dashed line: BitbucketMirrorRefChangesQueueBacklog.",
                [Query(mirror_sel("bitbucket_mirror_ref_changes_queue_length"), "{{mirror}}")],
                "short",
                t.QUEUE_BACKLOG,
            ),
            timeseries(
                "Last seen by the primary",
                "How long ago the primary last heard from each mirror (lastSeenDate). Dashed line: "
                "BitbucketMirrorNotSeenByPrimary.",
                [Query(f"time() - {mirror_sel('bitbucket_mirror_server_last_seen_timestamp_seconds')}", "{{mirror}}")],
                "s",
                t.NOT_SEEN,
            ),
            timeseries(
                "Farm nodes",
                "Nodes in each mirror farm (farmNodes), and, for mirrors read node by node, how many answered the "
                "latest cycle (the drift and lag above are the union over those). A drop that lasts is "
                "BitbucketMirrorFarmNodesMissing.",
                [
                    Query(mirror_sel("bitbucket_mirror_farm_nodes"), "{{mirror}} listed"),
                    Query(mirror_sel("bitbucket_mirror_nodes_polled"), "{{mirror}} polled"),
                ],
                "short",
            ),
        ],
        height=7,
    )
    grid.line(
        [
            timeseries(
                "Mirror up",
                "1 while the mirror's /status answers, 0 when it does not (BitbucketMirrorDown).",
                [Query(mirror_sel("bitbucket_mirror_up"), "{{mirror}}")],
                "none",
                max_value=1,
            ),
            timeseries(
                "Synchronization progress",
                "Repositories synced out of those in the mirror's current synchronization (from …/progress; 0 of 0 "
                "when idle). A count that stops moving is BitbucketMirrorInitialSyncStalled.",
                [
                    Query(mirror_sel("bitbucket_mirror_sync_synced_repositories"), "{{mirror}} synced"),
                    Query(mirror_sel("bitbucket_mirror_sync_total_repositories"), "{{mirror}} total"),
                ],
                "short",
            ),
            timeseries(
                "Clock skew",
                "Each mirror's clock minus the primary's, from the Date headers of their answers. The primary refuses "
                "a mirror's JWT beyond 30 s; BitbucketMirrorClockSkew warns well before.",
                [Query(mirror_sel("bitbucket_mirror_clock_skew_seconds"), "{{mirror}}")],
                "s",
            ),
        ],
        height=7,
    )
    return make_dashboard(
        "Bitbucket mirror farm overview",
        UID,
        "Which Bitbucket mirror is behind the primary, by how much, and is each one healthy.",
        grid.panels,
    )
