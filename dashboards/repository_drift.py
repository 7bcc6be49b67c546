"""Repository drift: which repositories differ from the primary, since when, and which keep failing to sync."""

from __future__ import annotations

from grafanalib import core as g

from alerts.rules import BEST_NODE_DRIFT
from dashboards import thresholds as t
from dashboards import variables
from dashboards.common import REPOSITORY_DRIFT_UID
from dashboards.common import dashboard as make_dashboard
from dashboards.panels import (
    UP_MAPPING,
    UP_THRESHOLDS,
    VALUE,
    ZERO_IS_GOOD,
    Column,
    Grid,
    Query,
    mirror_sel,
    node_sel,
    nodes_ahead_of_peers,
    stat,
    table,
    timeseries,
)

UID = REPOSITORY_DRIFT_UID
REPOSITORY = "mirror, project, repository"
# How many repositories the table and the lag graph show at most; the exporter itself caps the per-repository series
# at max_repository_series per mirror.
TOP = 50
TOP_GRAPHED = 10


def per_repository(metric: str) -> str:
    return f"max by ({REPOSITORY}) ({mirror_sel(metric)})"


def nodes_table() -> g.Table:
    """One row per node of the mirrors read node by node (the node variable filters them)."""
    content = 'hash="content"'
    labels = [Column("mirror", "Mirror", "string"), Column("node", "Node", "string")]

    def per_node(selector: str) -> str:
        return f"max by (mirror, node) ({selector})"

    values: list[tuple[Query, Column | None]] = [
        (Query(per_node(node_sel("bitbucket_mirror_node_up"))), Column(VALUE, "Up", "none", UP_THRESHOLDS, UP_MAPPING)),
        (
            Query(per_node(node_sel("bitbucket_mirror_node_repositories_out_of_sync", content))),
            Column(VALUE, "Content drift", "short", ZERO_IS_GOOD),
        ),
        (
            Query(
                per_node(
                    nodes_ahead_of_peers(
                        node_sel("bitbucket_mirror_node_repositories_out_of_sync", content),
                        mirror_sel(BEST_NODE_DRIFT, content),
                    )
                )
            ),
            Column(VALUE, "More than best peer", "short", ZERO_IS_GOOD),
        ),
        (
            Query(per_node(node_sel("bitbucket_mirror_node_repositories_missing"))),
            Column(VALUE, "Missing", "short", ZERO_IS_GOOD),
        ),
        (Query(per_node(node_sel("bitbucket_mirror_node_sync_lag_seconds"))), Column(VALUE, "Lag", "s", t.SYNC_LAG)),
    ]
    return table(
        "Nodes",
        "Each node's own copy, for mirrors read node by node (nodes.url_template or nodes.static): content drift and "
        "missing repositories against the primary, how many more than the node's best peer (what "
        "BitbucketMirrorNodeBehind alerts on), and its longest lag. A node that stops answering is Up 0 and its "
        "figures leave once stale.",
        labels,
        values,
        sort_by="Lag",
    )


def repositories_table() -> g.Table:
    lag = per_repository("bitbucket_mirror_repository_sync_lag_seconds")
    labels = [
        Column("mirror", "Mirror", "string"),
        Column("project", "Project", "string"),
        Column("repository", "Repository", "string"),
    ]
    values = [
        (Query(f"topk({TOP}, {lag} > 0)"), Column(VALUE, "Lag", "s", t.SYNC_LAG)),
        # Grafana's date units read milliseconds since the epoch.
        (Query(f"(time() - topk({TOP}, {lag} > 0)) * 1000"), Column(VALUE, "Differs since", "dateTimeAsIso")),
        (
            Query(f"{per_repository('bitbucket_mirror_repository_failed_syncs')} > 0"),
            Column(VALUE, "Failed syncs", "short", t.REPOSITORY_FAILED_SYNCS),
        ),
        # Mirrors read node by node only: on how many nodes it differs (1 of 3: a node's problem).
        (
            Query(f"{per_repository('bitbucket_mirror_repository_nodes_behind')} > 0"),
            Column(VALUE, "Nodes behind", "short"),
        ),
    ]
    return table(
        "Repositories out of sync or failing",
        f"The {TOP} repositories whose content has differed from the primary the longest (Lag, and since when the "
        "exporter has seen it differ), and every repository whose last syncs failed. Empty lag: the content "
        "matches but syncs fail. Lag counts from when the exporter first saw the difference, so it restarts with "
        "the exporter. Nodes behind, for mirrors read node by node: on how many of the farm's nodes the repository "
        "differs or is missing. Only repositories with per-repository series are here (see Series dropped).",
        labels,
        values,
        sort_by="Lag",
    )


def dashboard() -> g.Dashboard:
    content = 'hash="content"'
    metadata = 'hash="metadata"'
    grid = Grid()
    grid.line(
        [
            stat(
                "Content drift",
                "Repositories whose content differs from the primary: clones there are stale.",
                Query(f"sum({mirror_sel('bitbucket_mirror_repositories_out_of_sync', content)})"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Metadata drift",
                "Content matches, metadata (pull-request refs and the like) differs. Late by design; a problem only "
                "when it lasts hours (BitbucketMirrorMetadataDrift).",
                Query(f"sum({mirror_sel('bitbucket_mirror_repositories_out_of_sync', metadata)})"),
                "short",
            ),
            stat(
                "Missing",
                "Repositories in a mirror's scope that the mirror does not have; BitbucketMirrorRepositoriesMissing "
                "once that lasts.",
                Query(f"sum({mirror_sel('bitbucket_mirror_repositories_missing')})"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Hash unknown",
                "Repositories whose content hash is absent or all zeros on either side (never computed since an "
                "upgrade): they cannot be compared, so they never count as drift.",
                Query(f"sum({mirror_sel('bitbucket_mirror_repositories_hash_unknown')})"),
                "short",
            ),
            stat(
                "Delayed (Bitbucket)",
                "Repositories Bitbucket itself reports as not synced within its sync tolerance, where the version "
                "offers that list.",
                Query(f"sum({mirror_sel('bitbucket_mirror_delayed_sync_repositories')})"),
                "short",
                ZERO_IS_GOOD,
            ),
            stat(
                "Series dropped",
                "Repositories left out of the per-repository series (and so of the table below) by the exporter's "
                "max_repository_series. Above 0, the table is incomplete.",
                Query(f"sum({mirror_sel('bitbucket_mirror_repository_series_dropped')})"),
                "short",
                ZERO_IS_GOOD,
            ),
        ],
        height=4,
    )
    grid.add(repositories_table(), 24, 10)
    grid.row("Nodes")
    grid.add(nodes_table(), 24, 7)
    grid.line(
        [
            timeseries(
                "Content drift by node",
                "Per node of the mirrors read node by node: repositories whose content on that node differs from the "
                "primary. One node above its peers is that node's problem, not the mirror's.",
                [
                    Query(
                        node_sel("bitbucket_mirror_node_repositories_out_of_sync", 'hash="content"'),
                        "{{mirror}}/{{node}}",
                    )
                ],
                "short",
            ),
            timeseries(
                "Lag by node",
                "Per node, how long its longest-diverged repository has differed from the primary. Dashed lines: the "
                "lag alerts' thresholds.",
                [Query(node_sel("bitbucket_mirror_node_sync_lag_seconds"), "{{mirror}}/{{node}}")],
                "s",
                t.SYNC_LAG,
            ),
        ],
        height=8,
    )
    grid.row("Over time")
    grid.line(
        [
            timeseries(
                "Lag of the longest-lagging repositories",
                f"The {TOP_GRAPHED} repositories that differ from the primary the longest at each point in time. "
                "Dashed lines: the lag alerts' warning and critical thresholds.",
                [
                    Query(
                        f"topk({TOP_GRAPHED}, {mirror_sel('bitbucket_mirror_repository_sync_lag_seconds')} > 0)",
                        "{{mirror}} {{project}}/{{repository}}",
                    )
                ],
                "s",
                t.SYNC_LAG,
            ),
            timeseries(
                "Failed syncs",
                "Per mirror, the sum of failedSyncCount over its repositories and how many repositories have one. "
                "Bitbucket resets a repository's count when it syncs.",
                [
                    Query(mirror_sel("bitbucket_mirror_failed_syncs"), "{{mirror}} failed syncs"),
                    Query(mirror_sel("bitbucket_mirror_repositories_failing"), "{{mirror}} failing repositories"),
                ],
                "short",
            ),
        ],
        height=8,
    )
    grid.line(
        [
            timeseries(
                "Out of sync by hash",
                "Per mirror, repositories whose content (hash=content) or only metadata (hash=metadata) differs.",
                [Query(mirror_sel("bitbucket_mirror_repositories_out_of_sync"), "{{mirror}} {{hash}}")],
                "short",
            ),
            timeseries(
                "Missing, unknown and extra",
                "Per mirror: repositories it lacks, repositories whose hash is unknown, and repositories it still "
                "has that the primary no longer lists.",
                [
                    Query(mirror_sel("bitbucket_mirror_repositories_missing"), "{{mirror}} missing"),
                    Query(mirror_sel("bitbucket_mirror_repositories_hash_unknown"), "{{mirror}} hash unknown"),
                    Query(mirror_sel("bitbucket_mirror_repositories_extra"), "{{mirror}} extra"),
                ],
                "short",
            ),
            timeseries(
                "Delayed according to Bitbucket",
                "Bitbucket's own count of repositories not synced within its tolerance, next to the exporter's "
                "content drift: a cross-check of the two views.",
                [
                    Query(mirror_sel("bitbucket_mirror_delayed_sync_repositories"), "{{mirror}} Bitbucket"),
                    Query(mirror_sel("bitbucket_mirror_repositories_out_of_sync", content), "{{mirror}} exporter"),
                ],
                "short",
            ),
        ],
        height=8,
    )
    return make_dashboard(
        "Bitbucket mirror repository drift",
        UID,
        "Which repositories on the Bitbucket mirrors differ from the primary, since when, which fail to sync, and "
        "on which nodes.",
        grid.panels,
        extra=[variables.node()],
    )
